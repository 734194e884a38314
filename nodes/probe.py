"""Probe mode: for chosen layers x steps a sparse call is also run dense; the dense result goes on
and the sparse one is measured (relative L2 error, attention-mass recall, density). The selection,
the measurement, and the probe part of the run summary."""
from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from typing import Any

import torch

from .core import MASK_THRESHOLD, sparse_attention
from .fallback import must_raise
from .layer_rules import Selection, parse_selection

PROBE_MODES = ("off", "on")
PROBE_MAX_ROWS = 256   # query rows per (batch, head) used for the dense softmax mass of the recall
RECALL_DEFINITION = ("fraction of the dense softmax mass of each video query row on the keys the sparse call "
                     "computed (exact, sentinel-token replay; mean over <= max_rows rows per head)")


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


@dataclasses.dataclass
class ProbeRecord:
    """One measured sparse call (per CFG branch). The numbers may be 0-dim tensors until the run
    is summarised (one host sync then)."""
    layer: int
    step: int
    branch: str
    rel_err: Any
    recall: Any           # None: the layout had no place for the sentinel token
    density: Any          # None: the core reported none


def mass_recall(Q, K, cfg, state_copy, scale, txt_range, km, max_rows, interrupt_check=None):
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
                             always_dense_range=rng, key_mask=km2, interrupt_check=interrupt_check)
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
        logits = logits.masked_fill((km.float() <= MASK_THRESHOLD).reshape(km.shape[0], 1, 1, L), float("-inf"))
    rec = torch.exp(log_zs - torch.logsumexp(logits, -1)).clamp(0.0, 1.0)
    ok = torch.isfinite(log_zs) | (a == 0)
    rec = torch.where(ok, rec.nan_to_num(0.0), torch.zeros_like(rec))
    return rec.sum() / ok.sum().clamp_min(1)


def rel_err(o, ref):
    o, ref = o.float(), ref.float()
    return (o - ref).norm() / ref.norm().clamp_min(1e-12)


def measure(run, layer: int, step: int, branch: str, *, q, k, out, dense_ref, stats, state_before,
            core_kw: dict) -> None:
    """Append the ProbeRecord of one sparse call to `run.probes` (never raises, except an interrupt
    or in strict mode). `core_kw`: the keyword arguments of the real sparse_attention call."""
    try:
        err = rel_err(out, dense_ref)
        is_dense = bool(stats["dense"])
        if is_dense:
            rec = 1.0
        else:
            rec = mass_recall(q, k, core_kw["config"], state_before, core_kw["scale"], core_kw["always_dense_range"],
                              core_kw["key_mask"], run.probe.max_rows, interrupt_check=core_kw["interrupt_check"])
        dens = 1.0 if is_dense else stats["density"]
        run.probes.append(ProbeRecord(layer, step, branch, err, rec, dens))
    except Exception as e:
        if must_raise(e):
            raise
        run.warn_once(("probe-error", type(e).__name__), "AdaCluster: probe measurement failed (%s: %s)",
                      type(e).__name__, e)


# ------------------------------------------------------------------------------------------------
# the probe part of the run summary
# ------------------------------------------------------------------------------------------------
def _as_floats(rows: list[ProbeRecord]) -> list[tuple]:
    """(layer, step, branch, error, recall, density) with plain floats (NaN for None): one sync."""
    vals = []
    for r in rows:
        vals += [r.rel_err, r.recall if r.recall is not None else float("nan"),
                 r.density if r.density is not None else float("nan")]
    flat = [torch.as_tensor(v).detach().float().reshape(()).cpu() for v in vals]
    nums = torch.stack(flat).tolist() if flat else []
    return [(r.layer, r.step, r.branch, nums[3 * i], nums[3 * i + 1], nums[3 * i + 2]) for i, r in enumerate(rows)]


def _grids(recs: list[tuple], n_layers: int, n_steps: int) -> tuple[list, list]:
    """[layer][step] worst error (max) and worst recall (min) of the probed calls, None elsewhere."""
    err_grid = [[None] * n_steps for _ in range(n_layers)]
    rec_grid = [[None] * n_steps for _ in range(n_layers)]
    acc: dict[tuple[int, int], list] = defaultdict(list)
    for layer, step, _br, e, rc, _d in recs:
        if 0 <= layer < n_layers and 0 <= step < n_steps:
            acc[(layer, step)].append((e, rc))
    for (layer, step), v in acc.items():
        err_grid[layer][step] = round(max(e for e, _ in v), 5)
        rs = [rc for _, rc in v if math.isfinite(rc)]
        rec_grid[layer][step] = round(min(rs), 5) if rs else None
    return err_grid, rec_grid


def _worst_layers(recs: list[tuple]) -> list[dict]:
    per: dict[int, list] = defaultdict(list)
    for layer, _step, _br, e, rc, d in recs:
        per[layer].append((e, rc, d))
    layers = []
    for layer, v in per.items():
        rs = [rc for _, rc, _ in v if math.isfinite(rc)]
        ds = [d for _, _, d in v if math.isfinite(d)]
        layers.append({"layer": layer, "calls": len(v), "error_mean": sum(e for e, _, _ in v) / len(v),
                       "error_max": max(e for e, _, _ in v),
                       "recall_mean": (sum(rs) / len(rs)) if rs else None, "recall_min": min(rs) if rs else None,
                       "density_mean": (sum(ds) / len(ds)) if ds else None})
    layers.sort(key=lambda x: -x["error_max"])
    return layers


def summarize_probes(spec: ProbeSpec | None, rows: list[ProbeRecord], n_layers: int, n_steps: int) -> dict | None:
    """The "probe" entry of the run summary (None when the probe is off)."""
    if spec is None:
        return None
    recs = _as_floats(rows)
    err_grid, rec_grid = _grids(recs, n_layers, n_steps)
    errs = [e for *_, e, _, _ in recs]
    return {"spec": spec.describe(), "max_rows": spec.max_rows, "calls": len(recs),
            "max_error": max(errs) if errs else None,
            "mean_error": (sum(errs) / len(errs)) if errs else None,
            "error_grid": err_grid, "recall_grid": rec_grid,
            "worst_layers": _worst_layers(recs),     # sorted by error_max, worst first
            "recall_definition": RECALL_DEFINITION}
