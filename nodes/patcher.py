"""The bridge between ComfyUI and adacluster_core: patching a MODEL and the attention override.

`patch_model(model, config, layer_rules, enabled, preset)` returns a clone of a ComfyUI MODEL
whose video self-attention runs `adacluster_core.sparse_attention`:

* an `optimized_attention_override` (called by ComfyUI's `wrap_attn` for every attention call)
  that chains any override already installed: that previous override (or ComfyUI's chosen
  function `func`) is the dense path;
* a keyed `DIFFUSION_MODEL` wrapper that, once per forward, works out the token layout (grid,
  model family, text length/position, masks), the step (sigma), the CFG chunks, and resets the
  per-forward layer counter, all written into `transformer_options["adacluster_fwd"]`;
* callbacks: ON_PRE_RUN starts a run, ON_CLEANUP ends it (one-line summary in the log, caches
  dropped, stats kept for the AdaCluster Stats node).

Order never matters (nodes/interop.py): at run start, at every step (ON_PREPARE_STATE) and at every
forward (the wrapper) AdaCluster checks the hook. A node applied later that *replaced* the override
(ModelAttentionBackend, Sage-patch-style nodes) becomes AdaCluster's dense path and AdaCluster goes
back on top; one that chains to AdaCluster (core's Model Sparse Attention re-installs itself on top
at every step) stays on top, and when it is a sparse attention the Stats node counts the video
self-attention calls it took. Dense calls run exactly what ComfyUI would have run without the pack,
0.33's AttentionTensorContainers handed on (AttentionCall.dense).

Per-run state lives in an `AdaClusterRun` holder (nodes/run.py) stored in
`transformer_options["adacluster"]`, shared by the model's clones; what a forward mutates lives in
a lane per (thread, device) (nodes/run_lanes.py), so clones sampled in threads (MultiGPU CFG
split) share nothing mutable. Nothing is kept at module level.

CFG decision: when cond and uncond run batched, the batch is split along `cond_or_uncond`
chunks and each chunk gets its own ClusterState (key `(layer, branch)`, branch = "c0", "u0",
"c1"... for the n-th cond / uncond chunk), so caches never mix branches and do not depend on
whether ComfyUI batched them. Key-cluster counts are shared per layer.
"""
from __future__ import annotations

import copy
import logging
import math
import time

import comfy.patcher_extension as pe
import torch

# (config, probe, report and family names are also imported from here by the nodes and tests)
from .config_widgets import (FAMILIES, PRESETS, config_fields, config_specs, config_widget_defaults, make_config,
                             parse_layer_rules, preset_config)
from .core import (DENSE_RESULT_REASONS as _DENSE_RESULT_REASONS, NO_TRITON as _NO_TRITON,
                   SUPPORTED_DTYPES as _SUPPORTED_DTYPES,
                   SUPPORTED_HEAD_DIMS as _SUPPORTED_HEAD_DIMS, AdaClusterConfig, ClusterState, core_api,
                   sparse_attention)
from . import interop, kernel_warmup
from .fallback import INTERRUPT_CHECK, must_raise
from .families import (AttentionCall, ForwardContext, branch_keys as _branch_keys, build_forward_context,
                       check_mask, classify_call, detect_family, h3_description, layer_index as _layer_index)
from .layer_rules import LayerRules, parse_selection
from .memory_guard import kv_rows_that_fit
from .probe import PROBE_MODES, ProbeSpec, make_probe, measure as measure_probe
from .report import format_stats, heatmap_image, rss_mb, stats_json
from .run import AdaClusterRun, CallRecord

log = logging.getLogger("AdaCluster")

WRAPPER_KEY = "adacluster"
HOLDER_KEY = "adacluster"          # transformer_options[...] -> AdaClusterRun
FWD_KEY = "adacluster_fwd"         # transformer_options[...] -> ForwardContext (per forward)
OVERRIDE_KEY = "optimized_attention_override"
# handed to the core, which calls it between k-means iterations (a module global: tests replace it)
_INTERRUPT_CHECK = INTERRUPT_CHECK


def _bad_scale(scale) -> bool:
    """A scale the core refuses (it must be a finite number > 0): such calls run dense here."""
    if scale is None:
        return False
    try:
        return not (math.isfinite(float(scale)) and float(scale) > 0)
    except (TypeError, ValueError):
        return True


