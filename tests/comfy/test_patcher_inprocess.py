"""Synthetic calls through nodes/patcher.py with ComfyUI 0.3.75 imported in the test process
(CPU): layouts ComfyUI 0.3.75 cannot produce (HunyuanVideo's [txt, img] order of ComfyUI >= 0.14,
CogVideoX of ComfyUI >= 0.21), chaining with a previous override, clone deep copies, and a real
tiny WanModel forward. The server tests (test_nodes_server.py) cover the real sampling path."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from tests.comfy._helpers import comfy_inprocess, load_nodes_module, tiny_wan_model

_why = comfy_inprocess()
pytestmark = pytest.mark.skipif(_why is not None, reason=str(_why))
if _why is None:
    P = load_nodes_module("patcher")
    CW = load_nodes_module("config_widgets")
    REP = load_nodes_module("report")
    FAM = load_nodes_module("families")
    import comfy.patcher_extension as pe


def _cfg(**kw):
    base = dict(q_clusters=4, k_clusters=8, k_clusters_init=8, top_k=64, warmup=0.0, min_tokens=0,
                calibration_dense=False, dense_layer_fraction=0.0, backend="torch")
    base.update(kw)
    return CW.make_config(**base)


def _dense_func(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False,
                **kwargs):
    """Stand-in for ComfyUI's chosen attention function (both layouts, additive mask)."""
    if skip_reshape:
        B, H, L, D = q.shape
        Q, K, V = q, k, v
    else:
        B, L, HD = q.shape
        H, D = heads, HD // heads
        Q, K, V = (t.view(B, -1, H, D).transpose(1, 2) for t in (q, k, v))
    m = None
    if mask is not None:
        m = mask
        while m.ndim < 4:
            m = m.unsqueeze(1)
    o = F.scaled_dot_product_attention(Q, K, V, attn_mask=m)
    if skip_output_reshape:
        return o
    return o.transpose(1, 2).reshape(B, -1, H * D)


class _Block:
    def __init__(self, flipped):
        self.flipped_img_txt = flipped


class FakeHunyuanVideo(torch.nn.Module):
    def __init__(self, txt_first: bool, n_double=2, n_single=2):
        super().__init__()
        self.patch_size = [1, 2, 2]
        self.double_blocks = [_Block(not txt_first) for _ in range(n_double)]
        self.single_blocks = [object() for _ in range(n_single)]
        self.txt_in = object()
        self.vector_in = object()
        self.byt5_in = None
        self.vision_in = None
        self.cond_type_embedding = None


class CogVideoXTransformer3DModel(torch.nn.Module):  # name as upstream ComfyUI's class
    def __init__(self, n_blocks=3):
        super().__init__()
        self.patch_size = 2
        self.patch_size_t = None
        self.patch_embed = object()
        self.blocks = [object() for _ in range(n_blocks)]


def _run_for(cfg, rules=None):
    run = P.PatchHolder(cfg, rules, "auto")
    run.override = P.make_override(run)
    run.begin(None)
    return run


def _begin(run, dm, args, to):
    P._begin_forward(run, dm, args, {"transformer_options": to})
    return to


