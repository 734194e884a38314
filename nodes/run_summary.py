"""The end-of-run summary of a finished run: the stats dict the Stats node shows and the one-line
log summary. Takes the finished run's data (a RunState with its lanes folded in, and its
PatchHolder for what lasts across runs), read by attribute: this module imports neither
nodes/run.py nor nodes/holder.py (the report sits above the run state, docs/DESIGN.md). Reads the
run's CallRecords once, with one host sync for the densities (0-dim tensors) and one for the CUDA
event timings. No ComfyUI imports; the dict's keys are the Stats node's JSON payload
(nodes/report.py formats it)."""
from __future__ import annotations

import time
from collections import Counter, defaultdict
import torch

from .core import NO_TRITON
from .probe import summarize_probes

_LAYER_SETTINGS = ("q_clusters", "k_clusters", "top_k", "selection", "top_p", "max_density", "pooled_tail")


def _resolve_values(recs: list) -> tuple[list, list[float]]:
    """(density per record: float or None, seconds per record): 0-dim tensors and CUDA events read."""
    dens = [r.density for r in recs]
    tens_idx = [i for i, d in enumerate(dens) if isinstance(d, torch.Tensor)]
    if tens_idx:
        vals = torch.stack([dens[i].detach().float().reshape(()).cpu() for i in tens_idx]).tolist()
        for i, v in zip(tens_idx, vals):
            dens[i] = v
    times = []
    ev_sync = False
    for r in recs:
        t = r.timing
        if isinstance(t, tuple):
            if not ev_sync:
                torch.cuda.synchronize()
                ev_sync = True
            times.append(t[0].elapsed_time(t[1]) / 1000.0)
        else:
            times.append(float(t or 0.0))
    return dens, times


def _computed_share(r, density) -> float:
    """Share of the dense call's attention a call computed (1.0 for dense calls)."""
    return float(density) if r.sparse and density is not None else 1.0


def _density_grid(recs: list, dens: list, n_layers: int, n_steps: int) -> list[list]:
    """[layer][step] mean computed share (1.0 = dense, None = no call)."""
    grid = [[None] * n_steps for _ in range(n_layers)]
    acc: dict[tuple[int, int], list[float]] = defaultdict(list)
    for r, d in zip(recs, dens):
        layer, step = r.layer, r.step
        if layer is None or layer < 0 or step is None or step < 0 or layer >= n_layers or step >= n_steps:
            continue
        acc[(layer, step)].append(_computed_share(r, d))
    for (layer, step), v in acc.items():
        grid[layer][step] = round(sum(v) / len(v), 4)
    return grid


def _new_layer_entry() -> dict:
    return {"sparse": 0, "dense": 0, "q_clusters": None, "k_clusters": None, "dense_reasons": {}}


def _per_layer(run, recs: list, n_layers: int) -> dict[int, dict]:
    """Per layer: sparse/dense counts, dense reasons, cluster counts, the adaptive count and the
    realised settings (config after rules: what the sparse calls used)."""
    per_layer: dict[int, dict] = {}
    for r in recs:
        if r.layer is None or r.layer < 0:
            continue
        d = per_layer.setdefault(r.layer, _new_layer_entry())
        if r.sparse:
            d["sparse"] += 1
            if r.q_clusters is not None:
                d["q_clusters"] = int(r.q_clusters)
            if r.k_clusters is not None:
                d["k_clusters"] = int(r.k_clusters)
        else:
            d["dense"] += 1
            d["dense_reasons"][r.reason] = d["dense_reasons"].get(r.reason, 0) + 1
    for layer, c in run.counts.items():
        per_layer.setdefault(layer, _new_layer_entry())["adaptive_count"] = int(c)
    for (layer, _n), cfg in run.layer_cfg.items():
        if layer in per_layer:
            mode = run.rule_for(layer, n_layers)[0]
            sets = {"mode": mode}
            for f in _LAYER_SETTINGS:
                if hasattr(cfg, f):
                    sets[f] = getattr(cfg, f)
            per_layer[layer]["settings"] = sets
    return per_layer