# ------------------------------------------------------------------------------------------------
# per forward
# ------------------------------------------------------------------------------------------------
def _begin_forward(run: AdaClusterRun, dm, args, kwargs):
    """Once per forward (the DIFFUSION_MODEL wrapper): this thread's lane works out the forward's
    layout, step and phase and leaves them as a ForwardContext in transformer_options[FWD_KEY]."""
    to = kwargs.get("transformer_options")
    if not isinstance(to, dict):
        to = next((a for a in reversed(args) if isinstance(a, dict)), None)
    if to is None:
        return
    install_on_top(run, to)   # a later node may have replaced or dropped our override
    x = args[0] if args else kwargs.get("x")
    x = next((t for t in getattr(x, "tensors", x) if isinstance(t, torch.Tensor)), None) \
        if isinstance(getattr(x, "tensors", x), (list, tuple)) else x   # H3: [video, audio]
    run = run.lane(x.device if isinstance(x, torch.Tensor) else None)   # per thread x device
    fc = build_forward_context(run, dm, args, kwargs, to)
    run.forwards += 1
    if fc.family is not None:
        run.resolve_config(fc.family)
        key = (fc.family, fc.grid, fc.n_txt, fc.txt_first)
        if math.isfinite(fc.sigma):
            fc.step = run.step_of(fc.sigma)
            fc.phase = run.phase_for(fc.sigma, key if not fc.reason else None)
            fc.warm = fc.phase == "warmup" or (fc.phase == "calibration" and run.calib_warm)
        if key not in run.layouts:
            run.layouts[key] = {"family": fc.family, "grid": list(fc.grid), "n_vid": fc.n_vid, "n_txt": fc.n_txt,
                                "txt_first": fc.txt_first, "n_layers": fc.n_layers, "reason": fc.reason,
                                "extra_tokens": fc.n_extra,
                                "description": h3_description(fc.segments, fc.grid) if fc.segments else None,
                                "text_slice": None, "masked_keys": None, "masked_keys_in_text": None}
    to[FWD_KEY] = fc


def _diffusion_model_wrapper_factory(run: AdaClusterRun):
    begin = torch.compiler.disable(_begin_forward)

    end = torch.compiler.disable(_end_forward)

    def adacluster_diffusion_model_wrapper(executor, *args, **kwargs):
        begin(run, executor.class_obj, args, kwargs)
        out = executor(*args, **kwargs)
        if run.others_above:
            end(run, args, kwargs)
        return out

    return adacluster_diffusion_model_wrapper


def _end_forward(run: AdaClusterRun, args, kwargs):
    """After a forward under a sparse override that runs before ours: the video self-attention
    layers that never reached AdaCluster were taken by it (counted per CFG branch, as our records)."""
    to = kwargs.get("transformer_options")
    if not isinstance(to, dict):
        to = next((a for a in reversed(args) if isinstance(a, dict)), None)
    fc = to.get(FWD_KEY) if to is not None else None
    if fc is None or fc.family is None or fc.reason or getattr(fc.run, "root", None) is not run:
        return
    missing = fc.n_layers - fc.self_calls
    if missing > 0:
        run.note_other_calls(missing * max(1, len(fc.cond_or_uncond)), above=True)


def install_on_top(run: AdaClusterRun, to: dict, live: bool = True) -> None:
    """Make AdaCluster's override reachable from the hook in `to`, whatever was applied after it:
    nothing there -> ours; a foreign override that replaced ours -> ours wrapping it as the dense path
    (one wrapper per foreign override, reused); a foreign override that chains to ours (it runs first,
    declined calls reach us) -> left on top, noted (its sparse calls are counted per forward).
    `live`: `to` is a forward's own options (the wrapper): only what a forward really runs is noted
    for the Stats node (0.3.75's callbacks see options the sampler has already copied)."""
    if run.override is None:
        return
    cur = to.get(OVERRIDE_KEY)
    if cur is run.override or interop.is_ours(cur, run):
        prev = getattr(cur, "__adacluster_previous__", None)
        if live and prev is not None and not interop.is_adacluster(prev):
            run.note_other(prev, "below", replaced=cur is not run.override)   # for this run's Stats
        return
    kind = run.override_kinds.get(id(cur))
    if kind is None or kind[0] is not cur:
        kind = (cur, interop.classify_override(cur, run))
        run.override_kinds[id(cur)] = kind
    kind = kind[1]
    if kind == "none":
        to[OVERRIDE_KEY] = run.override
    elif kind == "above":
        if live:
            run.note_other(cur, "above")
    else:   # "replaced": the other node's attention is our dense path from now on
        w = run.wrapped.get(id(cur))
        if w is None or w[0] is not cur:
            w = (cur, make_override(run, cur))
            run.wrapped[id(cur)] = w
        if live:
            run.note_other(cur, "below", replaced=True)
        to[OVERRIDE_KEY] = w[1]


