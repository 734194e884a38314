"""One attention call's decision: `plan_call(call, ctx) -> CallPlan`.

A video self-attention call (after families.classify_call) runs dense for the first reason that
applies (the reason the Stats node prints; README's troubleshooting table lists them), in this
order: warmup, layer rule, dtype, head_dim, token count, mask, planned dense layer, Triton, scale,
kernels still compiling, memory. Otherwise the plan carries everything the sparse path needs (the
layer's mode and config, the key mask, the K / V mode that fits), so the patcher's `_sparse_call`
executes it without deriving anything again. Starting the background compile of the warmup
(kernel_warmup.start) is the caller's step, not part of asking for a plan. No ComfyUI imports.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from .core import NO_TRITON, SUPPORTED_DTYPES, SUPPORTED_HEAD_DIMS, AdaClusterConfig, core_api
from . import kernel_warmup
from .families import AttentionCall, ForwardContext, check_mask
from .memory_guard import kv_rows_that_fit


@dataclasses.dataclass(frozen=True)
class CallContext:
    """Where a call happens: the run (this thread's lane, a RunState), the forward, the layer and the
    call's layout from classify_call (B, H, L, D, video start, text range)."""
    run: Any
    fc: ForwardContext
    layer: int
    layout: tuple


@dataclasses.dataclass(frozen=True)
class CallPlan:
    """reason: why the call runs dense, or None: it runs sparse (or calibrates) with `mode` (the layer
    rule's mode), `cfg` (the layer's config, rules and profile applied, clamped to the token count),
    `key_mask` ([B or 1, 1, L] or None) and `kv_rows` (how the kernel gets K / V: core layout.KV_MODES)."""
    reason: str | None
    mode: str | None = None
    cfg: AdaClusterConfig | None = None
    key_mask: Any = None
    kv_rows: str | None = None


def bad_scale(scale) -> bool:
    """A scale the core refuses (it must be a finite number > 0): such calls run dense here."""
    if scale is None:
        return False
    try:
        return not (math.isfinite(float(scale)) and float(scale) > 0)
    except (TypeError, ValueError):
        return True


def plan_call(call: AttentionCall, ctx: CallContext) -> CallPlan:
    """The plan of one video self-attention call. The first check that applies wins; the last warmup
    step calibrates where it can, and a call that cannot is a plain warmup call."""
    fc = ctx.fc
    if fc.warm and fc.phase == "warmup":
        return CallPlan(reason="warmup")
    mode, cfg = ctx.run.cfg_for_layer(ctx.layer, fc.n_vid, fc.n_layers)
    found: dict = {}
    reason = _blocking_reason(call, ctx, mode, cfg, found)
    if reason is not None:
        return CallPlan(reason="warmup" if fc.warm else reason)
    return CallPlan(reason=None, mode=mode, cfg=cfg, key_mask=found["key_mask"], kv_rows=found["kv_rows"])


def _blocking_reason(call: AttentionCall, ctx: CallContext, mode, cfg: AdaClusterConfig, found: dict) -> str | None:
    """plan_call's checks after the warmup, in order (None: the call can go sparse or calibrate); the
    key mask and K / V mode they work out go into `found`."""
    run, fc, layer, layout = ctx.run, ctx.fc, ctx.layer, ctx.layout
    B, H, L, D, vid_start, txt_range = layout
    if mode == "dense":
        return "layer-rule"
    if call.q.dtype not in SUPPORTED_DTYPES:
        return f"dtype {str(call.q.dtype).replace('torch.', '')}"
    if D not in SUPPORTED_HEAD_DIMS:
        return f"head_dim {D}"
    if fc.n_vid < max(1, cfg.min_tokens):
        return "few-tokens"
    found["key_mask"], mreason = check_mask(run, fc, call.mask, B, L, txt_range, vid_start)
    if mreason:
        return mreason
    if layer in run.planned_dense and mode != "sparse":
        return "planned-dense-layer"
    if core_api.resolve_backend(cfg.backend, call.q.device) == "dense":   # no Triton: ComfyUI's attention
        return NO_TRITON
    if bad_scale(call.kwargs.get("scale", None)):
        return "scale"
    if kernel_warmup.compiling(run, call, layout):
        return "kernels compiling"   # first use in this install: Triton is still compiling (background)
    found["kv_rows"] = kv_rows_that_fit(run, fc, call, layer, layout, cfg)   # the faster K / V mode that fits
    return "memory" if found["kv_rows"] is None else None   # never worse than dense
