"""Small helpers shared by the clustering kernels' python wrappers (no kernels here)."""
from __future__ import annotations

import os

import torch


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def as_bhnd(x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """View x ([G, N, D] or [B, H, N, D], any strides) as 4-D without copying.
    Returns (x4 [B, H, N, D], G, H)."""
    if x.dim() == 3:
        x4 = x.unsqueeze(1)
    elif x.dim() == 4:
        x4 = x
    else:
        raise ValueError(f"expected a [G, N, D] or [B, H, N, D] tensor, got shape {tuple(x.shape)}")
    B, H = x4.shape[0], x4.shape[1]
    return x4, B * H, H
