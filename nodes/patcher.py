"""The bridge between ComfyUI and adacluster_core: patching a MODEL and the attention override.

`patch_model(model, config, layer_rules, enabled, preset)` returns a clone of a ComfyUI MODEL
whose video self-attention runs `adacluster_core.sparse_attention`, installed through
nodes/hook.py (`install_override`, shared with AdaCluster Capture):

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

What lasts across runs lives in a `PatchHolder` (nodes/holder.py) stored in
`transformer_options["adacluster"]`, shared by the model's clones; a run's state is a `RunState`
(nodes/run.py), one per (thread, device) lane (nodes/run_lanes.py), so clones sampled in threads
(MultiGPU CFG split) share nothing mutable. Nothing is kept at module level. Each call is decided
by nodes/plan.py (`plan_call` -> CallPlan) and executed here.

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

import torch

from .core import DENSE_RESULT_REASONS as _DENSE_RESULT_REASONS, AdaClusterConfig, ClusterState, sparse_attention
from . import hook, interop, kernel_warmup, run_summary
from .config_widgets import PRESETS
from .fallback import INTERRUPT_CHECK, must_raise
from .families import (AttentionCall, ForwardContext, branch_keys as _branch_keys, build_forward_context,
                       classify_call, h3_description, layer_index as _layer_index)
from .holder import PatchHolder
from .layer_rules import LayerRules
from .plan import CallContext, CallPlan, plan_call
from .probe import ProbeSpec, measure as measure_probe
from .report import rss_mb
from .run import CallRecord, RunState

log = logging.getLogger("AdaCluster")

WRAPPER_KEY = "adacluster"
HOLDER_KEY = "adacluster"          # transformer_options[...] -> PatchHolder
FWD_KEY = "adacluster_fwd"         # transformer_options[...] -> ForwardContext (per forward)
OVERRIDE_KEY = hook.OVERRIDE_KEY
# handed to the core, which calls it between k-means iterations (a module global: tests replace it)
_INTERRUPT_CHECK = INTERRUPT_CHECK


# ------------------------------------------------------------------------------------------------
# per forward
# ------------------------------------------------------------------------------------------------
def _begin_forward(holder: PatchHolder, dm, args, kwargs):
    """Once per forward (the DIFFUSION_MODEL wrapper): this thread's lane (a RunState) works out the
    forward's layout, step and phase and leaves them as a ForwardContext in transformer_options[FWD_KEY]."""
    to = hook.forward_options(args, kwargs)
    if to is None:
        return
    install_on_top(holder, to)   # a later node may have replaced or dropped our override
    x = args[0] if args else kwargs.get("x")
    x = next((t for t in getattr(x, "tensors", x) if isinstance(t, torch.Tensor)), None) \
        if isinstance(getattr(x, "tensors", x), (list, tuple)) else x   # H3: [video, audio]
    run = holder.lane(x.device if isinstance(x, torch.Tensor) else None)   # per thread x device
    fc = build_forward_context(run, dm, args, kwargs, to, clock=run.clock)
    run.n_layers = max(run.n_layers, fc.n_layers)
    run.forwards += 1
    if fc.family is not None:
        run.resolve_config(fc.family)
        key = (fc.family, fc.grid, fc.n_txt, fc.txt_first)
        if math.isfinite(fc.sigma):
            fc.step = run.step_of(fc.sigma)
            fc.phase = run.phase_for(fc.sigma, key if not fc.reason else None)
            fc.warm = fc.phase == "warmup" or (fc.phase == "calibration" and run.calib_warm)
        if key not in run.layouts:
            run.layouts[key] = _layout_entry(fc)
    to[FWD_KEY] = fc


def _layout_entry(fc: ForwardContext) -> dict:
    """The Stats node's description of one token layout (per family, grid, text tokens, order)."""
    return {"family": fc.family, "grid": list(fc.grid), "n_vid": fc.n_vid, "n_txt": fc.n_txt,
            "txt_first": fc.txt_first, "n_layers": fc.n_layers, "reason": fc.reason, "extra_tokens": fc.n_extra,
            "description": h3_description(fc.segments, fc.grid) if fc.segments else None,
            "text_slice": None, "masked_keys": None, "masked_keys_in_text": None}


def _diffusion_model_wrapper_factory(holder: PatchHolder):
    def begin(dm, args, kwargs):
        _begin_forward(holder, dm, args, kwargs)

    def after(args, kwargs):
        if holder.others_above:
            _end_forward(holder, args, kwargs)

    return hook.forward_wrapper(begin, after)


