"""Row gather of K and V into the permuted (cluster-sorted) buffers, one launch for both.

    k_perm, v_perm = gather_kv(k, v, idx)   # k, v [B, H, N, D] (any strides); idx int [G, M]
    k_perm[g, r] = k[g // H, g % H, idx[g, r]]

Replaces two `torch.gather` calls with an element-wise index (the index is a [G, M, D] expand,
~1.2 TB/s on H200) by row copies (one index load per row, 16-byte vector loads/stores).
The custom op `adacluster::gather_kv`: Triton on CUDA; on the CPU the interpreter under
TRITON_INTERPRET=1, else the reference `torch_ref.gather_kv_ref` (torch.gather).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import as_bhnd, capability, launch_config, next_pow2, register_cpu
from .torch_ref import gather_kv_ref


@triton.jit
def _gather_kv_kernel(
    K, V, IDX, KO, VO,
    H, M, D,
    skb, skh, skn, skd,
    svb, svh, svn, svd,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    g = tl.program_id(1)
    b = (g // H).to(tl.int64)
    h = (g % H).to(tl.int64)
    rr = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    mr = rr < M
    rd = tl.arange(0, BLOCK_D)
    md = rd < D
    m2 = mr[:, None] & md[None, :]
    g64 = g.to(tl.int64)
    idx = tl.load(IDX + g64 * M + rr, mask=mr, other=0).to(tl.int64)
    k = tl.load(K + b * skb + h * skh + idx[:, None] * skn + rd[None, :] * skd, mask=m2, other=0.0)
    v = tl.load(V + b * svb + h * svh + idx[:, None] * svn + rd[None, :] * svd, mask=m2, other=0.0)
    o = g64 * M * D + rr[:, None].to(tl.int64) * D + rd[None, :]
    tl.store(KO + o, k, mask=m2)
    tl.store(VO + o, v, mask=m2)


def _launch(k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The Triton launch (CUDA, or the interpreter on CPU)."""
    k4, G, H = as_bhnd(k)
    v4, _, _ = as_bhnd(v)
    D = k4.shape[3]
    M = idx.shape[1]
    if idx.dtype not in (torch.int32, torch.int64) or not idx.is_contiguous():
        idx = idx.to(torch.int32).contiguous()  # int64 is read as is (torch.sort's indices)
    ko = torch.empty(G, M, D, dtype=k4.dtype, device=k4.device)
    vo = torch.empty(G, M, D, dtype=v4.dtype, device=v4.device)
    if G == 0 or M == 0:
        return ko, vo
    BLOCK_R, nw = launch_config("gather_kv", D, k4.dtype, capability(k.device))
    grid = (triton.cdiv(M, BLOCK_R), G)
    _gather_kv_kernel[grid](
        k4, v4, idx, ko, vo, H, M, D,
        k4.stride(0), k4.stride(1), k4.stride(2), k4.stride(3),
        v4.stride(0), v4.stride(1), v4.stride(2), v4.stride(3),
        BLOCK_R=BLOCK_R, BLOCK_D=max(16, next_pow2(D)), num_warps=nw,
    )
    return ko, vo


@torch.library.custom_op("adacluster::gather_kv", mutates_args=(), device_types="cuda")
def _gather_kv_op(k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _launch(k, v, idx)


@_gather_kv_op.register_fake
def _(k, v, idx):
    G, M, D = k.shape[0] * (k.shape[1] if k.dim() == 4 else 1), idx.shape[1], k.shape[-1]
    return k.new_empty(G, M, D), v.new_empty(G, M, D)


register_cpu(_gather_kv_op, _launch, gather_kv_ref)


def gather_kv(k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """k, v: [G, N, D] or [B, H, N, D] (same shape, any strides); idx int32 / int64 [G, M] row ids.
    Returns contiguous (k_perm, v_perm) [G, M, D] in k's / v's dtype (the custom op
    `adacluster::gather_kv`)."""
    return _gather_kv_op(k, v, idx)
