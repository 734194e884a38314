"""K-means update: fp32 segment means of tokens by cluster (sort-based, deterministic).

One program per (group, cluster) sums the rows of its cluster, read through the permutation
from `cluster_sort.sort_by_cluster`; an empty cluster keeps its old centroid.
Reference: `adacluster_core.reference.centroid_update_ref`.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ..cluster_sort import sort_by_cluster
from ._common import as_bhnd, interpreting, next_pow2


@triton.jit(do_not_specialize=["NC"])  # per-layer cluster counts: no recompiles
def _centroid_update_kernel(
    X, PERM, OFFS, OLD, OUT, CNT, KMAX, KMIN,
    H, NC, D,
    sxb, sxh, sxn, sxd,
    spg, sog, scg, scc, sng,
    NORMALIZE: tl.constexpr, BOUNDS: tl.constexpr, HAS_OLD: tl.constexpr,
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
    acc = tl.zeros([BLOCK_D], tl.float32)
    mx = tl.full([BLOCK_D], float("-inf"), tl.float32)
    mi = tl.full([BLOCK_D], float("inf"), tl.float32)
    for r0 in range(start, end, BLOCK_N):
        rr = r0 + tl.arange(0, BLOCK_N)
        mr = rr < end
        idx = tl.load(PERM + g * spg + rr, mask=mr, other=0).to(tl.int64)
        xp = X + b * sxb + h * sxh + idx[:, None] * sxn + rd[None, :] * sxd
        m2 = mr[:, None] & md[None, :]
        xf = tl.load(xp, mask=m2, other=0.0).to(tl.float32)
        if BOUNDS:  # TensorQuest bounds of the raw rows, fused with the last update
            mx = tl.maximum(mx, tl.max(tl.where(m2, xf, float("-inf")), axis=0))
            mi = tl.minimum(mi, tl.min(tl.where(m2, xf, float("inf")), axis=0))
        if NORMALIZE:
            nrm = tl.sqrt(tl.sum(xf * xf, axis=1))
            xf = xf / tl.maximum(nrm, 1e-6)[:, None]
        acc += tl.sum(xf, axis=0)
    n = end - start
    mean = acc / tl.maximum(n, 1).to(tl.float32)
    if HAS_OLD:
        old = tl.load(OLD + g * scg + c * scc + rd, mask=md, other=0.0)
        new = tl.where(n > 0, mean, old)
    else:  # no previous centroids (value means of the pooled tail): empty -> 0
        new = tl.where(n > 0, mean, 0.0)
    # OUT may be bf16 / fp16: the store rounds to nearest even, as torch's .to() does
    tl.store(OUT + g * scg + c * scc + rd, new, mask=md)
    tl.store(CNT + g * sng + c, n)
    if BOUNDS:
        tl.store(KMAX + g * scg + c * scc + rd, mx, mask=md)
        tl.store(KMIN + g * scg + c * scc + rd, mi, mask=md)


def centroid_update(x: torch.Tensor, labels: torch.Tensor, old_centroids: torch.Tensor | None, *,
                    normalize: bool = False, perm: torch.Tensor | None = None,
                    offsets: torch.Tensor | None = None, bounds: bool = False,
                    num_clusters: int | None = None, out_dtype: torch.dtype = torch.float32):
    """Segment means of x by label (and, with bounds=True, the per-cluster max / min).

    x: [G, N, D] or [B, H, N, D] (any strides), fp16 / bf16 / fp32.
    labels: int [G, N] in [0, C]; label C means "ignored token" (masked key).
    old_centroids: float32 [G, C, D]; an empty cluster keeps its old centroid. None (then
        num_clusters=C): an empty cluster gets zeros (no zero-filled tensor to pass).
    out_dtype: dtype of the returned centroids (float32; bf16 / fp16 save a cast where the
        caller wants them in the inputs' dtype, e.g. the pooled tail's values).
    perm, offsets: optionally the result of `sort_by_cluster(labels, C + 1)` (or (labels, C)
        when no label equals C) to skip the sort; int32 or int64 perm, row-strided offsets.
    Returns (centroids [G, C, D] in out_dtype, counts int32 [G, C]); with bounds=True also
    (kmax, kmin) float32 [G, C, D] of the raw rows (empty clusters: -inf / +inf), as
    `reference.cluster_bounds_ref` computes them, in the same pass.
    """
    x4, G, H = as_bhnd(x)
    N, D = x4.shape[2], x4.shape[3]
    if old_centroids is None:
        NC = int(num_clusters)
        old = None
    else:
        NC = old_centroids.shape[1]
        old = old_centroids.to(device=x.device, dtype=torch.float32).contiguous()
    # the interpreter truncates fp32 -> bf16 stores: store fp32 there and round with torch
    store_dtype = torch.float32 if interpreting() else out_dtype
    out = torch.empty(G, NC, D, dtype=store_dtype, device=x.device)
    cnt = torch.empty(G, NC, dtype=torch.int32, device=x.device)
    kmax = torch.empty(G, NC, D, device=x.device) if bounds else out
    kmin = torch.empty(G, NC, D, device=x.device) if bounds else out
    if G == 0 or NC == 0:
        out = out.to(out_dtype)
        return (out, cnt, kmax, kmin) if bounds else (out, cnt)
    if perm is None or offsets is None:
        perm, offsets = sort_by_cluster(labels, NC + 1)
    # int32 / int64 perm and strided offset rows are read as they are (no per-call copies)
    if perm.dtype not in (torch.int32, torch.int64) or perm.stride(1) != 1:
        perm = perm.to(torch.int32).contiguous()
    if offsets.dtype != torch.int32 or offsets.stride(1) != 1:
        offsets = offsets.to(torch.int32).contiguous()
    if x4.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        x4 = x4.float()
    BLOCK_D = max(16, next_pow2(D))
    if interpreting():
        BLOCK_N, nw = 64, 4
    else:
        env = os.environ.get("ADACLUSTER_UPDATE_CONFIG")  # "bn,w" (benchmarking)
        if env:
            BLOCK_N, nw = (int(t) for t in env.split(","))
        else:
            # H200, wan14b: ~190-row key clusters (Ck 400): (64 rows, 2 warps) 0.45 ms vs 0.83 for
            # (64, 4) and 1.46 for the old (32, 4); ~1160-row query clusters (Cq 65): (128, 4)
            # 0.40 ms vs 0.52 / 0.72. Chosen by the mean cluster size (docs/KERNEL_NOTES.md).
            BLOCK_N, nw = (128, 4) if N >= 512 * NC else (64, 2)
    _centroid_update_kernel[(G, NC)](
        x4, perm, offsets, old if old is not None else out, out, cnt, kmax, kmin,
        H, NC, D,
        x4.stride(0), x4.stride(1), x4.stride(2), x4.stride(3),
        perm.stride(0), offsets.stride(0), out.stride(0), out.stride(1), cnt.stride(0),
        NORMALIZE=bool(normalize), BOUNDS=bool(bounds), HAS_OLD=old is not None,
        BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D, num_warps=nw,
    )
    out = out.to(out_dtype)  # no-op unless interpreting
    return (out, cnt, kmax, kmin) if bounds else (out, cnt)
