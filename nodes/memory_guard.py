"""Never worse than dense (issue 26): a sparse call whose memory is not free runs dense (reason `memory`).

`memory_short(run, fc, call, layer, layout, cfg)` is called once per would-be sparse call from
plan.plan_call (its last check). The need is the core's pure `sparse_call_bytes` (shapes, dtype,
config: docs/KERNEL_NOTES.md, "Memory"), compared with the free memory of the call's device (the
driver's free memory plus PyTorch's reserved-but-unused cache). Off CUDA nothing is ever short.
`FREE_BYTES` is a module global so tests can simulate a card's free memory.
"""
from __future__ import annotations

from .core import core_memory

FREE_BYTES = core_memory.free_bytes   # device -> free bytes, or None (unknown: always fits)


def call_need_bytes(run, fc, call, layer, layout, cfg, kv_rows: str | None = None) -> int:
    """Bytes the sparse call for this layout needs (the whole batch: every CFG branch's output, and one
    branch's transient work at a time, counted for the whole batch to stay on the safe side)."""
    B, H, L, D = layout[:4]
    known = getattr(run, "counts", None) or {}
    return core_memory.config_call_bytes(B, H, L, D, call.q.element_size(), cfg,
                                         calibrating=getattr(fc, "phase", None) == "calibration",
                                         k_clusters=known.get(layer), kv_rows=kv_rows)


def kv_rows_that_fit(run, fc, call, layer, layout, cfg) -> str | None:
    """How the sparse call gets K / V: "copied" (the faster kernel) when its copies fit in the free
    memory, else "indexed" (no copies) when that fits, else None: the call must run dense (`memory`).
    Off CUDA (free memory unknown): "copied"."""
    free = FREE_BYTES(call.q.device)
    for mode in core_memory.KV_PREFERENCE:
        if free is None or core_memory.fits(call_need_bytes(run, fc, call, layer, layout, cfg, mode), free):
            return mode
    return None


def memory_short(run, fc, call, layer, layout, cfg) -> bool:
    """True when the sparse call would need more memory than is free on its device, whatever the K / V mode."""
    return kv_rows_that_fit(run, fc, call, layer, layout, cfg) is None
