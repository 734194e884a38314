"""K-means assignment: label = argmin_c (‖c‖² − 2 x·c), tiled over tokens and centroids.

The custom op `adacluster::kmeans_assign`: Triton on CUDA; on the CPU the interpreter under
TRITON_INTERPRET=1, else the reference `torch_ref.kmeans_assign_ref`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import as_bhnd, capability, interpreting, launch_config, next_pow2, register_cpu
from .torch_ref import kmeans_assign_ref


# cluster count and token count vary per layer: no specialisation on them (no recompiles)
@triton.jit(do_not_specialize=["N", "NC"])
def _kmeans_assign_kernel(
    X, C, CD, CC, LAB, DIST,
    H, N, NC, D,
    sxb, sxh, sxn, sxd,
    scg, scc,
    slg, sdg,
    NORMALIZE: tl.constexpr, RETURN_DIST: tl.constexpr, DOT_FP32: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr, NUM_STAGES: tl.constexpr,
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
    for c0 in tl.range(0, NC, BLOCK_C, num_stages=NUM_STAGES):
        rc = c0 + tl.arange(0, BLOCK_C)
        mc = rc < NC
        # CD: the centroids already in the GEMM dtype, CC: their fp32 squared norms (host-side
        # once per call instead of once per program)
        c = tl.load(CD + g * scg + rc[:, None] * scc + rd[None, :], mask=mc[:, None] & md[None, :], other=0.0)
        cc = tl.load(CC + g * NC + rc, mask=mc, other=0.0)
        dot = tl.dot(xd, tl.trans(c))  # [BLOCK_N, BLOCK_C] fp32
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


_LABEL_DTYPES = {16: torch.int16, 32: torch.int32}


def _launch(x: torch.Tensor, centroids: torch.Tensor, normalize: bool, return_dist: bool,
            label_bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The Triton launch (CUDA, or the interpreter on CPU). Returns (labels, dist or an empty
    tensor): the op's outputs never alias each other."""
    x4, G, H = as_bhnd(x)
    N, D = x4.shape[2], x4.shape[3]
    NC = centroids.shape[1]
    c = centroids.to(device=x.device, dtype=torch.float32).contiguous()
    lab = torch.empty(G, N, dtype=_LABEL_DTYPES[label_bits], device=x.device)
    dist = torch.empty((G, N) if return_dist else (0,), dtype=torch.float32, device=x.device)
    if G == 0 or N == 0:
        return lab, dist
    if x4.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        x4 = x4.float()
    BLOCK_D = max(16, next_pow2(D))
    # fp32 inputs use an fp32 (tf32 on GPU) GEMM; the interpreter mishandles bf16 casts
    dot_fp32 = (x4.dtype == torch.float32) or interpreting()
    cd = c if dot_fp32 else c.to(x4.dtype)
    cc = (c * c).sum(-1).contiguous()  # [G, NC] fp32
    BLOCK_N, BLOCK_C, nw, ns = launch_config("kmeans_assign", BLOCK_D, x4.dtype, capability(x.device))
    BLOCK_C = min(BLOCK_C, max(16, next_pow2(NC)))
    grid = (G, triton.cdiv(N, BLOCK_N))
    _kmeans_assign_kernel[grid](
        x4, c, cd, cc, lab, dist if return_dist else lab,
        H, N, NC, D,
        x4.stride(0), x4.stride(1), x4.stride(2), x4.stride(3),
        c.stride(0), c.stride(1),
        lab.stride(0), dist.stride(0) if return_dist else 0,
        NORMALIZE=bool(normalize), RETURN_DIST=bool(return_dist), DOT_FP32=dot_fp32,
        BLOCK_N=BLOCK_N, BLOCK_C=BLOCK_C, BLOCK_D=BLOCK_D, NUM_STAGES=ns, num_warps=nw,
    )
    return lab, dist


def _reference(x, centroids, normalize, return_dist, label_bits):
    lab, dist = kmeans_assign_ref(x, centroids, normalize=normalize, return_dist=True)
    return lab.to(_LABEL_DTYPES[label_bits]), (dist if return_dist else dist.new_empty(0))


@torch.library.custom_op("adacluster::kmeans_assign", mutates_args=(), device_types="cuda")
def _kmeans_assign_op(x: torch.Tensor, centroids: torch.Tensor, normalize: bool, return_dist: bool,
                      label_bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    return _launch(x, centroids, normalize, return_dist, label_bits)


@_kmeans_assign_op.register_fake
def _(x, centroids, normalize, return_dist, label_bits):
    G = x.shape[0] * (x.shape[1] if x.dim() == 4 else 1)
    N = x.shape[-2]
    lab = x.new_empty(G, N, dtype=_LABEL_DTYPES[label_bits])
    return lab, x.new_empty((G, N) if return_dist else (0,), dtype=torch.float32)


register_cpu(_kmeans_assign_op, _launch, _reference)


def kmeans_assign(x: torch.Tensor, centroids: torch.Tensor, *, normalize: bool = False,
                  return_dist: bool = False, labels_dtype: torch.dtype = torch.int32):
    """Nearest centroid of every token (the custom op `adacluster::kmeans_assign`).

    x: [G, N, D] or [B, H, N, D] (any strides), fp16 / bf16 / fp32.
    centroids: float32 [G, C, D].
    normalize: L2-normalise each token first (query clustering by angle), in-kernel.
    labels_dtype: int32 or int16 (C <= 32767; what `cluster_sort.sort_by_cluster` sorts on).
    Returns labels [G, N] in labels_dtype; with return_dist also dist float32 [G, N] =
    ‖x − c_label‖ (x normalised if requested).
    """
    bits = {torch.int16: 16, torch.int32: 32}.get(labels_dtype)
    if bits is None:
        raise ValueError(f"kmeans_assign: labels_dtype must be torch.int16 or torch.int32, got {labels_dtype}")
    lab, dist = _kmeans_assign_op(x, centroids, bool(normalize), bool(return_dist), bits)
    return (lab, dist) if return_dist else lab