def _end_forward(holder: PatchHolder, args, kwargs):
    """After a forward under a sparse override that runs before ours: the video self-attention
    layers that never reached AdaCluster were taken by it (counted per CFG branch, as our records)."""
    to = hook.forward_options(args, kwargs)
    fc = to.get(FWD_KEY) if to is not None else None
    if fc is None or fc.family is None or fc.reason or getattr(fc.run, "holder", None) is not holder:
        return
    missing = fc.n_layers - fc.self_calls
    if missing > 0:
        holder.note_other_calls(missing * max(1, len(fc.cond_or_uncond)), above=True)


def install_on_top(holder: PatchHolder, to: dict, live: bool = True) -> None:
    """AdaCluster's override reachable from the hook in `to`, whatever was applied after it
    (hook.install_on_top; a foreign override that replaced ours becomes the dense path of a new one)."""
    hook.install_on_top(holder, to, live, rebuild=lambda cur: make_override(holder, cur))


# ------------------------------------------------------------------------------------------------
# the attention override
# ------------------------------------------------------------------------------------------------
def make_override(holder: PatchHolder, previous=None):
    """The optimized_attention_override installed on the patched model (hook.attention_override, with
    the container_function of ComfyUI 0.33+): calls that stay dense go on unchanged to `previous` (an
    override installed before ours; counted when it is another sparse attention) or else to `func`."""
    dense_path = previous
    if previous is not None and not interop.is_adacluster(previous) and interop.is_sparse_override(previous):
        dense_path = hook.counting(holder, previous)   # our dense calls go to another sparse attention: counted

    def handle(call: AttentionCall, kwargs: dict):
        return _dispatch(holder, call, kwargs)

    ov = hook.attention_override(handle, dense_path, name="adacluster_attention_override", module=__name__)
    ov.__adacluster_run__ = holder
    ov.__adacluster_previous__ = previous
    return ov


def _dispatch(holder: PatchHolder, call: AttentionCall, kwargs: dict):
    to = kwargs.get("transformer_options") or {}
    fc: ForwardContext | None = to.get(FWD_KEY)
    if fc is None or getattr(fc.run, "holder", None) is not holder:
        return call.dense()
    return _override_call(fc.run, fc, to, call)   # fc.run: this thread's lane


def _override_call(run: RunState, fc: ForwardContext, to: dict, call: AttentionCall):
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


def _timed_dense(run: RunState, fc: ForwardContext, call: AttentionCall, *, layer: int | None, reason: str):
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


def _maybe_sparse(run: RunState, fc: ForwardContext, call: AttentionCall, layer: int, layout: tuple):
    """A video self-attention call (layout from classify_call): its plan (plan_call) says dense with a
    reason, or sparse; during the dense warmup the background compile of this kind of call starts first."""
    txt_range = layout[5]
    lay = run.layouts.get((fc.family, fc.grid, fc.n_txt, fc.txt_first))
    if lay is not None and lay["text_slice"] is None and txt_range is not None:
        lay["text_slice"] = list(txt_range)
    if fc.warm:
        kernel_warmup.start(run, fc, call, layout)   # compile the sparse kernels while these steps run
    plan = plan_call(call, CallContext(run, fc, layer, layout))
    if plan.reason is not None:
        return _timed_dense(run, fc, call, layer=layer, reason=plan.reason)
    return _sparse_call(run, fc, call, layer, layout, plan)


def _sparse_call(run: RunState, fc: ForwardContext, call: AttentionCall, layer: int, layout: tuple, plan: CallPlan):
    """Executes a sparse plan: the core, one call per CFG branch. A kernel error runs the call dense
    ("error <type>"); NaN / Inf in q, k or v runs it through ComfyUI's attention, exactly the
    unpatched output ("non-finite input")."""
    B, H, L, D, _vid_start, txt_range = layout
    call.take()   # 0.33's containers: the sparse path owns q, k, v now
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
        done = _branch_calls(run, fc, call, layer, qkv, plan, txt_range=txt_range, dense_ref=dense_ref, out=O4)
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