# ----------------------------------------------------------------------------------- Hunyuan orders
@pytest.mark.parametrize("txt_first", [True, False], ids=["txt_img(>=0.14)", "img_txt(0.3.75)"])
def test_hunyuan_text_slice_and_mask_both_orders(monkeypatch, txt_first):
    torch.manual_seed(0)
    B, H, D, n_txt, n_pad = 1, 2, 64, 8, 3
    x = torch.zeros(B, 16, 2, 6, 8)                       # grid 2x3x4 = 24 video tokens
    n_vid = 24
    L = n_vid + n_txt
    t0 = 0 if txt_first else n_vid                        # where the text really is
    dm = FakeHunyuanVideo(txt_first)
    run = _run_for(_cfg())
    ctx = torch.zeros(B, n_txt, 32)
    to = {"sigmas": torch.tensor([0.5]), "cond_or_uncond": [0]}
    _begin(run, dm, (x, None, ctx), to)
    to["block_type"], to["block_index"] = "double", 1
    q, k, v = (torch.randn(B, H, L, D) for _ in range(3))
    mask = torch.zeros(1, 1, L)
    mask[..., t0 + n_txt - n_pad: t0 + n_txt] = -torch.finfo(torch.float32).max   # padded text keys

    seen = {}
    real = P.sparse_attention

    def spy(q_, k_, v_, config=None, state=None, scale=None, always_dense_range=None, key_mask=None, **kw):
        seen["range"] = always_dense_range
        seen["masked"] = torch.nonzero(key_mask.reshape(-1, L)[0] < -1e4).flatten().tolist()
        return real(q_, k_, v_, config=config, state=state, scale=scale, always_dense_range=always_dense_range,
                    key_mask=key_mask, **kw)

    monkeypatch.setattr(P, "sparse_attention", spy)
    out = run.override(_dense_func, q, k, v, H, skip_reshape=True, mask=mask, transformer_options=to)
    assert seen["range"] == (t0, t0 + n_txt)
    assert all(t0 <= i < t0 + n_txt for i in seen["masked"]) and len(seen["masked"]) == n_pad
    ref = _dense_func(q, k, v, H, mask=mask, skip_reshape=True)
    assert out.shape == (B, L, H * D)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)   # top_k >= clusters: exact
    lay = run.run.layouts[("hunyuan", (2, 3, 4), n_txt, txt_first)]
    assert lay["text_slice"] == [t0, t0 + n_txt] and lay["masked_keys_in_text"] == n_pad
    rec = run.run.records[-1]
    assert rec.layer == 1 and rec.sparse is True     # layer = block_index, sparse

    # single blocks are numbered after the double blocks
    to["block_type"], to["block_index"] = "single", 0
    run.override(_dense_func, q, k, v, H, skip_reshape=True, mask=mask, transformer_options=to)
    assert run.run.records[-1].layer == 2

    # negative control: the wrong order puts the padded keys in the "video" slice -> refused (dense)
    run2 = _run_for(_cfg())
    to2 = {"sigmas": torch.tensor([0.5]), "cond_or_uncond": [0]}
    _begin(run2, FakeHunyuanVideo(not txt_first), (x, None, ctx), to2)
    to2["block_type"], to2["block_index"] = "double", 0
    out2 = run2.override(_dense_func, q, k, v, H, skip_reshape=True, mask=mask, transformer_options=to2)
    assert run2.run.records[-1].sparse is False and run2.run.records[-1].reason == "mask-on-video-keys"
    torch.testing.assert_close(out2, ref)


def test_hunyuan_text_refiner_and_token_mismatch_stay_dense():
    dm = FakeHunyuanVideo(False)
    run = _run_for(_cfg())
    to = {"sigmas": torch.tensor([0.5])}
    _begin(run, dm, (torch.zeros(1, 16, 2, 6, 8), None, torch.zeros(1, 8, 32)), to)
    q = torch.randn(1, 2, 8, 64)
    run.override(_dense_func, q, q, q, 2, skip_reshape=True, transformer_options=to)       # refiner: text only
    q2 = torch.randn(1, 2, 24 + 8 + 5, 64)                                                 # + 5 reference tokens
    run.override(_dense_func, q2, q2, q2, 2, skip_reshape=True, transformer_options=to)
    reasons = [r.reason for r in run.run.records]  # no cond_or_uncond -> one record per call
    assert reasons == ["text-only (refiner)", "token-count-mismatch"]


# ----------------------------------------------------------------------------------- CogVideoX
def test_cogvideox_synthetic_call_through_the_override():
    torch.manual_seed(1)
    B, H, D, n_txt = 2, 2, 64, 10
    x = torch.zeros(B, 16, 2, 8, 8)                      # patch 2 (no temporal patch): grid 2x4x4 = 32
    L = n_txt + 32
    dm = CogVideoXTransformer3DModel()
    assert FAM.detect_family(dm) == ("cogvideox", "")
    run = _run_for(_cfg())
    to = {"sigmas": torch.tensor([0.4, 0.4]), "cond_or_uncond": [1, 0]}
    _begin(run, dm, (x, None, torch.zeros(B, n_txt, 4096), None), to)
    outs = []
    for layer in range(3):
        q, k, v = (torch.randn(B, L, H * D) for _ in range(3))
        out = run.override(_dense_func, q, k, v, heads=H, transformer_options=to)
        torch.testing.assert_close(out, _dense_func(q, k, v, H), atol=2e-5, rtol=1e-4)
        outs.append(out)
    recs = run.run.records
    assert [r.layer for r in recs] == [0, 0, 1, 1, 2, 2]           # layers counted per forward
    assert {r.branch for r in recs} == {"c0", "u0"}                  # CFG chunks split per branch
    assert all(r.sparse for r in recs)
    lay = next(iter(run.run.layouts.values()))
    assert lay["text_slice"] == [0, n_txt] and lay["n_vid"] == 32 and lay["txt_first"] is True
    assert set(run.run.states) == {(l, b) for l in range(3) for b in ("c0", "u0")}

    # sparse for real (few clusters selected): density < 1, finite output
    run2 = _run_for(_cfg(top_k=2, k_clusters=8))
    to2 = {"sigmas": torch.tensor([0.4]), "cond_or_uncond": [0]}
    _begin(run2, dm, (x[:1], None, torch.zeros(1, n_txt, 4096), None), to2)
    q, k, v = (torch.randn(1, L, H * D) for _ in range(3))
    out = run2.override(_dense_func, q, k, v, heads=H, transformer_options=to2)
    assert torch.isfinite(out).all()
    P.end_run(run2, None)
    assert run2.last_run["mean_density"] < 1.0


