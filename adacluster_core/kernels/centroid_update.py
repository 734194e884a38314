"""K-means update: fp32 segment means of tokens by cluster (sort-based, deterministic).

One program per (group, cluster) sums the rows of its cluster, read through the permutation
from `layout.sort_by_cluster`; an empty cluster keeps its old centroid.
Reference: `adacluster_core.reference.centroid_update_ref`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..layout import sort_by_cluster
from ._common import as_bhnd, interpreting, next_pow2


@triton.jit
def _centroid_update_kernel(
    X, PERM, OFFS, OLD, OUT, CNT,
    H, NC, D,
    sxb, sxh, sxn, sxd,
    spg, sog, scg, scc, sng,
    NORMALIZE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    g = tl.program_id(0)
    c = tl.program_id(1)
    b = (g // H).to(tl.int64)
    h = (g % H).to(tl.int64)
    start = tl.load(OFFS + g * sog + c)
    end = tl.load(OFFS + g * sog + c + 1)
    rd = tl.arange(0, BLOCK_D)
    md = rd < D
    acc = tl.zeros([BLOCK_D], tl.float32)
    for r0 in range(start, end, BLOCK_N):
        rr = r0 + tl.arange(0, BLOCK_N)
        mr = rr < end
        idx = tl.load(PERM + g * spg + rr, mask=mr, other=0).to(tl.int64)
        xp = X + b * sxb + h * sxh + idx[:, None] * sxn + rd[None, :] * sxd
        xf = tl.load(xp, mask=mr[:, None] & md[None, :], other=0.0).to(tl.float32)
        if NORMALIZE:
            nrm = tl.sqrt(tl.sum(xf * xf, axis=1))
            xf = xf / tl.maximum(nrm, 1e-6)[:, None]
        acc += tl.sum(xf, axis=0)
    n = end - start
    old = tl.load(OLD + g * scg + c * scc + rd, mask=md, other=0.0)
    mean = acc / tl.maximum(n, 1).to(tl.float32)
    new = tl.where(n > 0, mean, old)
    tl.store(OUT + g * scg + c * scc + rd, new, mask=md)
    tl.store(CNT + g * sng + c, n)


def centroid_update(x: torch.Tensor, labels: torch.Tensor, old_centroids: torch.Tensor, *,
                    normalize: bool = False, perm: torch.Tensor | None = None,
                    offsets: torch.Tensor | None = None):
    """Segment means of x by label.

    x: [G, N, D] or [B, H, N, D] (any strides), fp16 / bf16 / fp32.
    labels: int [G, N] in [0, C]; label C means "ignored token" (masked key).
    old_centroids: float32 [G, C, D]; an empty cluster keeps its old centroid.
    perm, offsets: optionally the result of `sort_by_cluster(labels, C + 1)` (or (labels, C)
        when no label equals C) to skip the sort.
    Returns (centroids float32 [G, C, D], counts int32 [G, C]).
    """
    x4, G, H = as_bhnd(x)
    N, D = x4.shape[2], x4.shape[3]
    NC = old_centroids.shape[1]
    old = old_centroids.to(device=x.device, dtype=torch.float32).contiguous()
    out = torch.empty_like(old)
    cnt = torch.empty(G, NC, dtype=torch.int32, device=x.device)
    if G == 0 or NC == 0:
        return out, cnt
    if perm is None or offsets is None:
        perm, offsets = sort_by_cluster(labels, NC + 1)
    perm = perm.to(torch.int32).contiguous()
    offsets = offsets.to(torch.int32).contiguous()
    if x4.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        x4 = x4.float()
    BLOCK_D = max(16, next_pow2(D))
    BLOCK_N = 64 if interpreting() else 32
    _centroid_update_kernel[(G, NC)](
        x4, perm, offsets, old, out, cnt,
        H, NC, D,
        x4.stride(0), x4.stride(1), x4.stride(2), x4.stride(3),
        perm.stride(0), offsets.stride(0), old.stride(0), old.stride(1), cnt.stride(0),
        NORMALIZE=bool(normalize), BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D, num_warps=4,
    )
    return out, cnt
