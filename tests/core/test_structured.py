"""Structured input generator (bench.structured) and the block top-k baseline
(bench.baselines). Fast, CPU only."""
from __future__ import annotations

import math
import time

import pytest
import torch

from bench.baselines import (attention_recall, block_density, block_means, block_topk_attention,
                                       block_topk_mask, relative_l2)
from adacluster_core.reference import dense_attention_ref
from bench.structured import (attention_peakedness, grid_positions, make_structured_qkv, make_video_qkv,
                                        procedural_video, rope_3d)


# ----------------------------------------------------------------------------- generator

@pytest.mark.parametrize("B,H,grid,D,text", [(1, 2, (4, 8, 8), 128, 0), (2, 3, (3, 6, 10), 64, 16)])
def test_shapes_dtypes_finite(B, H, grid, D, text):
    q, k, v, info = make_structured_qkv(B=B, H=H, grid=grid, D=D, text_tokens=text, seed=1)
    n_video = grid[0] * grid[1] * grid[2]
    N = n_video + text
    for x in (q, k, v):
        assert x.shape == (B, H, N, D)
        assert x.dtype == torch.bfloat16
        assert torch.isfinite(x.float()).all()
    assert info["n_video"] == n_video and info["text_tokens"] == text
    assert info["positions"].shape == (n_video, 3)
    assert info["groups"].shape == (B, n_video)
    assert info["sink_idx"].shape == (B, 4)
    assert int(info["sink_idx"].max()) < n_video


def test_dtype_float32_and_raster_order():
    q, k, v, info = make_structured_qkv(grid=(2, 3, 4), dtype=torch.float32)
    assert q.dtype == torch.float32
    pos = info["positions"]
    # w fastest, then h, then t
    assert pos[:5].tolist() == [[0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 0, 3], [0, 1, 0]]
    assert pos[12].tolist() == [1, 0, 0]
    assert torch.equal(pos, grid_positions((2, 3, 4)))


def test_deterministic_and_seed_dependent():
    a = make_structured_qkv(grid=(3, 8, 8), seed=5)
    b = make_structured_qkv(grid=(3, 8, 8), seed=5)
    c = make_structured_qkv(grid=(3, 8, 8), seed=6)
    for x, y in zip(a[:3], b[:3]):
        assert torch.equal(x, y)
    assert torch.equal(a[3]["groups"], b[3]["groups"])
    assert not torch.equal(a[0], c[0])


def test_semantic_groups_are_used_and_sinks_are_strong():
    q, k, v, info = make_structured_qkv(grid=(6, 16, 16), n_groups=8, seed=0)
    counts = torch.bincount(info["groups"][0], minlength=8)
    assert (counts > 0).sum() >= 5
    assert counts.max() < 0.6 * counts.sum()
    kn = k[0].float().norm(dim=-1)  # [H, N]
    sinks = info["sink_idx"][0]
    assert kn[:, sinks].mean() > 1.15 * kn.mean()


def test_attention_is_peaked_like_a_video_dit():
    """Entropy well below uniform; the top 15 % of keys hold most of the mass; Gaussian noise
    of the same shape is nearly uniform by comparison."""
    q, k, v, info = make_structured_qkv(grid=(6, 16, 16), seed=0)
    pk = attention_peakedness(q, k, sink_idx=info["sink_idx"])
    assert pk["entropy_ratio"] < 0.8
    assert pk["top_mass"] > 0.75
    assert pk["keys_for_90"] < 0.3
    assert 0.01 < pk["sink_mass"] < 0.4
    g = torch.Generator().manual_seed(0)
    qr, kr = (torch.randn(q.shape, generator=g) for _ in range(2))
    pr = attention_peakedness(qr, kr)
    assert pr["entropy_ratio"] > 0.9 and pr["top_mass"] < 0.55
    # more temperature, more peaked
    q2, k2, _, _ = make_structured_qkv(grid=(6, 16, 16), seed=0, temperature=2.0)
    assert attention_peakedness(q2, k2)["entropy_ratio"] < pk["entropy_ratio"]


def test_attention_is_local_and_semantic():
    """Nearby tokens and tokens of the same segment get far more than their share of mass."""
    q, k, v, info = make_structured_qkv(grid=(6, 16, 16), seed=0, dtype=torch.float32)
    N = q.shape[2]
    rows = torch.arange(0, N, 7)
    p = torch.softmax(q[0, :, rows] @ k[0].transpose(-1, -2) / math.sqrt(q.shape[-1]), -1)
    pos = info["positions"]
    d = (pos[rows][:, None] - pos[None]).abs()
    local = ((d[..., 0] <= 1) & (d[..., 1] <= 2) & (d[..., 2] <= 2)).float()
    same = (info["groups"][0][rows][:, None] == info["groups"][0][None]).float()
    assert (p * local).sum(-1).mean() > 5 * local.mean()
    assert (p * same).sum(-1).mean() > 2.5 * same.mean()