# ------------------------------------------------------------------------------------------------
# the attention override
# ------------------------------------------------------------------------------------------------
def make_override(run: AdaClusterRun, previous=None):
    """The optimized_attention_override installed on the patched model. ComfyUI's `wrap_attn` calls it
    as override(func, *args, **kwargs) with its attention function's arguments (the signature below,
    in 0.3.75 and upstream alike); calls that stay dense go on unchanged to `previous` (an override
    installed before ours) or else to `func` (AttentionCall.dense).

    ComfyUI 0.33+ calls `override.container_function(q, k, v, heads, ...)` instead (no `func`) when the
    model passes q/k/v as AttentionTensorContainers: the containers are peeked to classify the call,
    consumed by the sparse path, or handed on untouched by the dense path."""
    dense_path = previous
    if previous is not None and not interop.is_adacluster(previous) and interop.is_sparse_override(previous):
        dense_path = _counting(run, previous)   # our dense calls go to another sparse attention: counted

    @torch.compiler.disable
    def adacluster_attention_override(func, q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False,
                                      skip_output_reshape=False, **kwargs):
        call = AttentionCall(func, dense_path, q, k, v, heads, mask, attn_precision, skip_reshape, skip_output_reshape,
                             kwargs)
        return _dispatch(run, call, kwargs)

    @torch.compiler.disable
    def adacluster_container_function(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False,
                                      skip_output_reshape=False, **kwargs):
        if not interop.is_container(q):   # plain tensors after all: the same call without func
            call = AttentionCall(None, dense_path, q, k, v, heads, mask, attn_precision, skip_reshape,
                                 skip_output_reshape, kwargs)
        else:
            call = AttentionCall(None, dense_path, q.peek(), k.peek(), v.peek(), heads, mask, attn_precision,
                                 skip_reshape, skip_output_reshape, kwargs, containers=(q, k, v))
        return _dispatch(run, call, kwargs)

    adacluster_attention_override.container_function = adacluster_container_function
    adacluster_attention_override.__adacluster_run__ = run
    adacluster_attention_override.__adacluster_previous__ = previous
    return adacluster_attention_override


def _dispatch(run: AdaClusterRun, call: AttentionCall, kwargs: dict):
    to = kwargs.get("transformer_options") or {}
    fc: ForwardContext | None = to.get(FWD_KEY)
    if fc is None or getattr(fc.run, "root", None) is not run:
        return call.dense()
    return _override_call(fc.run, fc, to, call)   # fc.run: this thread's lane


def _counting(run: AdaClusterRun, other):
    """`other` (a foreign sparse override below ours) with the calls AdaCluster hands it counted."""
    def to_other(func, *args, **kwargs):
        run.note_other(other, "below")
        run.note_other_calls(1, above=False)
        return other(func, *args, **kwargs)

    cf = getattr(other, "container_function", None)
    if cf is not None:
        def to_other_containers(*args, **kwargs):
            run.note_other(other, "below")
            run.note_other_calls(1, above=False)
            return cf(*args, **kwargs)
        to_other.container_function = to_other_containers
    to_other.__wrapped__ = other
    return to_other


def _override_call(run: AdaClusterRun, fc: ForwardContext, to: dict, call: AttentionCall):
    """One attention call of a forward, with `run` = the lane that forward belongs to."""
    run.override_calls += 1
    fc.calls += 1
    if fc.family is None:
        run.record(CallRecord(layer=None, step=fc.step, branch=None, sparse=False,
                              reason=fc.reason or "unsupported-model"))
        return call.dense()
    kind, reason, layout = classify_call(fc, call.q, call.k, call.heads, bool(call.skip_reshape))
    if kind == "other":
        return _timed_dense(run, fc, call, layer=None, reason=reason)
    layer = _layer_index(fc, to)
    fc.self_calls += 1
    if kind == "dense":
        return _timed_dense(run, fc, call, layer=layer, reason=reason)
    if fc.reason:
        return _timed_dense(run, fc, call, layer=layer, reason=fc.reason)
    return _maybe_sparse(run, fc, call, layer, layout)