# ----------------------------------------------------------------------------------- chaining / clone
@pytest.mark.per_version
def test_chaining_clone_and_unpatch_with_a_real_model_patcher():
    import comfy.model_patcher

    calls = {"n": 0}

    def counting_override(func, *args, **kwargs):
        calls["n"] += 1
        return func(*args, **kwargs)

    mp = comfy.model_patcher.ModelPatcher(torch.nn.Linear(2, 2), torch.device("cpu"), torch.device("cpu"))
    mp.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = counting_override
    patched = P.patch_model(mp, _cfg(warmup=1.0), None, True, "auto")
    to = patched.model_options["transformer_options"]
    ours = to["optimized_attention_override"]
    run = P.get_run(patched)
    assert ours is run.override and run.previous is counting_override
    assert mp.model_options["transformer_options"]["optimized_attention_override"] is counting_override

    # 0.3.75's clone deep-copies model_options: the holder and override survive unchanged
    clone = patched.clone()
    assert P.get_run(clone) is run
    assert clone.model_options["transformer_options"]["optimized_attention_override"] is ours
    assert copy.deepcopy(run) is run

    # calls the override does not take (no forward context, cross-attn, warmup) reach the previous one
    q = torch.randn(1, 6, 256)
    ours(_dense_func, q, q, q, heads=2, transformer_options={})
    assert calls["n"] == 1
    dm = type("WanModel", (torch.nn.Module,), {})()
    dm.blocks, dm.text_embedding, dm.patch_size = [object(), object()], object(), (1, 2, 2)
    fto = {"sigmas": torch.tensor([1.0]), "optimized_attention_override": ours}
    run.begin(None)
    P._begin_forward(run, dm, (torch.zeros(1, 16, 1, 4, 6), None, torch.zeros(1, 7, 4096)), {"transformer_options": fto})
    ours(_dense_func, q, q, q, heads=2, transformer_options=fto)                       # self, warmup
    ours(_dense_func, q, torch.randn(1, 7, 256), torch.randn(1, 7, 256), heads=2, transformer_options=fto)  # cross
    assert calls["n"] == 3
    P.end_run(run, None)
    assert run.last_run["dense_reasons"] == {"warmup": 1, "cross-attn": 1}
    assert run.run.states == {} and run.run.records == []

    # enabled=False on a patched model removes the patch and restores the previous override
    off = P.patch_model(patched, None, None, False, "auto")
    oto = off.model_options["transformer_options"]
    assert oto["optimized_attention_override"] is counting_override and P.get_run(off) is None
    assert not off.get_wrappers(pe.WrappersMP.DIFFUSION_MODEL, P.WRAPPER_KEY)
    # enabled=False on an unpatched model returns it untouched
    assert P.patch_model(mp, None, None, False, "auto") is mp
    # re-patching a patched model replaces the earlier patch instead of stacking it
    again = P.patch_model(patched, _cfg(), None, True, "auto")
    assert len(again.get_wrappers(pe.WrappersMP.DIFFUSION_MODEL, P.WRAPPER_KEY)) == 1
    assert P.get_run(again).previous is counting_override


def test_layer_rule_validation_names_line_and_field():
    with pytest.raises(ValueError, match=r"line 2: top_k must be in \[1, 8192\]"):
        CW.parse_layer_rules("0: dense\n1: top_k=0")
    with pytest.raises(ValueError, match=r"line 1: unknown field 'topk'"):
        CW.parse_layer_rules("1: topk=3")


