"""Offline tuner: per-layer AdaCluster settings from a Q/K/V capture (AdaCluster Capture node).

    python -m adacluster_core.tune FILE.safetensors --target-error 0.05 [--out profile.json]
        [--top-p] [--set q_clusters=32 --set k_clusters=256] [--backend auto|torch|triton]

Replays the captured calls of each layer, in step order and through one ClusterState per
candidate (as the patcher does across steps; `calibration_dense=False`, so every replayed call
is sparse), against fp32 dense attention. A candidate meets the target when the relative L2
error ||sparse - dense|| / ||dense|| of EVERY captured call of the layer is <= target. Per layer
the cheapest candidate (lowest mean density) that meets it wins; a layer where none does, or
where the predicted sparse time is not below dense, runs dense.

Candidates: selection=tensorquest with top_k on the ladder TOP_K_LADDER (below the layer's key
cluster count: at or above it every key is attended; max_density=1, no budget), then, when the
core has the `max_density` budget, every cluster allowed under the budgets DENSITY_LADDER, and
with --top-p selection=top_p over TOP_P_LADDER. The other fields come from the capture's recorded AdaCluster config (when the
captured model was patched), else the family's balanced preset, then --set overrides.

Cost model (attention time relative to dense cuDNN, per call; docs/BENCHMARKS.md, H200, bf16):
    t_sparse / t_dense = density / KERNEL_RATE + OVERHEAD
  KERNEL_RATE = 0.72: the varblock kernel reaches 69-82 % of cuDNN's TFLOP/s at N >= 75K on the
                 API layout (wan14b 406-433 / 588 TFLOP/s, hunyuan 453/578); 0.72 is their mean.
  OVERHEAD    = 0.085: clustering + selection + gathers on a reuse step, in units of one dense
                 call (wan14b 16.7-16.9 ms / 199 ms; hunyuan 18.5 / 301 = 0.06; long 21.9 / 671).
  POOLED_OVERHEAD = 0.2: extra cost of the pooled tail (pooled_tail=True), in units of one
                 dense call (H200, wan14b: +39.0 ms at max_density 0.15, +47.7 ms at 0.25 on
                 a 201.4 ms cuDNN call: 0.19-0.24), added to candidates that use it.
  Predicted speedup = layers / sum over layers of (cost, 1 for dense layers), attention only,
  reuse steps only (warmup and calibration steps run dense anyway). Small N (< 32K) is slower
  than this model says (rates 48-59 %).

Profile (JSON, "adacluster-profile/1"), read by AdaCluster Layer Overrides' `profile` input:
    {"format": "adacluster-profile/1", "source": FILE, "family": "wan", "target_error": 0.05,
     "n_layers": 30, "base_config": {...}, "predicted_speedup": 2.1,
     "cost_model": {"kernel_rate": 0.72, "overhead": 0.085, "pooled_overhead": 0.2},
     "layers": {"0": {"mode": "dense", "error": null, "density": 1.0, "reason": "..."},
                "1": {"mode": "sparse", "selection": "tensorquest", "top_k": 16, "q_clusters": 65,
                      "k_clusters": null, "density": 0.21, "error": 0.041, "calls": 3}}}
Only mode / q_clusters / k_clusters / top_k / selection / top_p / max_density / pooled_tail are applied; the rest is
information.

No ComfyUI import (pure torch + safetensors).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .api import MASK_THRESHOLD, sparse_attention
from .config import FAMILY_MODEL, AdaClusterConfig
from .guards import triton_usable
from .state import ClusterState

CAPTURE_FORMAT = "adacluster-capture/1"
PROFILE_FORMAT = "adacluster-profile/1"
KERNEL_RATE = 0.72
OVERHEAD = 0.085
POOLED_OVERHEAD = 0.2
TOP_K_LADDER = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
TOP_P_LADDER = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
DENSITY_LADDER = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.75, 0.9)


def predicted_cost(density: float, kernel_rate: float = KERNEL_RATE, overhead: float = OVERHEAD,
                   pooled_overhead: float = 0.0) -> float:
    """Sparse attention time as a fraction of dense (see the module docstring); pass the pooled
    tail's overhead for configs with pooled_tail=True."""
    return float(density) / kernel_rate + overhead + pooled_overhead


@dataclass
class Call:
    layer: int
    step: int
    sigma: float
    q: torch.Tensor          # [1, H, N, D]
    k: torch.Tensor
    v: torch.Tensor
    key_mask: torch.Tensor | None = None   # [1, 1, N] additive