def _summary_line(run, holder, n: int, n_sparse: int, mean_density, reasons: Counter, saved_frac: float,
                  attn_time: float) -> str:
    """The one-line summary (logged at cleanup, first lines of the Stats text)."""
    reason_txt = ", ".join(f"{k} {v}" for k, v in reasons.most_common())
    summary = (f"AdaCluster: {n} attention calls, {n_sparse} sparse"
               + (f" (density {mean_density:.2f})" if mean_density is not None else "")
               + f", {n - n_sparse} dense" + (f" ({reason_txt})" if reason_txt else "")
               + f", est. {100 * saved_frac:.0f}% attention FLOPs saved, attention {attn_time:.2f} s")
    if run.plan_source == "cache":
        summary += ", key-cluster counts reused from an earlier run (no calibration step)"
    if run.family is None and run.forwards == 0:
        summary += " (model never ran)"
    for o in holder.others_summary():
        if o["sparse"] and o["position"] == "above":
            summary += (f"; {o['name']} (sparse) runs before AdaCluster and took {o['calls']} video "
                        f"self-attention calls")
        elif o["sparse"]:
            summary += f"; {o['calls']} calls AdaCluster left dense went to {o['name']} (sparse)"
        else:
            summary += (f"; dense path: {o['name']}" if o["position"] == "below"
                        else f"; {o['name']} runs before AdaCluster")
    return summary


def summarize(run, holder) -> dict:
    """The stats dict of the finished `run` (the Stats node's JSON payload, "version" 1). `run`: its
    records, states, plan, layouts, clock (step_sigmas) and counters; `holder`: preset, user config,
    rules, probe spec, completed runs and the other overrides met."""
    recs = run.records
    dens, times = _resolve_values(recs)
    n = len(recs)
    sparse_dens = [float(d) for r, d in zip(recs, dens) if r.sparse]
    reasons = Counter(r.reason for r in recs if not r.sparse)
    total_flops = sum(r.flops_full for r in recs)
    spent = sum(r.flops_full * _computed_share(r, d) for r, d in zip(recs, dens))
    saved_frac = (1.0 - spent / total_flops) if total_flops > 0 else 0.0
    mean_density = (sum(sparse_dens) / len(sparse_dens)) if sparse_dens else None
    attn_time = sum(times)
    step_sigmas = run.step_sigmas()
    n_steps = len(step_sigmas)
    layers = sorted({r.layer for r in recs if r.layer is not None and r.layer >= 0})
    n_layers = max(run.n_layers, (layers[-1] + 1) if layers else 0)
    grid = _density_grid(recs, dens, n_layers, n_steps)
    per_layer = _per_layer(run, recs, n_layers)
    probe = summarize_probes(holder.probe, run.probes, n_layers, n_steps)
    wall = (time.perf_counter() - run.t_start) if run.t_start else None
    return {
        "version": 1,
        "summary": _summary_line(run, holder, n, len(sparse_dens), mean_density, reasons, saved_frac, attn_time),
        "family": run.family,
        # with AdaCluster Thresholds connected its config replaces the preset entirely
        "preset": holder.preset if holder.user_config is None else "custom (Thresholds)",
        "config": run.config.to_dict() if run.config is not None else None,
        "rules": holder.rules.describe(),
        "forwards": run.forwards,
        "calls": n,
        "sparse_calls": len(sparse_dens),
        "dense_calls": n - len(sparse_dens),
        "dense_reasons": dict(reasons),
        # which kernel ran: the sparse calls' kernel, and the calls that had no Triton to run on
        "kernels": {**dict(run.kernels), **({NO_TRITON: reasons[NO_TRITON]} if reasons.get(NO_TRITON) else {})},
        "mean_density": mean_density,
        "min_density": min(sparse_dens, default=None),
        "max_density": max(sparse_dens, default=None),
        "flops_saved_frac": saved_frac,
        "attention_time_s": attn_time,
        "run_wall_s": wall,
        "sigmas": step_sigmas,
        "steps_without_calls": [i for i in range(n_steps) if all(row[i] is None for row in grid)],
        "n_layers": n_layers,
        "density_grid": grid,           # [layer][step] mean density (1.0 = dense, None = no call)
        "per_layer": {str(k): v for k, v in sorted(per_layer.items())},
        "adaptive_counts": {str(k): v for k, v in sorted(run.counts.items())},
        "planned_dense_layers": sorted(run.planned_dense),
        "cap": run.cap,
        "plan_source": run.plan_source,
        "layouts": list(run.layouts.values()),
        "state_bytes_peak": run.state_bytes_peak,
        "n_states": len(run.states),
        "runs_completed": holder.runs_completed + 1,
        "probe": probe,
        # other attention overrides on the hook: [{"name", "sparse", "position": "below" (AdaCluster's
        # dense path) | "above" (runs first), "calls": calls that went to it instead (sparse ones)}]
        "other_overrides": holder.others_summary(),
    }
