"""The state of one sampling run of an AdaCluster patch: `RunState` and its `CallRecord`s.

A run (ON_PRE_RUN -> ON_CLEANUP) goes warmup -> calibration (one dense step measures per-layer
key-cluster counts; skipped when the plan cache knows this model and resolution) -> sparse. States
are per (layer, CFG branch). One RunState per run and per lane (thread x device, nodes/run_lanes.py);
what lasts across runs (config, rules, plan cache, compiles, last stats) is the holder's
(nodes/holder.py), reached through `RunState.holder`. The end-of-run summary is built from a
finished RunState by nodes/run_summary.py. No ComfyUI imports.
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

from .config_widgets import preset_config
from .core import AdaClusterConfig, ClusterState, plan_layers
from .probe import ProbeRecord
from .step_clock import StepClock

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


class RunState:
    """One run (and one lane) of a patched model: cluster states, call records, phase / step bookkeeping.
    `holder` (a PatchHolder) gives the config, rules, preset, plan cache, compiles and probe spec."""

    def __init__(self, holder):
        self.holder = holder
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
        self.clock = StepClock()
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

    # what lasts across runs: the holder's
    @property
    def probe(self):
        return self.holder.probe

    @property
    def compiles(self) -> dict:
        return self.holder.compiles

    def warn_once(self, key, msg, *a):
        self.holder.warn_once(key, msg, *a)

    def state_bytes(self) -> int:
        return sum(s.nbytes() for s in self.states.values())

    def record(self, rec: CallRecord) -> None:
        self.records.append(rec)

    # ---------------------------------------------------------------- config
    def resolve_config(self, family: str) -> AdaClusterConfig:
        if self.config is None or self.family != family:
            h = self.holder
            self.family = family
            if h.user_config is not None:
                self.config = h.user_config
            else:
                preset = "balanced" if h.preset == "auto" else h.preset
                self.config = preset_config(family, preset)
            if h.model_sampling is not None:
                try:
                    self.warmup_sigma = float(h.model_sampling.percent_to_sigma(float(self.config.warmup)))
                except Exception:
                    self.warmup_sigma = None
        return self.config

    def rule_for(self, layer: int, n_layers: int | None) -> tuple[str | None, dict]:
        """(mode, overrides) of the layer rules for `layer`: the rules are resolved to a per-layer
        table once per run (and layer count), so a call's lookup does not grow with the rule count."""
        rules = self.holder.rules
        if not len(rules):
            return None, {}
        if not n_layers:   # layer count unknown: negative selectors cannot match yet (not cached)
            return rules.resolve(layer, None)
        tab = self._rule_table
        if tab is None or tab[0] != n_layers:
            tab = self._rule_table = (n_layers, rules.table(n_layers))
        return tab[1].get(layer, (None, {}))

    def cfg_for_layer(self, layer: int, n_tokens: int, n_layers: int) -> tuple[str | None, AdaClusterConfig]:
        mode, ov = self.rule_for(layer, n_layers)
        key = (layer, n_tokens)
        cfg = self.layer_cfg.get(key)
        if cfg is None:
            cfg = (self.config.replace(**ov) if ov else self.config).clamped(n_tokens)
            self.layer_cfg[key] = cfg
        return mode, cfg

    # ---------------------------------------------------------------- steps and phase
    def step_of(self, sigma: float) -> int:
        return self.clock.step_of(sigma)

    def step_sigmas(self) -> list[float]:
        return self.clock.step_sigmas()

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
            if (self.phase == "warmup" and adaptive and self.clock.last_warm_step(sigma, self.warmup_sigma)
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

    # ---------------------------------------------------------------- the plan
    def _cached_plan(self, plan_key, peek: bool = False):
        """The plan cached for this model and resolution, or None (marked most recently used
        unless `peek`)."""
        if plan_key is None:
            return None
        h = self.holder
        with h.lanes.lock:   # lanes share the holder's plan cache
            cached = h.plan_cache.get(plan_key)
            if cached is not None and not peek:
                h.plan_cache.move_to_end(plan_key)
        return cached

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
            h = self.holder
            with h.lanes.lock:
                h.plan_cache[self.plan_key] = plan
                while len(h.plan_cache) > PLAN_CACHE_SIZE:
                    h.plan_cache.popitem(last=False)

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


def _plan_layers(counts: dict[int, int | None], fraction: float, n_tokens: int):
    dense, cap = plan_layers(counts, fraction, n_tokens)
    return set(dense), (int(cap) if cap else None)
