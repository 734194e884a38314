"""Per-thread, per-device run state for one AdaCluster patch ("lanes").

One patched MODEL can be sampled by several threads at once: upstream ComfyUI's MultiGPU CFG
split (`MultiGPU_WorkUnits`) runs a clone of the model per device in worker threads, all of them
reading the same `transformer_options` (so the same PatchHolder), and two clones of a
patched model may be sampled concurrently. The holder itself (config, rules, override, last
run's stats) is shared; everything a forward mutates (ClusterStates, step/phase bookkeeping,
records) lives in a lane, a RunState keyed by (thread, device): the first key to arrive uses the
holder's own RunState, every other key gets its own. So nothing mutable is shared between threads, CFG
branches keep separate states inside each lane, and a lane's state tensors only ever meet
tensors of its own device. At the end of the run the lanes are folded into the holder's stats.
"""
from __future__ import annotations

import dataclasses
import threading


def lane_key(device) -> tuple:
    return (threading.get_ident(), str(device) if device is not None else "")


class LaneTable:
    """The lanes of one holder (its own RunState's key + the other RunStates), guarded by a lock."""

    def __init__(self):
        self.lock = threading.RLock()
        self.clear()

    def clear(self):
        with self.lock:
            self.own_key = None
            self.others: dict = {}

    def get(self, own, device, spawn):
        """`own` (the holder's RunState) for the first key to arrive, else that key's lane (spawn(key))."""
        key = lane_key(device)
        if self.own_key == key:          # the common single-thread case: no lock
            return own
        with self.lock:
            if self.own_key is None:
                self.own_key = key
                return own
            if self.own_key == key:
                return own
            ln = self.others.get(key)
            if ln is None:
                ln = self.others[key] = spawn(key)
            return ln


def fold_lane(root, lane, tag: str):
    """Add a finished lane's records/states/bookkeeping to the holder's own RunState `root` (for the
    run summary). Steps are re-indexed by sigma so that all lanes share root's step numbering."""
    inv = {i: s for s, i in lane.clock.sigma_steps.items()}

    def step(i):
        return root.step_of(inv[i]) if isinstance(i, int) and i in inv else i

    root.records.extend(dataclasses.replace(r, step=step(r.step)) for r in lane.records)
    root.probes.extend(dataclasses.replace(p, step=step(p.step)) for p in lane.probes)
    for k, v in lane.layouts.items():
        root.layouts.setdefault(k, v)
    for k, v in lane.layer_cfg.items():
        root.layer_cfg.setdefault(k, v)
    for (layer, branch), st in lane.states.items():
        root.states[(layer, f"{branch}@{tag}")] = st
    for layer, c in lane.counts.items():
        root.counts[layer] = max(root.counts.get(layer, 0), c)
    root.planned_dense |= lane.planned_dense
    if lane.cap is not None:
        root.cap = max(root.cap or 0, lane.cap)
    root.forwards += lane.forwards
    root.override_calls += lane.override_calls
    root.n_layers = max(root.n_layers, lane.n_layers)
    root.state_bytes_peak = max(root.state_bytes_peak, lane.state_bytes_peak)
    if root.family is None:
        root.family, root.config = lane.family, lane.config
    if root.plan_source is None and lane.plan_source is not None:
        root.plan_source = lane.plan_source
