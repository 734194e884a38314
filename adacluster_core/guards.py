"""Input guards of `sparse_attention` (kept apart from the attention path so it can change freely).

* `check_args`: the core API's one rule for odd inputs: a MALFORMED argument (not a floating
  tensor, q/k/v that disagree on batch, heads, head_dim, dtype or device, a key_mask whose key
  dimension is not the key length, an always_dense_range outside [-N, N] or reversed, a scale
  that is not a finite number > 0) raises ValueError naming the argument. A WELL-FORMED call the
  sparse path does not cover (float64, head_dim 96, N < min_tokens, cross-attention, a
  query-dependent mask, non-finite values, no Triton) runs dense with a reason in stats.
* `FiniteCheck`: "are q, k, v (and a float key_mask) finite, can the call overflow float32, is
  every key of a row masked?" without stalling the GPU: one reduction per tensor is queued
  BEFORE the sparse kernels and its small result copied to pinned host memory behind a CUDA
  event; the host waits on that event only AFTER the sparse work is queued (the check kernel
  precedes the sparse kernels in the stream). The sparse output is checked too (queued after the
  sparse kernels: the host waits for the call to finish, the GPU idles only for the next
  launch). On any of these the sparse result is dropped and the call runs dense. On CPU the
  check is a plain extra read of q, k, v and of the output (docs/DESIGN.md, "Untrusted input").
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
        if t.shape[3] == 0:
            raise ValueError(f"{name} must have head_dim > 0, got shape {tuple(t.shape)}")
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


# ---- non-finite inputs, overflow, every key masked ---------------------------------------------
F32_MAX = float(torch.finfo(torch.float32).max)
# a call whose q.k scores, k-means distances or value sums could leave float32 (the kernels accumulate
# in fp32) runs dense: the bounds below use the largest |x| of q, k, v (read from the same aminmax)
OVERFLOW_MARGIN = 0.25
CHECK_OK, CHECK_NON_FINITE, CHECK_OVERFLOW, CHECK_ALL_MASKED = 0, 1, 2, 3


class FiniteCheck:
    """Queue "may this call run sparse?" now; read it later (`code()`) after more work is queued.

    One flag vector, computed on the device from one aminmax per tensor (no flattening copy):
      [0] a NaN / Inf in q, k or v, or a NaN / +Inf in a float key_mask (-inf = masked, fine);
      [1] overflow risk: the largest |q|·|k|·D·scale (a score), 4·|k|²·D (a k-means distance) or
          |v|·N (a value sum of the pooled tail) reaches OVERFLOW_MARGIN × the float32 maximum;
      [2] a (batch, head) whose every key is masked (its result is what dense gives for that mask).
    `check_output(out)` queues "is the sparse output finite?" behind the sparse work; `code()` reads
    both: 0 = fine, else CHECK_NON_FINITE / CHECK_OVERFLOW / CHECK_ALL_MASKED (first that applies;
    a non-finite output counts as CHECK_OVERFLOW). On CUDA the flags travel to pinned host memory
    behind events: the host waits for the input check (queued before the sparse kernels) and for
    the output check (queued after them, so the GPU idles only for the next launch)."""

    def __init__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask=None, masked=None,
                 scale: float | None = None):
        ext = [m.float() for t in (q, k, v) for m in torch.aminmax(t)]   # qmin, qmax, kmin, kmax, vmin, vmax
        e = torch.stack(ext)
        bad = torch.isnan(e).any() | torch.isinf(e).any()
        if key_mask is not None and key_mask.dtype != torch.bool and key_mask.numel():
            mx = key_mask.amax().float()
            bad = bad | torch.isnan(mx) | (mx == float("inf"))
        a = torch.where(torch.isfinite(e), e.abs(), torch.zeros_like(e)).double()
        aq, ak, av = torch.maximum(a[0], a[1]), torch.maximum(a[2], a[3]), torch.maximum(a[4], a[5])
        D, N = q.shape[-1], k.shape[-2]
        sc = float(scale) if scale is not None else D ** -0.5
        lim = OVERFLOW_MARGIN * F32_MAX
        over = (aq * ak * (D * sc) >= lim) | (ak * ak * (4.0 * D) >= lim) | (av * max(N, 1) >= lim)
        if masked is not None and masked.numel():
            all_masked = masked.all(dim=-1).any()
        else:
            all_masked = torch.zeros((), dtype=torch.bool, device=q.device)
        flags = torch.stack([bad, over, all_masked]).to(torch.float32)
        self._event = self._out_event = None
        self._out_host = None
        if flags.device.type == "cuda":
            self._host = torch.empty(3, dtype=torch.float32, pin_memory=True)
            self._host.copy_(flags, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._host = flags.cpu()   # no copy on CPU

    def check_output(self, out: torch.Tensor) -> None:
        """Queue "is `out` all finite?" (after the sparse work that produced it)."""
        if out.numel() == 0:
            return
        mn, mx = torch.aminmax(out)
        flag = ((mn.float() * 0 + mx.float() * 0) != 0).to(torch.float32).reshape(1)   # NaN != 0
        if flag.device.type == "cuda":
            self._out_host = torch.empty(1, dtype=torch.float32, pin_memory=True)
            self._out_host.copy_(flag, non_blocking=True)
            self._out_event = torch.cuda.Event()
            self._out_event.record()
        else:
            self._out_host = flag.cpu()

    def code(self) -> int:
        """0 = fine, else the first CHECK_* that applies (waits for the check kernels only)."""
        if self._event is not None:
            self._event.synchronize()
        f = self._host.numpy()
        if f[0] != 0.0:
            return CHECK_NON_FINITE
        if f[1] != 0.0:
            return CHECK_OVERFLOW
        if f[2] != 0.0:
            return CHECK_ALL_MASKED
        if self._out_host is not None:
            if self._out_event is not None:
                self._out_event.synchronize()
            if self._out_host.numpy()[0] != 0.0:
                return CHECK_OVERFLOW
        return CHECK_OK

    def ok(self) -> bool:
        return self.code() == CHECK_OK


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
