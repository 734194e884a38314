"""`PatchHolder`: what one AdaCluster patch keeps, per patched model.

Stored in `transformer_options["adacluster"]`: config, rules, preset, probe spec, the plan cache
(kept across runs), the background compiles, the stats of the last run, and the other attention
overrides met on the hook this run. The run in progress is a `RunState` (nodes/run.py): the
holder's own (`holder.run`) for the first thread x device, one more per lane (nodes/run_lanes.py).
`__deepcopy__` returns the holder: ComfyUI 0.3.75's `clone()` deep-copies `model_options` and every
clone must reach this one holder (docs/DESIGN.md, State). No ComfyUI imports.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict

from .config_widgets import PRESETS
from .core import AdaClusterConfig
from .interop import describe_override, is_sparse_override
from .layer_rules import LayerRules
from .probe import ProbeSpec
from .run import RunState
from .run_lanes import LaneTable, fold_lane

log = logging.getLogger("AdaCluster")


class PatchHolder:
    """Per patched model: config, rules, plan cache, compiles, last run's stats; `run`: the run in progress."""

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
        # kernels started during the dense warmup (nodes/kernel_warmup.py, adacluster_core/compile_ahead.py)
        self.compiles: dict[tuple, object] = {}
        self.last_run: dict | None = None
        self._warned: set = set()
        self._running: set = set()       # ids of the patchers (clones) sampling this run now
        self.lanes = LaneTable()
        self.reset()

    # kept: 0.3.75's clone() deep-copies model_options, and every clone must reach this one holder
    # (plan cache, MultiGPU clones' lanes, the stats the Stats node reads); docs/DESIGN.md, State
    def __deepcopy__(self, memo):
        return self

    def __copy__(self):
        return self

    @property
    def active(self) -> bool:
        return self.run.active

    # ---------------------------------------------------------------- lifecycle
    def reset(self) -> None:
        """A fresh RunState, no lanes, no notes on other overrides."""
        self.run = RunState(self)
        self.lanes.clear()
        # other attention overrides met on the hook this run (nodes/hook.py install_on_top), by
        # name: {"name", "sparse", "position": "below" (our dense path) | "above" (runs before ours),
        # "calls": calls that went to it instead of AdaCluster (sparse ones only)}
        self.others: dict[str, dict] = {}
        self.other_ids: dict[int, tuple] = {}        # id -> (override, its name in `others`)
        self.others_above = False        # a sparse override runs before ours: count what it takes
        self.override_kinds: dict[int, tuple] = {}   # id -> (override, interop.classify_override)
        self.wrapped: dict[int, tuple] = {}          # id -> (foreign override, our override wrapping it)

    def lane(self, device) -> RunState:
        """This run's state for the calling thread on `device` (the holder's own `run` for the first)."""
        return self.lanes.get(self.run, device, self._spawn_lane)

    def _spawn_lane(self, key) -> RunState:
        ln = RunState(self)
        ln.active, ln.t_start = True, self.run.t_start
        return ln

    def begin(self, patcher=None) -> None:
        with self.lanes.lock:
            if self._running and id(patcher) not in self._running:
                self._running.add(id(patcher))   # another clone (MultiGPU device) of the run in progress
                return
            self._running = {id(patcher)}
        self.reset()
        self.run.active = True
        self.run.t_start = time.perf_counter()
        ms = None
        try:
            ms = patcher.model.model_sampling if patcher is not None else None
        except Exception:
            ms = None
        self.model_sampling = ms

    def end_clone(self, patcher=None) -> bool:
        """True when the run ends now (the last clone that sampled it is done and it has anything
        to report): then `finish()` folds it and `reset()` follows (patcher.end_run)."""
        with self.lanes.lock:
            if id(patcher) in self._running:
                self._running.discard(id(patcher))
            else:                                # not one that began this run: end it all
                self._running.clear()
            if self._running:
                return False                     # other clones of this run are still sampling
        return self.run.active or bool(self.run.records) or bool(self.lanes.others)

    def finish(self) -> RunState:
        """The finished run, every lane folded into it (for nodes/run_summary.py)."""
        run = self.run
        for i, ln in enumerate(self.lanes.others.values()):
            fold_lane(run, ln, f"lane{i + 1}")
        run.state_bytes_peak = max(run.state_bytes_peak, run.state_bytes())
        return run

    def warn_once(self, key, msg, *a):
        if key not in self._warned:
            self._warned.add(key)
            log.warning(msg, *a)

    # ---------------------------------------------------------------- other overrides
    def note_other(self, override, position: str, replaced: bool = False) -> None:
        """Another attention override on the hook. One entry per name: a node that re-installs itself
        (a new closure each time) stays one entry, "above" (it runs first) winning over "below" (our
        dense path)."""
        seen = self.other_ids.get(id(override))
        if seen is not None and seen[0] is override:
            return
        name = describe_override(override)
        self.other_ids[id(override)] = (override, name)
        o = self.others.get(name)
        if o is not None:
            if position == "above" and o["position"] != "above":
                o["position"] = "above"
                self.others_above = self.others_above or o["sparse"]
            return
        sparse = is_sparse_override(override)
        self.others[name] = {"name": name, "sparse": sparse, "position": position, "calls": 0}
        if position == "above" and sparse:
            self.others_above = True
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
        for o in self.others.values():
            if o["sparse"] and (o["position"] == "above") == above:
                o["calls"] += n
                return

    def others_summary(self) -> list[dict]:
        return [dict(o) for o in self.others.values()]
