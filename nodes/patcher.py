"""The bridge between ComfyUI and adacluster_core (the only module importing both).

`patch_model(model, config, layer_rules, enabled, preset)` returns a clone of a ComfyUI MODEL
whose video self-attention runs `adacluster_core.sparse_attention`:

* an `optimized_attention_override` (called by ComfyUI's `wrap_attn` for every attention call)
  that chains any override already installed: that previous override (or ComfyUI's chosen
  function `func`) is the dense path;
* a keyed `DIFFUSION_MODEL` wrapper that, once per forward, works out the token layout (grid,
  model family, text length/position, masks), the step (sigma), the CFG chunks, and resets the
  per-forward layer counter, all written into `transformer_options["adacluster_fwd"]`;
* callbacks: ON_PRE_RUN starts a run, ON_CLEANUP ends it (one-line summary in the log, caches
  dropped, stats kept for the AdaCluster Stats node), ON_PREPARE_STATE re-installs the override
  if a later node removed it.

Per-run state lives in an `AdaClusterRun` holder stored in `transformer_options["adacluster"]`;
its `__deepcopy__` returns itself because ComfyUI 0.3.75's `ModelPatcher.clone()` deep-copies
`model_options` (upstream shares it by reference). What a forward mutates lives in a lane per
(thread, device) (nodes/run_lanes.py), so clones sampled in threads (MultiGPU CFG split) share
nothing mutable. Nothing is kept at module level.

CFG decision: when cond and uncond run batched, the batch is split along `cond_or_uncond`
chunks and each chunk gets its own ClusterState (key `(layer, branch)`, branch = "c0", "u0",
"c1"... for the n-th cond / uncond chunk), so caches never mix branches and do not depend on
whether ComfyUI batched them. Key-cluster counts are shared per layer.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import time
from collections import Counter, OrderedDict, defaultdict
from typing import Any

import comfy.model_management
import comfy.patcher_extension as pe
import torch

# ComfyUI loads the repo as the package `custom_nodes/<pack>`, so the core is a sibling
# subpackage; tests (and a pip-installed core) import it top-level.
try:
    from ..adacluster_core import AdaClusterConfig, ClusterState, sparse_attention
    from ..adacluster_core import api as _core_api
    from ..adacluster_core import config as _core_config
    from ..adacluster_core.clustering import plan_layers
except ImportError:
    from adacluster_core import AdaClusterConfig, ClusterState, sparse_attention
    from adacluster_core import api as _core_api
    from adacluster_core import config as _core_config
    from adacluster_core.clustering import plan_layers

from .report import format_stats, heatmap_image, rss_mb, stats_json
from .families import (ForwardContext, branch_keys as _branch_keys, mask_to_keys as _mask_to_keys, build_forward_context, classify_call,
                       detect_family, layer_index as _layer_index)
from .layer_rules import LayerRules, Selection, parse_rules, parse_selection
from .run_lanes import LaneTable, fold_lane

log = logging.getLogger("AdaCluster")

WRAPPER_KEY = "adacluster"
HOLDER_KEY = "adacluster"          # transformer_options[...] -> AdaClusterRun
FWD_KEY = "adacluster_fwd"         # transformer_options[...] -> ForwardContext (per forward)
OVERRIDE_KEY = "optimized_attention_override"

PLAN_CACHE_SIZE = 8                # (model, resolution) plans kept per patched model
FAMILIES = ("wan", "hunyuan", "hunyuan15", "cogvideox")
PRESETS = ("auto", "quality", "balanced", "fast")
_CORE_MODEL = {"wan": "wan", "hunyuan": "hunyuan", "hunyuan15": "hunyuan", "cogvideox": "cogvideox"}
# what the sparse kernel handles (the core checks too; checking here gives short reasons)
_SUPPORTED_DTYPES = tuple(getattr(_core_api, "SPARSE_DTYPES", (torch.float16, torch.bfloat16, torch.float32)))
_SUPPORTED_HEAD_DIMS = tuple(getattr(_core_api, "SPARSE_HEAD_DIMS", (64, 128)))
_STRICT_ENV = "ADACLUSTER_STRICT"  # "1": re-raise kernel errors instead of falling back to dense
_NO_TRITON = getattr(_core_api, "NO_TRITON", "dense: no triton")
_NON_FINITE = getattr(_core_api, "NON_FINITE", "non-finite input")
# ComfyUI's interrupt: raises InterruptProcessingException once /interrupt was posted. The core
# calls it between k-means iterations and multi-stage rounds (feature-tested: >= 0.3.60 has it).
_INTERRUPT_CHECK = getattr(comfy.model_management, "throw_exception_if_processing_interrupted", None)
_INTERRUPT_EXC = getattr(comfy.model_management, "InterruptProcessingException", None)


def _is_interrupt(e: BaseException) -> bool:
    return _INTERRUPT_EXC is not None and isinstance(e, _INTERRUPT_EXC)


def _bad_scale(scale) -> bool:
    """A scale the core refuses (it must be a finite number > 0): such calls run dense here."""
    if scale is None:
        return False
    try:
        return not (math.isfinite(float(scale)) and float(scale) > 0)
    except (TypeError, ValueError):
        return True


# ------------------------------------------------------------------------------------------------
# config helpers (the nodes use these; they never import adacluster_core themselves)
# ------------------------------------------------------------------------------------------------
def config_fields() -> dict[str, Any]:
    """AdaClusterConfig field name -> default."""
    return {f.name: f.default for f in dataclasses.fields(AdaClusterConfig)}


def config_specs() -> dict:
    """AdaClusterConfig field name -> FieldSpec (kind, lo, hi, choices, optional, step): the one
    bounds table, read by the Thresholds widgets and enforced by the config."""
    return dict(_core_config.FIELD_SPECS)


def config_widget_defaults() -> dict:
    """AdaClusterConfig field name -> the Thresholds widget default (the balanced preset)."""
    return _core_config.widget_defaults()


def make_config(**kw) -> AdaClusterConfig:
    """Validated config (ValueError naming the field)."""
    return AdaClusterConfig(**kw)


def preset_config(family: str, preset: str) -> AdaClusterConfig:
    return AdaClusterConfig.for_model(_CORE_MODEL.get(family, "wan"), preset)


def _layer_field_types() -> dict[str, tuple]:
    out = {}
    for f in dataclasses.fields(AdaClusterConfig):
        if f.name in ("warmup", "dense_layer_fraction", "calibration_dense"):
            continue
        d = f.default
        if f.name == "k_clusters":
            out[f.name] = (int, type(None))
        elif isinstance(d, bool):
            out[f.name] = (bool,)
        elif isinstance(d, int):
            out[f.name] = (int,)
        elif isinstance(d, float):
            out[f.name] = (float, int)
        elif isinstance(d, str):
            out[f.name] = (str,)
        else:
            out[f.name] = (object,)
    return out


def parse_layer_rules(text: str) -> LayerRules:
    """Parse + validate override text against the real AdaClusterConfig (messages name the line)."""
    rules = parse_rules(text, fields=_layer_field_types())
    base = AdaClusterConfig()
    for r in rules.rules:
        if r.overrides:
            try:
                base.replace(**dict(r.overrides))
            except (ValueError, TypeError) as e:
                raise ValueError(f"line {r.line}: {e}") from None
    return rules


# ------------------------------------------------------------------------------------------------
# probe mode
# ------------------------------------------------------------------------------------------------
PROBE_MODES = ("off", "on")
PROBE_MAX_ROWS = 256   # query rows per (batch, head) used for the dense softmax mass of the recall


@dataclasses.dataclass(frozen=True)
class ProbeSpec:
    """Which sparse calls the probe measures (layers x steps, selector grammar of the rules)."""
    layers: Selection = dataclasses.field(default_factory=Selection)
    steps: Selection = dataclasses.field(default_factory=Selection)
    max_rows: int = PROBE_MAX_ROWS

    def wants(self, layer: int, step: int, n_layers: int | None, n_steps: int | None) -> bool:
        return self.layers.matches(layer, n_layers or None) and step >= 0 and self.steps.matches(step, n_steps)

    def describe(self) -> str:
        return f"layers {self.layers.text or '*'}, steps {self.steps.text or '*'}"


def make_probe(mode: str = "off", layers: str = "*", steps: str = "*", max_rows: int = PROBE_MAX_ROWS):
    """ProbeSpec or None (mode off). ValueError naming the widget on bad selections."""
    if mode not in PROBE_MODES:
        raise ValueError(f"probe must be one of {PROBE_MODES}, got {mode!r}")
    if mode == "off":
        return None
    return ProbeSpec(parse_selection(layers, "probe_layers"), parse_selection(steps, "probe_steps"), int(max_rows))


def _mass_recall(Q, K, cfg, state_copy, scale, txt_range, km, max_rows):
    """Attention-mass recall of a sparse call, exact for the keys the call computed.

    The call is replayed (same inputs, a copy of the layer's ClusterState taken before the real
    call, so clustering and selection are the same) with one extra SENTINEL token in the
    always-dense range: q = k = 0 (logit 0 for every query) and values that read the normaliser:
    real keys carry v = e0, the sentinel v = e1. For query i the kernel then returns
    a_i = Z_S/(Z_S + 1) in channel 0 and b_i = 1/(Z_S + 1) in channel 1, where
    Z_S = sum over the computed keys of exp(scale q_i.k_j). So log Z_S = log a - log b, and
    recall_i = Z_S / Z with log Z = logsumexp over all (unmasked) keys, computed in fp32 for at
    most `max_rows` evenly spaced video query rows per (batch, head). Text rows (attend
    everything) are excluded. Returns a 0-dim tensor (mean over rows) or None when the layout
    has no place for the sentinel. Exactness limits: the output dtype's precision (bf16 ~1e-2
    relative) and b underflowing when logits exceed ~80 (such rows are skipped)."""
    B, H, L, D = Q.shape
    if txt_range is None:
        pos, rng, vid = "end", (L, L + 1), (0, L)
    elif txt_range[0] == 0:
        pos, rng, vid = "start", (0, txt_range[1] + 1), (txt_range[1], L)
    elif txt_range[1] == L:
        pos, rng, vid = "end", (txt_range[0], L + 1), (0, txt_range[0])
    else:
        return None
    z = Q.new_zeros(B, H, 1, D)
    vr = torch.zeros_like(Q)
    vr[..., 0] = 1
    vs = z.clone()
    vs[..., 1] = 1

    def cat(a, b):
        return torch.cat([b, a], 2) if pos == "start" else torch.cat([a, b], 2)

    km2 = None
    if km is not None:
        pad = km.new_zeros(km.shape[:-1] + (1,))
        km2 = torch.cat([pad, km], -1) if pos == "start" else torch.cat([km, pad], -1)
    o2, _ = sparse_attention(cat(Q, z), cat(K, z), cat(vr, vs), config=cfg, state=state_copy, scale=scale,
                             always_dense_range=rng, key_mask=km2, interrupt_check=_INTERRUPT_CHECK)
    nv = vid[1] - vid[0]
    r = min(nv, max(1, int(max_rows)))
    idx = torch.linspace(vid[0], vid[1] - 1, r, device=Q.device).round().long().unique()
    off = 1 if pos == "start" else 0
    a = o2[:, :, idx + off, 0].float()
    b = o2[:, :, idx + off, 1].float()
    log_zs = torch.log(a) - torch.log(b)
    sc = float(scale) if scale is not None else D ** -0.5
    logits = (Q[:, :, idx].float() @ K.float().transpose(-1, -2)) * sc        # [B, H, r, L]
    if km is not None:
        logits = logits.masked_fill((km.float() <= -1e4).reshape(km.shape[0], 1, 1, L), float("-inf"))
    rec = torch.exp(log_zs - torch.logsumexp(logits, -1)).clamp(0.0, 1.0)
    ok = torch.isfinite(log_zs) | (a == 0)
    rec = torch.where(ok, rec.nan_to_num(0.0), torch.zeros_like(rec))
    return rec.sum() / ok.sum().clamp_min(1)


def _rel_err(o, ref):
    o, ref = o.float(), ref.float()
    return (o - ref).norm() / ref.norm().clamp_min(1e-12)


# ------------------------------------------------------------------------------------------------
# the run holder
# ------------------------------------------------------------------------------------------------
class AdaClusterRun:
    """Per patched model: config, rules, and the state/stats of the current sampling run."""

    def __init__(self, config: AdaClusterConfig | None, layer_rules: LayerRules | None, preset: str,
                 previous_override=None, probe: ProbeSpec | None = None):
        self.user_config = config
        self.probe = probe
        self.rules = layer_rules or LayerRules()
        self.preset = preset if preset in PRESETS else "auto"
        self.previous = previous_override
        self.model_sampling = None
        self.override = None             # set by patch_model
        self.runs_completed = 0
        # per (family, grid, text tokens, token order): the calibrated key-cluster counts, planned
        # dense layers and cap, kept across runs of this patched model, so the dense calibration
        # step is paid once per model and resolution (the counts are stable across prompts)
        self.plan_cache: "OrderedDict[tuple, dict]" = OrderedDict()
        self.last_run: dict | None = None
        self._warned: set = set()
        self.root = self                 # a lane points at its holder (nodes/run_lanes.py)
        self._running: set = set()       # ids of the patchers (clones) sampling this run now
        self.lanes = LaneTable()
        self._reset_run()

    # deep copies (ComfyUI 0.3.75 clone) share the holder
    def __deepcopy__(self, memo):
        return self

    def __copy__(self):
        return self

    # ---------------------------------------------------------------- lifecycle
    def _reset_run(self):
        self.states: dict[tuple[int, str], ClusterState] = {}
        self.counts: dict[int, int] = {}
        self.planned_dense: set = set()
        self.cap: int | None = None
        self.plan_reason: str = ""
        self.plan_source: str | None = None   # "calibration" | "cache" once the run has a plan
        self.plan_key: tuple | None = None
        self.phase = "warmup"
        self.calib_sigma: float | None = None
        self.warmup_sigma: float | None = None
        self.family: str | None = None
        self.config: AdaClusterConfig | None = None
        self.layer_cfg: dict[tuple[int, int], AdaClusterConfig] = {}
        self.sigma_steps: dict[float, int] = {}
        self.schedule: list[float] = []   # the sampler's sigmas (transformer_options["sample_sigmas"])
        self._schedule_src = None
        self.records: list[tuple] = []
        self.kernels: Counter = Counter()   # attention kernel of the sparse calls ("triton" | "reference")
        self.probes: list[tuple] = []     # (layer, step, branch, rel_err, recall, density) 0-dim tensors ok
        self.layouts: dict[tuple, dict] = {}
        self.forwards = 0
        self.override_calls = 0
        self.n_layers = 0
        self.state_bytes_peak = 0
        self.t_start = None
        self.active = False
        self.lanes.clear()

    # ---------------------------------------------------------------- lanes
    def lane(self, device) -> "AdaClusterRun":
        """This run's state for the calling thread on `device` (the holder itself for the first)."""
        return self.lanes.get(self, device, self._spawn_lane)

    def _spawn_lane(self, key) -> "AdaClusterRun":
        ln = AdaClusterRun(self.user_config, self.rules, self.preset, self.previous, self.probe)
        ln.root, ln.override, ln.model_sampling = self, self.override, self.model_sampling
        ln.plan_cache = self.plan_cache          # calibrated plans are per model, shared by its lanes
        ln.active, ln.t_start = True, self.t_start
        return ln

    def begin(self, patcher=None):
        with self.lanes.lock:
            if self._running and id(patcher) not in self._running:
                self._running.add(id(patcher))   # another clone (MultiGPU device) of the run in progress
                return
            self._running = {id(patcher)}
        self._reset_run()
        self.active = True
        self.t_start = time.perf_counter()
        ms = None
        try:
            ms = patcher.model.model_sampling if patcher is not None else None
        except Exception:
            ms = None
        self.model_sampling = ms

    def end(self, patcher=None):
        with self.lanes.lock:
            if id(patcher) in self._running:
                self._running.discard(id(patcher))
            else:                                # not one that began this run: end it all
                self._running.clear()
            if self._running:
                return                           # other clones of this run are still sampling
        if not self.active and not self.records and not self.lanes.others:
            return
        try:
            for i, ln in enumerate(self.lanes.others.values()):
                fold_lane(self, ln, f"lane{i + 1}")
            self.state_bytes_peak = max(self.state_bytes_peak, self.state_bytes())
            self.last_run = self.summarize()
            self.runs_completed += 1
            if self.forwards > 0 and self.override_calls == 0:
                log.warning("AdaCluster: the model ran %d forwards but no attention call reached AdaCluster's "
                            "override: a later node replaced optimized_attention_override without chaining it",
                            self.forwards)
            log.info(self.last_run["summary"])
        except Exception:  # never break the user's sampling because of stats
            log.exception("AdaCluster: failed to summarise the run")
        finally:
            self._reset_run()
            self.last_run_retained_bytes = self.state_bytes()

    def state_bytes(self) -> int:
        return sum(s.nbytes() for s in self.states.values())

    # ---------------------------------------------------------------- config
    def resolve_config(self, family: str) -> AdaClusterConfig:
        if self.config is None or self.family != family:
            self.family = family
            if self.user_config is not None:
                self.config = self.user_config
            else:
                preset = "balanced" if self.preset == "auto" else self.preset
                self.config = preset_config(family, preset)
            if self.model_sampling is not None:
                try:
                    self.warmup_sigma = float(self.model_sampling.percent_to_sigma(float(self.config.warmup)))
                except Exception:
                    self.warmup_sigma = None
        return self.config

    def cfg_for_layer(self, layer: int, n_tokens: int, n_layers: int) -> tuple[str | None, AdaClusterConfig]:
        mode, ov = self.rules.resolve(layer, n_layers) if len(self.rules) else (None, {})
        key = (layer, n_tokens)
        cfg = self.layer_cfg.get(key)
        if cfg is None:
            cfg = (self.config.replace(**ov) if ov else self.config).clamped(n_tokens)
            self.layer_cfg[key] = cfg
        return mode, cfg

    # ---------------------------------------------------------------- steps
    def note_schedule(self, sample_sigmas) -> None:
        """Remember the sampler's schedule so steps are numbered by it: a step that never reaches the
        model (a step cache such as EasyCache / LazyCache skipped it) keeps its column, as "no call"."""
        if sample_sigmas is self._schedule_src:
            return
        self._schedule_src = sample_sigmas
        vals = [float(v) for v in sample_sigmas.detach().float().cpu().tolist()]
        if len(vals) > 1 and vals != self.schedule:
            self.schedule = vals
            self.sigma_steps = {}

    def step_of(self, sigma: float) -> int:
        """Sampler step of a model call: its index in the schedule (a sigma between two schedule
        entries, e.g. a 2nd-order sampler's midpoint, belongs to the step it starts from); without a
        schedule, the order in which distinct sigmas were first seen."""
        k = round(sigma, 7)
        if k not in self.sigma_steps:
            sch = self.schedule
            if len(sch) > 1:
                tol = 1e-5 * max(1.0, abs(sigma))
                i = sum(1 for s in sch[1:-1] if s >= sigma - tol)  # schedule entries at/above sigma (excl. first)
                self.sigma_steps[k] = min(i, len(sch) - 2)
            else:
                self.sigma_steps[k] = len(self.sigma_steps)
        return self.sigma_steps[k]

    def step_sigmas(self) -> list[float]:
        """Sigma of each step column of the stats grid."""
        if len(self.schedule) > 1:
            return self.schedule[:-1]
        return [s for s, _ in sorted(self.sigma_steps.items(), key=lambda kv: kv[1])]

    def phase_for(self, sigma: float, plan_key: tuple | None = None) -> str:
        cfg = self.config
        if self.warmup_sigma is not None:
            warm = sigma > self.warmup_sigma + 1e-6 * max(1.0, abs(self.warmup_sigma))
        else:  # no model_sampling: fall back to the fraction of distinct sigmas seen
            warm = cfg.warmup >= 1.0
        if warm:
            return "warmup"
        if self.phase == "warmup":
            adaptive = cfg.k_clusters is None and cfg.calibration_dense
            self.plan_key = plan_key
            with self.root.lanes.lock:   # lanes share the holder's plan cache
                cached = self.plan_cache.get(plan_key) if adaptive and plan_key is not None else None
                if cached is not None:
                    self.plan_cache.move_to_end(plan_key)
            if cached is not None:
                self._apply_plan(cached)
                self.plan_source = "cache"
                self.phase = "sparse"
            elif adaptive:
                self.phase = "calibration"
                self.calib_sigma = sigma
            else:
                self.phase = "sparse"
        elif self.phase == "calibration" and self.calib_sigma is not None and abs(sigma - self.calib_sigma) > 1e-9:
            if not self.states:  # no attention call reached calibration (a step cache skipped that step)
                self.calib_sigma = sigma
            else:
                self.plan()
                self.phase = "sparse"
        return self.phase

    def plan(self):
        """After the calibration step: choose dense layers and the cap from the per-layer counts."""
        counts: dict[int, int | None] = {}
        for (layer, _branch), st in self.states.items():
            if st.k_clusters is not None:
                prev = counts.get(layer)
                counts[layer] = max(prev or 0, int(st.k_clusters))
            elif st.dense and layer not in counts:
                counts[layer] = None          # judged hard to compress by the multi-stage procedure
        self.counts = {k: v for k, v in counts.items() if v is not None}
        self.state_bytes_peak = max(self.state_bytes_peak, self.state_bytes())
        if not counts:
            return
        n_tok = max((lay.get("n_vid", 0) for lay in self.layouts.values()), default=0)
        dense, cap = _plan_layers(counts, float(self.config.dense_layer_fraction), n_tok)
        forced_sparse = {layer for layer in counts if self.rules.resolve(layer, self.n_layers)[0] == "sparse"}
        plan = {"counts": dict(self.counts), "planned_dense": set(dense) - forced_sparse, "cap": cap}
        self._apply_plan(plan)
        self.plan_source = "calibration"
        if self.plan_key is not None:
            with self.root.lanes.lock:
                self.plan_cache[self.plan_key] = plan
                while len(self.plan_cache) > PLAN_CACHE_SIZE:
                    self.plan_cache.popitem(last=False)

    def _apply_plan(self, plan: dict):
        self.counts = dict(plan["counts"])
        self.planned_dense = set(plan["planned_dense"])
        self.cap = plan["cap"]
        for (layer, _branch), st in self.states.items():
            c = self.counts.get(layer)
            if c is not None:
                st.k_clusters = int(min(c, self.cap)) if self.cap else int(c)
            if layer in self.planned_dense:
                st.dense = True
                st.dense_reason = "planned-dense-layer"

    def state_for(self, layer: int, branch: str) -> ClusterState:
        key = (layer, branch)
        st = self.states.get(key)
        if st is None:
            st = ClusterState()
            # counts are shared per layer: a branch seen only after planning inherits them
            if self.phase == "sparse" and layer in self.counts:
                c = self.counts[layer]
                st.k_clusters = int(min(c, self.cap)) if self.cap else int(c)
                if layer in self.planned_dense:
                    st.dense = True
                    st.dense_reason = "planned-dense-layer"
            self.states[key] = st
        return st

    # ---------------------------------------------------------------- stats
    def record(self, layer, step, branch, sparse, reason, density, qc, kc, t, flops_full, **extra):
        self.records.append((layer, step, branch, sparse, reason, density, qc, kc, t, flops_full))

    def warn_once(self, key, msg, *a):
        if key not in self._warned:
            self._warned.add(key)
            log.warning(msg, *a)

    def summarize(self) -> dict:
        recs = self.records
        # resolve densities (0-dim tensors -> one sync) and timings (cuda events)
        dens = [r[5] for r in recs]
        tens_idx = [i for i, d in enumerate(dens) if isinstance(d, torch.Tensor)]
        if tens_idx:
            vals = torch.stack([dens[i].detach().float().reshape(()).cpu() for i in tens_idx]).tolist()
            for i, v in zip(tens_idx, vals):
                dens[i] = v
        times = []
        ev_sync = False
        for r in recs:
            t = r[8]
            if isinstance(t, tuple):
                if not ev_sync:
                    torch.cuda.synchronize()
                    ev_sync = True
                times.append(t[0].elapsed_time(t[1]) / 1000.0)
            else:
                times.append(float(t or 0.0))
        n = len(recs)
        sparse_idx = [i for i, r in enumerate(recs) if r[3]]
        reasons = Counter(r[4] for r in recs if not r[3])
        total_flops = sum(r[9] for r in recs)
        spent = sum(rec[9] * (float(dens[i]) if rec[3] and dens[i] is not None else 1.0) for i, rec in enumerate(recs))
        saved_frac = (1.0 - spent / total_flops) if total_flops > 0 else 0.0
        mean_density = (sum(float(dens[i]) for i in sparse_idx) / len(sparse_idx)) if sparse_idx else None
        attn_time = sum(times)
        step_sigmas = self.step_sigmas()
        n_steps = len(step_sigmas)
        layers = sorted({r[0] for r in recs if r[0] is not None and r[0] >= 0})
        n_layers = max(self.n_layers, (layers[-1] + 1) if layers else 0)
        grid = [[None] * n_steps for _ in range(n_layers)]
        acc: dict[tuple[int, int], list[float]] = defaultdict(list)
        for i, r in enumerate(recs):
            layer, step = r[0], r[1]
            if layer is None or layer < 0 or step is None or step < 0 or layer >= n_layers or step >= n_steps:
                continue
            acc[(layer, step)].append(float(dens[i]) if r[3] and dens[i] is not None else 1.0)
        for (layer, step), v in acc.items():
            grid[layer][step] = round(sum(v) / len(v), 4)
        per_layer: dict[int, dict] = {}
        for i, r in enumerate(recs):
            layer = r[0]
            if layer is None or layer < 0:
                continue
            d = per_layer.setdefault(layer, {"sparse": 0, "dense": 0, "q_clusters": None, "k_clusters": None,
                                             "dense_reasons": {}})
            if r[3]:
                d["sparse"] += 1
                if r[6] is not None:
                    d["q_clusters"] = int(r[6])
                if r[7] is not None:
                    d["k_clusters"] = int(r[7])
            else:
                d["dense"] += 1
                d["dense_reasons"][r[4]] = d["dense_reasons"].get(r[4], 0) + 1
        for layer, c in self.counts.items():
            per_layer.setdefault(layer, {"sparse": 0, "dense": 0, "q_clusters": None, "k_clusters": None,
                                         "dense_reasons": {}})["adaptive_count"] = int(c)
        # the realised per-layer settings (config after rules; what the sparse calls used)
        for (layer, _n), cfg in self.layer_cfg.items():
            if layer in per_layer:
                mode = self.rules.resolve(layer, n_layers)[0] if len(self.rules) else None
                sets = {"mode": mode}
                for f in ("q_clusters", "k_clusters", "top_k", "selection", "top_p", "max_density", "pooled_tail"):
                    if hasattr(cfg, f):
                        sets[f] = getattr(cfg, f)
                per_layer[layer]["settings"] = sets
        probe = self._summarize_probe(n_layers, n_steps)
        wall = (time.perf_counter() - self.t_start) if self.t_start else None
        reason_txt = ", ".join(f"{k} {v}" for k, v in reasons.most_common())
        summary = (f"AdaCluster: {n} attention calls, {len(sparse_idx)} sparse"
                   + (f" (density {mean_density:.2f})" if mean_density is not None else "")
                   + f", {n - len(sparse_idx)} dense" + (f" ({reason_txt})" if reason_txt else "")
                   + f", est. {100 * saved_frac:.0f}% attention FLOPs saved, attention {attn_time:.2f} s")
        if self.plan_source == "cache":
            summary += ", key-cluster counts reused from an earlier run (no calibration step)"
        if self.family is None and self.forwards == 0:
            summary += " (model never ran)"
        return {
            "version": 1,
            "summary": summary,
            "family": self.family,
            "preset": self.preset,
            "config": self.config.to_dict() if self.config is not None else None,
            "rules": self.rules.describe(),
            "forwards": self.forwards,
            "calls": n,
            "sparse_calls": len(sparse_idx),
            "dense_calls": n - len(sparse_idx),
            "dense_reasons": dict(reasons),
            # which kernel ran: the sparse calls' kernel, and the calls that had no Triton to run on
            "kernels": {**dict(self.kernels), **({_NO_TRITON: reasons[_NO_TRITON]} if reasons.get(_NO_TRITON) else {})},
            "mean_density": mean_density,
            "min_density": min((float(dens[i]) for i in sparse_idx), default=None),
            "max_density": max((float(dens[i]) for i in sparse_idx), default=None),
            "flops_saved_frac": saved_frac,
            "attention_time_s": attn_time,
            "run_wall_s": wall,
            "sigmas": step_sigmas,
            "steps_without_calls": [i for i in range(n_steps) if all(row[i] is None for row in grid)],
            "n_layers": n_layers,
            "density_grid": grid,           # [layer][step] mean density (1.0 = dense, None = no call)
            "per_layer": {str(k): v for k, v in sorted(per_layer.items())},
            "adaptive_counts": {str(k): v for k, v in sorted(self.counts.items())},
            "planned_dense_layers": sorted(self.planned_dense),
            "cap": self.cap,
            "plan_source": self.plan_source,
            "layouts": list(self.layouts.values()),
            "state_bytes_peak": self.state_bytes_peak,
            "n_states": len(self.states),
            "runs_completed": self.runs_completed + 1,
            "probe": probe,
        }

    def _summarize_probe(self, n_layers: int, n_steps: int) -> dict | None:
        if self.probe is None:
            return None
        rows = self.probes
        vals = []
        for r in rows:
            vals += [r[3], r[4] if r[4] is not None else float("nan"), r[5] if r[5] is not None else float("nan")]
        flat = [torch.as_tensor(v).detach().float().reshape(()).cpu() for v in vals]
        nums = torch.stack(flat).tolist() if flat else []
        recs = [(r[0], r[1], r[2], nums[3 * i], nums[3 * i + 1], nums[3 * i + 2]) for i, r in enumerate(rows)]
        err_grid = [[None] * n_steps for _ in range(n_layers)]
        rec_grid = [[None] * n_steps for _ in range(n_layers)]
        acc: dict[tuple[int, int], list] = defaultdict(list)
        per: dict[int, list] = defaultdict(list)
        for layer, step, _br, e, rc, d in recs:
            per[layer].append((e, rc, d))
            if 0 <= layer < n_layers and 0 <= step < n_steps:
                acc[(layer, step)].append((e, rc))
        for (layer, step), v in acc.items():
            err_grid[layer][step] = round(max(e for e, _ in v), 5)
            rs = [rc for _, rc in v if math.isfinite(rc)]
            rec_grid[layer][step] = round(min(rs), 5) if rs else None
        layers = []
        for layer, v in per.items():
            rs = [rc for _, rc, _ in v if math.isfinite(rc)]
            ds = [d for _, _, d in v if math.isfinite(d)]
            layers.append({"layer": layer, "calls": len(v), "error_mean": sum(e for e, _, _ in v) / len(v),
                           "error_max": max(e for e, _, _ in v),
                           "recall_mean": (sum(rs) / len(rs)) if rs else None, "recall_min": min(rs) if rs else None,
                           "density_mean": (sum(ds) / len(ds)) if ds else None})
        layers.sort(key=lambda x: -x["error_max"])
        errs = [e for *_, e, _, _ in recs]
        return {"spec": self.probe.describe(), "max_rows": self.probe.max_rows, "calls": len(recs),
                "max_error": max(errs) if errs else None,
                "mean_error": (sum(errs) / len(errs)) if errs else None,
                "error_grid": err_grid, "recall_grid": rec_grid,
                "worst_layers": layers,     # sorted by error_max, worst first
                "recall_definition": "fraction of the dense softmax mass of each video query row on the keys the "
                                     "sparse call computed (exact, sentinel-token replay; mean over <= max_rows "
                                     "rows per head)"}


