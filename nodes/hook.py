"""The ComfyUI hook plumbing shared by the AdaCluster patch (nodes/patcher.py) and AdaCluster
Capture (nodes/capture.py): one attention override chained to the previous one, a keyed
DIFFUSION_MODEL wrapper (and SAMPLER_SAMPLE wrapper), and the keyed ON_PRE_RUN / ON_CLEANUP /
ON_PREPARE_STATE callbacks, installed on a clone by `install_override`; ComfyUI 0.33's
AttentionTensorContainers (`container_function`); and AdaCluster's re-install on top of a node
applied later (`install_on_top`, nodes/interop.py classifies what it finds).
"""
from __future__ import annotations

from typing import Callable

import comfy.patcher_extension as pe
import torch

from . import interop
from .families import AttentionCall

OVERRIDE_KEY = "optimized_attention_override"
_CALLBACKS = (("on_pre_run", pe.CallbacksMP.ON_PRE_RUN), ("on_cleanup", pe.CallbacksMP.ON_CLEANUP),
              ("on_prepare_state", pe.CallbacksMP.ON_PREPARE_STATE))


def forward_options(args, kwargs) -> dict | None:
    """The transformer_options of a DIFFUSION_MODEL call (keyword, else the last dict argument)."""
    to = kwargs.get("transformer_options")
    if not isinstance(to, dict):
        to = next((a for a in reversed(args) if isinstance(a, dict)), None)
    return to


def attention_override(handle: Callable, previous, *, name: str, module: str, containers: bool = True):
    """An optimized_attention_override: ComfyUI's `wrap_attn` calls it as override(func, *args, **kwargs)
    with its attention function's arguments (the signature below, in 0.3.75 and upstream alike); each
    call becomes an AttentionCall (whose dense() goes on unchanged to `previous`, or `func`) handed to
    `handle(call, kwargs)`. With `containers`, ComfyUI 0.33+ calls `override.container_function(q, k,
    v, heads, ...)` instead (no `func`) when the model passes AttentionTensorContainers: they are
    peeked to classify the call, consumed by a sparse path, or handed on untouched by dense().
    `name` / `module`: what interop.describe_override shows for it."""

    def override(func, q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False,
                 skip_output_reshape=False, **kwargs):
        call = AttentionCall(func, previous, q, k, v, heads, mask, attn_precision, skip_reshape, skip_output_reshape,
                             kwargs)
        return handle(call, kwargs)

    def container_function(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False,
                           skip_output_reshape=False, **kwargs):
        if not interop.is_container(q):   # plain tensors after all: the same call without func
            call = AttentionCall(None, previous, q, k, v, heads, mask, attn_precision, skip_reshape,
                                 skip_output_reshape, kwargs)
        else:
            call = AttentionCall(None, previous, q.peek(), k.peek(), v.peek(), heads, mask, attn_precision,
                                 skip_reshape, skip_output_reshape, kwargs, containers=(q, k, v))
        return handle(call, kwargs)

    for f, n in ((override, name), (container_function, name.replace("override", "container_function"))):
        f.__name__, f.__qualname__, f.__module__ = n, f"{name}.<locals>.{n}", module
    ov = torch.compiler.disable(override)
    if containers:
        ov.container_function = torch.compiler.disable(container_function)
    return ov


def forward_wrapper(begin: Callable, after: Callable | None = None):
    """A DIFFUSION_MODEL wrapper: begin(diffusion_model, args, kwargs) before the forward,
    after(args, kwargs) behind it (both outside torch.compile)."""
    begin = torch.compiler.disable(begin)
    after = torch.compiler.disable(after) if after is not None else None

    def adacluster_diffusion_model_wrapper(executor, *args, **kwargs):
        begin(executor.class_obj, args, kwargs)
        out = executor(*args, **kwargs)
        if after is not None:
            after(args, kwargs)
        return out

    return adacluster_diffusion_model_wrapper