# ----------------------------------------------------------------------------------- real tiny Wan
@pytest.mark.per_version
def test_real_wan_forward_with_wrapper_and_chained_override():
    """A real ComfyUI WanModel (3 layers) through the wrapper + override, batched CFG, a chained
    previous override: warmup by sigma, calibration step, then sparse; top_k >= clusters -> dense result."""
    dm = tiny_wan_model(3)
    calls = {"n": 0}

    def prev(func, *args, **kwargs):
        calls["n"] += 1
        return func(*args, **kwargs)

    cfg = CW.make_config(q_clusters=8, k_clusters_init=16, top_k=4096, warmup=0.3, min_tokens=0,
                        dense_layer_fraction=0.0, backend="torch")
    run = P.PatchHolder(cfg, None, "auto", previous_override=prev)
    run.override = P.make_override(run, prev)

    class MS:  # model_sampling stand-in: flow, sigma = 1 - percent
        @staticmethod
        def percent_to_sigma(p):
            return 1.0 - p

    run.begin(type("Patcher", (), {"model": type("M", (), {"model_sampling": MS()})()})())
    wrapper = P._diffusion_model_wrapper_factory(run)
    x, ctx = torch.randn(2, 16, 3, 8, 8), torch.randn(2, 16, 64)

    def fwd(sig, patched):
        to = {"sigmas": torch.tensor([sig, sig]), "cond_or_uncond": [0, 1]}
        if patched:
            to["optimized_attention_override"] = run.override
            to["wrappers"] = {pe.WrappersMP.DIFFUSION_MODEL: {P.WRAPPER_KEY: [wrapper]}}
        with torch.no_grad():
            return dm(x, torch.tensor([sig * 1000] * 2), ctx, transformer_options=to)

    for sig in (1.0, 0.8, 0.6, 0.4):
        torch.testing.assert_close(fwd(sig, True), fwd(sig, False), atol=1e-5, rtol=1e-4)
    P.end_run(run, None)
    s = run.last_run
    # sigma 1.0 and 0.8 > 0.7 -> warmup; 0.6 calibrates; 0.4 sparse
    # (calls are counted per CFG branch: this batched cond+uncond forward counts each call twice)
    assert s["dense_reasons"] == {"warmup": 12, "cross-attn": 24, "calibration": 6}, s["dense_reasons"]
    assert s["sparse_calls"] == 6 and s["adaptive_counts"]
    assert calls["n"] == 6 + 12   # warmup self-attn + cross-attn calls went through the previous override
    assert "AdaCluster: 48 attention calls, 6 sparse" in s["summary"]
    assert s["plan_source"] == "calibration"
    assert s["preset"] == "custom (Thresholds)"   # a connected config replaces the preset: not "auto"
    img = REP.heatmap_image(s)
    assert img.shape[0] == 1 and img.shape[-1] == 3 and min(img.shape[1:3]) >= 150
    assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0

    # a second generation with the same patched model and resolution: the calibrated counts come
    # from the plan cache, so the step that calibrated before now runs sparse (still exact here)
    run.begin(type("Patcher", (), {"model": type("M", (), {"model_sampling": MS()})()})())
    for sig in (1.0, 0.8, 0.6, 0.4):
        torch.testing.assert_close(fwd(sig, True), fwd(sig, False), atol=1e-5, rtol=1e-4)
    P.end_run(run, None)
    s2 = run.last_run
    assert s2["plan_source"] == "cache" and "reused from an earlier run" in s2["summary"]
    assert s2["dense_reasons"] == {"warmup": 12, "cross-attn": 24}, s2["dense_reasons"]
    assert s2["sparse_calls"] == 12 and s2["adaptive_counts"] == s["adaptive_counts"]
    # another resolution is a new plan: it calibrates again
    x = torch.randn(2, 16, 3, 8, 12)
    run.begin(type("Patcher", (), {"model": type("M", (), {"model_sampling": MS()})()})())
    for sig in (0.6, 0.4):
        fwd(sig, True)
    P.end_run(run, None)
    assert run.last_run["plan_source"] == "calibration"
    assert run.last_run["dense_reasons"].get("calibration") == 6