def _plan_layers(counts: dict[int, int | None], fraction: float, n_tokens: int):
    dense, cap = plan_layers(counts, fraction, n_tokens)
    return set(dense), (int(cap) if cap else None)


def _begin_forward(run: AdaClusterRun, dm, args, kwargs):
    to = kwargs.get("transformer_options")
    if not isinstance(to, dict):
        to = next((a for a in reversed(args) if isinstance(a, dict)), None)
    if to is None:
        return
    # re-install our override if a later node dropped it from the live options
    if to.get(OVERRIDE_KEY) is None and run.override is not None:
        to[OVERRIDE_KEY] = run.override
    x = args[0] if args else kwargs.get("x")
    run = run.lane(x.device if isinstance(x, torch.Tensor) else None)   # per thread x device
    fc = build_forward_context(run, dm, args, kwargs, to)
    run.forwards += 1
    if fc.family is not None:
        run.resolve_config(fc.family)
        key = (fc.family, fc.grid, fc.n_txt, fc.txt_first)
        if math.isfinite(fc.sigma):
            fc.step = run.step_of(fc.sigma)
            fc.phase = run.phase_for(fc.sigma, key if not fc.reason else None)
        if key not in run.layouts:
            run.layouts[key] = {"family": fc.family, "grid": list(fc.grid), "n_vid": fc.n_vid, "n_txt": fc.n_txt,
                                "txt_first": fc.txt_first, "n_layers": fc.n_layers, "reason": fc.reason,
                                "extra_tokens": fc.n_extra,
                                "text_slice": None, "masked_keys": None, "masked_keys_in_text": None}
    to[FWD_KEY] = fc


