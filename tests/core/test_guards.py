"""Untrusted input at the core API (issue 13): the one rule for odd inputs (malformed -> ValueError
naming the argument), NaN / Inf -> exactly dense, auto without Triton -> dense, interrupt checks
between k-means iterations, and the bounds table every config field has."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from adacluster_core import AdaClusterConfig, ClusterState, sparse_attention
from adacluster_core import api, config as C

from .conftest import BACKENDS, HAVE_TRITON, qkv_clustered


def cfg(backend="torch", **kw):
    base = dict(min_tokens=0, q_clusters=6, k_clusters=10, top_k=10, kmeans_iters_first=2,
                kmeans_iters_reuse=1, backend=backend, max_density=1.0)
    base.update(kw)
    return AdaClusterConfig(**base)


# ---- malformed arguments: ValueError naming the argument -----------------------------------------
B, H, N, D = 1, 2, 40, 64


def _qkv():
    return qkv_clustered(B, H, N, D, seed=3)


@pytest.mark.parametrize("case,arg", [
    ("k_dtype", "k"), ("v_dtype", "v"), ("int_q", "q"), ("int_all", "q"), ("v_head_dim", "v"),
    ("k_head_dim", "k"), ("k_heads", "k"), ("q_3d", "q"), ("key_mask_len", "key_mask"),
    ("key_mask_batch", "key_mask"), ("key_mask_int", "key_mask"), ("range_low", "always_dense_range"),
    ("range_reversed", "always_dense_range"), ("range_type", "always_dense_range"),
    ("range_len", "always_dense_range"), ("prefix", "always_dense_prefix"), ("scale_neg", "scale"),
    ("scale_zero", "scale"), ("scale_nan", "scale"), ("scale_inf", "scale"), ("scale_str", "scale"),
])
def test_malformed_argument_raises_value_error_naming_it(case, arg):
    q, k, v = _qkv()
    kw = {}
    if case == "k_dtype":
        k = k.half()
    elif case == "v_dtype":
        v = v.bfloat16()
    elif case == "int_q":
        q = q.to(torch.int32)
    elif case == "int_all":
        q, k, v = (t.to(torch.int64) for t in (q, k, v))
    elif case == "v_head_dim":
        v = v[..., :32]
    elif case == "k_head_dim":
        k = k[..., :32]
    elif case == "k_heads":
        k = k[:, :1]
    elif case == "q_3d":
        q = q[0]
    elif case == "key_mask_len":
        kw["key_mask"] = torch.zeros(B, N - 1)
    elif case == "key_mask_batch":
        kw["key_mask"] = torch.zeros(3, 1, N)
    elif case == "key_mask_int":
        kw["key_mask"] = torch.zeros(B, N, dtype=torch.int64)
    elif case == "range_low":
        kw["always_dense_range"] = (-N - 1, None)
    elif case == "range_reversed":
        kw["always_dense_range"] = (20, 10)
    elif case == "range_type":
        kw["always_dense_range"] = ("a", 3)
    elif case == "range_len":
        kw["always_dense_range"] = (1, 2, 3)
    elif case == "prefix":
        kw["always_dense_prefix"] = N + 1
    elif case.startswith("scale"):
        kw["scale"] = {"scale_neg": -0.1, "scale_zero": 0.0, "scale_nan": float("nan"), "scale_inf": float("inf"),
                       "scale_str": "0.1"}[case]
    with pytest.raises(ValueError, match=rf"^{arg}\b"):
        sparse_attention(q, k, v, cfg(), **kw)


def test_slice_like_range_and_well_formed_unsupported_calls():
    q, k, v = _qkv()
    a, sa = sparse_attention(q, k, v, cfg(), always_dense_range=(-10, None))
    b, sb = sparse_attention(q, k, v, cfg(), always_dense_range=(N - 10, N))
    assert not sa["dense"] and torch.equal(a, b)
    # well-formed but not covered by the sparse path: dense, with a reason, never an exception
    for kw, why in ((dict(key_mask=torch.zeros(B, 1, N, N)), "query-dependent"),):
        out, st = sparse_attention(q, k, v, cfg(), **kw)
        assert st["dense"] and why in st["reason"]


# ---- NaN / Inf: exactly what dense attention gives -----------------------------------------------
def _poison(q, k, v, case):
    q, k, v = q.clone(), k.clone(), v.clone()
    if case == "q_nan":
        q[0, 1, 7, 3] = float("nan")
    elif case == "k_inf":
        k[0, 0, 11, 0] = float("inf")
    elif case == "k_neg_inf":
        k[0, 1, 5, 2] = float("-inf")
    elif case == "v_nan":
        v[0, 0, 30, 9] = float("nan")
    elif case == "q_inf_fp16_overflow":
        q = (q * 2e4).half().float() / 2e4  # an fp16 overflow: +-inf in a few rows
    return q, k, v


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ["q_nan", "k_inf", "k_neg_inf", "v_nan", "q_inf_fp16_overflow"])
@pytest.mark.parametrize("top_k", [10, 2], ids=["all_clusters", "sparse"])
def test_non_finite_input_gives_dense_output(backend, case, top_k):
    q, k, v = _poison(*qkv_clustered(1, 2, 96, 64, seed=9), case)
    assert not (torch.isfinite(q).all() and torch.isfinite(k).all() and torch.isfinite(v).all())
    st = ClusterState()
    c = cfg(backend, top_k=top_k)
    clean = qkv_clustered(1, 2, 96, 64, seed=9)
    sparse_attention(*clean, c, st)                 # a warm state ...
    before = dataclasses.replace(st)
    out, stats = sparse_attention(q, k, v, c, st, always_dense_range=(80, 96))
    ref = F.scaled_dot_product_attention(q, k, v)
    assert stats["dense"] and stats["reason"] == "non-finite input"
    torch.testing.assert_close(out, ref, rtol=0, atol=0, equal_nan=True)
    assert torch.isfinite(ref).any()                # dense is not all-NaN: the comparison has content
    # ... that nothing was learnt from: same centroids, same call count
    assert st.q_centroids is before.q_centroids and st.k_centroids is before.k_centroids
    assert st.calls == before.calls


def test_finite_check_can_be_skipped():
    q, k, v = _poison(*qkv_clustered(1, 2, 96, 64, seed=9), "q_nan")
    _, stats = sparse_attention(q, k, v, cfg(), check_finite=False)
    assert not stats["dense"]


# ---- auto without Triton = dense -------------------------------------------------------------------
def test_auto_without_triton_runs_dense(monkeypatch):
    q, k, v = _qkv()
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cpu = torch.device("cpu")
    assert api.resolve_backend("auto", cpu) == "dense" and api.resolve_backend("triton", cpu) == "dense"
    assert api.resolve_backend("torch", cpu) == "torch"
    for b in ("auto", "triton"):
        out, st = sparse_attention(q, k, v, cfg(b))
        assert st["dense"] and st["reason"] == "dense: no triton" and st["attention"] == "sdpa"
        torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), rtol=0, atol=0)
    out, st = sparse_attention(q, k, v, cfg("torch"))
    assert not st["dense"] and st["attention"] == "reference"


@pytest.mark.skipif(not HAVE_TRITON, reason="needs the triton package")
def test_interpreter_counts_as_triton(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert api.resolve_backend("auto", torch.device("cpu")) == "triton"


# ---- interrupt ------------------------------------------------------------------------------------
class Stop(Exception):
    pass


@pytest.mark.parametrize("adaptive", [False, True], ids=["kmeans", "multi_stage"])
def test_interrupt_check_runs_per_iteration_and_propagates(monkeypatch, adaptive):
    monkeypatch.delenv("ADACLUSTER_STRICT", raising=False)   # the dense fallback is on: it must not eat it
    q, k, v = qkv_clustered(1, 2, 200, 64, seed=4)
    c = cfg(kmeans_iters_first=20, k_clusters=None if adaptive else 10, k_clusters_init=16, stage_iters=5,
            calibration_dense=False)
    calls = []
    out, st = sparse_attention(q, k, v, c, interrupt_check=lambda: calls.append(1))
    # q: 20 iterations; k: 20 cold, or (adaptive) >= 5 per multi-stage round + the finishing ones
    assert not st["dense"] and len(calls) >= (25 if adaptive else 40), len(calls)

    n = []

    def stop_at_5():
        n.append(1)
        if len(n) == 5:
            raise Stop("interrupted")

    with pytest.raises(Stop, match="interrupted"):
        sparse_attention(q, k, v, c, ClusterState(), interrupt_check=stop_at_5)
    assert len(n) == 5                                    # stopped at once, not at the end of the call


# ---- the bounds table ------------------------------------------------------------------------------
def test_every_field_has_bounds_and_upper_bounds_are_enforced():
    fields = [f.name for f in dataclasses.fields(AdaClusterConfig)]
    assert list(C.FIELD_SPECS) == fields
    for name, spec in C.FIELD_SPECS.items():
        if spec.kind in ("int", "float"):
            assert spec.lo <= spec.hi < float("inf"), name
            too_big = int(spec.hi) + 1 if spec.kind == "int" else spec.hi * 1.01 + 1e-9
            with pytest.raises(ValueError, match=rf"^{name} must be in"):
                AdaClusterConfig(**{name: too_big})
            too_small = int(spec.lo) - 1 if spec.kind == "int" else spec.lo - 1e-6
            with pytest.raises(ValueError, match=rf"^{name} must be in"):
                AdaClusterConfig(**{name: too_small})
            AdaClusterConfig(**{name: type(getattr(AdaClusterConfig(), name) or spec.lo)(spec.hi)})  # hi is allowed
    for name in ("kmeans_iters_first", "stage_iters", "max_stages", "q_clusters", "top_k", "k_clusters_init"):
        with pytest.raises(ValueError, match=name):
            AdaClusterConfig(**{name: 10**9})
    with pytest.raises(ValueError, match="tau_scale"):
        AdaClusterConfig(tau_scale=1e-300)
    assert C.widget_defaults() == AdaClusterConfig.for_model("wan", "balanced").to_dict()
    for preset in C.PRESETS:            # every preset lies inside the table
        for m in C.MODELS:
            AdaClusterConfig.for_model(m, preset)
