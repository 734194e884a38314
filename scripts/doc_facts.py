"""The facts the README and the bundled workflows' notes both state, computed from the code.

* `preset_rows()`: every preset's values from `AdaClusterConfig.for_model` (what the Sparse
  Attention node runs): the README's "Presets and tuning" table must show them
  (tests/test_docs_facts.py), and scripts/build_workflows.py prints them into each note.
* `NOTE_REASONS`: the dense reasons a note names as examples; each must be one the Stats node can
  print (tests/harness/dense_reasons.py reads those from the source; the README's troubleshooting
  table lists them all: tests/test_docs_reasons.py).
* `in_charge(prompt)`: whether a graph's `preset` widget or its Thresholds node decides the settings.
* The advice lines (`QUALITY_ADVICE`, `SPEED_ADVICE`, `POOLED_TAIL`, `KERNEL_LINE`), written once.

Imports only adacluster_core (no ComfyUI).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from adacluster_core.config import PRESETS, AdaClusterConfig  # noqa: E402

FAMILIES = ("wan", "hunyuan", "cogvideox")       # the README's top_k column order
PRESET_ORDER = ("balanced", "quality", "fast")   # the README's row order
NO_TRITON = "dense: no triton"                   # adacluster_core.api.NO_TRITON (checked by the test)
NOTE_REASONS = ("warmup", "kernels compiling", "calibration", "planned-dense-layer", "layer-rule", "few-tokens",
                "head_dim …")


def preset_rows() -> List[Dict]:
    """One dict per preset: max_density, pooled_tail, top_k per family, warmup, dense_layer_fraction,
    kmeans_iters_reuse (the Sparse Attention node's preset = for_model(family, preset))."""
    assert set(PRESET_ORDER) == set(PRESETS), (PRESET_ORDER, PRESETS)
    rows = []
    for p in PRESET_ORDER:
        cfgs = {f: AdaClusterConfig.for_model(f, p) for f in FAMILIES}
        c = cfgs["wan"]
        rows.append({"preset": p, "max_density": c.max_density, "pooled_tail": c.pooled_tail,
                     "top_k": tuple(cfgs[f].top_k for f in FAMILIES), "warmup": c.warmup,
                     "dense_layer_fraction": c.dense_layer_fraction, "kmeans_iters_reuse": c.kmeans_iters_reuse})
    return rows


def presets_table_markdown() -> str:
    """The presets as a small Markdown table (the notes' copy of the README's table, values only)."""
    lines = ["| preset | max_density | pooled tail | top_k (Wan / Hunyuan / CogVideoX) | warmup | dense layers |",
             "|---|---|---|---|---|---|"]
    for r in preset_rows():
        name = f"`{r['preset']}`" + (" (= `auto`)" if r["preset"] == "balanced" else "")
        lines.append(f"| {name} | {r['max_density']:.2f} | {'on' if r['pooled_tail'] else 'off'} | "
                     f"{' / '.join(str(k) for k in r['top_k'])} | {r['warmup']:g} | {r['dense_layer_fraction']:g} |")
    return "\n".join(lines)


def _linked(v) -> bool:
    return isinstance(v, list) and len(v) == 2 and isinstance(v[0], str)


def in_charge(prompt: dict, layout: dict | None = None) -> str:
    """One plain sentence per AdaCluster Sparse Attention node of an API-format graph: what decides
    its settings in this workflow (titles from `layout`, as build_workflows gives them)."""
    layout = layout or {}

    def title_of(nid, default):
        return layout.get(nid, {}).get("title") or prompt[nid].get("_meta", {}).get("title") or default

    out = []
    for nid, n in prompt.items():
        if n.get("class_type") != "AdaClusterSparseAttention":
            continue
        inp = n.get("inputs", {})
        title = f'"{title_of(nid, "AdaCluster Sparse Attention")}"' 
        if inp.get("enabled") is False:
            out.append(f"{title} has `enabled = false`: that branch runs plain dense attention.")
        elif _linked(inp.get("config")):
            src_title = f'"{title_of(inp["config"][0], "AdaCluster Thresholds")}"' 
            out.append(f"**In this workflow the Thresholds node {src_title} is in charge**: it is connected to `config` of "
                       f"{title}, so that node's `preset` widget is ignored (picking `fast` there changes nothing). "
                       "The Thresholds widgets start at the `balanced` values of this model; edit them, or delete the "
                       "Thresholds → `config` link to use the `preset` widget instead.")
        else:
            out.append(f"**In this workflow the `preset` widget of {title} is in charge** (no Thresholds node "
                       f"is connected to its `config`): `{inp.get('preset', 'auto')}` now; `auto` = `balanced`.")
    return "\n\n".join(out)


POOLED_TAIL = ("**pooled_tail**: unselected key clusters still enter the softmax as one pooled key each (~10× lower "
               "error at the same density for a few % of the call's time). Every preset keeps it on; off = the "
               "paper's selected-clusters-only attention (0-10 % faster, ~10× the error).")
QUALITY_ADVICE = ("**Quality dropped?** (flicker, smeared detail, drifting faces) raise `max_density` (0.15 → 0.25), "
                  "keep `pooled_tail` on, raise `top_k` (or `top_p`), raise `warmup` (0.4-0.5), add dense layers "
                  "(`dense_layer_fraction` or rules like `0-2, -1: dense`), or use the `quality` preset.")
SPEED_ADVICE = ("**Want more speed?** lower `max_density` (0.15 → 0.10), lower `top_k`, lower `warmup` (not below "
                "~0.15), lower `dense_layer_fraction`, or use the `fast` preset (it keeps the pooled tail on).")
KERNEL_LINE = ("which kernel ran (`kernel: Triton …`; `torch reference` only with `backend = torch`; without Triton, "
               f"e.g. no CUDA GPU, every call runs ComfyUI's own dense attention and Stats says `{NO_TRITON}`)")


def note_reasons_markdown() -> str:
    return ", ".join(f"`{r}`" for r in NOTE_REASONS)
