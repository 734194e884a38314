"""Row gather of K and V into cluster order, quantised for the 8-bit attention kernel (one launch).

    kq, k_scale, vq = gather_quant_kv(k, v, idx, k_mean, v_scale)

* ``k, v [B, H, N, D]`` (any strides, unit stride along D) or ``[G, N, D]``; ``idx int [G, M]`` the rows
  in cluster order (as `gather_rows.gather_kv`);
* ``k_mean fp32 [G, D]``: subtracted from every key (the per-group mean: softmax-invariant);
* ``v_scale fp32 [G]``: values are stored as v / v_scale.

Returns ``kq`` e4m3 ``[G, M, D]`` (k - k_mean, divided by one scale per row, ``k_scale fp32 [G, M]``) and
``vq`` e4m3 ``[G, D, Mp]``: the values transposed (Mp = M rounded up to 16, zeros after M), K-major for
the P·V product of fp8 MMA. The torch equivalent is `torch_ref.quantize_kv` of the gathered
rows; the interpreter rounds in fp32 first (`_e4m3.to_e4m3`).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from adacluster_core.kernels._common import as_bhnd, interpreting

from ._e4m3 import to_e4m3
from .torch_ref import gather_quant_kv_ref


@triton.jit
def _gather_quant_kernel(
    K, V, IDX, KMEAN, VSCALE, KQ, KS, VQ,
    H, M, MP,
    skb, skh, skn, svb, svh, svn,
    D: tl.constexpr, BLOCK_R: tl.constexpr, ROUND_FIRST: tl.constexpr,
):
    pid = tl.program_id(0)
    g = tl.program_id(1)
    g64 = g.to(tl.int64)
    b = g64 // H
    h = g64 % H
    rr = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    mr = rr < M
    rd = tl.arange(0, D)
    idx = tl.load(IDX + g64 * M + rr, mask=mr, other=0).to(tl.int64)
    k = tl.load(K + b * skb + h * skh + idx[:, None] * skn + rd[None, :], mask=mr[:, None], other=0.0).to(tl.float32)
    k = k - tl.load(KMEAN + g64 * D + rd)[None, :]
    amax = tl.max(tl.abs(k), 1)
    ks = tl.where(amax > 0, amax / 448.0, 1.0)
    rr64 = rr.to(tl.int64)
    tl.store(KQ + g64 * M * D + rr64[:, None] * D + rd[None, :], to_e4m3(tl.math.div_rn(k, ks[:, None]), ROUND_FIRST),
             mask=mr[:, None])
    tl.store(KS + g64 * M + rr, ks, mask=mr)
    v = tl.load(V + b * svb + h * svh + idx[:, None] * svn + rd[None, :], mask=mr[:, None], other=0.0).to(tl.float32)
    v = tl.math.div_rn(v, tl.load(VSCALE + g64) + tl.zeros_like(v))   # IEEE division: the torch form's bits
    # transposed store; rows M..MP-1 (the padding) are written as zeros by the last program
    mp = rr < MP
    tl.store(VQ + g64 * D * MP + rd[:, None].to(tl.int64) * MP + rr64[None, :], tl.trans(to_e4m3(v, ROUND_FIRST)),
             mask=mp[None, :])


def _launch(k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor, k_mean: torch.Tensor,
            v_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    k4, G, H = as_bhnd(k)
    v4, _, _ = as_bhnd(v)
    D = k4.shape[3]
    if D & (D - 1):
        raise ValueError(f"gather_quant_kv: head dim {D} is not a power of two")
    M = idx.shape[1]
    Mp = (M + 15) // 16 * 16
    if idx.dtype not in (torch.int32, torch.int64) or not idx.is_contiguous():
        idx = idx.to(torch.int32).contiguous()
    dev = k4.device
    kq = torch.empty(G, M, D, dtype=torch.float8_e4m3fn, device=dev)
    ks = torch.empty(G, M, dtype=torch.float32, device=dev)
    vq = torch.empty(G, D, Mp, dtype=torch.float8_e4m3fn, device=dev)
    if G == 0 or M == 0:
        return kq, ks, vq
    if k4.stride(3) != 1:
        k4 = k4.contiguous()
    if v4.stride(3) != 1:
        v4 = v4.contiguous()
    BLOCK_R, warps = (16, 4) if interpreting() else (64, 4)   # 64 rows: the transposed V store writes 64-byte runs
    grid = (triton.cdiv(Mp, BLOCK_R), G)
    _gather_quant_kernel[grid](
        k4, v4, idx, k_mean.float().contiguous(), v_scale.float().contiguous(), kq, ks, vq,
        H, M, Mp, k4.stride(0), k4.stride(1), k4.stride(2), v4.stride(0), v4.stride(1), v4.stride(2),
        D=D, BLOCK_R=BLOCK_R, ROUND_FIRST=interpreting(), num_warps=warps,
    )
    return kq, ks, vq


def gather_quant_kv(k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor, k_mean: torch.Tensor,
                    v_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shapes in the module docstring. The Triton kernel on CUDA and under TRITON_INTERPRET=1, else the
    torch form. No host sync."""
    k_mean, v_scale = k_mean.float().contiguous(), v_scale.float().contiguous()
    if k.is_cuda or interpreting():
        return _launch(k, v, idx, k_mean, v_scale)
    return gather_quant_kv_ref(k, v, idx, k_mean, v_scale)
