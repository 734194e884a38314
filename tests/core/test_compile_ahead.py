"""CompileAhead: the background compile run of a sparse call's kernels (CPU: the Triton
interpreter runs the same calls; the point here is that it runs off the caller's thread, finishes,
keeps errors instead of raising them, and leaves the caller's state alone)."""
from __future__ import annotations

import threading

import torch

from adacluster_core import AdaClusterConfig, ClusterState, sparse_attention
from adacluster_core.compile_ahead import CompileAhead, _compile_heads

from .conftest import needs_triton


def test_compile_heads_keep_triton_specialisation_class():
    # never 1 (Triton would specialise on it); divisible by 16 exactly when the model's count is
    assert [_compile_heads(h) for h in (1, 2, 3, 12, 16, 24, 30, 40, 48)] == [2, 2, 2, 2, 16, 2, 2, 2, 16]


@needs_triton
def test_runs_on_a_background_thread_and_finishes():
    cfg = AdaClusterConfig(q_clusters=4, k_clusters_init=8, top_k=4, max_stages=2, stage_iters=1,
                           kmeans_iters_first=2, kmeans_iters_reuse=1, min_tokens=16, max_density=0.5,
                           pooled_tail=True)
    seen = []
    real = torch.randn  # the compile run's random inputs are made on its own thread

    def spy(*a, **kw):
        seen.append(threading.current_thread().name)
        return real(*a, **kw)

    torch.randn = spy
    try:
        ca = CompileAhead(96, heads=3, head_dim=64, dtype=torch.float32, device="cpu", config=cfg,
                          always_dense_range=(88, 96)).start()
        assert ca.wait(300)
    finally:
        torch.randn = real
    assert ca.ready() and ca.error is None, ca.error
    assert seen and set(seen) == {"adacluster-compile-ahead"}
    assert ca.seconds > 0
    # the caller's calls afterwards are unaffected (no shared state)
    q, k, v = (torch.randn(1, 2, 96, 64) for _ in range(3))
    st = ClusterState()
    out, stats = sparse_attention(q, k, v, config=cfg.replace(backend="auto"), state=st)
    assert out.shape == q.shape and torch.isfinite(out).all()


def test_errors_are_kept_not_raised():
    cfg = AdaClusterConfig(min_tokens=16)
    ca = CompileAhead(64, heads=2, head_dim=64, dtype=torch.float32, device="cpu", config=cfg,
                      always_dense_range=(0, 10**6)).start()   # a range no call accepts
    assert ca.wait(60)
    assert ca.ready() and isinstance(ca.error, ValueError)
