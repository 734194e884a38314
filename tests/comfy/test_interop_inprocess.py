"""The override plumbing in-process (CPU), against the ComfyUI under test: AdaCluster re-installing
itself over an override that replaced it, leaving one that chains to it on top (no growth per step),
the dense path = exactly what ComfyUI would have run (ComfyUI 0.33's AttentionTensorContainers handed
on through `container_function`, nothing kept alive), and unsupported families named."""
from __future__ import annotations

import weakref

import pytest
import torch

from tests.comfy._helpers import comfy_inprocess, load_nodes_module

_why = comfy_inprocess()
pytestmark = pytest.mark.skipif(_why is not None, reason=str(_why))
if _why is None:
    P = load_nodes_module("patcher")
    CW = load_nodes_module("config_widgets")
    F = load_nodes_module("families")
    I = load_nodes_module("interop")
    import comfy.ldm.modules.attention as A

HAS_CONTAINERS = _why is None and hasattr(A, "AttentionTensorContainer")
needs_containers = pytest.mark.skipif(not HAS_CONTAINERS, reason="this ComfyUI has no AttentionTensorContainer "
                                                                   "(0.33 feature)")


def _cfg(**kw):
    base = dict(q_clusters=4, k_clusters=8, k_clusters_init=8, top_k=64, warmup=0.0, min_tokens=0,
                calibration_dense=False, dense_layer_fraction=0.0, backend="torch")
    base.update(kw)
    return CW.make_config(**base)


class FakeHunyuanVideo(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.patch_size = [1, 2, 2]
        self.double_blocks = [type("B", (), {"flipped_img_txt": False})() for _ in range(2)]
        self.single_blocks = []
        self.txt_in = self.vector_in = object()
        self.byt5_in = self.vision_in = self.cond_type_embedding = None


def _run(cfg, rules=None, previous=None):
    run = P.PatchHolder(cfg, rules, "auto", previous_override=previous)
    run.override = P.make_override(run, previous)
    run.begin(None)
    return run


def _forward_options(run, n_txt=8):
    """A Hunyuan forward (grid 2x3x4 = 24 video tokens + n_txt text, text first) begun by the wrapper."""
    x = torch.zeros(1, 16, 2, 6, 8)
    to = {"sigmas": torch.tensor([0.5]), "cond_or_uncond": [0], OVR: run.override}
    P._begin_forward(run, FakeHunyuanVideo(), (x, None, torch.zeros(1, n_txt, 32)), {"transformer_options": to})
    to["block_type"], to["block_index"] = "double", 0
    return to


OVR = "optimized_attention_override"


def _qkv(L=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 2, L, 64, generator=g) for _ in range(3)]


def _containers(ts):
    return [A.AttentionTensorContainer(t.clone()) for t in ts]


# ------------------------------------------------------------------------------ who is on the hook
def test_replaced_override_becomes_the_dense_path_and_chainers_stay_on_top():
    run = _run(_cfg())
    calls = {"rep": 0}

    def replacing(func, *a, **kw):          # ModelAttentionBackend / Sage-patch style: no chaining
        calls["rep"] += 1
        return func(*a, **kw)

    to = {OVR: replacing}
    P.install_on_top(run, to)
    ours = to[OVR]
    assert I.is_ours(ours, run) and ours is not run.override and ours.__adacluster_previous__ is replacing
    P.install_on_top(run, to)
    assert to[OVR] is ours                    # idempotent: one wrapper per foreign override
    assert [(o["position"], o["sparse"]) for o in run.others_summary()] == [("below", False)]

    # a core-style sparse node re-installing itself on top of whatever is there, every step
    installed = []

    def make(prev):
        def core_like(func, *a, **kw):
            return prev(func, *a, **kw)
        core_like.sparse_attention = "core-like"
        installed.append(core_like)
        return core_like

    for _ in range(5):                        # five steps: its callback, then ours
        if not any(to[OVR] is o for o in installed):
            to[OVR] = make(to[OVR])
        P.install_on_top(run, to)
    assert len(installed) == 1 and to[OVR] is installed[0]    # no ping-pong, no growth
    above = [o for o in run.others_summary() if o["position"] == "above"]
    assert above == [{"name": "core-like", "sparse": True, "position": "above", "calls": 0}]


def test_unpatch_restores_a_replacing_override():
    import comfy.model_patcher

    mp = comfy.model_patcher.ModelPatcher(torch.nn.Linear(1, 1), torch.device("cpu"), torch.device("cpu"))
    patched = P.patch_model(mp, _cfg())
    run = P.get_run(patched)

    def replacing(func, *a, **kw):
        return func(*a, **kw)

    later = patched.clone()
    later.model_options["transformer_options"][OVR] = replacing
    P.install_on_top(run, later.model_options["transformer_options"])
    off = P.unpatch_model(later)
    assert off.model_options["transformer_options"][OVR] is replacing


