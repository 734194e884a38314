"""Pooled tail (config `pooled_tail`): virtual centroid keys for the unselected key clusters.

CPU; the Triton parts need TRITON_INTERPRET=1 (skipped otherwise)."""
from __future__ import annotations

import math

import pytest
import torch

from adacluster_core import AdaClusterConfig, ClusterState, sparse_attention
from adacluster_core.reference import dense_attention_ref, varblock_attention_ref
from bench.structured import make_structured_qkv

from . import kernel_cases as kc
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


def test_pooled_tail_bias():
    """Selected and empty clusters get -inf, the others log|j|; keys/values = centroids/means."""
    from adacluster_core import clustering
    from adacluster_core.layout import pooled_tail
    G, N, D, Ck = 2, 40, 16, 6
    gen = torch.Generator().manual_seed(0)
    k, v = torch.randn(G, N, D, generator=gen), torch.randn(G, N, D, generator=gen)
    lab = torch.randint(0, Ck - 1, (G, N), generator=gen).to(torch.int32)  # cluster Ck-1 empty
    perm, offs = clustering.sort_by_cluster(lab, Ck + 1)
    cent, cnt = clustering.update(k, lab, torch.zeros(G, Ck, D), perm=perm, offsets=offs)
    rk = clustering.KMeansResult(lab, cent, cnt, perm, offs)
    sel = torch.tensor([[[0, 3, -1], [-1, -1, -1]], [[4, 1, 2], [5, -1, -1]]], dtype=torch.int32)
    tk, tv, tb = pooled_tail(v, rk, sel, torch.float32, "torch")
    assert tb.shape == (G, 2, Ck) and tk.shape == (G, Ck, D) and tv.shape == (G, Ck, D)
    for g in range(G):
        for c in range(2):
            chosen = {int(x) for x in sel[g, c] if x >= 0}
            for j in range(Ck):
                n = int(cnt[g, j])
                if j in chosen or n == 0:
                    assert tb[g, c, j] == float("-inf")
                else:
                    assert float(tb[g, c, j]) == pytest.approx(math.log(n))
        j = int(lab[g, 0])
        assert torch.allclose(tv[g, j], v[g][lab[g] == j].mean(0), atol=1e-5)
        assert torch.allclose(tk[g, j], k[g][lab[g] == j].mean(0), atol=1e-5)


def _tail_case(dtype, D, seed=0, **kw):
    from .kernel_cases import tail_case  # noqa: WPS433
    return tail_case(dtype, D, seed=seed, device="cpu", **kw)


def test_reference_tail_matches_dense_with_bias():
    """The reference's tail == dense attention over [real keys | virtual keys] with the bias."""
    case = _tail_case(torch.float32, 64)
    rs, re = case["range_start"].clone(), case["range_end"].clone()
    Nk = case["k_rows"].shape[1]
    rs[:] = 0
    re[:] = 0
    re[..., 0] = Nk  # every cluster sees every real key
    out = varblock_attention_ref(**{**case, "range_start": rs, "range_end": re})
    q_off, perm_q = case["q_offsets"], case["perm_q"]
    c = 0
    rows = perm_q[0, q_off[0, c]:q_off[0, c + 1]].long()
    keys = torch.cat([case["k_rows"][0], case["tail_keys"][0]])
    vals = torch.cat([case["v_rows"][0], case["tail_values"][0]])
    mask = torch.cat([torch.zeros(Nk), case["tail_bias"][0, c]]).view(1, -1)
    ref = dense_attention_ref(case["q"][0, rows], keys, vals, scale=case["scale"], key_mask=mask)
    assert rel_l2(out[0, rows], ref) < 1e-5


# kernel cases: a subset here (kernel_cases.INTERP), all of them in bench/kernel_check.py (GPU)
@needs_triton
@pytest.mark.parametrize("dtype,D", kc.INTERP["tail_reference"])
def test_kernel_tail_matches_reference(dtype, D):
    kc.check_tail_reference(dtype, D)


@needs_triton
@pytest.mark.parametrize("bm,bn", kc.INTERP["tail_tiles_and_all_inf"])
def test_kernel_tail_tiles_and_all_inf(bm, bn):
    kc.check_tail_tiles_and_all_inf(bm, bn)


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
    # Margin: the tail must remove at least 15 % of the error without it (observed ~90 %: e_on ~0.1 e_off).
    # 15 % is far above what rounding alone can move: the bf16 rounding error of dense attention itself
    # (SDPA in q's dtype vs the fp32 reference, computed here) must be below half of that margin.
    e_round = rel_l2(torch.nn.functional.scaled_dot_product_attention(q, k, v), ref)
    assert 2 * e_round < 0.15 * e_off, (e_round, e_off)
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
