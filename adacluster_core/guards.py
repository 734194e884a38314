"""Input guards of `sparse_attention` (kept apart from the attention path so it can change freely).

* `check_args`: the core API's one rule for odd inputs: a MALFORMED argument (not a floating
  tensor, q/k/v that disagree on batch, heads, head_dim, dtype or device, a key_mask whose key
  dimension is not the key length, an always_dense_range outside [-N, N] or reversed, a scale
  that is not a finite number > 0) raises ValueError naming the argument. A WELL-FORMED call the
  sparse path does not cover (float64, head_dim 96, N < min_tokens, cross-attention, a
  query-dependent mask, non-finite values, no Triton) runs dense with a reason in stats.
* `FiniteCheck`: "are q, k, v all finite?" without stalling the GPU: one reduction per tensor
  is queued BEFORE the sparse kernels and its 4-byte result copied to pinned host memory behind
  a CUDA event; the host waits on that event only AFTER the sparse work is queued, so the GPU
  never idles for it (the host waits for the check kernel, which precedes the sparse kernels
  in the stream). On the rare non-finite call the sparse result is dropped and the call runs
  dense. On CPU the check is a plain extra read of q, k, v (docs/DESIGN.md, "Untrusted input").
* `triton_usable`: where the Triton kernels can run (CUDA, or the interpreter under
  TRITON_INTERPRET=1, which the CPU tests use).
* `guard_interrupt`: wraps a caller's interrupt check (ComfyUI's
  `throw_exception_if_processing_interrupted`) so the exception it raises passes through the
  core's dense fallback unchanged.
"""
from __future__ import annotations

import math
import numbers
import os
from typing import Callable, Optional

import torch


# ---- odd inputs: ValueError naming the argument ---------------------------------------------
def _dt(t: torch.Tensor) -> str:
    return str(t.dtype).replace("torch.", "")


def check_args(q, k, v, scale, key_mask, always_dense_range, always_dense_prefix) -> None:
    """Raise ValueError naming the first malformed argument (see the module docstring)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be [B, H, N, D], got shape {tuple(t.shape)}")
        if not t.dtype.is_floating_point:
            raise ValueError(f"{name} must have a floating-point dtype, got {_dt(t)}")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise ValueError(f"{name} dtype {_dt(t)} differs from q's {_dt(q)}")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device}, q on {q.device}")
        if t.shape[:2] != q.shape[:2] or t.shape[3] != q.shape[3]:
            raise ValueError(f"{name} shape {tuple(t.shape)} does not match q's {tuple(q.shape)} in B, H or head_dim")
    if v.shape[2] != k.shape[2]:
        raise ValueError(f"v has {v.shape[2]} tokens, k has {k.shape[2]}")
    if scale is not None:
        if isinstance(scale, torch.Tensor):
            raise ValueError("scale must be a Python number, not a tensor")
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(float(scale)) \
                or float(scale) <= 0:
            raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
    Nk = k.shape[2]
    if key_mask is not None:
        if not isinstance(key_mask, torch.Tensor):
            raise ValueError(f"key_mask must be a torch.Tensor, got {type(key_mask).__name__}")
        if not (key_mask.dtype == torch.bool or key_mask.dtype.is_floating_point):
            raise ValueError(f"key_mask must be bool or floating point, got {_dt(key_mask)}")
        if key_mask.dim() == 0 or key_mask.dim() > 4 or key_mask.shape[-1] != Nk:
            raise ValueError(f"key_mask shape {tuple(key_mask.shape)}: the last dimension must be the key "
                             f"length {Nk} (1-4 dims)")
        if key_mask.dim() >= 2 and key_mask.shape[0] not in (1, q.shape[0]):
            raise ValueError(f"key_mask batch dimension {key_mask.shape[0]} is neither 1 nor B={q.shape[0]}")
    N = q.shape[2]
    if always_dense_prefix is not None:
        if isinstance(always_dense_prefix, bool) or not isinstance(always_dense_prefix, numbers.Integral) \
                or not 0 <= int(always_dense_prefix) <= N:
            raise ValueError(f"always_dense_prefix must be an int in [0, N={N}], got {always_dense_prefix!r}")
    if always_dense_range is not None:
        ok = isinstance(always_dense_range, (tuple, list)) and len(always_dense_range) == 2
        ends = []
        for e in (always_dense_range if ok else ()):
            if e is None:
                ends.append(None)
            elif isinstance(e, bool) or not isinstance(e, numbers.Integral) or not -N <= int(e) <= N:
                ok = False
            else:
                ends.append(int(e) + N if int(e) < 0 else int(e))
        if ok:
            r0 = 0 if ends[0] is None else ends[0]
            r1 = N if ends[1] is None else ends[1]
            ok = r0 <= r1
        if not ok:
            raise ValueError(f"always_dense_range must be (start, stop) with ints (or None) in [-N, N] and "
                             f"start <= stop after negative indices count from N={N}, got {always_dense_range!r}")


def normalise_range(N: int, always_dense_range, always_dense_prefix) -> tuple[int, int]:
    """(start, stop) of the always-dense tokens after check_args ((0, 0) = none)."""
    if always_dense_range is None and always_dense_prefix:
        return 0, int(always_dense_prefix)
    if always_dense_range is None:
        return 0, 0
    a, b = always_dense_range
    r0 = 0 if a is None else (int(a) + N if int(a) < 0 else int(a))
    r1 = N if b is None else (int(b) + N if int(b) < 0 else int(b))
    return (r0, r1) if r1 > r0 else (0, 0)


# ---- backend availability -------------------------------------------------------------------
def triton_usable(device: torch.device) -> bool:
    """True where the Triton kernels run: CUDA with Triton installed, or any device under
    TRITON_INTERPRET=1 (the interpreter; the CPU tests rely on it)."""
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return False
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


# ---- non-finite inputs ----------------------------------------------------------------------
class FiniteCheck:
    """Queue "all of q, k, v finite?" now; read it later (`ok()`) after more work is queued."""

    def __init__(self, *ts: torch.Tensor):
        # aminmax propagates NaN and keeps ±inf, and reads any strides (no flattening copy);
        # x * 0 is 0 for finite x and NaN for NaN / ±inf: the sum is 0 iff all are finite
        ext = torch.stack([m for t in ts for m in torch.aminmax(t)])
        flag = (ext * 0).sum(dtype=torch.float32).reshape(1)
        self._event = None
        if flag.device.type == "cuda":
            self._host = torch.empty(1, dtype=torch.float32, pin_memory=True)
            self._host.copy_(flag, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._host = flag.cpu()   # no copy on CPU

    def ok(self) -> bool:
        """Waits for the check kernel only (not for work queued after it)."""
        if self._event is not None:
            self._event.synchronize()
        return bool(self._host.numpy()[0] == 0.0)


# ---- interrupt ------------------------------------------------------------------------------
class StopRequested(Exception):
    """Carries the exception a caller's interrupt check raised through the core's fallbacks."""

    def __init__(self, original: BaseException):
        super().__init__(repr(original))
        self.original = original


def guard_interrupt(check: Optional[Callable[[], None]]) -> Optional[Callable[[], None]]:
    """`check` wrapped so that whatever it raises travels as StopRequested (None stays None)."""
    if check is None:
        return None

    def guarded() -> None:
        try:
            check()
        except BaseException as e:  # noqa: BLE001 - re-raised unchanged by sparse_attention
            raise StopRequested(e) from e

    return guarded