def _branch_calls(run: RunState, fc: ForwardContext, call: AttentionCall, layer: int, qkv: tuple, plan: CallPlan, *,
                  txt_range, dense_ref, out=None):
    """One core call per CFG branch chunk of the batch ([B, H, L, D] inputs), each with the
    (layer, branch) ClusterState and the plan's config, key mask and K / V mode, recorded (and probed
    when `dense_ref` is given) per branch.
    `out` ([B, H, L, D], any strides): each branch's result is written into its rows.
    Returns (outputs, kernels of the sparse calls), or the core's reason when the call must give
    dense's exact result (NaN / Inf, overflow, every key masked: core DENSE_RESULT_REASONS)."""
    Q, K, V = qkv
    B, L = Q.shape[0], Q.shape[2]
    key_mask = plan.key_mask
    branches = _branches(fc, B)
    nb = len(branches)
    bs = B // nb
    fl = _flops(call) // nb
    outs, kernels = [], []
    for i, br in enumerate(branches):
        sl = slice(i * bs, (i + 1) * bs)
        st = _on_device(run.state_for(layer, br), Q.device)
        if plan.mode == "sparse" and st.dense and st.dense_reason == "planned-dense-layer":
            st.dense = False
        km = None
        if key_mask is not None:
            km = key_mask if key_mask.shape[0] == 1 else key_mask[sl]
            km = km.expand(bs, 1, L)
        st_before = copy.deepcopy(st) if dense_ref is not None else None
        core_kw = dict(config=plan.cfg, scale=call.kwargs.get("scale", None), always_dense_range=txt_range, key_mask=km,
                       interrupt_check=_INTERRUPT_CHECK)
        tm = _Timer(call.q.device)
        o, stats = sparse_attention(Q[sl], K[sl], V[sl], state=st, out=None if out is None else out[sl],
                                    kv_rows=plan.kv_rows, **core_kw)
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
def get_run(model) -> PatchHolder | None:
    """The PatchHolder of a patched model (None when it carries no AdaCluster patch)."""
    to = getattr(model, "model_options", {}).get("transformer_options", {})
    r = to.get(HOLDER_KEY)
    return r if isinstance(r, PatchHolder) else None


def _unpatch(m, holder: PatchHolder):
    """Remove an earlier AdaCluster patch from clone `m` (restoring its previous override)."""
    to = m.model_options.setdefault("transformer_options", {})
    cur = to.get(OVERRIDE_KEY)
    if interop.is_ours(cur, holder) and cur is not holder.override:   # ours wrapping a node applied later
        to[OVERRIDE_KEY] = cur.__adacluster_previous__
    elif cur is holder.override:
        if holder.previous is not None:
            to[OVERRIDE_KEY] = holder.previous
        else:
            to.pop(OVERRIDE_KEY, None)
    to.pop(HOLDER_KEY, None)
    hook.remove_hooks(m, WRAPPER_KEY)


def unpatch_model(model):
    """A clone without AdaCluster (or the model itself if it was not patched)."""
    holder = get_run(model)
    if holder is None:
        return model
    m = model.clone()
    _unpatch(m, holder)
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
    previous = m.model_options.setdefault("transformer_options", {}).get(OVERRIDE_KEY)
    holder = PatchHolder(config, layer_rules, preset, previous_override=previous, probe=probe)

    def on_pre_run(patcher):
        holder.begin(patcher)
        install_on_top(holder, patcher.model_options.setdefault("transformer_options", {}), live=False)

    def on_cleanup(patcher):
        end_run(holder, patcher)

    def on_prepare_state(patcher, *a, **kw):
        # a later node may have replaced or removed the override: the step's options (0.33 passes
        # them; the DIFFUSION_MODEL wrapper checks the live per-forward ones again)
        mo = a[1] if len(a) > 1 else kw.get("model_options")
        for opts in (mo, patcher.model_options):
            if isinstance(opts, dict):
                install_on_top(holder, opts.setdefault("transformer_options", {}), live=False)

    holder.override = hook.install_override(
        m, WRAPPER_KEY, lambda prev: make_override(holder, prev), state_key=HOLDER_KEY, state=holder,
        diffusion_model=_diffusion_model_wrapper_factory(holder),
        on_pre_run=on_pre_run, on_cleanup=on_cleanup, on_prepare_state=on_prepare_state)
    return m


def end_run(holder: PatchHolder, patcher=None) -> None:
    """ON_CLEANUP: when the last clone sampling this run is done, fold its lanes, summarise it once
    (run_summary.summarize: the Stats payload and the one-line log summary) and start afresh."""
    if not holder.end_clone(patcher):
        return
    try:
        run = holder.finish()
        holder.last_run = run_summary.summarize(run, holder)
        holder.runs_completed += 1
        if run.forwards > 0 and run.override_calls == 0:
            log.warning("AdaCluster: the model ran %d forwards but no attention call reached AdaCluster's "
                        "override: a later node replaced optimized_attention_override without chaining it",
                        run.forwards)
        log.info(holder.last_run["summary"])
    except Exception:  # never break the user's sampling because of stats
        log.exception("AdaCluster: failed to summarise the run")
    finally:
        holder.reset()


# ------------------------------------------------------------------------------------------------
# stats readout (AdaCluster Stats node)
# ------------------------------------------------------------------------------------------------
def run_stats(model) -> dict | None:
    holder = get_run(model)
    if holder is None:
        return None
    if holder.last_run is None:
        return {"version": 1, "summary": "AdaCluster: this model has not been sampled yet", "calls": 0}
    d = dict(holder.last_run)
    d["retained_state_bytes"] = holder.run.state_bytes() if not holder.active else None
    d["retained_states"] = len(holder.run.states) if not holder.active else None
    d["runs_completed"] = holder.runs_completed
    d["rss_mb"] = rss_mb()
    return d
