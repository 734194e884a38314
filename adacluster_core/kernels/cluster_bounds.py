"""Per key cluster, per-dimension max / min of its members (TensorQuest bounds).

One program per (group, cluster) scans its rows through the permutation from
`layout.sort_by_cluster`. Empty clusters get Kmax = -inf, Kmin = +inf (selection gives them a
bound of -inf). Reference: `adacluster_core.reference.cluster_bounds_ref`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..layout import sort_by_cluster
from ._common import as_bhnd, interpreting, next_pow2


@triton.jit
def _cluster_bounds_kernel(
    X, PERM, OFFS, KMAX, KMIN,
    H, D,
    sxb, sxh, sxn, sxd,
    spg, sog, sbg, sbc,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    g = tl.program_id(0)
    c = tl.program_id(1)
    b = (g // H).to(tl.int64)
    h = (g % H).to(tl.int64)
    start = tl.load(OFFS + g * sog + c)
    end = tl.load(OFFS + g * sog + c + 1)
    rd = tl.arange(0, BLOCK_D)
    md = rd < D
    mx = tl.full([BLOCK_D], float("-inf"), tl.float32)
    mi = tl.full([BLOCK_D], float("inf"), tl.float32)
    for r0 in range(start, end, BLOCK_N):
        rr = r0 + tl.arange(0, BLOCK_N)
        mr = rr < end
        idx = tl.load(PERM + g * spg + rr, mask=mr, other=0).to(tl.int64)
        xp = X + b * sxb + h * sxh + idx[:, None] * sxn + rd[None, :] * sxd
        m2 = mr[:, None] & md[None, :]
        xf = tl.load(xp, mask=m2, other=0.0).to(tl.float32)
        mx = tl.maximum(mx, tl.max(tl.where(m2, xf, float("-inf")), axis=0))
        mi = tl.minimum(mi, tl.min(tl.where(m2, xf, float("inf")), axis=0))
    tl.store(KMAX + g * sbg + c * sbc + rd, mx, mask=md)
    tl.store(KMIN + g * sbg + c * sbc + rd, mi, mask=md)


def cluster_bounds(x: torch.Tensor, labels: torch.Tensor, num_clusters: int, *,
                   perm: torch.Tensor | None = None, offsets: torch.Tensor | None = None):
    """Segment max / min of x by label.

    x: [G, N, D] or [B, H, N, D] (any strides), fp16 / bf16 / fp32.
    labels: int [G, N] in [0, C]; label C = ignored token.
    perm, offsets: optionally `sort_by_cluster(labels, C + 1)` to skip the sort.
    Returns (kmax, kmin), float32 [G, C, D]; empty clusters: kmax = -inf, kmin = +inf.
    """
    x4, G, H = as_bhnd(x)
    D = x4.shape[3]
    NC = int(num_clusters)
    kmax = torch.empty(G, NC, D, dtype=torch.float32, device=x.device)
    kmin = torch.empty_like(kmax)
    if G == 0 or NC == 0:
        return kmax, kmin
    if perm is None or offsets is None:
        perm, offsets = sort_by_cluster(labels, NC + 1)
    perm = perm.to(torch.int32).contiguous()
    offsets = offsets.to(torch.int32).contiguous()
    if x4.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        x4 = x4.float()
    BLOCK_D = max(16, next_pow2(D))
    BLOCK_N = 64 if interpreting() else 32
    _cluster_bounds_kernel[(G, NC)](
        x4, perm, offsets, kmax, kmin,
        H, D,
        x4.stride(0), x4.stride(1), x4.stride(2), x4.stride(3),
        perm.stride(0), offsets.stride(0), kmax.stride(0), kmax.stride(1),
        BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D, num_warps=4,
    )
    return kmax, kmin