def test_generator_is_linear_time():
    t0 = time.time()
    q, k, v, info = make_structured_qkv(B=1, H=2, grid=(8, 48, 64), seed=0)  # 24,576 tokens
    assert q.shape[2] == 24576
    assert time.time() - t0 < 10.0


def test_rope_3d_is_relative_and_norm_preserving():
    g = torch.Generator().manual_seed(0)
    D = 128
    a, b = torch.randn(D, generator=g), torch.randn(D, generator=g)
    p1 = torch.tensor([[1.0, 2.0, 3.0], [4.0, 7.0, 5.0]])
    p2 = p1 + torch.tensor([[2.0, -3.0, 5.0]])
    ra, rb = rope_3d(a.expand(2, D), p1), rope_3d(b.expand(2, D), p2)
    dots = (ra * rb).sum(-1)
    assert torch.allclose(dots[0], dots[1], atol=1e-3)
    assert torch.allclose(ra.norm(dim=-1), a.norm().expand(2), atol=1e-4)


def test_video_qkv_from_frames():
    frames = procedural_video(T=16, H=64, W=96, seed=0)
    assert frames.shape == (16, 64, 96, 3) and 0 <= float(frames.min()) and float(frames.max()) <= 1
    q, k, v, info = make_video_qkv(frames, patch=(4, 16, 16), D=64, heads=2, seed=0)
    assert info["grid"] == (4, 4, 6)
    assert q.shape == k.shape == v.shape == (1, 2, 96, 64)
    assert all(torch.isfinite(x.float()).all() for x in (q, k, v))
    q2, _, _, _ = make_video_qkv(frames, patch=(4, 16, 16), D=64, heads=2, seed=0)
    assert torch.equal(q, q2)
    pk = attention_peakedness(q, k)
    assert pk["entropy_ratio"] < 0.95
    with pytest.raises(ValueError):
        make_video_qkv(frames[..., :2])


# ----------------------------------------------------------------------------- block top-k

def test_block_means_partial_last_block():
    x = torch.arange(10, dtype=torch.float32).view(1, 1, 10, 1)
    m = block_means(x, 4)
    assert m.flatten().tolist() == [1.5, 5.5, 8.5]


@pytest.mark.parametrize("N", [256, 200])
def test_block_topk_all_blocks_equals_dense(N):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, N, 32, generator=g) for _ in range(3))
    nb = -(-N // 64)
    out, st = block_topk_attention(q, k, v, nb)
    ref = dense_attention_ref(q, k, v)
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5)
    assert st["density"] == pytest.approx(1.0)
    assert attention_recall(q, k, st["allowed"], n_queries=64) == pytest.approx(1.0, abs=1e-5)


def test_block_topk_density_matches_k():
    q, k, v, _ = make_structured_qkv(grid=(4, 16, 16), seed=0)  # 1024 tokens = 16 blocks
    for kb in (1, 3, 8):
        mask = block_topk_mask(q, k, kb)
        assert mask.shape == (1, 2, 16, 16)
        assert (mask.sum(-1) == kb).all()
        out, st = block_topk_attention(q, k, v, kb)
        assert st["density"] == pytest.approx(kb / 16)
        assert torch.isfinite(out.float()).all()
    # partial last block: density counts the real tokens
    m = torch.ones(1, 1, 3, 3, dtype=torch.bool)
    m[..., 2] = False
    assert block_density(m, 130, 130) == pytest.approx(128 / 130)


def test_block_topk_error_decreases_with_k():
    q, k, v, _ = make_structured_qkv(grid=(4, 16, 16), seed=0)
    ref = dense_attention_ref(q.float(), k.float(), v.float())
    errs = [relative_l2(block_topk_attention(q, k, v, kb)[0], ref) for kb in (1, 4, 16)]
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 0.01


def test_block_topk_selects_the_block_with_the_best_mean_score():
    # one key block aligned with every query: it must be chosen first
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 1, 256, 16, generator=g) * 0.1 + torch.ones(16)
    k = torch.randn(1, 1, 256, 16, generator=g) * 0.1
    k[..., 128:192, :] += 1.0
    mask = block_topk_mask(q, k, 1)
    assert mask[0, 0, :, 2].all() and mask[0, 0].sum() == 4
