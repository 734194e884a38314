"""The step clock: the sampler's sigma -> step index, and whether a warmup step is the last one.

Shared by a run's state (nodes/run.py) and AdaCluster Capture (which numbers steps without a
patch holder). Pure Python: no ComfyUI and no adacluster_core import."""
from __future__ import annotations


class StepClock:
    """Numbers a run's model calls by the sampler's schedule (`transformer_options["sample_sigmas"]`),
    or, without one, by the order in which distinct sigmas were first seen."""

    def __init__(self):
        self.sigma_steps: dict[float, int] = {}
        self.schedule: list[float] = []   # the sampler's sigmas (transformer_options["sample_sigmas"])
        self._schedule_src = None

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

    def last_warm_step(self, sigma: float, warmup_sigma: float | None) -> bool:
        """True when the sampler's schedule says the step after this one (still inside this
        sampler's schedule) is past the warmup (sigma <= `warmup_sigma`): then this warmup step can
        calibrate."""
        sch, ws = self.schedule, warmup_sigma
        if len(sch) < 3 or ws is None:
            return False
        i = self.step_of(sigma)
        if i + 1 >= len(sch) - 1:          # the step after this is the sampler's end
            return False
        nxt = sch[i + 1]
        return 0 < nxt <= ws + 1e-6 * max(1.0, abs(ws))
