"""The per-run state of one AdaCluster patch: `AdaClusterRun` and its `CallRecord`s.

One holder per patched model, stored in `transformer_options["adacluster"]`: config, rules, the
plan cache (kept across runs) and the stats of the last run. A run (ON_PRE_RUN -> ON_CLEANUP)
goes warmup -> calibration (one dense step measures per-layer key-cluster counts; skipped when the
plan cache knows this model and resolution) -> sparse. States are per (layer, CFG branch); what a
forward mutates lives in a lane per (thread, device) (nodes/run_lanes.py). The end-of-run summary
is built by nodes/run_summary.py. No ComfyUI imports.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter, OrderedDict
from typing import Any

from . import run_summary
from .config_widgets import PRESETS, preset_config
from .core import AdaClusterConfig, ClusterState, plan_layers
from .layer_rules import LayerRules
from .probe import ProbeRecord, ProbeSpec
from .run_lanes import LaneTable, fold_lane

log = logging.getLogger("AdaCluster")

PLAN_CACHE_SIZE = 8                # (model, resolution) plans kept per patched model


@dataclasses.dataclass
class CallRecord:
    """One attention call as the Stats node counts it: one record per CFG branch (a batched
    cond+uncond call is two). Values that would need a host sync (density as a 0-dim tensor, CUDA
    event timings) are read once, when the run is summarised."""
    layer: int | None                # None: not a layer (cross-attention, text refiner, unsupported model)
    step: int | None                 # sampler step (-1: no sigma)
    branch: str | None               # CFG chunk "c0", "u0", ... (None: the forward gave no cond_or_uncond)
    sparse: bool
    reason: str = ""                 # why the call ran dense ("" for sparse calls)
    density: Any = None              # share of the attention computed (sparse calls)
    q_clusters: int | None = None
    k_clusters: int | None = None
    timing: Any = 0.0                # seconds, or a (start, end) pair of CUDA events
    flops_full: int = 0              # FLOPs of the dense call (this branch's share)


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
        # per kind of sparse call (device, dtype, shape, config): the background compile of its Triton
        # kernels started during the dense warmup (nodes/patcher.py, adacluster_core/compile_ahead.py)
        self.compiles: dict[tuple, object] = {}
        self.last_run: dict | None = None
        self._warned: set = set()
        self.root = self                 # a lane points at its holder (nodes/run_lanes.py)
        self._running: set = set()       # ids of the patchers (clones) sampling this run now
        self.lanes = LaneTable()
        self._reset_run()

    # kept: 0.3.75's clone() deep-copies model_options, and every clone must reach this one holder
    # (plan cache, MultiGPU clones' lanes, the stats the Stats node reads); docs/DESIGN.md, State
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
        self.calib_warm = False            # the calibration runs on the last warmup step
        self.warmup_sigma: float | None = None
        self.family: str | None = None
        self.config: AdaClusterConfig | None = None
        self.layer_cfg: dict[tuple[int, int], AdaClusterConfig] = {}
        self._rule_table: tuple[int, dict] | None = None   # (n_layers, layer -> (mode, overrides))
        self.sigma_steps: dict[float, int] = {}
        self.schedule: list[float] = []   # the sampler's sigmas (transformer_options["sample_sigmas"])
        self._schedule_src = None
        self.records: list[CallRecord] = []
        self.kernels: Counter = Counter()   # attention kernel of the sparse calls ("triton" | "reference")
        self.probes: list[ProbeRecord] = []
        self.layouts: dict[tuple, dict] = {}
        self.forwards = 0
        self.override_calls = 0
        self.n_layers = 0
        self.state_bytes_peak = 0
        self.t_start = None
        self.active = False
        self.lanes.clear()
        # other attention overrides met on the hook this run (nodes/patcher.py install_on_top), by
        # name: {"name", "sparse", "position": "below" (our dense path) | "above" (runs before ours),
        # "calls": calls that went to it instead of AdaCluster (sparse ones only)}
        self.others: dict[str, dict] = {}
        self.other_ids: dict[int, tuple] = {}        # id -> (override, its name in `others`)
        self.others_above = False        # a sparse override runs before ours: count what it takes
        self.override_kinds: dict[int, tuple] = {}   # id -> (override, interop.classify_override)
        self.wrapped: dict[int, tuple] = {}          # id -> (foreign override, our override wrapping it)

    # ---------------------------------------------------------------- lanes
    def lane(self, device) -> "AdaClusterRun":
        """This run's state for the calling thread on `device` (the holder itself for the first)."""
        return self.lanes.get(self, device, self._spawn_lane)

    def _spawn_lane(self, key) -> "AdaClusterRun":
        ln = AdaClusterRun(self.user_config, self.rules, self.preset, self.previous, self.probe)
        ln.root, ln.override, ln.model_sampling = self, self.override, self.model_sampling
        ln.plan_cache = self.plan_cache          # calibrated plans are per model, shared by its lanes
        ln.compiles = self.compiles
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

    def state_bytes(self) -> int:
        return sum(s.nbytes() for s in self.states.values())

    # ---------------------------------------------------------------- other overrides
    def note_other(self, override, position: str, replaced: bool = False) -> None:
        """Another attention override on the hook (kept on the holder: lanes share it). One entry per
        name: a node that re-installs itself (a new closure each time) stays one entry, "above" (it
        runs first) winning over "below" (our dense path)."""
        from .interop import describe_override, is_sparse_override   # (no ComfyUI import)
        root = self.root
        seen = root.other_ids.get(id(override))
        if seen is not None and seen[0] is override:
            return
        name = describe_override(override)
        root.other_ids[id(override)] = (override, name)
        o = root.others.get(name)
        if o is not None:
            if position == "above" and o["position"] != "above":
                o["position"] = "above"
                root.others_above = root.others_above or o["sparse"]
            return
        sparse = is_sparse_override(override)
        root.others[name] = {"name": name, "sparse": sparse, "position": position, "calls": 0}
        if position == "above" and sparse:
            root.others_above = True
        if position == "below":
            log.info("AdaCluster: %s%s; the calls AdaCluster leaves dense run through it%s", name,
                     " replaced the attention override after AdaCluster was applied: AdaCluster re-installed "
                     "itself on top" if replaced else " is AdaCluster's dense path",
                     " (another sparse attention: it may run them sparse; the Stats node counts them)"
                     if sparse else "")
        elif sparse:
            log.info("AdaCluster: two sparse attentions on this model: %s runs first (it keeps itself on top) "
                     "and AdaCluster gets only the calls it declines; the Stats node counts both", name)

    def note_other_calls(self, n: int, above: bool) -> None:
        """`n` calls went to another sparse override instead of AdaCluster (above: it took them before
        ours; below: AdaCluster left them dense and they went on to it)."""
        for o in self.root.others.values():
            if o["sparse"] and (o["position"] == "above") == above:
                o["calls"] += n
                return

    def others_summary(self) -> list[dict]:
        return [dict(o) for o in self.root.others.values()]

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

    def rule_for(self, layer: int, n_layers: int | None) -> tuple[str | None, dict]:
        """(mode, overrides) of the layer rules for `layer`: the rules are resolved to a per-layer
        table once per run (and layer count), so a call's lookup does not grow with the rule count."""
        if not len(self.rules):
            return None, {}
        if not n_layers:   # layer count unknown: negative selectors cannot match yet (not cached)
            return self.rules.resolve(layer, None)
        tab = self._rule_table
        if tab is None or tab[0] != n_layers:
            tab = self._rule_table = (n_layers, self.rules.table(n_layers))
        return tab[1].get(layer, (None, {}))

    def cfg_for_layer(self, layer: int, n_tokens: int, n_layers: int) -> tuple[str | None, AdaClusterConfig]:
        mode, ov = self.rule_for(layer, n_layers)
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
        adaptive = cfg.k_clusters is None and cfg.calibration_dense
        if warm:
            # the last warmup step runs dense anyway: it also measures the key-cluster counts (the
            # calibration), so no extra dense step follows the warmup (few-step runs gain most)
            if self.phase == "calibration":
                same = self.calib_sigma is not None and abs(sigma - self.calib_sigma) <= 1e-9
                return "calibration" if same else "warmup"
            if (self.phase == "warmup" and adaptive and self._last_warm_step(sigma)
                    and self._cached_plan(plan_key, peek=True) is None):
                self.plan_key = plan_key
                self.phase = "calibration"
                self.calib_sigma = sigma
                self.calib_warm = True
                return self.phase
            return "warmup"
        if self.phase == "warmup":
            self.plan_key = plan_key
            cached = self._cached_plan(plan_key) if adaptive else None
            if cached is not None:
                self._apply_plan(cached)
                self.plan_source = "cache"
                self.phase = "sparse"
            elif adaptive:
                self.phase = "calibration"
                self.calib_sigma = sigma
                self.calib_warm = False
            else:
                self.phase = "sparse"
        elif self.phase == "calibration" and self.calib_sigma is not None and abs(sigma - self.calib_sigma) > 1e-9:
            if not self.states:  # no attention call reached calibration (a step cache skipped that step)
                self.calib_sigma = sigma
                self.calib_warm = False
            else:
                self.plan()
                self.phase = "sparse"
        return self.phase

    def _cached_plan(self, plan_key, peek: bool = False):
        """The plan cached for this model and resolution, or None (marked most recently used
        unless `peek`)."""
        if plan_key is None:
            return None
        with self.root.lanes.lock:   # lanes share the holder's plan cache
            cached = self.plan_cache.get(plan_key)
            if cached is not None and not peek:
                self.plan_cache.move_to_end(plan_key)
        return cached

    def _last_warm_step(self, sigma: float) -> bool:
        """True when the sampler's schedule says the step after this one (still inside this
        sampler's schedule) is past the warmup: then this warmup step can calibrate."""
        sch, ws = self.schedule, self.warmup_sigma
        if len(sch) < 3 or ws is None:
            return False
        i = self.step_of(sigma)
        if i + 1 >= len(sch) - 1:          # the step after this is the sampler's end
            return False
        nxt = sch[i + 1]
        return 0 < nxt <= ws + 1e-6 * max(1.0, abs(ws))

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
        forced_sparse = {layer for layer in counts if self.rule_for(layer, self.n_layers)[0] == "sparse"}
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
    def record(self, rec: CallRecord) -> None:
        self.records.append(rec)

    def warn_once(self, key, msg, *a):
        if key not in self._warned:
            self._warned.add(key)
            log.warning(msg, *a)

    def summarize(self) -> dict:
        """The stats dict of the run (Stats node, log summary); one host sync."""
        return run_summary.summarize(self)


def _plan_layers(counts: dict[int, int | None], fraction: float, n_tokens: int):
    dense, cap = plan_layers(counts, fraction, n_tokens)
    return set(dense), (int(cap) if cap else None)
