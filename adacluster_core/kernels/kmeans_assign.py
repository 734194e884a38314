"""K-means assignment: label = argmin_c (‖c‖² − 2 x·c), tiled over tokens and centroids.

Reference: `adacluster_core.reference.kmeans_assign_ref`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import as_bhnd, interpreting, next_pow2


@triton.jit
def _kmeans_assign_kernel(
    X, C, LAB, DIST,
    H, N, NC, D,
    sxb, sxh, sxn, sxd,
    scg, scc,
    slg, sdg,
    NORMALIZE: tl.constexpr, RETURN_DIST: tl.constexpr, DOT_FP32: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
):
    g = tl.program_id(0)
    pid_n = tl.program_id(1)
    b = (g // H).to(tl.int64)
    h = (g % H).to(tl.int64)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rd = tl.arange(0, BLOCK_D)
    mn = rn < N
    md = rd < D
    x_ptrs = X + b * sxb + h * sxh + rn[:, None] * sxn + rd[None, :] * sxd
    x_raw = tl.load(x_ptrs, mask=mn[:, None] & md[None, :], other=0.0)
    xf = x_raw.to(tl.float32)
    if NORMALIZE:
        nrm = tl.sqrt(tl.sum(xf * xf, axis=1))
        xf = xf / tl.maximum(nrm, 1e-6)[:, None]
    if DOT_FP32:
        xd = xf
    else:
        xd = xf.to(x_raw.dtype)  # GEMM operand in the input precision (fp32 accumulate)

    best = tl.full([BLOCK_N], float("inf"), tl.float32)
    best_i = tl.zeros([BLOCK_N], tl.int32)
    for c0 in range(0, NC, BLOCK_C):
        rc = c0 + tl.arange(0, BLOCK_C)
        mc = rc < NC
        c_ptrs = C + g * scg + rc[:, None] * scc + rd[None, :]
        c = tl.load(c_ptrs, mask=mc[:, None] & md[None, :], other=0.0)
        cc = tl.sum(c * c, axis=1)
        if DOT_FP32:
            dot = tl.dot(xd, tl.trans(c))
        else:
            dot = tl.dot(xd, tl.trans(c.to(x_raw.dtype)))  # [BLOCK_N, BLOCK_C] fp32
        score = cc[None, :] - 2.0 * dot
        score = tl.where(mc[None, :], score, float("inf"))
        tmin = tl.min(score, axis=1)
        # first index reaching the tile minimum (ties -> lowest id, like torch.argmin)
        cand = tl.where(score == tmin[:, None], rc[None, :], 2147483647)
        targ = tl.min(cand, axis=1)
        upd = tmin < best
        best = tl.where(upd, tmin, best)
        best_i = tl.where(upd, targ, best_i)
    tl.store(LAB + g * slg + rn, best_i, mask=mn)
    if RETURN_DIST:
        # exact distance to the chosen centroid (no cancellation of the expanded form)
        cb = tl.load(C + g * scg + best_i[:, None] * scc + rd[None, :],
                     mask=mn[:, None] & md[None, :], other=0.0)
        diff = xf - cb
        d = tl.sqrt(tl.sum(diff * diff, axis=1))
        tl.store(DIST + g * sdg + rn, d, mask=mn)


def kmeans_assign(x: torch.Tensor, centroids: torch.Tensor, *, normalize: bool = False,
                  return_dist: bool = False):
    """Nearest centroid of every token.

    x: [G, N, D] or [B, H, N, D] (any strides), fp16 / bf16 / fp32.
    centroids: float32 [G, C, D].
    normalize: L2-normalise each token first (query clustering by angle), in-kernel.
    Returns labels int32 [G, N]; with return_dist also dist float32 [G, N] = ‖x − c_label‖
    (x normalised if requested).
    """
    x4, G, H = as_bhnd(x)
    N, D = x4.shape[2], x4.shape[3]
    NC = centroids.shape[1]
    c = centroids.to(device=x.device, dtype=torch.float32).contiguous()
    lab = torch.empty(G, N, dtype=torch.int32, device=x.device)
    dist = torch.empty(G, N, dtype=torch.float32, device=x.device) if return_dist else lab
    if G == 0 or N == 0:
        return (lab, dist) if return_dist else lab
    if x4.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        x4 = x4.float()
    BLOCK_D = max(16, next_pow2(D))
    if interpreting():
        BLOCK_N, BLOCK_C, nw = 64, 64, 4
    else:
        BLOCK_N = 128 if BLOCK_D <= 64 else 64
        BLOCK_C = 64
        nw = 4
    BLOCK_C = min(BLOCK_C, max(16, next_pow2(NC)))
    grid = (G, triton.cdiv(N, BLOCK_N))
    _kmeans_assign_kernel[grid](
        x4, c, lab, dist,
        H, N, NC, D,
        x4.stride(0), x4.stride(1), x4.stride(2), x4.stride(3),
        c.stride(0), c.stride(1),
        lab.stride(0), dist.stride(0),
        NORMALIZE=bool(normalize), RETURN_DIST=bool(return_dist),
        # fp32 inputs use an fp32 (tf32 on GPU) GEMM; the interpreter mishandles bf16 casts
        DOT_FP32=(x4.dtype == torch.float32) or interpreting(),
        BLOCK_N=BLOCK_N, BLOCK_C=BLOCK_C, BLOCK_D=BLOCK_D, num_warps=nw,
    )
    return (lab, dist) if return_dist else lab
