"""The fp32 torch form of the 8-bit experiment's kernels (`attn_kernel`, `gather_quant`; issue 27, stopped:
docs/KERNEL_NOTES.md "fp8"): the quantisation, the per-(batch, head) statistics it needs, and the
emulation `tests/core/test_fp8_experiment.py` and `bench/fp8_steps.py --check` compare the kernels with.

Scales (one per key row, one per query row, one per (batch, head) for V) only keep values inside the
8-bit range: e4m3 is a float format, so its relative rounding (3 mantissa bits) is the same at every
magnitude. Keys are shifted by their mean over the sequence first: that adds the same q·mean to every
logit of a query row (the softmax is unchanged) and removes the large shared component that would
otherwise set the rounding error of every key.

Emulated by `varblock_attention_fp8_ref`: the query rows rounded in the kernel (one scale per row),
the keys / values as the gather step stored them, P rounded to e4m3 as P x p_scale (relative to the
row's final maximum; the kernel uses its running maximum, so a probability may round differently:
tests bound the difference by the error rounding P adds), the pooled tail in q's dtype with P
unrounded. Not emulated: fp32 summation order.
"""
from __future__ import annotations

import torch

FP8_MAX = 448.0    # largest finite e4m3 (float8_e4m3fn)
INT8_MAX = 127.0
P_SCALE = 448.0    # P in [0, 1] is cast as P x 448: probabilities down to ~4e-6 stay non-zero

def _scale(amax: torch.Tensor, qmax: float) -> torch.Tensor:
    return torch.where(amax > 0, amax / qmax, torch.ones_like(amax))


def to_8bit(x: torch.Tensor, qk: str) -> torch.Tensor:
    """x already divided by its scale -> e4m3, or int8 rounded to nearest (ties away from zero, as
    the kernel)."""
    if qk == "int8":
        return torch.where(x >= 0, x + 0.5, x - 0.5).trunc().clamp(-127, 127).to(torch.int8)
    return x.to(torch.float8_e4m3fn)


def quantize_kv(k_rows: torch.Tensor, v_rows: torch.Tensor, k_mean: torch.Tensor | None = None,
                v_scale: torch.Tensor | None = None, *, qk: str = "fp8", pv: str = "fp8", k_scales: str = "row"):
    """K / V rows in cluster order ``[G, Nk, D]`` -> (kq, k_scale fp32 [G, Nk], vq, v_scale fp32 [G]), the
    torch form of `kernels.gather_quant.gather_quant_kv`. k_mean fp32 [G, D] is subtracted from the
    keys first (None: the rows' own mean); v_scale fp32 [G] (None: max |v_rows| / 448).
    qk: "fp8" (e4m3) | "int8"; pv: "fp8" (e4m3, stored transposed ``[G, D, Nkp]``, Nkp = Nk rounded up
    to 16, zeros after Nk: K-major for P·V) | "bf16" (v_rows as they are, scale 1); k_scales: "row" | "group"."""
    G, Nk, D = k_rows.shape
    kf = k_rows.float()
    if k_mean is None:
        k_mean = kf.mean(1)
    kc = kf - k_mean.float().view(G, 1, D)
    qmax = INT8_MAX if qk == "int8" else FP8_MAX
    amax = kc.abs().amax(-1) if k_scales == "row" else kc.abs().amax((1, 2))[:, None].expand(G, Nk)
    k_scale = _scale(amax, qmax).contiguous()
    kq = to_8bit(kc / k_scale[..., None], qk).contiguous()
    if pv == "bf16":
        return kq, k_scale, v_rows.contiguous(), torch.ones(G, device=kf.device)
    if v_scale is None:
        v_scale = _scale(v_rows.float().abs().amax((1, 2)), FP8_MAX)
    v_scale = v_scale.float().contiguous()
    Nkp = (Nk + 15) // 16 * 16
    vt = torch.zeros(G, D, Nkp, dtype=torch.float32, device=v_rows.device)
    vt[:, :, :Nk] = (v_rows.float() / v_scale[:, None, None]).transpose(1, 2)
    return kq, k_scale, vt.to(torch.float8_e4m3fn), v_scale


def quantize_rows(x: torch.Tensor, qk: str = "fp8") -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's query rounding: one scale per row (last dim) -> (8-bit x / scale, scale)."""
    xf = x.float()
    sc = _scale(xf.abs().amax(-1), INT8_MAX if qk == "int8" else FP8_MAX)
    return to_8bit(xf / sc[..., None], qk), sc


def dequantize_v(vq: torch.Tensor, v_scale: torch.Tensor, nk: int) -> torch.Tensor:
    """`quantize_kv`'s values back to fp32 rows [G, Nk, D] (either layout)."""
    if vq.dtype == torch.float8_e4m3fn:
        return vq[:, :, :nk].float().transpose(1, 2) * v_scale[:, None, None]
    return vq.float() * v_scale[:, None, None]


def gather_quant_kv_ref(k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor, k_mean: torch.Tensor,
                        v_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference for `kernels.gather_quant.gather_quant_kv` (same arguments and results)."""
    def rows(x):
        x3 = x.reshape(-1, x.shape[-2], x.shape[-1])
        return torch.gather(x3, 1, idx.long().unsqueeze(-1).expand(-1, -1, x3.shape[-1]))
    kq, ks, vq, _ = quantize_kv(rows(k), rows(v), k_mean, v_scale)
    return kq, ks, vq


def varblock_attention_fp8_ref(q, kq, k_scale, vq, v_scale, perm_q, q_offsets, range_start, range_end, scale,
                               tail_keys=None, tail_values=None, tail_bias=None, *, p_scale: float | None = P_SCALE,
                               chunk: int = 4096) -> torch.Tensor:
    """Arguments as `attn_kernel.varblock_attention_fp8` (q [G, N, D] or [B, H, N, D]);
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


def kv_stats(k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """k, v ``[B, H, N, D]`` (any strides) -> (k_mean fp32 [G, D]: the keys' mean over the sequence,
    v_scale fp32 [G]: max |v| / 448 per (batch, head)). Reductions only: no copy of k or v."""
    B, H, N, D = k.shape
    k_mean = k.mean(dim=2, dtype=torch.float32).reshape(B * H, D)
    vmax = torch.maximum(v.amax(dim=(2, 3)), -v.amin(dim=(2, 3))).float().reshape(B * H)
    return k_mean, _scale(vmax, FP8_MAX)