def install_override(m, key: str, build: Callable, *, state_key: str | None = None, state=None,
                     diffusion_model: Callable | None = None, sampler_sample: Callable | None = None,
                     **callbacks) -> Callable:
    """On clone `m`: the attention override `build(previous)`, chained to the override already in m's
    transformer_options; `state` under transformer_options[state_key]; the DIFFUSION_MODEL /
    SAMPLER_SAMPLE wrappers and the callbacks (on_pre_run, on_cleanup, on_prepare_state), all under
    `key` (an earlier set under the same key is replaced). Returns the override."""
    to = m.model_options.setdefault("transformer_options", {})
    override = build(to.get(OVERRIDE_KEY))
    to[OVERRIDE_KEY] = override
    if state_key is not None:
        to[state_key] = state
    for wt, w in ((pe.WrappersMP.DIFFUSION_MODEL, diffusion_model), (pe.WrappersMP.SAMPLER_SAMPLE, sampler_sample)):
        if w is not None:
            m.remove_wrappers_with_key(wt, key)
            m.add_wrapper_with_key(wt, key, w)
    unknown = set(callbacks) - {n for n, _ in _CALLBACKS}
    if unknown:
        raise TypeError(f"install_override: unknown callbacks {sorted(unknown)}")
    for n, ct in _CALLBACKS:
        if callbacks.get(n) is not None:
            m.remove_callbacks_with_key(ct, key)
            m.add_callback_with_key(ct, key, callbacks[n])
    return override


def remove_hooks(m, key: str) -> None:
    """Drop the DIFFUSION_MODEL wrapper and the callbacks installed under `key`."""
    m.remove_wrappers_with_key(pe.WrappersMP.DIFFUSION_MODEL, key)
    for _n, ct in _CALLBACKS:
        m.remove_callbacks_with_key(ct, key)


# ------------------------------------------------------------------------------------------------
# AdaCluster on top of whatever was applied after it
# ------------------------------------------------------------------------------------------------
def install_on_top(holder, to: dict, live: bool, rebuild: Callable) -> None:
    """Make the override of `holder` (a PatchHolder) reachable from the hook in `to`, whatever was
    applied after it: nothing there -> ours; a foreign override that replaced ours -> `rebuild(it)`
    (ours wrapping it as the dense path; one wrapper per foreign override, reused); a foreign override
    that chains to ours (it runs first, declined calls reach us) -> left on top, noted (its sparse
    calls are counted per forward). `live`: `to` is a forward's own options (the wrapper): only what a
    forward really runs is noted for the Stats node (0.3.75's callbacks see options the sampler has
    already copied)."""
    if holder.override is None:
        return
    cur = to.get(OVERRIDE_KEY)
    if cur is holder.override or interop.is_ours(cur, holder):
        prev = getattr(cur, "__adacluster_previous__", None)
        if live and prev is not None and not interop.is_adacluster(prev):
            holder.note_other(prev, "below", replaced=cur is not holder.override)   # for this run's Stats
        return
    kind = holder.override_kinds.get(id(cur))
    if kind is None or kind[0] is not cur:
        kind = (cur, interop.classify_override(cur, holder))
        holder.override_kinds[id(cur)] = kind
    kind = kind[1]
    if kind == "none":
        to[OVERRIDE_KEY] = holder.override
    elif kind == "above":
        if live:
            holder.note_other(cur, "above")
    else:   # "replaced": the other node's attention is our dense path from now on
        w = holder.wrapped.get(id(cur))
        if w is None or w[0] is not cur:
            w = (cur, rebuild(cur))
            holder.wrapped[id(cur)] = w
        if live:
            holder.note_other(cur, "below", replaced=True)
        to[OVERRIDE_KEY] = w[1]


def counting(holder, other):
    """`other` (a foreign sparse override below ours) with the calls AdaCluster hands it counted."""
    def to_other(func, *args, **kwargs):
        holder.note_other(other, "below")
        holder.note_other_calls(1, above=False)
        return other(func, *args, **kwargs)

    cf = getattr(other, "container_function", None)
    if cf is not None:
        def to_other_containers(*args, **kwargs):
            holder.note_other(other, "below")
            holder.note_other_calls(1, above=False)
            return cf(*args, **kwargs)
        to_other.container_function = to_other_containers
    to_other.__wrapped__ = other
    return to_other
