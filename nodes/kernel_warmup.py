"""Triton compilation hidden behind the dense warmup steps.

On a fresh install every kernel variant of the sparse path compiles at its first use (seconds
each): on a small model the first generation would be slower than without the node. The warmup
steps run dense anyway, so their first video self-attention call starts one background compile
(adacluster_core.compile_ahead) for this kind of call; until it has finished, calls that would
go sparse run dense with the reason "kernels compiling" instead of waiting for the compiler.
Only where Triton really compiles (CUDA); the interpreter has nothing to compile.
"""
from __future__ import annotations

import os

from .core import CompileAhead, core_api
from .families import AttentionCall, ForwardContext

def _key(run, call: AttentionCall, layout: tuple):
    B, H, L, D, _vid_start, txt_range = layout
    cfg = run.config
    if cfg is None:
        return None
    return (str(call.q.device), call.q.dtype, H, D, L, tuple(txt_range) if txt_range else None,
            tuple(sorted(cfg.to_dict().items())))


def _compiles_here(run, call: AttentionCall) -> bool:
    q = call.q
    return (q.is_cuda and os.environ.get("TRITON_INTERPRET", "0") != "1" and run.config is not None
            and core_api.resolve_backend(run.config.backend, q.device) == "triton")


def start(run, fc: ForwardContext, call: AttentionCall, layout: tuple) -> None:
    """At a warmup call: start the background compile for this kind of call, once per patched model."""
    if not _compiles_here(run, call):
        return
    key = _key(run, call, layout)
    if key is None or key in run.compiles:
        return
    B, H, L, D, _vid_start, txt_range = layout
    run.compiles[key] = CompileAhead(L, H, D, call.q.dtype, call.q.device, run.config,
                                     tuple(txt_range) if txt_range else None).start()


def compiling(run, call: AttentionCall, layout: tuple) -> bool:
    """True while this kind of call's background compile is still running."""
    if all(ca.ready() for ca in run.compiles.values()):   # the usual case: no key to build per call
        return False
    ca = run.compiles.get(_key(run, call, layout))
    return ca is not None and not ca.ready()