def _diffusion_model_wrapper_factory(run: AdaClusterRun):
    begin = torch.compiler.disable(_begin_forward)

    def adacluster_diffusion_model_wrapper(executor, *args, **kwargs):
        begin(run, executor.class_obj, args, kwargs)
        return executor(*args, **kwargs)

    return adacluster_diffusion_model_wrapper


# ------------------------------------------------------------------------------------------------
# the attention override
# ------------------------------------------------------------------------------------------------
def make_override(run: AdaClusterRun, previous=None):
    """The optimized_attention_override installed on the patched model."""

    def dense(func, args, kwargs):
        if previous is not None:
            return previous(func, *args, **kwargs)
        return func(*args, **kwargs)

    @torch.compiler.disable
    def adacluster_attention_override(func, *args, **kwargs):
        to = kwargs.get("transformer_options") or {}
        fc: ForwardContext | None = to.get(FWD_KEY)
        if fc is None or getattr(fc.run, "root", None) is not run:
            return dense(func, args, kwargs)
        return _override_call(fc.run, fc, to, dense, func, args, kwargs)   # fc.run: this thread's lane

    adacluster_attention_override.__adacluster_run__ = run
    adacluster_attention_override.__adacluster_previous__ = previous
    return adacluster_attention_override


def _override_call(run: AdaClusterRun, fc: ForwardContext, to: dict, dense, func, args, kwargs):
    """One attention call of a forward, with `run` = the lane that forward belongs to."""
    run.override_calls += 1
    fc.calls += 1
    q, k, v = args[0], args[1], args[2]
    heads = args[3] if len(args) > 3 else kwargs.get("heads")
    skip_reshape = bool(kwargs.get("skip_reshape", False))
    mask = kwargs.get("mask", args[4] if len(args) > 4 else None)
    if fc.family is None:
        run.record(None, fc.step, None, False, fc.reason or "unsupported-model", None, None, None, 0.0, 0)
        return dense(func, args, kwargs)
    kind, reason, layout = classify_call(fc, q, k, heads, skip_reshape)
    if kind == "other":
        return _timed_dense(run, fc, None, reason, func, args, kwargs, dense, q, k, heads, skip_reshape)
    layer = _layer_index(fc, to)
    fc.self_calls += 1
    if kind == "dense":
        return _timed_dense(run, fc, layer, reason, func, args, kwargs, dense, q, k, heads, skip_reshape)
    if fc.reason:
        return _timed_dense(run, fc, layer, fc.reason, func, args, kwargs, dense, q, k, heads, skip_reshape)
    return _maybe_sparse(run, fc, layer, layout, func, args, kwargs, dense, q, k, v, mask, skip_reshape)


