"""Pooled tail (config `pooled_tail`): virtual centroid keys for the unselected key clusters.

CPU; the Triton parts need TRITON_INTERPRET=1 (skipped otherwise)."""
from __future__ import annotations

import pytest
import torch

from adacluster_core import AdaClusterConfig, ClusterState, sparse_attention
from adacluster_core.layout import unselected_ranges
from adacluster_core.reference import dense_attention_ref, varblock_attention_ref
from adacluster_core.structured import make_structured_qkv

from .conftest import BACKENDS, TRITON_OK, forbid_host_sync, needs_triton, qkv_clustered, rel_l2

NEG = -3.4e38


def small_cfg(backend, **kw):
    base = dict(min_tokens=0, q_clusters=6, k_clusters=10, top_k=10, kmeans_iters_first=2,
                kmeans_iters_reuse=1, backend=backend, max_density=1.0, pooled_tail=True)
    base.update(kw)
    return AdaClusterConfig(**base)


def test_config_field():
    assert AdaClusterConfig().pooled_tail is False
    assert AdaClusterConfig(pooled_tail=True).pooled_tail is True
    with pytest.raises(ValueError, match="pooled_tail"):
        AdaClusterConfig(pooled_tail=1)
    assert AdaClusterConfig.from_dict(AdaClusterConfig(pooled_tail=True).to_dict()).pooled_tail


def test_unselected_ranges():
    Ck, base = 8, 100
    sel = torch.tensor([[[5, 1, -1, 2], [-1, -1, -1, -1], [0, 7, 3, -1], [0, 1, 2, 3]]], dtype=torch.int32)
    s, e = unselected_ranges(sel, Ck, base)
    assert s.shape == (1, 4, 5) and s.dtype == torch.int32
    for c in range(4):
        chosen = {int(x) for x in sel[0, c] if x >= 0}
        covered = []
        for a, b in zip(s[0, c].tolist(), e[0, c].tolist()):
            assert b >= a
            covered += list(range(a, b))
        assert sorted(covered) == [base + j for j in range(Ck) if j not in chosen]


def _bias_case(dtype, D, seed=0, G=2, N=70, Cq=5, Ck=7, S=3):
    from .test_varblock_attn import make_case  # noqa: WPS433
    case = make_case(G=G, N=N, D=D, Cq=Cq, Ck=Ck, S=S, dtype=dtype, seed=seed, device="cpu")
    gen = torch.Generator().manual_seed(seed + 1)
    Nk = case["k_perm"].shape[1]
    bias = torch.randn(case["q"].shape[0], Nk, generator=gen) * 2
    bias[:, ::5] = float("-inf")  # never-attended rows (empty pooled clusters)
    bias[:, :3] = float("-inf")
    case["key_bias"] = bias
    return case


def test_reference_bias_matches_dense_with_bias():
    case = _bias_case(torch.float32, 64)
    rs, re = case["range_start"].clone(), case["range_end"].clone()
    Nk = case["k_perm"].shape[1]
    rs[:] = 0
    re[:] = 0
    re[..., 0] = Nk  # every cluster sees every key
    out = varblock_attention_ref(**{**case, "range_start": rs, "range_end": re})
    ref = dense_attention_ref(case["q"].unsqueeze(1), case["k_perm"].unsqueeze(1), case["v_perm"].unsqueeze(1),
                              scale=case["scale"], key_mask=case["key_bias"].view(-1, 1, 1, Nk)).squeeze(1)
    assert rel_l2(out, ref) < 1e-5


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("D", [64, 128])
def test_kernel_bias_matches_reference(dtype, D):
    from adacluster_core.kernels.varblock_attn import varblock_attention
    case = _bias_case(dtype, D, seed=D)
    out = varblock_attention(**case)
    ref = varblock_attention_ref(**case)
    assert torch.isfinite(out.float()).all()
    tol = {torch.float16: 3e-3, torch.bfloat16: 2e-2, torch.float32: 1e-4}[dtype]
    assert rel_l2(out, ref) < tol


@needs_triton
@pytest.mark.parametrize("mode", [0, 1, 2])
def test_kernel_bias_all_modes(mode):
    from adacluster_core.kernels.varblock_attn import varblock_attention_triton
    case = _bias_case(torch.float16, 64, seed=3 + mode, N=90)
    out = varblock_attention_triton(**case, config=(16, 16, 4, 1, mode, False))
    assert torch.isfinite(out.float()).all()
    assert rel_l2(out, varblock_attention_ref(**case)) < 3e-3
    # all-(-inf) bias chunk at the start of a row's keys: no NaN, rows see nothing else -> 0
    case2 = dict(case)
    case2["key_bias"] = torch.full_like(case["key_bias"], float("-inf"))
    out2 = varblock_attention_triton(**case2, config=(16, 16, 4, 1, mode, False))
    assert torch.isfinite(out2.float()).all() and float(out2.float().abs().max()) == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rng", [None, (0, 20)])
