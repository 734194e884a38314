"""The Stats readout of one run: the text, the heatmap IMAGE and the JSON payload (from the summary
dict nodes/run_summary.py builds from a finished run). No ComfyUI imports."""
from __future__ import annotations

import json
import os

import torch

from . import report_plot


def rss_mb() -> float | None:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except Exception:
        return None


_KERNEL_NAMES = {"triton": "Triton", "reference": "torch reference (correct, not faster than dense)"}


def kernel_line(kernels: dict) -> str:
    """Which kernel ran how many calls, most first: the sparse calls' kernel (Triton / the torch
    reference) and the calls that had no Triton to run on ("dense: no triton")."""
    parts = []
    for k, v in sorted(kernels.items(), key=lambda kv: -kv[1]):
        interp = " through the Triton interpreter (CPU, TRITON_INTERPRET=1)" \
            if k == "triton" and os.environ.get("TRITON_INTERPRET") == "1" else ""
        parts.append(f"{_KERNEL_NAMES.get(k, k)} {v}{interp}")
    return "kernel: " + ", ".join(parts)


def format_stats(d: dict | None) -> str:
    if d is None:
        return "AdaCluster: the MODEL input is not patched by AdaCluster Sparse Attention."
    # the one-line summary (also logged) in two lines, so the node's readout stays narrow
    lines = d.get("summary", "").replace(", est. ", ",\n  est. ").split("\n")
    if not d.get("calls"):
        return "\n".join(lines)
    lines.append(f"model: {d.get('family')}  preset: {d.get('preset')}  layers: {d.get('n_layers')}  "
                 f"steps: {len(d.get('sigmas') or [])}  forwards: {d.get('forwards')}")
    lines.append(f"calls: {d['calls']}  sparse: {d['sparse_calls']}  dense: {d['dense_calls']}")
    if d.get("kernels"):
        lines.append(kernel_line(d["kernels"]))
    for r, c in sorted(d.get("dense_reasons", {}).items(), key=lambda kv: -kv[1]):
        lines.append(f"  dense because {r}: {c}")
    for o in d.get("other_overrides") or []:
        where = "runs before AdaCluster" if o["position"] == "above" else "AdaCluster's dense path"
        took = (f": took {o['calls']} video self-attention calls" if o["position"] == "above"
                else f": ran {o['calls']} of the dense calls") if o["sparse"] else ""
        lines.append(f"other attention: {o['name']} ({'sparse, ' if o['sparse'] else ''}{where}){took}")
    if d.get("mean_density") is not None:
        lines.append(f"density of sparse calls: mean {d['mean_density']:.3f}  min {d['min_density']:.3f}  "
                     f"max {d['max_density']:.3f}")
    lines.append(f"est. attention FLOPs saved: {100 * d.get('flops_saved_frac', 0):.1f}%   "
                 f"attention wall time: {d.get('attention_time_s', 0):.3f} s")
    if d.get("planned_dense_layers") or d.get("cap"):
        lines.append(f"planned dense layers: {d.get('planned_dense_layers')}  key-cluster cap: {d.get('cap')}")
    for lay in d.get("layouts", []):
        head = (f"{lay['description']} (prefix of {lay['n_txt']} rows dense)" if lay.get("description") else
                f"{lay['family']} grid {lay['grid']} ({lay['n_vid']} video tokens), text {lay['n_txt']}")
        lines.append(f"layout: {head}"
                     + (f", {lay['extra_tokens']} in-context tokens (dense)" if lay.get("extra_tokens") else "")
                     + (f" at {lay['text_slice']}" if lay.get("text_slice") else "")
                     + (f", masked keys {lay['masked_keys']} ({lay['masked_keys_in_text']} in text)"
                        if lay.get("masked_keys") is not None else "")
                     + (f" [{lay['reason']}]" if lay.get("reason") else ""))
    grid = d.get("density_grid") or []
    if grid:
        lines.append("density per layer x step (1.00 = dense, . = no call):")
        for li, row in enumerate(grid):
            cells = " ".join("  .  " if v is None else f"{v:.2f}".rjust(5) for v in row)
            pl = d.get("per_layer", {}).get(str(li), {})
            extra = ""
            if pl.get("k_clusters") is not None or pl.get("q_clusters") is not None:
                extra = f"   Cq {pl.get('q_clusters')} Ck {pl.get('k_clusters')}"
            if pl.get("adaptive_count") is not None:
                extra += f" (adaptive {pl['adaptive_count']})"
            lines.append(f"  L{li:>3}: {cells}{extra}")
        if d.get("steps_without_calls"):
            lines.append("steps with no call (the model did not run, e.g. skipped by a step cache): "
                         + ", ".join(str(i) for i in d["steps_without_calls"]))
    pr = d.get("probe")
    if pr:
        lines.append(f"probe ({pr.get('spec')}): {pr.get('calls', 0)} calls measured against dense "
                     "(dense output passed on)")
        if pr.get("calls"):
            lines.append(f"  rel. L2 error: mean {pr['mean_error']:.4f}  max {pr['max_error']:.4f}")
            lines.append("  worst layers first:")
            lines.append(f"  {'layer':>6} {'calls':>5} {'err max':>8} {'err mean':>8} {'recall min':>10} "
                         f"{'recall mean':>11} {'density':>7}")

            def f(x):
                return "-" if x is None else f"{x:.4f}"
            for w in pr.get("worst_layers", []):
                lines.append(f"  {'L' + str(w['layer']):>6} {w['calls']:>5} {f(w['error_max']):>8} "
                             f"{f(w['error_mean']):>8} {f(w['recall_min']):>10} {f(w['recall_mean']):>11} "
                             f"{f(w['density_mean']):>7}")
            eg, rg = pr.get("error_grid") or [], pr.get("recall_grid") or []
            if eg:
                lines.append("  error / recall per layer x step (. = not probed):")
                for li, (er, rr) in enumerate(zip(eg, rg)):
                    if all(v is None for v in er):
                        continue
                    cells = " ".join("     .     " if e is None else
                                     f"{e:.3f}/{'-' if r is None else f'{r:.3f}'}".rjust(11) for e, r in zip(er, rr))
                    lines.append(f"  L{li:>3}: {cells}")
    return "\n".join(lines)


def heatmap_image(d: dict | None) -> torch.Tensor:
    """IMAGE [1, H, W, 3] float in 0..1: the density heatmap (layers x steps) with axes, a colour
    legend and the run's mean density in the title (drawn by report_plot)."""
    return report_plot.heatmap_tensor(d)


def stats_json(d: dict | None) -> dict:
    """JSON-able copy (floats/ints/str/lists/dicts only)."""
    return json.loads(json.dumps(d if d is not None else {"summary": format_stats(None)}, default=str))