@dataclass
class Capture:
    meta: dict
    calls: list[Call] = field(default_factory=list)

    @property
    def text_range(self):
        tr = self.meta.get("text_range")
        return tuple(tr) if tr else None

    def layers(self) -> dict[int, list[Call]]:
        out: dict[int, list[Call]] = {}
        for c in sorted(self.calls, key=lambda c: (c.layer, c.step)):
            out.setdefault(c.layer, []).append(c)
        return out


def load_capture(path: str, device: str | torch.device = "cpu", allow_incomplete: bool = False) -> Capture:
    """Read a capture. A capture marked complete=false (the run was interrupted or failed, so
    later steps / layers are missing) raises ValueError unless allow_incomplete; captures
    written before the mark existed count as complete."""
    from safetensors import safe_open
    with safe_open(path, framework="pt", device="cpu") as f:
        raw = f.metadata() or {}
        if raw.get("format") != CAPTURE_FORMAT:
            raise ValueError(f"{path}: not an AdaCluster capture (format {raw.get('format')!r})")
        if raw.get("complete", "true") != "true" and not allow_incomplete:
            raise ValueError(f"{path}: incomplete capture (the sampling run was interrupted or failed, so steps "
                             "are missing); re-capture, or pass --allow-incomplete to tune it anyway")
        meta = {}
        for k, v in raw.items():
            try:
                meta[k] = json.loads(v)
            except (ValueError, TypeError):
                meta[k] = v
        cap = Capture(meta)
        names = set(f.keys())
        for c in meta.get("calls") or []:
            key = c["key"]
            t = {n: f.get_tensor(f"{key}.{n}").to(device) for n in ("q", "k", "v")}
            km = f.get_tensor(f"{key}.key_mask").to(device).view(1, 1, -1) if f"{key}.key_mask" in names else None
            cap.calls.append(Call(int(c["layer"]), int(c["step"]), float(c.get("sigma", float("nan"))),
                                  t["q"].unsqueeze(0), t["k"].unsqueeze(0), t["v"].unsqueeze(0), km))
    return cap


def dense_reference(c: Call) -> torch.Tensor:
    mask = None
    if c.key_mask is not None:
        mask = torch.where(c.key_mask.float() <= MASK_THRESHOLD, float("-inf"), 0.0).view(1, 1, 1, -1)
    return F.scaled_dot_product_attention(c.q.float(), c.k.float(), c.v.float(), attn_mask=mask)


def base_config(cap: Capture, overrides: dict | None = None, backend: str = "auto") -> AdaClusterConfig:
    cfgd = cap.meta.get("config")
    if isinstance(cfgd, dict):
        known = {k: v for k, v in cfgd.items() if k in AdaClusterConfig.__dataclass_fields__}
        cfg = AdaClusterConfig(**known)
    else:
        cfg = AdaClusterConfig.for_model(FAMILY_MODEL.get(str(cap.meta.get("family")), "wan"), "balanced")
    kw = dict(overrides or {})
    kw.setdefault("backend", backend)
    if kw["backend"] == "auto":   # offline: the torch reference where Triton cannot run (auto would run dense)
        dev = cap.calls[0].q.device if cap.calls else torch.device("cpu")
        kw["backend"] = "triton" if triton_usable(dev) else "torch"
    kw["min_tokens"] = 0
    kw["calibration_dense"] = False
    return cfg.replace(**kw)


def replay(calls: list[Call], refs: list[torch.Tensor], cfg: AdaClusterConfig, text_range) -> dict:
    """Run a layer's calls in step order through one fresh ClusterState: per-call error/density."""
    st = ClusterState()
    errs, dens, kcs = [], [], []
    for c, ref in zip(calls, refs):
        out, stats = sparse_attention(c.q, c.k, c.v, config=cfg, state=st, always_dense_range=text_range,
                                      key_mask=c.key_mask)
        o = out.float()
        errs.append(float((o - ref).norm() / ref.norm().clamp_min(1e-12)))
        d = stats.get("density")
        dens.append(1.0 if stats.get("dense") else float(d) if d is not None else 1.0)
        kcs.append(stats.get("k_clusters"))
    return {"errors": errs, "densities": dens, "error": max(errs), "density": sum(dens) / len(dens),
            "k_clusters": next((k for k in reversed(kcs) if k is not None), None)}


