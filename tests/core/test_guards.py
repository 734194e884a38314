"""Untrusted input at the core API (issue 13): the one rule for odd inputs (malformed -> ValueError
naming the argument), NaN / Inf -> exactly dense, auto without Triton -> dense, interrupt checks
between k-means iterations, and the bounds table every config field has."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings, strategies as st_

from adacluster_core import AdaClusterConfig, ClusterState, sparse_attention
from adacluster_core import api, config as C

from .conftest import BACKENDS, HAVE_TRITON, TRITON_OK, qkv_clustered


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


# ---- odd tensors (issue 24): empty dims, non-finite masks, every key masked, overflow ---------------
def _sdpa(q, k, v, key_mask=None):
    m = None
    if key_mask is not None:
        m = key_mask if key_mask.dim() == 4 else key_mask.view(key_mask.shape[0], 1, 1, -1)
        m = m if m.dtype == torch.bool else m.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=m)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(0, 2, 40, 64), (1, 0, 40, 64), (0, 0, 40, 64), (1, 2, 0, 64)],
                         ids=["B0", "H0", "B0H0", "N0"])
def test_empty_dims_give_dense_result(backend, shape):
    q, k, v = (torch.randn(shape) for _ in range(3))
    out, st = sparse_attention(q, k, v, cfg(backend), ClusterState(),
                               key_mask=torch.zeros(max(shape[0], 1), shape[2]))
    assert st["dense"] and st["reason"] == "empty input (B, H or N is 0)"
    assert out.shape == q.shape and torch.equal(out, _sdpa(q, k, v))


def test_zero_head_dim_is_a_value_error():
    q = torch.randn(1, 2, 40, 0)
    with pytest.raises(ValueError, match=r"^q must have head_dim > 0"):
        sparse_attention(q, q.clone(), q.clone(), cfg())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ["all_nan", "one_nan", "pos_inf"])
def test_non_finite_mask_gives_dense_output(backend, case):
    q, k, v = qkv_clustered(1, 2, 96, 64, seed=9)
    m = torch.zeros(1, 96)
    if case == "all_nan":
        m.fill_(float("nan"))
    elif case == "one_nan":
        m[0, 5] = float("nan")
    else:
        m[0, 7] = float("inf")
    st = ClusterState()
    out, stats = sparse_attention(q, k, v, cfg(backend, top_k=2), st, key_mask=m)
    assert stats["dense"] and stats["reason"] == "non-finite input"
    torch.testing.assert_close(out, _sdpa(q, k, v, m), rtol=0, atol=0, equal_nan=True)
    assert not torch.isfinite(out).all()          # what dense gives: NaN, not a finite made-up answer
    assert st.calls == 0 and st.q_centroids is None
    # -inf is "masked", not "non-finite": such a mask stays sparse
    m2 = torch.zeros(1, 96)
    m2[0, :10] = float("-inf")
    out2, s2 = sparse_attention(q, k, v, cfg(backend, top_k=2), key_mask=m2)
    assert not s2["dense"] and torch.isfinite(out2).all()


def _all_masked(kind, B=2, N=96):
    if kind == "bool":
        m = torch.ones(B, N, dtype=torch.bool)
        m[0] = False                               # batch 0: every key masked; batch 1: none
    else:
        val = {"neg_inf": float("-inf"), "finfo_min": torch.finfo(torch.float32).min}[kind]
        m = torch.zeros(B, N)
        m[0] = val
    return m


@pytest.mark.parametrize("kind", ["bool", "neg_inf", "finfo_min"])
def test_every_key_masked_same_result_on_every_path(kind):
    """A row whose every key is masked: the sparse paths (torch, Triton), the core's dense fallbacks
    (short sequence, a dense state) and torch SDPA (what ComfyUI's attention runs) all agree."""
    q, k, v = (torch.cat([t, t * 0.5]) for t in qkv_clustered(1, 2, 96, 64, seed=2))
    m = _all_masked(kind)
    want = _sdpa(q, k, v, m)
    outs = {}
    for backend in ["torch"] + (["triton"] if TRITON_OK else []):
        o, s = sparse_attention(q, k, v, cfg(backend, top_k=2), ClusterState(), key_mask=m)
        assert s["dense"] and s["reason"] == "every key masked", s["reason"]
        outs[backend] = o
    outs["short"] = sparse_attention(q, k, v, cfg(min_tokens=1000), key_mask=m)[0]
    outs["state_dense"] = sparse_attention(q, k, v, cfg(), ClusterState(dense=True, dense_reason="x"), key_mask=m)[0]
    for name, o in outs.items():
        torch.testing.assert_close(o, want, rtol=0, atol=0, equal_nan=True, msg=name)
    # the batch with valid keys is not all-masked on its own: it runs sparse
    _o1, s1 = sparse_attention(q[1:], k[1:], v[1:], cfg(top_k=2), key_mask=m[1:])
    assert not s1["dense"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ["qk_1e19", "k_1e19", "v_huge", "bf16_huge"])
def test_overflow_runs_dense_with_a_reason(backend, case):
    q, k, v = qkv_clustered(1, 2, 96, 64, seed=5)
    if case == "qk_1e19":
        q, k = q * 1e19, k * 1e19                   # dense: inf scores -> NaN; sparse was finite but wrong
    elif case == "k_1e19":
        k = k * 1e19
    elif case == "v_huge":
        v = v * 1e37
    else:
        q, k, v = (t.bfloat16() * 1e30 for t in (q, k, v))
    st = ClusterState()
    out, stats = sparse_attention(q, k, v, cfg(backend, top_k=2), st)
    assert stats["dense"] and stats["reason"] == "overflow (float32 range)", stats["reason"]
    torch.testing.assert_close(out, _sdpa(q, k, v), rtol=0, atol=0, equal_nan=True)
    assert st.calls == 0 and st.q_centroids is None
    # ordinary magnitudes (fp16 range) stay sparse
    q2, k2, v2 = (t * 300 for t in qkv_clustered(1, 2, 96, 64, seed=5))
    assert not sparse_attention(q2, k2, v2, cfg(backend, top_k=2))[1]["dense"]


def test_non_finite_sparse_output_runs_dense(monkeypatch):
    q, k, v = qkv_clustered(1, 2, 96, 64, seed=6)
    real = api._sparse

    def poisoned(*a, **kw):
        out, st = real(*a, **kw)
        out = out.clone()
        out[0, 0, 3, 1] = float("inf")
        return out, st

    monkeypatch.setattr(api, "_sparse", poisoned)
    s = ClusterState()
    out, stats = sparse_attention(q, k, v, cfg(top_k=2), s)
    assert stats["dense"] and stats["reason"] == "overflow (float32 range)"
    torch.testing.assert_close(out, _sdpa(q, k, v), rtol=0, atol=0)
    assert s.calls == 0


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(B=st_.sampled_from([0, 1, 2]), H=st_.sampled_from([0, 1, 2]), N=st_.sampled_from([0, 1, 5, 48]),
       dtype=st_.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
       poison=st_.sampled_from(["none", "q_nan", "k_inf", "v_nan", "mask_nan", "mask_inf", "all_masked",
                                "some_masked", "huge", "tiny"]),
       masked_dtype=st_.sampled_from(["float", "bool"]))
def test_fuzz_odd_tensors(B, H, N, dtype, poison, masked_dtype):
    """Any shape (zeros included), dtype, poisoned value or mask: ValueError never (well-formed), no
    exception of another kind; the result is dense's exactly when the call runs dense for a reason
    that promises it, finite whenever the inputs are ordinary."""
    g = torch.Generator().manual_seed(B * 100 + H * 10 + N)
    q, k, v = (torch.randn(B, H, N, 64, generator=g).to(dtype) for _ in range(3))
    mask = torch.zeros(max(B, 1), N)
    if poison in ("q_nan", "k_inf", "v_nan") and q.numel():
        {"q_nan": q, "k_inf": k, "v_nan": v}[poison].view(-1)[0] = float("nan") if "nan" in poison else float("inf")
    elif poison == "mask_nan" and N:
        mask[0, 0] = float("nan")
    elif poison == "mask_inf" and N:
        mask[0, -1] = float("inf")
    elif poison == "all_masked":
        mask[:] = float("-inf")
    elif poison == "some_masked" and N:
        mask[:, : N // 2] = float("-inf")
    elif poison == "huge":
        q, k = q * (1e19 if dtype == torch.float32 else 1e30 if dtype == torch.bfloat16 else 1), k * 1e4
    elif poison == "tiny":
        q, k, v = q * 1e-30, k * 1e-30, v * 1e-30
    if masked_dtype == "bool" and not poison.startswith("mask_"):
        mask = mask == 0
    out, stats = sparse_attention(q, k, v, cfg(min_tokens=0, q_clusters=4, k_clusters=6, top_k=3),
                                  ClusterState(), key_mask=mask)
    assert out.shape == q.shape and out.dtype == q.dtype
    want = _sdpa(q, k, v, mask)
    if stats["dense"]:
        torch.testing.assert_close(out, want, rtol=0, atol=0, equal_nan=True)
    if poison in ("none", "tiny", "some_masked") and N and B and H:
        assert torch.isfinite(out.float()).all(), stats["reason"]
    if poison in ("q_nan", "k_inf", "v_nan", "mask_nan", "mask_inf") and q.numel():
        assert stats["reason"] == "non-finite input"
    if poison == "all_masked" and q.numel():
        assert stats["reason"] == "every key masked"