def test_all_selected_identical(backend, rng):
    """Every cluster selected -> no virtual row is attended: same output as without."""
    q, k, v = (t.to(torch.bfloat16) for t in qkv_clustered(1, 2, 150, 64, seed=1))
    a, sa = sparse_attention(q, k, v, small_cfg(backend, pooled_tail=False), always_dense_range=rng)
    b, sb = sparse_attention(q, k, v, small_cfg(backend), always_dense_range=rng)
    assert not sb["dense"] and sb["pooled_tail"]
    assert float(sb["density"]) == pytest.approx(float(sa["density"]))
    assert rel_l2(b, a) < 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_clusters_and_masks_no_nan(backend):
    """More key clusters than distinct keys (empty clusters), masked keys, text tokens."""
    q, k, v = (t.to(torch.float16) for t in qkv_clustered(1, 2, 96, 64, seed=5))
    k[:, :, 10:60] = k[:, :, 10:11]  # many identical keys -> empty clusters
    mask = torch.zeros(1, 1, 96)
    mask[0, 0, 70:76] = NEG
    mask[0, 0, -2:] = NEG
    cfg = small_cfg(backend, k_clusters=24, top_k=2, max_density=0.2)
    out, st = sparse_attention(q, k, v, cfg, always_dense_range=(80, 96), key_mask=mask)
    assert not st["dense"], st["reason"]
    assert torch.isfinite(out.float()).all()
    ref = dense_attention_ref(q.float(), k.float(), v.float(), key_mask=mask.unsqueeze(1))
    off, _ = sparse_attention(q, k, v, cfg.replace(pooled_tail=False), always_dense_range=(80, 96),
                              key_mask=mask)
    # text queries run dense (exact) in both
    assert rel_l2(out[:, :, 80:], ref[:, :, 80:]) < 1e-2
    assert rel_l2(out, ref) <= rel_l2(off, ref) + 1e-3


def test_masked_keys_never_pooled():
    """A masked key with a huge value must not leak into the output through a pooled mean."""
    q, k, v = qkv_clustered(1, 1, 128, 64, seed=7)
    v[:, :, 5] = 1e4
    mask = torch.zeros(1, 1, 128)
    mask[0, 0, 5] = NEG
    out, st = sparse_attention(q, k, v, small_cfg("torch", k_clusters=16, top_k=2, max_density=0.1),
                               key_mask=mask)
    assert not st["dense"]
    assert float(out.abs().max()) < 100


@pytest.mark.parametrize("max_density", [0.15, 0.25])
def test_lowers_error_on_structured(max_density):
    q, k, v, _ = make_structured_qkv(B=1, H=2, grid=(6, 16, 16), seed=0)
    ref = dense_attention_ref(q.float(), k.float(), v.float())
    base = dict(q_clusters=32, k_clusters=64, top_k=64, max_density=max_density, backend="torch", min_tokens=0)
    off, so = sparse_attention(q, k, v, AdaClusterConfig(**base))
    on, sn = sparse_attention(q, k, v, AdaClusterConfig(**base, pooled_tail=True))
    e_off, e_on = rel_l2(off, ref), rel_l2(on, ref)
    # the virtual keys are counted as computed pairs (Ck / N more density at most)
    assert float(so["density"]) < float(sn["density"]) <= float(so["density"]) + 64 / q.shape[2] + 1e-6
    assert e_on <= 0.85 * e_off, (e_on, e_off)
    # also better than the budget without the tail at its (higher) density
    off2, so2 = sparse_attention(q, k, v, AdaClusterConfig(**{**base, "max_density": min(1.0, max_density + 0.1)}))
    assert float(so2["density"]) > float(sn["density"])
    assert e_on <= 0.85 * rel_l2(off2, ref)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_host_sync_on_reuse(monkeypatch, backend):
    q, k, v = qkv_clustered(1, 2, 96, 64, seed=16)
    mask = torch.zeros(1, 1, 96)
    mask[0, 0, -2:] = NEG
    cfg = small_cfg(backend, top_k=3, max_density=0.3)
    s = ClusterState()
    sparse_attention(q, k, v, cfg, s, always_dense_range=(80, 96), key_mask=mask)
    forbid_host_sync(monkeypatch)
    out, st = sparse_attention(q, k, v, cfg, s, always_dense_range=(80, 96), key_mask=mask)
    monkeypatch.undo()
    assert st["stage"] == "reuse" and not st["dense"] and st["pooled_tail"]
    assert torch.isfinite(out).all()


def test_unselected_ranges_limit():
    sel = torch.tensor([[[1, -1]], [[-1, -1]]], dtype=torch.int32)
    s, e = unselected_ranges(sel, 6, 10, limit=torch.tensor([3, 0]))
    assert [(a, b) for a, b in zip(s[0, 0].tolist(), e[0, 0].tolist()) if b > a] == [(10, 11), (12, 13)]
    assert int((e[1] - s[1]).sum()) == 0