def test_warmup_follows_global_sigma_for_split_samplers():
    """Wan 2.2 A14B: the low-noise model's sampler starts mid-schedule. Warmup is decided on the
    global sigma (model_sampling.percent_to_sigma), so a model that only sees sigma < the warmup
    sigma never warms up, whatever its own step index; the high-noise one warms up first."""
    class MS:
        @staticmethod
        def percent_to_sigma(p):
            return 1.0 - p

    def phases(run, sigmas):
        out = []
        for s in sigmas:
            out.append(run.run.phase_for(s))
            if out[-1] == "calibration":
                run.run.state_for(0, "c0")   # the calibration step reached attention (else it waits)
        return out

    patcher = type("Patcher", (), {"model": type("M", (), {"model_sampling": MS()})()})()
    low = P.PatchHolder(_cfg(warmup=0.3, k_clusters=None, calibration_dense=True), None, "auto")
    low.begin(patcher)
    low.run.resolve_config("wan")
    assert phases(low, (0.5, 0.3, 0.1)) == ["calibration", "sparse", "sparse"]
    high = P.PatchHolder(_cfg(warmup=0.3, k_clusters=None, calibration_dense=True), None, "auto")
    high.begin(patcher)
    high.run.resolve_config("wan")
    assert phases(high, (1.0, 0.85, 0.7, 0.6)) == ["warmup", "warmup", "calibration", "sparse"]


def test_stats_name_the_preset_without_thresholds():
    run = P.PatchHolder(None, None, "fast")
    run.begin(None)
    P.end_run(run, None)
    assert run.last_run["preset"] == "fast"


# ----------------------------------------------------------------------------------- one plan per call
def test_plan_call_decides_once_and_the_sparse_call_executes_its_plan(monkeypatch):
    """plan_call works the layer's config out once per call (no second derivation in _sparse_call), the
    core gets exactly the plan's config and K / V mode, the plan is frozen, and asking for a plan never
    starts a background compile (the caller does, during the warmup)."""
    import dataclasses
    torch.manual_seed(0)
    B, H, D, n_txt = 1, 2, 64, 8
    x = torch.zeros(B, 16, 2, 6, 8)                       # grid 2x3x4 = 24 video tokens
    L = 24 + n_txt
    run = _run_for(_cfg())
    to = _begin(run, FakeHunyuanVideo(True), (x, None, torch.zeros(B, n_txt, 32)),
                {"sigmas": torch.tensor([0.5]), "cond_or_uncond": [0]})
    to["block_type"], to["block_index"] = "double", 0
    lane = to[P.FWD_KEY].run
    assert lane is run.run and lane.holder is run
    derived, plans, cores = [], [], []
    real_cfg, real_plan, real_core = lane.cfg_for_layer, P.plan_call, P.sparse_attention

    def cfg_spy(*a):
        derived.append(a)
        return real_cfg(*a)

    def plan_spy(call, ctx):
        plans.append(real_plan(call, ctx))
        return plans[-1]

    def core_spy(*a, **kw):
        cores.append(kw)
        return real_core(*a, **kw)

    def no_compile(*a, **kw):
        raise AssertionError("plan_call started a compile")

    monkeypatch.setattr(lane, "cfg_for_layer", cfg_spy)
    monkeypatch.setattr(P, "plan_call", plan_spy)
    monkeypatch.setattr(P, "sparse_attention", core_spy)
    monkeypatch.setattr(P.kernel_warmup, "start", no_compile)   # not warm: the caller starts nothing either
    q, k, v = (torch.randn(B, H, L, D) for _ in range(3))
    run.override(_dense_func, q, k, v, H, skip_reshape=True, transformer_options=to)
    (plan,) = plans
    assert plan.reason is None and len(derived) == 1, (plan, derived)
    assert [kw["config"] for kw in cores] == [plan.cfg] and cores[0]["config"] is plan.cfg
    assert [kw["kv_rows"] for kw in cores] == [plan.kv_rows] and plan.kv_rows is not None
    assert lane.records[-1].sparse
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.cfg = None
    # a dense plan: the layer rule, the first check after the warmup; the core is not called
    run2 = _run_for(_cfg(), CW.parse_layer_rules("*: dense"))
    to2 = _begin(run2, FakeHunyuanVideo(True), (x, None, torch.zeros(B, n_txt, 32)),
                 {"sigmas": torch.tensor([0.5]), "cond_or_uncond": [0]})
    to2["block_type"], to2["block_index"] = "double", 0
    run2.override(_dense_func, q, k, v, H, skip_reshape=True, transformer_options=to2)
    assert plans[-1].reason == "layer-rule" and plans[-1].cfg is None and len(cores) == 1
    assert run2.run.records[-1].reason == "layer-rule"