def candidates(cfg: AdaClusterConfig, n_keys_max: int | None, top_p: bool):
    """(family, config) in increasing cost within each family: top_k ladder (no density budget),
    then the max_density budget ladder with every cluster allowed, then
    (--top-p) the top_p ladder."""
    for tk in TOP_K_LADDER:
        if n_keys_max is not None and tk >= n_keys_max:
            break
        yield "top_k", cfg.replace(selection="tensorquest", top_k=tk, max_density=1.0)
    tk = max(cfg.top_k, n_keys_max or cfg.top_k)
    for md in DENSITY_LADDER:
        yield "max_density", cfg.replace(selection="tensorquest", top_k=tk, max_density=md)
    if top_p:
        for p in TOP_P_LADDER:
            yield "top_p", cfg.replace(selection="top_p", top_p=p, max_density=1.0)


def tune_layer(calls: list[Call], base: AdaClusterConfig, target: float, text_range, top_p: bool = False,
               kernel_rate: float = KERNEL_RATE, overhead: float = OVERHEAD,
               pooled_overhead: float = POOLED_OVERHEAD) -> dict:
    n_vid = calls[0].q.shape[2] - ((text_range[1] - text_range[0]) if text_range else 0)
    cfg = base.clamped(n_vid)   # as the patcher does (cfg_for_layer)
    refs = [dense_reference(c) for c in calls]
    ck = cfg.k_clusters
    if ck is None:   # adaptive: one replay tells the layer's key-cluster count
        probe = replay(calls, refs, cfg.replace(top_k=1), text_range)
        ck = probe["k_clusters"]
    best, tried = None, []
    done: set = set()
    for fam, cand in candidates(cfg, ck, top_p):
        if fam in done:
            continue   # within a family cost grows along the ladder: the first one meeting it is the cheapest
        r = replay(calls, refs, cand, text_range)
        tried.append((cand, r))
        ok = r["error"] <= target
        if ok and (best is None or r["density"] < best[1]["density"]):
            best = (cand, r)
        if ok:
            done.add(fam)
    ent = {"calls": len(calls), "k_clusters_found": ck, "candidates_tried": len(tried)}
    if best is not None:
        cand, r = best
        cost = predicted_cost(r["density"], kernel_rate, overhead,
                              pooled_overhead if cand.pooled_tail else 0.0)
        if cost < 1.0:
            ent.update({"mode": "sparse", "selection": cand.selection, "q_clusters": cand.q_clusters,
                        "k_clusters": cand.k_clusters, "density": r["density"], "error": r["error"],
                        "predicted_cost": cost})
            if cand.selection == "top_p":
                ent["top_p"] = cand.top_p
            else:
                ent["top_k"] = cand.top_k
            ent["max_density"] = cand.max_density
            ent["pooled_tail"] = bool(cand.pooled_tail)
            return ent
        reason = f"cheapest setting meeting the target has density {r['density']:.2f}: not faster than dense"
    else:
        best_err = min((r["error"] for _, r in tried), default=None)
        reason = ("no sparse setting meets the target" +
                  (f" (best error {best_err:.4f})" if best_err is not None else ""))
    ent.update({"mode": "dense", "density": 1.0, "error": 0.0, "predicted_cost": 1.0, "reason": reason})
    return ent


def tune(cap: Capture, target_error: float, overrides: dict | None = None, backend: str = "auto",
         top_p: bool = False, layers: list[int] | None = None, kernel_rate: float = KERNEL_RATE,
         overhead: float = OVERHEAD, source: str = "", log=None, pooled_overhead: float = POOLED_OVERHEAD) -> dict:
    if not (target_error > 0):
        raise ValueError(f"target_error must be > 0, got {target_error}")
    base = base_config(cap, overrides, backend)
    out_layers = {}
    t0 = time.perf_counter()
    for layer, calls in cap.layers().items():
        if layers is not None and layer not in layers:
            continue
        out_layers[str(layer)] = tune_layer(calls, base, target_error, cap.text_range, top_p, kernel_rate, overhead,
                                            pooled_overhead)
        if log:
            e = out_layers[str(layer)]
            log(f"  layer {layer}: {e['mode']} density {e['density']:.3f} error {e['error']:.4f}")
    costs = [e["predicted_cost"] for e in out_layers.values()]
    speedup = (len(costs) / sum(costs)) if costs else 1.0
    return {"format": PROFILE_FORMAT, "source": source, "family": cap.meta.get("family"),
            "model": cap.meta.get("model"), "grid": cap.meta.get("grid"), "target_error": target_error,
            "n_layers": cap.meta.get("n_layers"), "base_config": base.to_dict(), "predicted_speedup": speedup,
            "cost_model": {"kernel_rate": kernel_rate, "overhead": overhead, "pooled_overhead": pooled_overhead,
                           "formula": "t_sparse/t_dense = density/kernel_rate + overhead (+ pooled_overhead "
                                      "with pooled_tail) (docs/BENCHMARKS.md)"},
            "tune_seconds": time.perf_counter() - t0, "layers": out_layers}