def _flops(call: AttentionCall) -> int:
    q, k = call.q, call.k
    if call.skip_reshape:
        B, H, L, D = q.shape
        Lk = k.shape[2]
    else:
        B, L, HD = q.shape
        H, D, Lk = int(call.heads or 1), HD // int(call.heads or 1), k.shape[1]
    return 4 * B * H * L * Lk * D


class _Timer:
    __slots__ = ("cuda", "ev", "t0")

    def __init__(self, device):
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.ev = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            self.ev[0].record()
        else:
            self.t0 = time.perf_counter()

    def stop(self):
        if self.cuda:
            self.ev[1].record()
            return self.ev
        return time.perf_counter() - self.t0


def _branch_count(fc: ForwardContext, B: int) -> int:
    return len(fc.cond_or_uncond) if fc.cond_or_uncond and B % len(fc.cond_or_uncond) == 0 else 1


def _branches(fc: ForwardContext, B: int) -> list[str]:
    """The CFG branch of each equal batch chunk ("c0", "u0", ...; one chunk when the batch does not
    split along cond_or_uncond)."""
    nb = _branch_count(fc, B)
    branches = _branch_keys(fc.cond_or_uncond) if nb > 1 or fc.cond_or_uncond else ["c0"]
    return branches if len(branches) == nb else [f"b{i}" for i in range(nb)]


