"""Triton compilation behind the dense warmup (nodes/kernel_warmup.py) with a real ComfyUI WanModel:
the first warmup call starts one background compile run (adacluster_core.compile_ahead) for this
kind of call; until it finishes, calls that would go sparse run dense with the reason
"kernels compiling" (never waiting for the compiler, outputs exact); afterwards they go sparse, and
a second run of the same patched model starts no new compile. On the CPU the check "does Triton
compile here" is False (the interpreter compiles nothing), so the test opens that seam and holds
the background run on an event to see both sides of it."""
from __future__ import annotations

import threading

import pytest
import torch

from tests.comfy._helpers import comfy_inprocess, load_nodes_module, tiny_wan_model

_why = comfy_inprocess()
pytestmark = pytest.mark.skipif(_why is not None, reason=str(_why))
if _why is None:
    P = load_nodes_module("patcher")
    CW = load_nodes_module("config_widgets")
    KW = load_nodes_module("kernel_warmup")
    import comfy.patcher_extension as pe


class _MS:  # flow model sampling: sigma = 1 - percent
    @staticmethod
    def percent_to_sigma(p):
        return 1.0 - p


def _patcher():
    return type("Patcher", (), {"model": type("M", (), {"model_sampling": _MS()})()})()


def _patched_tiny_wan():
    """A real 2-layer WanModel, an AdaClusterRun on it, and fwd(sigma, patched) -> output."""
    dm = tiny_wan_model(2)
    cfg = CW.make_config(q_clusters=8, k_clusters=16, top_k=4096, warmup=0.3, min_tokens=0,
                        calibration_dense=False, dense_layer_fraction=0.0, backend="torch")
    run = P.PatchHolder(cfg, None, "auto")
    run.override = P.make_override(run)
    wrapper = P._diffusion_model_wrapper_factory(run)
    x, ctx = torch.randn(1, 16, 3, 8, 8), torch.randn(1, 16, 64)

    def fwd(sig, patched):
        to = {"sigmas": torch.tensor([sig]), "cond_or_uncond": [0]}
        if patched:
            to["optimized_attention_override"] = run.override
            to["wrappers"] = {pe.WrappersMP.DIFFUSION_MODEL: {P.WRAPPER_KEY: [wrapper]}}
        with torch.no_grad():
            return dm(x, torch.tensor([sig * 1000]), ctx, transformer_options=to)
    return run, fwd


def test_sparse_calls_wait_for_the_background_compile_densely(monkeypatch):
    gate = threading.Event()
    started = []

    class HeldCompile(KW.CompileAhead):   # the real compile run, held until the test lets it go
        def _sparse_calls(self):
            started.append(threading.current_thread().name)
            assert gate.wait(120)
            super()._sparse_calls()

    monkeypatch.setattr(KW, "CompileAhead", HeldCompile)
    monkeypatch.setattr(KW, "_compiles_here", lambda run, call: True)
    run, fwd = _patched_tiny_wan()
    run.begin(_patcher())
    for sig in (1.0, 0.8, 0.6, 0.4):   # 1.0, 0.8: warmup; 0.6, 0.4: would be sparse
        torch.testing.assert_close(fwd(sig, True), fwd(sig, False), atol=1e-5, rtol=1e-4)
    P.end_run(run, None)
    s = run.last_run
    assert started == ["adacluster-compile-ahead"] and len(run.compiles) == 1
    assert s["dense_reasons"].get("kernels compiling") == 4, s["dense_reasons"]   # 2 steps x 2 layers
    assert s["sparse_calls"] == 0

    gate.set()
    (ca,) = run.compiles.values()
    assert ca.wait(300) and ca.error is None, ca.error
    run.begin(_patcher())
    for sig in (1.0, 0.8, 0.6, 0.4):
        torch.testing.assert_close(fwd(sig, True), fwd(sig, False), atol=1e-5, rtol=1e-4)
    P.end_run(run, None)
    s2 = run.last_run
    assert "kernels compiling" not in s2["dense_reasons"] and s2["sparse_calls"] == 4
    assert len(run.compiles) == 1 and started == ["adacluster-compile-ahead"]   # no second compile run


def test_no_background_compile_where_nothing_compiles():
    """The CPU (interpreter or torch backend): no thread, no 'kernels compiling' calls."""
    run, fwd = _patched_tiny_wan()
    run.begin(_patcher())
    for sig in (1.0, 0.4):
        fwd(sig, True)
    P.end_run(run, None)
    assert run.compiles == {} and run.last_run["sparse_calls"] == 2
