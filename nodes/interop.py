"""Living with other attention overrides: who is on ComfyUI's `optimized_attention_override` hook,
whether AdaCluster is still reached, and what ComfyUI itself would have called for a dense call.

* `classify_override(cur, run)`: what is on the hook now, seen from one AdaCluster run: ours (on
  top), foreign and chaining to us (a node applied after AdaCluster that calls the previous override
  for the calls it declines, e.g. core's "Model Sparse Attention", which re-installs itself on top at
  every step), or foreign and not reaching us (ModelAttentionBackend's
  `ModelPatcher.set_model_optimized_attention`, Sage-patch-style nodes: they *replace* the hook).
  The patcher wraps the last kind as its dense path and re-installs itself on top.
* `describe_override(f)` / `is_sparse_override(f)`: a readable name for the Stats node and the log, and
  whether it is a known sparse attention (core's sparse node's module, or an override that says so
  with a truthy `sparse_attention` attribute).
* `attention_caller()`: ComfyUI's `wrap_attn` wrapper frame that called the override (0.33+): the
  attention function it wraps, the wrapper itself (its `container_function` releases
  `AttentionTensorContainer` inputs early) and, in ComfyUI after 0.33, the model's
  `preferred_attention` that `wrap_attn` drops when an override is installed. Read from the caller's
  frame because `wrap_attn` hands an override's `container_function` no `func`; every lookup is
  feature-tested (None where this ComfyUI has no such thing).

No ComfyUI imports at module level (0.3.75 has no containers).
"""
from __future__ import annotations

import functools
import sys
from typing import Any, Callable

# modules whose attention overrides run a sparse attention of their own
KNOWN_SPARSE_MODULES = {"comfy_extras.nodes_sparse_attention": "core Model Sparse Attention"}
SPARSE_ATTR = "sparse_attention"     # an override may say it is sparse (and give its name) this way
_CHAIN_DEPTH = 12


def is_adacluster(f) -> bool:
    return getattr(f, "__adacluster_run__", None) is not None


def is_ours(f, run) -> bool:
    return getattr(f, "__adacluster_run__", None) is run


def _references(f) -> list:
    """Callables an override keeps to call on (its chained `previous`): closure cells, a partial's
    function and arguments, `__wrapped__`, a bound method's object's attributes are not followed."""
    out = []
    prev = getattr(f, "__adacluster_previous__", None)
    if prev is not None:
        out.append(prev)
    if isinstance(f, functools.partial):
        out.append(f.func)
        out.extend(a for a in f.args if callable(a))
        out.extend(v for v in (f.keywords or {}).values() if callable(v))
    w = getattr(f, "__wrapped__", None)
    if callable(w):
        out.append(w)
    for cell in getattr(f, "__closure__", None) or ():
        try:
            v = cell.cell_contents
        except ValueError:   # empty cell
            continue
        if callable(v) and not isinstance(v, type):
            out.append(v)
    return out


def chains_to(f, pred: Callable[[Any], bool], depth: int = _CHAIN_DEPTH) -> bool:
    """Whether override `f` (or something it keeps to call on, followed `depth` levels) satisfies `pred`."""
    seen: set[int] = set()
    todo = [(f, 0)]
    while todo:
        g, d = todo.pop()
        if id(g) in seen:
            continue
        seen.add(id(g))
        if pred(g):
            return True
        if d < depth:
            todo.extend((h, d + 1) for h in _references(g))
    return False


def classify_override(cur, run) -> str:
    """"none" | "ours" | "above" (foreign, reaches ours: it runs first) | "replaced" (foreign, ours
    is not reached from it)."""
    if cur is None:
        return "none"
    if is_ours(cur, run):
        return "ours"
    return "above" if chains_to(cur, lambda g: is_ours(g, run)) else "replaced"


def is_sparse_override(f) -> bool:
    mod = getattr(f, "__module__", None) or ""
    return bool(getattr(f, SPARSE_ATTR, False)) or mod in KNOWN_SPARSE_MODULES


def describe_override(f) -> str:
    """A short name for an override: core's nodes by what they are, others by module.function."""
    tag = getattr(f, SPARSE_ATTR, None)
    if isinstance(tag, str) and tag:
        return tag
    mod = getattr(f, "__module__", None) or ""
    if mod in KNOWN_SPARSE_MODULES:
        return KNOWN_SPARSE_MODULES[mod]
    qn = getattr(f, "__qualname__", None) or type(f).__name__
    if "set_model_optimized_attention" in qn:
        # ModelAttentionBackend (and any node using ModelPatcher.set_model_optimized_attention)
        inner = [g for g in _references(f) if getattr(g, "__name__", None)]
        name = getattr(inner[0], "__name__", "?") if inner else "?"
        return f"set_model_optimized_attention ({name})"
    # custom nodes' modules are named by their file path: keep the package name
    short_mod = mod.replace("\\", "/").rsplit("/", 1)[-1].split(".")[0] if mod else "?"
    return f"{short_mod}: {qn.rsplit('.', 1)[-1]}"


# ------------------------------------------------------------------------------------------------
# the wrap_attn frame that called the override
# ------------------------------------------------------------------------------------------------
class Caller:
    """What `wrap_attn` had at hand when it called the override (None where unknown)."""
    __slots__ = ("func", "preferred", "wrapper")

    def __init__(self, func=None, wrapper=None, preferred=None):
        self.func, self.wrapper, self.preferred = func, wrapper, preferred

    def preferred_function(self):
        """The model's preferred attention function (ComfyUI after 0.33), or None."""
        return getattr(self.preferred, "function", None)


_NO_CALLER = Caller()


def _is_wrap_attn_frame(code) -> bool:
    return (code.co_name == "wrapper" and "func" in code.co_freevars
            and "optimized_attention_override" in code.co_varnames)


def attention_caller(max_depth: int = 24) -> Caller:
    """The nearest `wrap_attn` wrapper frame above the current one (the one that called the
    attention override, directly or through overrides installed above ours)."""
    if not hasattr(sys.modules.get("comfy.ldm.modules.attention"), "AttentionTensorContainer"):
        return _NO_CALLER    # before 0.33: wrap_attn always hands the override func, nothing else to find
    try:
        fr = sys._getframe(1)
    except Exception:   # pragma: no cover - not CPython
        return _NO_CALLER
    for _ in range(max_depth):
        if fr is None:
            break
        if _is_wrap_attn_frame(fr.f_code):
            loc = fr.f_locals
            # without an override installed wrap_attn would have run the preferred attention; with
            # one it drops it, so it is ours to restore only when AdaCluster's is the outermost
            preferred = loc.get("preferred_attention") if is_adacluster(loc.get("optimized_attention_override")) \
                else None
            return Caller(loc.get("func"), loc.get("wrapper"), preferred)
        fr = fr.f_back
    return _NO_CALLER


def default_attention():
    """ComfyUI's module-level `optimized_attention` (what models call), or None."""
    mod = sys.modules.get("comfy.ldm.modules.attention")
    return getattr(mod, "optimized_attention", None) if mod is not None else None


def is_container(x) -> bool:
    """A 0.33+ `AttentionTensorContainer` (duck-typed: peek/take)."""
    return type(x).__name__ == "AttentionTensorContainer" and hasattr(x, "take") and hasattr(x, "peek")
