"""Low-VRAM weight streaming beside AdaCluster, on the CPU, inside real ComfyUI 0.3.75 sampling
(in-process: comfy.sd loads the tiny Wan, comfy.sample samples it).

`--lowvram` / `--novram` cannot be used on a CPU-only machine (rejected with --cpu, and ComfyUI
needs CUDA without it), and a CPU load device always loads fully. What the flags select on a GPU is
ComfyUI's partial load: layers left off the device get `comfy_cast_weights`, so each call casts its
weights from the offload device and applies LoRA patches on the fly (LowVramPatch). These tests take
that path on the CPU by giving `load_models_gpu` the NO_VRAM state (what --novram sets) and letting
it treat the load device as a GPU; everything else is ComfyUI's own code. The server with the
real flags runs where CUDA exists (test_compat_servers.py).

The patcher keeps per-layer cluster state between calls; it must follow the device each call runs
on (test_state_follows_the_call_device: cpu -> cuda -> cpu, needs CUDA)."""
from __future__ import annotations

import pytest
import torch

from tests.comfy._compat import record
from tests.comfy._helpers import TINY, comfy_inprocess, load_nodes_module
from tests.harness import compat
from tests.harness.make_tiny_dits import make_all

_why = comfy_inprocess()
pytestmark = [pytest.mark.skipif(_why is not None, reason=str(_why)), pytest.mark.per_version]
if _why is None:
    P = load_nodes_module("patcher")
    CW = load_nodes_module("config_widgets")

ATOL = 2e-6   # as tests/comfy/_compat.py


def _cfg(**kw):
    return CW.make_config(**{**TINY, "k_clusters": None, **kw})


@pytest.fixture(scope="module")
def lora_wan(tmp_path_factory):
    import comfy.sd
    import comfy.utils
    d = tmp_path_factory.mktemp("lowvram")
    path = make_all(d, only=["wan21"])["wan21"]
    compat.make_wan_lora(d / "lora.safetensors", path)
    base = comfy.sd.load_diffusion_model(path)
    lora = comfy.utils.load_torch_file(str(d / "lora.safetensors"))
    return comfy.sd.load_lora_for_models(base, None, lora, 1.0, 0)[0]


def _sample(model, steps=3):
    import comfy.sample
    cond = [[torch.zeros(1, 16, 4096), {"pooled_output": None}]]
    lat = torch.zeros(1, 16, 3, 8, 8)
    noise = comfy.sample.prepare_noise(lat, 1)
    return comfy.sample.sample(model, noise, steps, 2.0, "euler", "simple", cond, cond, lat, seed=1,
                               disable_pbar=True)


@pytest.fixture
def streamed(monkeypatch):
    """Run a callable with ComfyUI loading models the --novram way (weights streamed per layer)."""
    import comfy.model_management as mm

    def run(fn):
        mm.unload_all_models()
        with monkeypatch.context() as m:
            m.setattr(mm, "vram_state", mm.VRAMState.NO_VRAM)
            m.setattr(mm, "is_device_cpu", lambda dev: False)
            try:
                return fn()
            finally:
                mm.unload_all_models()
    return run


def _is_streamed(model) -> bool:
    q = model.model.diffusion_model.blocks[0].self_attn.q
    return bool(getattr(q, "comfy_cast_weights", False)) and model.lowvram_patch_counter() > 0


def test_streamed_weights_with_lora(lora_wan, streamed):
    """Weights streamed + LoRA patched per call: AdaCluster goes sparse, and with every cluster
    selected equals the streamed LoRA model without AdaCluster."""
    seen = {}

    def ref():
        out = _sample(lora_wan)
        seen["ref"] = _is_streamed(lora_wan)
        return out

    ref_out = streamed(ref)
    assert seen["ref"], "ComfyUI did not stream the weights (no comfy_cast_weights / lowvram patches)"
    full = _sample(lora_wan)   # loaded fully, LoRA merged into the weights
    assert (full - ref_out).abs().max().item() <= ATOL * max(1.0, full.abs().max().item())

    allk = P.patch_model(lora_wan, _cfg(top_k=4096))
    allk_out = streamed(lambda: _sample(allk))
    s = P.run_stats(allk)
    assert s["sparse_calls"] > 0, s["summary"]
    err = (allk_out - ref_out).abs().max().item()
    assert err <= ATOL * max(1.0, ref_out.abs().max().item()), err

    sparse = P.patch_model(lora_wan, _cfg())
    sp_out = streamed(lambda: (_sample(sparse), _is_streamed(sparse), sparse.lowvram_patch_counter()))
    assert sp_out[1], "the patched clone was not streamed"
    s = P.run_stats(sparse)
    assert torch.isfinite(sp_out[0]).all()
    assert s["sparse_calls"] > 0 and s["mean_density"] < 1.0, s["summary"]
    record("lowvram_streamed_inprocess", max_abs_diff_all_clusters=err, sparse_calls=s["sparse_calls"],
           mean_density=s["mean_density"], lowvram_patches=sp_out[2])


# ------------------------------------------------------------------------------------------ device
def _wan_forward_context(run, x, ctx, sigma=0.5):
    dm = type("WanModel", (torch.nn.Module,), {})()
    dm.patch_size, dm.text_embedding, dm.blocks = (1, 2, 2), object(), [object(), object()]
    to = {"sigmas": torch.tensor([sigma]), "cond_or_uncond": [0]}
    P._begin_forward(run, dm, (x, None, ctx), {"transformer_options": to})
    return to


def _dense(q, k, v, heads, **kw):
    B, L, HD = q.shape
    D = HD // heads
    Q, K, V = (t.view(B, -1, heads, D).transpose(1, 2) for t in (q, k, v))
    return torch.nn.functional.scaled_dot_product_attention(Q, K, V).transpose(1, 2).reshape(B, L, HD)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device to move the call to "
                    "(a CPU-only torch has one device); on the CPU the streamed path above keeps the call's device")
def test_state_follows_the_call_device():
    """One layer called on cpu, then cuda, then cpu (weights streamed / offloaded between calls):
    its cached centroids follow each call, and every call equals dense on its own device."""
    torch.manual_seed(0)
    run = P.PatchHolder(_cfg(top_k=4096, calibration_dense=False, k_clusters=8), None, "auto")
    run.override = P.make_override(run)
    run.begin(None)
    x = torch.zeros(1, 16, 3, 8, 8)
    H, L = 2, 48
    q, k, v = (torch.randn(1, L, H * 128) for _ in range(3))
    for i, dev in enumerate(["cpu", "cuda", "cpu"]):
        to = _wan_forward_context(run, x.to(dev), torch.zeros(1, 16, 4096, device=dev), sigma=0.9 - 0.1 * i)
        to["block_index"] = 0
        out = run.override(_dense, q.to(dev), k.to(dev), v.to(dev), H, transformer_options=to)
        st = run.run.states[(0, "c0")]
        assert st.q_centroids is not None and st.q_centroids.device.type == dev
        assert st.k_centroids.device.type == dev
        assert out.device.type == dev
        ref = _dense(q.to(dev), k.to(dev), v.to(dev), H)
        assert (out - ref).abs().max().item() < 1e-4
    assert sum(1 for r in run.run.records if r.sparse) == 3, run.run.records