def test_describe_known_overrides():
    if hasattr(__import__("comfy.model_patcher").model_patcher.ModelPatcher, "set_model_optimized_attention"):
        import comfy.model_patcher
        mp = comfy.model_patcher.ModelPatcher(torch.nn.Linear(1, 1), torch.device("cpu"), torch.device("cpu"))
        mp.set_model_optimized_attention(A.attention_pytorch)
        f = mp.model_options["transformer_options"][OVR]
        assert I.describe_override(f) == "set_model_optimized_attention (attention_pytorch)"
        assert not I.is_sparse_override(f)

    def g(func, *a, **kw):
        return func(*a, **kw)
    g.__module__ = "comfy_extras.nodes_sparse_attention"
    assert I.is_sparse_override(g) and I.describe_override(g) == "core Model Sparse Attention"


# --------------------------------------------------------------------- dense = what ComfyUI runs
def test_dense_forced_call_is_bit_identical_through_comfy_attention():
    """Through ComfyUI's own wrapped attention function, every call forced dense (a `*: dense` rule):
    the output equals the unpatched call bit for bit (tensors; containers on 0.33 below)."""
    rules = CW.parse_layer_rules("*: dense")
    run = _run(_cfg(), rules)
    to = _forward_options(run)
    q, k, v = _qkv()
    ref = A.optimized_attention(q, k, v, 2, skip_reshape=True)
    out = A.optimized_attention(q, k, v, 2, skip_reshape=True, transformer_options=to)
    assert torch.equal(out, ref)
    assert run.run.records[-1].reason == "layer-rule"


@needs_containers
def test_containers_dense_are_handed_on_and_bit_identical():
    rules = CW.parse_layer_rules("*: dense")
    run = _run(_cfg(), rules)
    to = _forward_options(run)
    ts = _qkv()
    ref = A.optimized_attention(*_containers(ts), 2, skip_reshape=True)
    cs = _containers(ts)
    out = A.optimized_attention(*cs, 2, skip_reshape=True, transformer_options=to)
    assert torch.equal(out, ref)
    assert all(c.tensor is None for c in cs)             # consumed downstream
    assert run.run.records[-1].reason == "layer-rule" and not run.run.records[-1].sparse


@needs_containers
def test_containers_reach_the_previous_overrides_container_function_unreferenced():
    """A previous override with a container_function (ModelAttentionBackend of a container-aware
    backend) gets the containers themselves, and once it drops a tensor nothing else holds it."""
    seen = {}

    def prev(func, *a, **kw):
        raise AssertionError("the container path must be used")

    def prev_containers(q, k, v, heads, **kw):
        seen["containers"] = all(isinstance(c, A.AttentionTensorContainer) for c in (q, k, v))
        t = q.take()
        out = torch.zeros(1, t.shape[2], t.shape[1] * t.shape[3])
        r = weakref.ref(t)
        del t
        seen["freed"] = r() is None                     # AdaCluster kept no reference to q
        k.take(), v.take()
        return out

    prev.container_function = prev_containers
    run = _run(_cfg(), CW.parse_layer_rules("*: dense"), previous=prev)
    to = _forward_options(run)
    q, k, v = _qkv()
    cs = [A.AttentionTensorContainer(t) for t in (q, k, v)]
    del q, k, v
    A.optimized_attention(*cs, 2, skip_reshape=True, transformer_options=to)
    assert seen == {"containers": True, "freed": True}


@needs_containers
def test_containers_previous_without_container_function_gets_tensors_and_func():
    got = {}

    def prev(func, q, k, v, *a, **kw):
        got["tensor"] = isinstance(q, torch.Tensor)
        got["func"] = func
        return func(q, k, v, *a, **kw)

    run = _run(_cfg(), CW.parse_layer_rules("*: dense"), previous=prev)
    to = _forward_options(run)
    ts = _qkv()
    out = A.optimized_attention(*_containers(ts), 2, skip_reshape=True, transformer_options=to)
    assert got["tensor"] and got["func"] is A.optimized_attention.__wrapped__   # what wrap_attn hands on
    assert torch.equal(out, A.optimized_attention(*ts, 2, skip_reshape=True))


@needs_containers
def test_containers_sparse_path_takes_them():
    run = _run(_cfg(top_k=4096))                       # every key cluster: sparse == dense up to fp error
    to = _forward_options(run)
    ts = _qkv()
    cs = _containers(ts)
    out = A.optimized_attention(*cs, 2, skip_reshape=True, transformer_options=to)
    assert run.run.records[-1].sparse and all(c.tensor is None for c in cs)
    torch.testing.assert_close(out, A.optimized_attention(*ts, 2, skip_reshape=True), atol=2e-5, rtol=1e-4)


# ------------------------------------------------------------------------------ families named
@pytest.mark.parametrize("cls,label", [("WanAnimate2Model", "wan-animate2"), ("LTXAVModel", "ltxav"),
                                       ("LTXVModel", "ltxv"), ("Kandinsky5", "kandinsky5")])
def test_unsupported_families_are_named(cls, label):
    dm = type(cls, (torch.nn.Module,), {})()
    dm.blocks, dm.text_embedding, dm.patch_size = [], object(), (1, 2, 2)   # Wan-like attributes too
    assert F.detect_family(dm) == (None, f"family {label} not supported")
