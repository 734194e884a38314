"""8-bit operands for the fp8 attention path, torch side: the per-(batch, head) statistics the gather step
needs, and (re-exported from `kernels.torch_ref_fp8`) the quantisation in torch.

Scales (one per key row, one per query row, one per (batch, head) for V) only keep values inside the
8-bit range: e4m3 is a float format, so its relative rounding (3 mantissa bits) is the same at every
magnitude. Keys are shifted by their mean over the sequence first: that adds the same q·mean to every
logit of a query row (the softmax is unchanged) and removes the large shared component that would
otherwise set the rounding error of every key.
"""
from __future__ import annotations

import torch

from .kernels._common import FP8_MAX, INT8_MAX, P_SCALE  # noqa: F401
from .kernels.torch_ref_fp8 import _scale, dequantize_v, quantize_kv, quantize_rows, to_8bit  # noqa: F401

PRECISIONS = ("bf16", "fp8", "auto")


def kv_stats(k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """k, v ``[B, H, N, D]`` (any strides) -> (k_mean fp32 [G, D]: the keys' mean over the sequence,
    v_scale fp32 [G]: max |v| / 448 per (batch, head)). Reductions only: no copy of k or v."""
    B, H, N, D = k.shape
    k_mean = k.mean(dim=2, dtype=torch.float32).reshape(B * H, D)
    vmax = torch.maximum(v.amax(dim=(2, 3)), -v.amin(dim=(2, 3))).float().reshape(B * H)
    return k_mean, _scale(vmax, FP8_MAX)