def format_table(profile: dict) -> str:
    lines = [f"{'layer':>5}  {'mode':<6}  {'setting':<26}  {'density':>7}  {'error':>7}  {'pred. cost':>10}"]
    for key in sorted(profile["layers"], key=int):
        e = profile["layers"][key]
        if e["mode"] == "sparse":
            s = (f"top_k={e['top_k']}" if "top_k" in e else f"top_p={e['top_p']}")
            if e.get("max_density") is not None and e["max_density"] < 1.0:
                s += f" max_d={e['max_density']}"
            s += f" Ck={e.get('k_clusters') or e.get('k_clusters_found')}"
        else:
            s = "dense"
        lines.append(f"{key:>5}  {e['mode']:<6}  {s:<26}  {e['density']:>7.3f}  {e['error']:>7.4f}  "
                     f"{e['predicted_cost']:>10.3f}")
    lines.append(f"predicted attention speedup on reuse steps: {profile['predicted_speedup']:.2f}x "
                 f"(cost = density/{profile['cost_model']['kernel_rate']} + {profile['cost_model']['overhead']}"
                 f" + {profile['cost_model'].get('pooled_overhead', 0)} with pooled_tail, "
                 "H200 rates from docs/BENCHMARKS.md; dense layers cost 1)")
    return "\n".join(lines)


def _parse_set(items: list[str]) -> dict:
    out = {}
    for it in items or []:
        if "=" not in it:
            raise SystemExit(f"--set expects FIELD=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        k, v = k.strip(), v.strip()
        if k not in AdaClusterConfig.__dataclass_fields__:
            raise SystemExit(f"--set: unknown AdaClusterConfig field {k!r}")
        low = v.lower()
        if low in ("none", "null", "adaptive"):
            val = None
        elif low in ("true", "false"):
            val = low == "true"
        else:
            try:
                val = int(v)
            except ValueError:
                try:
                    val = float(v)
                except ValueError:
                    val = v
        out[k] = val
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m adacluster_core.tune", description=__doc__.split("\n\n")[0])
    ap.add_argument("capture", help="a .safetensors file written by the AdaCluster Capture node")
    ap.add_argument("--target-error", type=float, default=0.05,
                    help="max relative L2 error of every replayed call of a layer (default 0.05)")
    ap.add_argument("--out", default=None, help="profile JSON to write (default: <capture>.profile.json)")
    ap.add_argument("--top-p", action="store_true", help=f"also search selection=top_p over {TOP_P_LADDER}")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="base config override (e.g. --set k_clusters=256); repeatable")
    ap.add_argument("--backend", default="auto", choices=["auto", "torch", "triton"],
                    help="auto: the Triton kernel where Triton runs, else the torch reference")
    ap.add_argument("--allow-incomplete", action="store_true",
                    help="tune a capture marked complete=false (from an interrupted or failed run)")
    ap.add_argument("--device", default=None, help="cpu / cuda (default: cuda if available)")
    ap.add_argument("--layers", default=None, help="comma separated layer ids to tune (default: all captured)")
    ap.add_argument("--kernel-rate", type=float, default=KERNEL_RATE)
    ap.add_argument("--overhead", type=float, default=OVERHEAD)
    ap.add_argument("--pooled-overhead", type=float, default=POOLED_OVERHEAD,
                    help="extra cost of pooled_tail=True, in dense calls (default: measured 0.2)")
    a = ap.parse_args(argv)
    dev = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        cap = load_capture(a.capture, dev, allow_incomplete=a.allow_incomplete)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"capture: {a.capture}: {cap.meta.get('family')} grid {cap.meta.get('grid')}, {len(cap.calls)} calls, "
          f"{len(cap.layers())} layers, heads {cap.meta.get('heads')}, device {dev}")
    layers = [int(x) for x in a.layers.split(",")] if a.layers else None
    prof = tune(cap, a.target_error, _parse_set(a.set), a.backend, a.top_p, layers, a.kernel_rate, a.overhead,
                source=a.capture, log=lambda s: print(s, file=sys.stderr), pooled_overhead=a.pooled_overhead)
    print(format_table(prof))
    out = a.out or (a.capture.rsplit(".", 1)[0] + ".profile.json")
    with open(out, "w", encoding="utf-8") as f:
        json.dump(prof, f, indent=1)
    print(f"profile written to {out} (load it with AdaCluster Layer Overrides' 'profile' input)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
