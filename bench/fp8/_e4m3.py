"""Triton helpers shared by the 8-bit kernels (no kernel here)."""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def to_e4m3(x, ROUND_FIRST: tl.constexpr):
    """x (fp32, within +-448) -> float8e4nv. ROUND_FIRST (the interpreter only): round to the e4m3
    grid in fp32 first (nearest, ties to even) so that the cast is exact: the interpreter's own
    cast turns values that carry into the next power of two into half of it (triton 3.9)."""
    if ROUND_FIRST:
        e = tl.maximum(tl.floor(tl.log2(tl.abs(x) + 1e-30)), -6.0)
        ulp = tl.exp2(e - 3.0)
        y = x / ulp
        y = (y + 12582912.0) - 12582912.0   # 1.5 * 2**23: fp32 round to nearest even
        x = y * ulp
    return x.to(tl.float8e4nv)
