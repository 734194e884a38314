"""Sparse-attention baselines to compare AdaCluster against (pure torch, any device).

Block top-k: the routing of common block-sparse attention methods. The sequence is cut into
fixed raster blocks of `block` tokens (64: consecutive tokens in the model's flattening order,
so for a (t, h, w) latent a block is a strip of one or a few rows). Every block is summarised
by the mean of its queries and the mean of its keys; a query block scores every key block by
the dot product of the two means ("mean-pooled q·k"), keeps its `topk_blocks` best key blocks
and attends exactly (softmax over all their keys) inside them.

This is a reference implementation for fidelity measurements: its cost is that of dense
attention, chunked so that memory stays O(chunk · N) per head.
"""
from __future__ import annotations

import torch

__all__ = ["block_means", "block_topk_mask", "block_density", "block_topk_attention", "masked_attention",
           "attention_recall", "relative_l2"]


def block_means(x: torch.Tensor, block: int) -> torch.Tensor:
    """Mean of each raster block of x [..., N, D] (the last block may be partial): fp32 [..., nb, D]."""
    N, D = x.shape[-2:]
    nb = -(-N // block)
    pad = nb * block - N
    xf = x.float()
    if pad:
        xf = torch.nn.functional.pad(xf, (0, 0, 0, pad))
    s = xf.reshape(*x.shape[:-2], nb, block, D).sum(-2)
    cnt = torch.full((nb,), float(block), device=x.device)
    cnt[-1] = block - pad
    return s / cnt.view(nb, 1)


def block_topk_mask(q: torch.Tensor, k: torch.Tensor, topk_blocks: int, block: int = 64) -> torch.Tensor:
    """Selected key blocks per query block: bool [B, H, nb_q, nb_k] (q, k [B, H, N, D])."""
    qm, km = block_means(q, block), block_means(k, block)
    scores = qm @ km.transpose(-1, -2)
    nbk = scores.shape[-1]
    kk = max(1, min(int(topk_blocks), nbk))
    idx = scores.topk(kk, dim=-1).indices
    mask = torch.zeros_like(scores, dtype=torch.bool)
    mask.scatter_(-1, idx, True)
    return mask


def _block_sizes(N: int, block: int, device) -> torch.Tensor:
    nb = -(-N // block)
    sz = torch.full((nb,), float(block), device=device)
    sz[-1] = N - (nb - 1) * block
    return sz


def block_density(mask: torch.Tensor, Nq: int, Nk: int, block: int = 64) -> float:
    """Fraction of (query, key) pairs a block mask [B, H, nbq, nbk] computes."""
    sq, sk = _block_sizes(Nq, block, mask.device), _block_sizes(Nk, block, mask.device)
    pairs = (mask.float() * sq.view(-1, 1) * sk.view(1, -1)).sum((-1, -2))  # [B, H]
    return float(pairs.mean() / (Nq * Nk))


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed, scale: float | None = None,
                     chunk: int | None = None) -> torch.Tensor:
    """Exact attention restricted to allowed pairs, fp32 maths, q's dtype out.

    allowed(rows: LongTensor [S]) -> bool [B, H, S, Nk] (or broadcastable): which keys the
    query rows may see. Rows that see no key get zeros. Memory O(B·H·chunk·Nk)."""
    B, H, N, D = q.shape
    Nk = k.shape[-2]
    scale = D ** -0.5 if scale is None else scale
    if chunk is None:
        chunk = max(64, min(N, (1 << 25) // max(1, B * H * Nk)))
    out = torch.empty(B, H, N, v.shape[-1], dtype=torch.float32, device=q.device)
    kf, vf = k.float(), v.float()
    for s in range(0, N, chunk):
        e = min(N, s + chunk)
        rows = torch.arange(s, e, device=q.device)
        sc = torch.matmul(q[:, :, s:e].float(), kf.transpose(-1, -2)) * scale
        sc = sc.masked_fill(~allowed(rows), float("-inf"))
        p = torch.nan_to_num(torch.softmax(sc, -1), nan=0.0)
        out[:, :, s:e] = torch.matmul(p, vf)
    return out.to(q.dtype)


def block_topk_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, topk_blocks: int, block: int = 64,
                         scale: float | None = None, chunk: int | None = None):
    """Block top-k sparse attention (see module docstring). q, k, v [B, H, N, D].

    Returns (out [B, H, N, D] in q's dtype, stats) with stats = {"density": float (fraction of
    query-key pairs computed, averaged over batch and heads), "mask": bool [B, H, nbq, nbk],
    "allowed": callable(rows) -> bool [B, H, S, Nk] for recall measurements}. With
    topk_blocks >= the number of key blocks it is exactly dense attention."""
    N, Nk = q.shape[-2], k.shape[-2]
    mask = block_topk_mask(q, k, topk_blocks, block)
    kb = torch.arange(Nk, device=q.device) // block

    def allowed(rows: torch.Tensor) -> torch.Tensor:
        m = mask[:, :, rows // block]            # [B, H, S, nbk]
        return m[..., kb]                        # [B, H, S, Nk]

    out = masked_attention(q, k, v, allowed, scale, chunk)
    return out, {"density": block_density(mask, N, Nk, block), "mask": mask, "allowed": allowed}


@torch.no_grad()
def attention_recall(q: torch.Tensor, k: torch.Tensor, allowed, *, n_queries: int = 512,
                     scale: float | None = None, seed: int = 0) -> float:
    """Attention-mass recall of a sparsity pattern: the mean over sampled queries (and batch,
    heads) of the dense softmax mass that falls on the allowed keys. 1 = nothing lost."""
    B, H, N, D = q.shape
    scale = D ** -0.5 if scale is None else scale
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randperm(N, generator=gen)[: min(n_queries, N)].sort().values.to(q.device)
    p = torch.softmax(torch.matmul(q[:, :, rows].float(), k.float().transpose(-1, -2)) * scale, -1)
    m = allowed(rows)
    return float((p * m.float()).sum(-1).mean())


def relative_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in fp32."""
    o, r = out.float(), ref.float()
    return float((o - r).norm() / r.norm().clamp_min(1e-30))