def _flops(q, k, heads, skip_reshape) -> int:
    if skip_reshape:
        B, H, L, D = q.shape
        Lk = k.shape[2]
    else:
        B, L, HD = q.shape
        H, D, Lk = int(heads or 1), HD // int(heads or 1), k.shape[1]
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


def _branch_count(fc, B):
    return len(fc.cond_or_uncond) if fc.cond_or_uncond and B % len(fc.cond_or_uncond) == 0 else 1


def _timed_dense(run, fc, layer, reason, func, args, kwargs, dense, q, k, heads, skip_reshape):
    """Dense through ComfyUI's function (or the chained override). Recorded once per CFG branch,
    like sparse calls, so counts/FLOPs/time are comparable (a batched cond+uncond call = 2)."""
    tm = _Timer(q.device)
    out = dense(func, args, kwargs)
    t = tm.stop()
    fl = _flops(q, k, heads, skip_reshape)
    nb = _branch_count(fc, q.shape[0])
    if nb > 1:  # the whole time goes to the first branch's record
        for i, br in enumerate(_branch_keys(fc.cond_or_uncond)):
            run.record(layer, fc.step, br, False, reason, None, None, None, t if i == 0 else 0.0, fl // nb)
    else:
        br = _branch_keys(fc.cond_or_uncond)[0] if fc.cond_or_uncond else None
        run.record(layer, fc.step, br, False, reason, None, None, None, t, fl)
    return out


def _check_mask(run, fc, mask, B, L, txt_range, vid_start):
    """Key mask for the core, or a reason string when the mask cannot be honoured. Cached per forward."""
    if mask is None:
        return None, ""
    if fc.mask_cache is not None and fc.mask_cache[0] is mask:
        return fc.mask_cache[1], fc.mask_cache[2]
    km = _mask_to_keys(mask, B, L)
    reason = ""
    if km is None:
        reason = "mask-shape"
    else:
        neg = (km.reshape(-1, L) < -1e4).any(0)          # one host sync per forward
        idx = torch.nonzero(neg).flatten().tolist()
        n_vid = fc.n_vid
        in_vid = [i for i in idx if vid_start <= i < vid_start + n_vid]
        in_txt = [i for i in idx if txt_range is not None and txt_range[0] <= i < txt_range[1]]
        lay = run.layouts.get((fc.family, fc.grid, fc.n_txt, fc.txt_first))
        if lay is not None:
            lay["masked_keys"] = len(idx)
            lay["masked_keys_in_text"] = len(in_txt)
        if in_vid:
            reason = "mask-on-video-keys"
            km = None
    fc.mask_cache = (mask, km, reason)
    return km, reason


def _on_device(st: ClusterState, device) -> ClusterState:
    """The layer's cached centroids follow the device of the call (weights streamed or offloaded
    between calls, another GPU): moved, not kept on the old device beside a fresh copy."""
    for t in (st.q_centroids, st.k_centroids):
        if t is not None and t.device != device:
            return st.to(device)
    return st


def _probe_call(run, layer, step, br, Q, K, o, ref, stats, st_before, cfg, scale, txt_range, km):
    """Record relative L2 error and attention-mass recall of one sparse call (never raises)."""
    try:
        err = _rel_err(o, ref)
        is_dense = bool(stats.get("dense", False)) if isinstance(stats, dict) else False
        if is_dense:
            rec = 1.0
        else:
            rec = _mass_recall(Q, K, cfg, st_before, scale, txt_range, km, run.probe.max_rows)
        dens = stats.get("density") if isinstance(stats, dict) and not is_dense else 1.0
        run.probes.append((layer, step, br, err, rec, dens))
    except Exception as e:
        if _is_interrupt(e) or os.environ.get(_STRICT_ENV) == "1":
            raise
        run.warn_once(("probe-error", type(e).__name__), "AdaCluster: probe measurement failed (%s: %s)",
                      type(e).__name__, e)


def _maybe_sparse(run, fc, layer, layout, func, args, kwargs, dense, q, k, v, mask, skip_reshape):
    B, H, L, D, vid_start, txt_range = layout
    heads = H
    lay = run.layouts.get((fc.family, fc.grid, fc.n_txt, fc.txt_first))
    if lay is not None and lay["text_slice"] is None and txt_range is not None:
        lay["text_slice"] = list(txt_range)
    fl = _flops(q, k, heads, skip_reshape)
    if fc.phase == "warmup":
        return _timed_dense(run, fc, layer, "warmup", func, args, kwargs, dense, q, k, heads, skip_reshape)
    mode, cfg = run.cfg_for_layer(layer, fc.n_vid, fc.n_layers)
    if mode == "dense":
        return _timed_dense(run, fc, layer, "layer-rule", func, args, kwargs, dense, q, k, heads, skip_reshape)
    if q.dtype not in _SUPPORTED_DTYPES:
        return _timed_dense(run, fc, layer, f"dtype {str(q.dtype).replace('torch.', '')}", func, args, kwargs,
                            dense, q, k, heads, skip_reshape)
    if D not in _SUPPORTED_HEAD_DIMS:
        return _timed_dense(run, fc, layer, f"head_dim {D}", func, args, kwargs, dense, q, k, heads, skip_reshape)
    if fc.n_vid < max(1, cfg.min_tokens):
        return _timed_dense(run, fc, layer, "few-tokens", func, args, kwargs, dense, q, k, heads, skip_reshape)
    key_mask, mreason = _check_mask(run, fc, mask, B, L, txt_range, vid_start)
    if mreason:
        return _timed_dense(run, fc, layer, mreason, func, args, kwargs, dense, q, k, heads, skip_reshape)
    nb = _branch_count(fc, B)
    branches = _branch_keys(fc.cond_or_uncond) if nb > 1 or fc.cond_or_uncond else ["c0"]
    if len(branches) != nb:
        branches = [f"b{i}" for i in range(nb)]
    planned_dense = (layer in run.planned_dense) and mode != "sparse"
    if planned_dense:
        return _timed_dense(run, fc, layer, "planned-dense-layer", func, args, kwargs, dense, q, k, heads, skip_reshape)
    if _core_api.resolve_backend(cfg.backend, q.device) == "dense":   # no Triton: ComfyUI's attention
        return _timed_dense(run, fc, layer, _NO_TRITON, func, args, kwargs, dense, q, k, heads, skip_reshape)
    if _bad_scale(kwargs.get("scale", None)):
        return _timed_dense(run, fc, layer, "scale", func, args, kwargs, dense, q, k, heads, skip_reshape)

    if skip_reshape:
        Q, K, V = q, k, v
    else:
        Q, K, V = (t.view(B, L, H, D).transpose(1, 2) for t in (q, k, v))
    scale = kwargs.get("scale", None)
    bs = B // nb
    outs = []
    probing = run.probe is not None and run.probe.wants(layer, fc.step, fc.n_layers, fc.n_steps)
    dense_out = dense_bhld = None
    if probing:
        # the dense result is what goes on (errors do not compound); the sparse one is measured
        dense_out = dense(func, args, kwargs)
        dense_bhld = dense_out if kwargs.get("skip_output_reshape", False) else \
            dense_out.reshape(B, L, H, D).transpose(1, 2)
    n_rec = len(run.records)
    non_finite = False
    kernels: list[str] = []
    try:
        for i, br in enumerate(branches):
            sl = slice(i * bs, (i + 1) * bs)
            st = _on_device(run.state_for(layer, br), Q.device)
            if mode == "sparse" and st.dense and st.dense_reason == "planned-dense-layer":
                st.dense = False
            km = None
            if key_mask is not None:
                km = key_mask if key_mask.shape[0] == 1 else key_mask[sl]
                km = km.expand(bs, 1, L)
            st_before = copy.deepcopy(st) if probing else None
            tm = _Timer(q.device)
            o, stats = sparse_attention(Q[sl], K[sl], V[sl], config=cfg, state=st, scale=scale,
                                        always_dense_range=txt_range, key_mask=km, interrupt_check=_INTERRUPT_CHECK)
            t = tm.stop()
            if isinstance(stats, dict) and stats.get("reason") == _NON_FINITE:
                non_finite = True   # the whole call runs dense through ComfyUI's attention (below)
                break
            if probing:
                _probe_call(run, layer, fc.step, br, Q[sl], K[sl], o, dense_bhld[sl], stats, st_before, cfg,
                            scale, txt_range, km)
            is_dense = bool(stats.get("dense", False)) if isinstance(stats, dict) else False
            reason = ""
            if is_dense:
                reason = "calibration" if stats.get("stage") == "calibration" and "calibration" in str(
                    stats.get("reason", "")) else (stats.get("reason") or "core")
            dens = stats.get("density") if isinstance(stats, dict) else None
            run.record(layer, fc.step, br, not is_dense, reason, dens,
                       stats.get("q_clusters") if isinstance(stats, dict) else None,
                       stats.get("k_clusters") if isinstance(stats, dict) else None, t, fl // nb)
            if not is_dense:
                kernels.append(str(stats.get("attention", "?")))
            outs.append(o)
    except Exception as e:  # a kernel problem must not kill the user's run
        if _is_interrupt(e) or os.environ.get(_STRICT_ENV) == "1":
            raise
        run.warn_once(("kernel-error", type(e).__name__), "AdaCluster: sparse attention failed (%s: %s); "
                      "falling back to dense for this call", type(e).__name__, e)
        return _timed_dense(run, fc, layer, f"error {type(e).__name__}", func, args, kwargs, dense, q, k, heads,
                            skip_reshape)
    if non_finite:   # NaN / Inf in q, k or v: exactly what ComfyUI's dense attention gives
        del run.records[n_rec:]   # this call's branch records: replaced by the dense call's
        return _timed_dense(run, fc, layer, _NON_FINITE, func, args, kwargs, dense, q, k, heads, skip_reshape)
    run.kernels.update(kernels)
    if dense_out is not None:
        return dense_out
    O = outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)   # [B, H, L, D]
    if kwargs.get("skip_output_reshape", False):
        return O
    return O.transpose(1, 2).reshape(B, L, H * D)


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
    if cur is run.override:
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

    def on_cleanup(patcher):
        run.end(patcher)

    def on_prepare_state(patcher, *a, **kw):
        # a later node may have removed the override: put ours back (the live per-forward options
        # are checked again by the DIFFUSION_MODEL wrapper)
        pto = patcher.model_options.setdefault("transformer_options", {})
        if pto.get(OVERRIDE_KEY) is None:
            pto[OVERRIDE_KEY] = override

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
    "ForwardContext",
    "ProbeSpec",
    "build_forward_context",
    "classify_call",
    "config_fields",
    "detect_family",
    "format_stats",
    "get_run",
    "heatmap_image",
    "make_config",
    "make_override",
    "make_probe",
    "parse_layer_rules",
    "patch_model",
    "preset_config",
    "run_stats",
    "stats_json",
    "unpatch_model",
]