def _timed_dense(run: AdaClusterRun, fc: ForwardContext, call: AttentionCall, *, layer: int | None, reason: str):
    """Dense through ComfyUI's function (or the chained override). Recorded once per CFG branch,
    like sparse calls, so counts/FLOPs/time are comparable (a batched cond+uncond call = 2)."""
    fl = _flops(call)
    nb = _branch_count(fc, call.q.shape[0])
    tm = _Timer(call.q.device)
    out = call.dense()   # (hands 0.33's containers on: call.q/k/v are None after it)
    t = tm.stop()
    if nb > 1:  # the whole time goes to the first branch's record
        for i, br in enumerate(_branch_keys(fc.cond_or_uncond)):
            run.record(CallRecord(layer=layer, step=fc.step, branch=br, sparse=False, reason=reason,
                                  timing=t if i == 0 else 0.0, flops_full=fl // nb))
    else:
        br = _branch_keys(fc.cond_or_uncond)[0] if fc.cond_or_uncond else None
        run.record(CallRecord(layer=layer, step=fc.step, branch=br, sparse=False, reason=reason, timing=t,
                              flops_full=fl))
    return out


def _on_device(st: ClusterState, device) -> ClusterState:
    """The layer's cached centroids follow the device of the call (weights streamed or offloaded
    between calls, another GPU): moved, not kept on the old device beside a fresh copy."""
    for t in (st.q_centroids, st.k_centroids):
        if t is not None and t.device != device:
            return st.to(device)
    return st


def _maybe_sparse(run: AdaClusterRun, fc: ForwardContext, call: AttentionCall, layer: int, layout: tuple):
    """A video self-attention call (layout from classify_call): sparse unless dense_reason() names a reason."""
    txt_range = layout[5]
    lay = run.layouts.get((fc.family, fc.grid, fc.n_txt, fc.txt_first))
    if lay is not None and lay["text_slice"] is None and txt_range is not None:
        lay["text_slice"] = list(txt_range)
    reason = dense_reason(run, fc, call, layer, layout)
    if reason is not None:
        return _timed_dense(run, fc, call, layer=layer, reason=reason)
    return _sparse_call(run, fc, call, layer, layout)


def dense_reason(run: AdaClusterRun, fc: ForwardContext, call: AttentionCall, layer: int, layout: tuple) -> str | None:
    """Why this video self-attention call runs dense (the reason the Stats node prints; the README's
    troubleshooting table lists them), or None: it goes sparse. The first check that applies wins."""
    if fc.warm:
        kernel_warmup.start(run, fc, call, layout)   # compile the sparse kernels while these steps run
        if fc.phase == "warmup":
            return "warmup"
    reason = _blocking_reason(run, fc, call, layer, layout)
    # the last warmup step calibrates where it can; a call that cannot is a plain warmup call
    return "warmup" if reason is not None and fc.warm else reason


def _blocking_reason(run: AdaClusterRun, fc: ForwardContext, call: AttentionCall, layer: int, layout: tuple):
    """dense_reason's checks after the warmup, in order (None: the call can go sparse or calibrate)."""
    B, H, L, D, vid_start, txt_range = layout
    mode, cfg = run.cfg_for_layer(layer, fc.n_vid, fc.n_layers)
    if mode == "dense":
        return "layer-rule"
    if call.q.dtype not in _SUPPORTED_DTYPES:
        return f"dtype {str(call.q.dtype).replace('torch.', '')}"
    if D not in _SUPPORTED_HEAD_DIMS:
        return f"head_dim {D}"
    if fc.n_vid < max(1, cfg.min_tokens):
        return "few-tokens"
    _key_mask, mreason = check_mask(run, fc, call.mask, B, L, txt_range, vid_start)
    if mreason:
        return mreason
    if layer in run.planned_dense and mode != "sparse":
        return "planned-dense-layer"
    if core_api.resolve_backend(cfg.backend, call.q.device) == "dense":   # no Triton: ComfyUI's attention
        return _NO_TRITON
    if _bad_scale(call.kwargs.get("scale", None)):
        return "scale"
    if kernel_warmup.compiling(run, call, layout):
        return "kernels compiling"   # first use in this install: Triton is still compiling (background)
    call.kv_rows = kv_rows_that_fit(run, fc, call, layer, layout, cfg)   # the faster K / V mode that fits
    return "memory" if call.kv_rows is None else None   # never worse than dense


def _sparse_call(run: AdaClusterRun, fc: ForwardContext, call: AttentionCall, layer: int, layout: tuple):
    """Sparse attention through the core, one call per CFG branch. A kernel error runs the call dense
    ("error <type>"); NaN / Inf in q, k or v runs it through ComfyUI's attention, exactly the
    unpatched output ("non-finite input")."""
    B, H, L, D, vid_start, txt_range = layout
    call.take()   # 0.33's containers: the sparse path owns q, k, v now
    mode, cfg = run.cfg_for_layer(layer, fc.n_vid, fc.n_layers)                 # cached: what dense_reason saw
    key_mask, _ = check_mask(run, fc, call.mask, B, L, txt_range, vid_start)   # cached per forward
    if call.skip_reshape:
        qkv = (call.q, call.k, call.v)
    else:
        qkv = tuple(t.view(B, L, H, D).transpose(1, 2) for t in (call.q, call.k, call.v))
    dense_out = dense_ref = None
    if run.probe is not None and run.probe.wants(layer, fc.step, fc.n_layers, fc.n_steps):
        # the dense result is what goes on (errors do not compound); the sparse one is measured
        dense_out = call.dense()
        dense_ref = dense_out if call.skip_output_reshape else dense_out.reshape(B, L, H, D).transpose(1, 2)
    n_rec = len(run.records)
    # the result in the layout ComfyUI wants back, written by the kernel through its strides (no reshape copy)
    O_ret = call.q.new_empty((B, H, L, D) if call.skip_output_reshape else (B, L, H * D))
    O4 = O_ret if call.skip_output_reshape else O_ret.view(B, L, H, D).transpose(1, 2)
    try:
        done = _branch_calls(run, fc, call, layer, qkv, mode=mode, cfg=cfg, key_mask=key_mask, txt_range=txt_range,
                             dense_ref=dense_ref, out=O4)
    except Exception as e:  # a kernel problem must not kill the user's run
        if must_raise(e):
            raise
        run.warn_once(("kernel-error", type(e).__name__), "AdaCluster: sparse attention failed (%s: %s); "
                      "falling back to dense for this call", type(e).__name__, e)
        return _timed_dense(run, fc, call, layer=layer, reason=f"error {type(e).__name__}")
    if isinstance(done, str):   # NaN / Inf in q, k or v, overflow, every key masked: ComfyUI's dense result
        del run.records[n_rec:]   # this call's branch records: replaced by the dense call's
        return _timed_dense(run, fc, call, layer=layer, reason=done)
    outs, kernels = done
    run.kernels.update(kernels)
    if dense_out is not None:
        return dense_out
    return O_ret   # every branch wrote its rows of it ([B, H, L, D] or [B, L, H*D])


def _branch_calls(run: AdaClusterRun, fc: ForwardContext, call: AttentionCall, layer: int, qkv: tuple, *,
                  mode, cfg: AdaClusterConfig, key_mask, txt_range, dense_ref, out=None):
    """One core call per CFG branch chunk of the batch ([B, H, L, D] inputs), each with the
    (layer, branch) ClusterState, recorded (and probed when `dense_ref` is given) per branch.
    `out` ([B, H, L, D], any strides): each branch's result is written into its rows.
    Returns (outputs, kernels of the sparse calls), or the core's reason when the call must give
    dense's exact result (NaN / Inf, overflow, every key masked: core DENSE_RESULT_REASONS)."""
    Q, K, V = qkv
    B, L = Q.shape[0], Q.shape[2]
    branches = _branches(fc, B)
    nb = len(branches)
    bs = B // nb
    fl = _flops(call) // nb
    outs, kernels = [], []
    for i, br in enumerate(branches):
        sl = slice(i * bs, (i + 1) * bs)
        st = _on_device(run.state_for(layer, br), Q.device)
        if mode == "sparse" and st.dense and st.dense_reason == "planned-dense-layer":
            st.dense = False
        km = None
        if key_mask is not None:
            km = key_mask if key_mask.shape[0] == 1 else key_mask[sl]
            km = km.expand(bs, 1, L)
        st_before = copy.deepcopy(st) if dense_ref is not None else None
        core_kw = dict(config=cfg, scale=call.kwargs.get("scale", None), always_dense_range=txt_range, key_mask=km,
                       interrupt_check=_INTERRUPT_CHECK)
        tm = _Timer(call.q.device)
        o, stats = sparse_attention(Q[sl], K[sl], V[sl], state=st, out=None if out is None else out[sl],
                                    kv_rows=call.kv_rows, **core_kw)
        t = tm.stop()
        if stats["reason"] in _DENSE_RESULT_REASONS:
            return str(stats["reason"])   # the whole call runs dense through ComfyUI's attention
        if dense_ref is not None:
            measure_probe(run, layer, fc.step, br, q=Q[sl], k=K[sl], out=o, dense_ref=dense_ref[sl], stats=stats,
                          state_before=st_before, core_kw=core_kw)
        rec = _sparse_record(fc, layer, br, stats, t, fl)
        run.record(rec)
        if rec.sparse:
            kernels.append(str(stats.get("attention", "?")))
        outs.append(o)
    return outs, kernels


def _sparse_record(fc: ForwardContext, layer: int, branch: str, stats, timing, flops: int) -> CallRecord:
    """The record of one branch's core call. The core may have run it dense (the calibration step, a
    layer judged hard to compress): its reason is kept, the calibration step's under our name."""
    is_dense = bool(stats["dense"])   # sparse_attention's stats: always a dict with these keys
    reason = ""
    if is_dense:
        reason = "calibration" if stats.get("stage") == "calibration" and "calibration" in str(
            stats.get("reason", "")) else (stats.get("reason") or "core")
    return CallRecord(layer=layer, step=fc.step, branch=branch, sparse=not is_dense, reason=reason,
                      density=stats.get("density"), q_clusters=stats.get("q_clusters"),
                      k_clusters=stats.get("k_clusters"), timing=timing, flops_full=flops)


# ------------------------------------------------------------------------------------------------
# patching
# ------------------------------------------------------------------------------------------------
def get_run(model) -> AdaClusterRun | None:
    to = getattr(model, "model_options", {}).get("transformer_options", {})
    r = to.get(HOLDER_KEY)
    return r if isinstance(r, AdaClusterRun) else None


def _unpatch(m, run: AdaClusterRun):
    """Remove an earlier AdaCluster patch from clone `m` (restoring its previous override)."""
    to = m.model_options.setdefault("transformer_options", {})
    cur = to.get(OVERRIDE_KEY)
    if interop.is_ours(cur, run) and cur is not run.override:   # ours wrapping a node applied later
        to[OVERRIDE_KEY] = cur.__adacluster_previous__
    elif cur is run.override:
        if run.previous is not None:
            to[OVERRIDE_KEY] = run.previous
        else:
            to.pop(OVERRIDE_KEY, None)
    to.pop(HOLDER_KEY, None)
    m.remove_wrappers_with_key(pe.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY)
    for ct in (pe.CallbacksMP.ON_PRE_RUN, pe.CallbacksMP.ON_CLEANUP, pe.CallbacksMP.ON_PREPARE_STATE):
        m.remove_callbacks_with_key(ct, WRAPPER_KEY)


def unpatch_model(model):
    """A clone without AdaCluster (or the model itself if it was not patched)."""
    run = get_run(model)
    if run is None:
        return model
    m = model.clone()
    _unpatch(m, run)
    return m


def patch_model(model, config: AdaClusterConfig | None = None, layer_rules: LayerRules | None = None,
                enabled: bool = True, preset: str = "auto", probe: ProbeSpec | None = None):
    """Clone `model` and route its video self-attention through AdaCluster. enabled=False returns the
    input unchanged (or, if it already carries an AdaCluster patch, a clone with that patch removed)."""
    if not enabled:
        return unpatch_model(model)
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    m = model.clone()
    earlier = get_run(m)
    if earlier is not None:
        log.info("AdaCluster: replacing an earlier AdaCluster patch on this model")
        _unpatch(m, earlier)
    to = m.model_options.setdefault("transformer_options", {})
    previous = to.get(OVERRIDE_KEY)
    run = AdaClusterRun(config, layer_rules, preset, previous_override=previous, probe=probe)
    override = make_override(run, previous)
    run.override = override
    to[OVERRIDE_KEY] = override
    to[HOLDER_KEY] = run
    m.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, _diffusion_model_wrapper_factory(run))

    def on_pre_run(patcher):
        run.begin(patcher)
        install_on_top(run, patcher.model_options.setdefault("transformer_options", {}), live=False)

    def on_cleanup(patcher):
        run.end(patcher)

    def on_prepare_state(patcher, *a, **kw):
        # a later node may have replaced or removed the override: the step's options (0.33 passes
        # them; the DIFFUSION_MODEL wrapper checks the live per-forward ones again)
        mo = a[1] if len(a) > 1 else kw.get("model_options")
        for opts in (mo, patcher.model_options):
            if isinstance(opts, dict):
                install_on_top(run, opts.setdefault("transformer_options", {}), live=False)

    m.add_callback_with_key(pe.CallbacksMP.ON_PRE_RUN, WRAPPER_KEY, on_pre_run)
    m.add_callback_with_key(pe.CallbacksMP.ON_CLEANUP, WRAPPER_KEY, on_cleanup)
    m.add_callback_with_key(pe.CallbacksMP.ON_PREPARE_STATE, WRAPPER_KEY, on_prepare_state)
    return m


# ------------------------------------------------------------------------------------------------
# stats readout (AdaCluster Stats node)
# ------------------------------------------------------------------------------------------------
def run_stats(model) -> dict | None:
    run = get_run(model)
    if run is None:
        return None
    if run.last_run is None:
        return {"version": 1, "summary": "AdaCluster: this model has not been sampled yet", "calls": 0}
    d = dict(run.last_run)
    d["retained_state_bytes"] = run.state_bytes() if not run.active else None
    d["retained_states"] = len(run.states) if not run.active else None
    d["runs_completed"] = run.runs_completed
    d["rss_mb"] = rss_mb()
    return d


__all__ = [
    "FAMILIES",
    "PRESETS",
    "PROBE_MODES",
    "AdaClusterRun",
    "CallRecord",
    "ForwardContext",
    "ProbeSpec",
    "build_forward_context",
    "classify_call",
    "config_fields",
    "config_specs",
    "config_widget_defaults",
    "dense_reason",
    "detect_family",
    "format_stats",
    "get_run",
    "heatmap_image",
    "make_config",
    "make_override",
    "make_probe",
    "parse_layer_rules",
    "parse_selection",
    "patch_model",
    "preset_config",
    "run_stats",
    "stats_json",
    "unpatch_model",
]
