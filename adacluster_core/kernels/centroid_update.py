"""K-means update: fp32 segment means of tokens by cluster (sort-based, deterministic).

One program per (group, cluster) sums the rows of its cluster, read through the permutation
from `cluster_sort.sort_by_cluster`; an empty cluster keeps its old centroid.
The custom op `adacluster::centroid_update`: Triton on CUDA; on the CPU the interpreter under
TRITON_INTERPRET=1, else the references `torch_ref.centroid_update_ref` / `cluster_bounds_ref`.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ..cluster_sort import sort_by_cluster
from ._common import as_bhnd, capability, interpreting, launch_config, next_pow2, register_cpu
from .torch_ref import centroid_update_ref, cluster_bounds_ref


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


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _launch(x: torch.Tensor, labels: torch.Tensor, old: Optional[torch.Tensor], normalize: bool,
            perm: Optional[torch.Tensor], offsets: Optional[torch.Tensor], bounds: bool, num_clusters: int,
            out_dtype: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The Triton launch (CUDA, or the interpreter on CPU). Returns (centroids, counts, kmax,
    kmin); kmax / kmin are empty tensors without `bounds` (the op's outputs never alias)."""
    x4, G, H = as_bhnd(x)
    N, D = x4.shape[2], x4.shape[3]
    NC = int(num_clusters)
    odt = _DTYPES[out_dtype]
    if old is not None:
        old = old.to(device=x.device, dtype=torch.float32).contiguous()
    # the interpreter truncates fp32 -> bf16 stores: store fp32 there and round with torch
    out = torch.empty(G, NC, D, dtype=torch.float32 if interpreting() else odt, device=x.device)
    cnt = torch.empty(G, NC, dtype=torch.int32, device=x.device)
    kmax = torch.empty((G, NC, D) if bounds else (0,), device=x.device)
    kmin = torch.empty((G, NC, D) if bounds else (0,), device=x.device)
    if G == 0 or NC == 0:
        return out.to(odt), cnt, kmax, kmin
    if perm is None or offsets is None:
        perm, offsets = sort_by_cluster(labels, NC + 1)
    # int32 / int64 perm and strided offset rows are read as they are (no per-call copies)
    if perm.dtype not in (torch.int32, torch.int64) or perm.stride(1) != 1:
        perm = perm.to(torch.int32).contiguous()
    if offsets.dtype != torch.int32 or offsets.stride(1) != 1:
        offsets = offsets.to(torch.int32).contiguous()
    if x4.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        x4 = x4.float()
    BLOCK_N, nw = launch_config("centroid_update", D, x4.dtype, capability(x.device), n_tokens=N, n_clusters=NC)
    _centroid_update_kernel[(G, NC)](
        x4, perm, offsets, old if old is not None else out, out, cnt,
        kmax if bounds else out, kmin if bounds else out,
        H, NC, D,
        x4.stride(0), x4.stride(1), x4.stride(2), x4.stride(3),
        perm.stride(0), offsets.stride(0), out.stride(0), out.stride(1), cnt.stride(0),
        NORMALIZE=bool(normalize), BOUNDS=bool(bounds), HAS_OLD=old is not None,
        BLOCK_N=BLOCK_N, BLOCK_D=max(16, next_pow2(D)), num_warps=nw,
    )
    return out.to(odt), cnt, kmax, kmin  # the cast is a no-op unless interpreting


def _reference(x, labels, old, normalize, perm, offsets, bounds, num_clusters, out_dtype):
    if old is None:
        G = x.shape[0] * (x.shape[1] if x.dim() == 4 else 1)
        old = torch.zeros(G, int(num_clusters), x.shape[-1], device=x.device)
    c, n = centroid_update_ref(x, labels, old, normalize=normalize)
    if bounds:
        kmax, kmin = cluster_bounds_ref(x, labels, int(num_clusters))
    else:
        kmax, kmin = c.new_empty(0), c.new_empty(0)
    return c.to(_DTYPES[out_dtype]), n, kmax, kmin


@torch.library.custom_op("adacluster::centroid_update", mutates_args=(), device_types="cuda")
def _centroid_update_op(x: torch.Tensor, labels: torch.Tensor, old: Optional[torch.Tensor], normalize: bool,
                        perm: Optional[torch.Tensor], offsets: Optional[torch.Tensor], bounds: bool,
                        num_clusters: int, out_dtype: str
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _launch(x, labels, old, normalize, perm, offsets, bounds, num_clusters, out_dtype)


@_centroid_update_op.register_fake
def _(x, labels, old, normalize, perm, offsets, bounds, num_clusters, out_dtype):
    G = x.shape[0] * (x.shape[1] if x.dim() == 4 else 1)
    NC, D = int(num_clusters), x.shape[-1]
    kb = (G, NC, D) if bounds else (0,)
    return (x.new_empty(G, NC, D, dtype=_DTYPES[out_dtype]), x.new_empty(G, NC, dtype=torch.int32),
            x.new_empty(kb, dtype=torch.float32), x.new_empty(kb, dtype=torch.float32))


register_cpu(_centroid_update_op, _launch, _reference)


def centroid_update(x: torch.Tensor, labels: torch.Tensor, old_centroids: torch.Tensor | None, *,
                    normalize: bool = False, perm: torch.Tensor | None = None,
                    offsets: torch.Tensor | None = None, bounds: bool = False,
                    num_clusters: int | None = None, out_dtype: torch.dtype = torch.float32):
    """Segment means of x by label (and, with bounds=True, the per-cluster max / min); the custom
    op `adacluster::centroid_update`.

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
    `torch_ref.cluster_bounds_ref` computes them, in the same pass.
    """
    NC = int(num_clusters) if old_centroids is None else old_centroids.shape[1]
    name = str(out_dtype).replace("torch.", "")
    out, cnt, kmax, kmin = _centroid_update_op(x, labels, old_centroids, bool(normalize), perm, offsets,
                                               bool(bounds), NC, name)
    return (out, cnt, kmax, kmin) if bounds else (out, cnt)
