"""The patcher with untrusted numbers (issue 13), ComfyUI 0.3.75 imported in-process (CPU):
NaN / Inf attention inputs run through ComfyUI's dense attention (exactly its output, reason
"non-finite input"), ComfyUI's interrupt stops a sparse call from inside k-means, a bad scale runs
dense, and Stats names the kernel that ran."""
from __future__ import annotations

import pytest
import torch

from tests.comfy._helpers import comfy_inprocess, load_nodes_module
from tests.core.conftest import BACKENDS

_why = comfy_inprocess()
pytestmark = pytest.mark.skipif(_why is not None, reason=str(_why))
if _why is None:
    P = load_nodes_module("patcher")
    REP = load_nodes_module("report")
    import comfy.model_management as mm

    from tests.comfy.test_patcher_inprocess import FakeHunyuanVideo, _begin, _cfg, _dense_func, _run_for

B, H, D, N_TXT = 2, 2, 64, 8
N_VID = 24                     # grid 2x3x4
L = N_VID + N_TXT


def _call(run, q, k, v, dm, **kw):
    x = torch.zeros(1, 16, 2, 6, 8)
    to = {"sigmas": torch.tensor([0.5]), "cond_or_uncond": [1, 0]}     # batched uncond + cond
    _begin(run, dm, (x, None, torch.zeros(1, N_TXT, 32)), to)
    to["block_type"], to["block_index"] = "double", 0
    return run.override(_dense_func, q, k, v, H, skip_reshape=True, transformer_options=to, **kw)


def _qkv(seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, H, L, D, generator=g) for _ in range(3))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("where", ["q", "k_inf", "v"])
@pytest.mark.parametrize("top_k", [64, 2], ids=["all_clusters", "sparse"])
def test_non_finite_call_is_comfys_dense_output(backend, where, top_k):
    dm = FakeHunyuanVideo(txt_first=False)
    run = _run_for(_cfg(backend=backend, top_k=top_k))
    q, k, v = _qkv()
    _call(run, q, k, v, dm)                             # a clean sparse call first (warm states)
    assert [r.sparse for r in run.run.records] == [True, True]
    states = {key: (s.q_centroids, s.k_centroids, s.calls) for key, s in run.run.states.items()}
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    if where == "q":
        q2[1, 0, 5, 7] = float("nan")                   # the cond branch (batch row 1) only
    elif where == "k_inf":
        k2[1, 1, 9, 0] = float("inf")
    else:
        v2[0, 0, 3, 1] = float("nan")                   # the uncond branch (batch row 0)
    poisoned = (0, "c0") if where != "v" else (0, "u0")
    out = _call(run, q2, k2, v2, dm)
    ref = _dense_func(q2, k2, v2, H, skip_reshape=True)
    torch.testing.assert_close(out, ref, rtol=0, atol=0, equal_nan=True)
    assert torch.isfinite(ref).any() and not torch.isfinite(ref).all()
    new = run.run.records[2:]
    assert [(r.sparse, r.reason) for r in new] == [(False, "non-finite input")] * 2    # one record per CFG branch
    assert set(run.run.states) == {(0, "u0"), (0, "c0")}
    for key, s in run.run.states.items():                   # nothing learnt from NaN / Inf
        assert torch.isfinite(s.q_centroids).all() and torch.isfinite(s.k_centroids).all()
        if key == poisoned:
            assert s.q_centroids is states[key][0] and s.k_centroids is states[key][1] and s.calls == states[key][2]
    out = _call(run, q, k, v, dm)                       # and the next clean call is sparse again
    assert [r.sparse for r in run.run.records[4:]] == [True, True] and torch.isfinite(out).all()
    s = P.run_summary.summarize(run.run, run)
    assert s["dense_reasons"] == {"non-finite input": 2}
    assert s["kernels"] == {("triton" if backend == "triton" else "reference"): 4}
    kernel_lines = [ln for ln in REP.format_stats(s).splitlines() if "kernel" in ln]   # one line names the kernel
    name = "Triton" if backend == "triton" else "torch reference (correct, not faster than dense)"
    assert len(kernel_lines) == 1 and kernel_lines[0].startswith(f"kernel: {name} 4"), kernel_lines


def test_interrupt_stops_inside_the_sparse_call():
    dm = FakeHunyuanVideo(txt_first=False)
    run = _run_for(_cfg(kmeans_iters_first=100, kmeans_iters_reuse=100))
    q, k, v = _qkv()
    seen = []
    real = mm.throw_exception_if_processing_interrupted

    def check():   # ComfyUI's own check, after the first k-means iteration /interrupt arrives
        seen.append(1)
        if len(seen) == 2:
            mm.interrupt_current_processing(True)
        real()

    P._INTERRUPT_CHECK, saved = check, P._INTERRUPT_CHECK
    try:
        with pytest.raises(mm.InterruptProcessingException):
            _call(run, q, k, v, dm)
    finally:
        P._INTERRUPT_CHECK = saved
        mm.interrupt_current_processing(False)
    assert len(seen) == 2                                # not 200+: stopped between iterations
    assert saved is real                                 # the patcher supplies ComfyUI's check


def test_bad_scale_runs_dense():
    dm = FakeHunyuanVideo(txt_first=False)
    run = _run_for(_cfg())
    q, k, v = _qkv()
    for scale in (-0.125, 0.0, float("nan")):
        out = _call(run, q, k, v, dm, scale=scale)
        torch.testing.assert_close(out, _dense_func(q, k, v, H, skip_reshape=True, scale=scale), rtol=0, atol=0,
                                   equal_nan=True)
    assert {r.reason for r in run.run.records} == {"scale"}


def test_auto_without_triton_is_comfys_attention(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    dm = FakeHunyuanVideo(txt_first=False)
    run = _run_for(_cfg(backend="auto"))
    q, k, v = _qkv()
    out = _call(run, q, k, v, dm)
    assert torch.equal(out, _dense_func(q, k, v, H, skip_reshape=True))
    s = P.run_summary.summarize(run.run, run)
    assert s["dense_reasons"] == {"dense: no triton": 2} and s["kernels"] == {"dense: no triton": 2}
    assert [ln for ln in REP.format_stats(s).splitlines() if "kernel" in ln] == ["kernel: dense: no triton 2"]
