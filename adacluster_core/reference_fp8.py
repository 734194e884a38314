"""fp32 torch emulation of `kernels.varblock_attn_fp8` (tests, the GPU check): the same operands
rounded the same way, then exact arithmetic.

Emulated: the query rows rounded in the kernel (one scale per row), the keys / values as the gather
step stored them, P rounded to e4m3 as P x p_scale (relative to the row's final maximum; the kernel
uses its running maximum, so a probability may round differently: the emulation's tolerance covers
that), the pooled tail in q's dtype with P unrounded. Not emulated: fp32 summation order.
"""
from __future__ import annotations

import torch

from .quant import P_SCALE, dequantize_v, quantize_rows


def varblock_attention_fp8_ref(q, kq, k_scale, vq, v_scale, perm_q, q_offsets, range_start, range_end, scale,
                               tail_keys=None, tail_values=None, tail_bias=None, *, p_scale: float | None = P_SCALE,
                               chunk: int = 4096) -> torch.Tensor:
    """Arguments as `kernels.varblock_attn_fp8.varblock_attention_fp8` (q [G, N, D] or [B, H, N, D]);
    returns q's shape and dtype. p_scale None: P is not rounded (tests measure what rounding P adds)."""
    shape = q.shape
    q3 = q.reshape(-1, shape[-2], shape[-1])
    G, N, D = q3.shape
    Nk = kq.shape[1]
    qk = "int8" if kq.dtype == torch.int8 else "fp8"
    pv_fp8 = vq.dtype == torch.float8_e4m3fn
    q8, q_sc = quantize_rows(q3, qk)
    kf = kq.float() * k_scale[..., None]                      # the shifted keys
    vf = dequantize_v(vq, v_scale, Nk) / v_scale[:, None, None]  # values / v_scale, as the kernel sums them
    has_tail = tail_keys is not None and tail_bias is not None and tail_keys.shape[1] > 0
    Cq = q_offsets.shape[1] - 1
    out = torch.zeros(G, N, D, dtype=torch.float32, device=q.device)
    rows = torch.arange(N, device=q.device)
    keys = torch.arange(Nk, device=q.device)
    for g in range(G):
        cl = torch.searchsorted(q_offsets[g, 1:].long().contiguous(), rows, right=True).clamp(max=Cq - 1)
        rs, re = range_start[g].long(), range_end[g].long()
        allowed = ((keys.view(1, 1, Nk) >= rs.unsqueeze(-1)) & (keys.view(1, 1, Nk) < re.unsqueeze(-1))).any(1)
        pq = perm_q[g].long()
        for s in range(0, N, chunk):
            e = min(N, s + chunk)
            qr = pq[s:e]
            sc = (q8[g, qr].float() * q_sc[g, qr, None]) @ kf[g].T * scale
            sc = sc.masked_fill(~allowed[cl[s:e]], float("-inf"))
            parts = [sc]
            if has_tail:
                Cqt = tail_bias.shape[1]
                tb = torch.full((e - s, tail_keys.shape[1]), float("-inf"), device=q.device)
                in_t = cl[s:e] < Cqt
                tb[in_t] = tail_bias[g].float()[cl[s:e][in_t]]
                parts.append((q3[g, qr].float() @ tail_keys[g].float().T) * scale + tb)
            full = torch.cat(parts, 1)
            m = full.amax(1, keepdim=True)
            m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
            p = torch.exp(full - m)
            l = p.sum(1, keepdim=True)
            pk = p[:, :Nk]
            if pv_fp8 and p_scale is not None:
                pk = (pk * p_scale).to(torch.float8_e4m3fn).float() / p_scale
            o = pk @ vf[g]
            if has_tail:
                o = o + p[:, Nk:] @ tail_values[g].float()
            o = o * v_scale[g] / torch.where(l > 0, l, torch.ones_like(l))
            out[g, qr] = torch.where(l > 0, o, torch.zeros_like(o))
    return out.reshape(shape).to(q.dtype)
