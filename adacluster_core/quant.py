"""8-bit operands for `kernels.varblock_attn_fp8` (torch only, no kernel here): the gather step's
quantisation of K / V and the emulation of the kernel's in-register query and P rounding.

Scales (one per key row, one per query row, one per (batch, head) for V) only keep values inside the
8-bit range: e4m3 is a float format, so its relative rounding (3 mantissa bits) is the same at every
magnitude. Keys are shifted by their mean over the rows of a group first: that adds the same
q·mean to every logit of a query row (the softmax is unchanged) and removes the large shared
component that would otherwise set the rounding error of every key.
"""
from __future__ import annotations

import torch

FP8_MAX = 448.0    # largest finite e4m3 (float8_e4m3fn)
INT8_MAX = 127.0
P_SCALE = 448.0    # P in [0, 1] is cast as P x 448: probabilities down to ~4e-6 stay non-zero
PRECISIONS = ("bf16", "fp8", "auto")


def _scale(amax: torch.Tensor, qmax: float) -> torch.Tensor:
    return torch.where(amax > 0, amax / qmax, torch.ones_like(amax))


def to_8bit(x: torch.Tensor, qk: str) -> torch.Tensor:
    """x already divided by its scale -> e4m3, or int8 rounded to nearest (ties away from zero, as
    the kernel)."""
    if qk == "int8":
        return torch.where(x >= 0, x + 0.5, x - 0.5).trunc().clamp(-127, 127).to(torch.int8)
    return x.to(torch.float8_e4m3fn)


def kv_stats(k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """k, v ``[B, H, N, D]`` (any strides) -> (k_mean fp32 [G, D]: the keys' mean over the sequence,
    v_scale fp32 [G]: max |v| / 448 per (batch, head)). Reductions only: no copy of k or v."""
    B, H, N, D = k.shape
    k_mean = k.mean(dim=2, dtype=torch.float32).reshape(B * H, D)
    vmax = torch.maximum(v.amax(dim=(2, 3)), -v.amin(dim=(2, 3))).float().reshape(B * H)
    return k_mean, _scale(vmax, FP8_MAX)


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
