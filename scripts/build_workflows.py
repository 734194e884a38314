#!/usr/bin/env python3
"""Build the bundled example workflows in workflows/ (UI-format litegraph JSON + a .jpg card each).

The graphs are written here in API format (class_type + inputs, the way /prompt takes them) plus
a position per node; they are converted to the UI format the ComfyUI frontend opens with the
input order, widget-vs-socket split and defaults taken from a running server's /object_info, so
the widget values line up with the real node definitions (core and AdaCluster). Nested inputs of
ComfyUI's V3 node API (DynamicCombo, Autogrow, DynamicSlot, MatchType: 0.33's SaveVideo `format`)
are expanded from /object_info the way the frontend (1.49) builds and saves them (`input_slots`).

    .venv/bin/python scripts/build_workflows.py                 # starts a throwaway ComfyUI (.comfyui/)
    .venv/bin/python scripts/build_workflows.py --url http://127.0.0.1:8188   # use a running server
    .venv/bin/python scripts/build_workflows.py --check         # exit 1 if workflows/ is stale
    .venv/bin/python scripts/build_workflows.py --thumbs-only   # only redraw the .jpg cards

The generated files are committed; rerun this after changing a node's inputs. They are generated
against current ComfyUI's node definitions (`ADACLUSTER_COMFYUI=upstream`, the snapshot in
../shared, built by `ADACLUSTER_COMFYUI=upstream bash scripts/setup_env.sh`), and load on 0.3.75 too:
newer nodes only add trailing widgets/outputs (CreateVideo `bit_depth`, SaveVideo's VIDEO output,
SaveVideo's hidden top-level `codec` after the DynamicCombo `format` + `format.codec`, whose values an
older SaveVideo reads as its format and codec), which older frontends ignore;
tests/harness/version_diffs.py lists them and tests/comfy/test_workflows.py checks that against both.

    ADACLUSTER_COMFYUI=upstream .venv-upstream/bin/python scripts/build_workflows.py
The converter (`api_to_ui`) is also used by tests/browser to build the tiny UI graph it queues.

This file is the entry point (command line, `build_one`, the /object_info source); the parts live next
to it, one job each, and their names are re-exported here for the tests and tools that load this file:
  workflow_convert.py   /object_info slots (V3 nested inputs included) and the API -> UI converter
  workflow_graphs.py    the workflow definitions (graphs, layouts, read-me notes, WORKFLOWS, REQUIRES_NODE)
  workflow_cards.py     the .jpg cards
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
# the parts (see above), re-exported: tests/comfy/test_workflows.py, tests/browser, tests/harness/ui_workflow.py,
# tests/test_docs_facts.py and tests/comfy/test_server_smoke.py use these names from this module
from workflow_cards import _font, draw_card  # noqa: E402,F401
from workflow_convert import (  # noqa: E402,F401
    AUTOGROW, DYNAMIC_COMBO, DYNAMIC_SLOT, FRONTEND_ONLY_TYPES, MATCH_TYPE, WIDGET_TYPES, _combo_choices, _default,
    _has_control, _inputs_in_order, _is_link, _is_widget, _spec_opts, _spec_type, api_to_ui, input_slots,
    missing_node_types, widget_slots)
from workflow_graphs import (  # noqa: E402,F401
    ADACLUSTER_COLOR, H3_PROMPT, LAYER_RULES_EXAMPLE, REQUIRES_NODE, WAN_NEGATIVE, WORKFLOWS, _ab_note, _note,
    _wan_graph, _wire_adacluster, adacluster_nodes, available, hunyuan_t2v_720p, minimax_h3_t2va, wan21_ab_check,
    wan21_t2v, wan22_ti2v_5b)

WORKFLOWS_DIR = ROOT / "workflows"


def build_one(name: str, object_info: dict) -> dict:
    g = WORKFLOWS[name]()
    P, L = g["prompt"], g["layout"]
    _wire_adacluster(P, L)
    # one group frames the AdaCluster nodes (unless the graph brings its own); the note node sits under the loaders
    groups = g.get("groups") or [{"title": "AdaCluster sparse attention", "bounding": [860, -10, 700, 910], "color": "#3f8e6a"}]
    note_layout = g.get("note_layout") or {"pos": [40, 480], "size": [360, 640]}
    extra = [{"type": "MarkdownNote", "title": "AdaCluster: read me", "text": g["note"], **note_layout}]
    wf = api_to_ui(P, object_info, layout=L, extra_nodes=extra, groups=groups)
    missing = missing_node_types(wf, object_info)
    if missing:
        raise ValueError(f"{name}: node types unknown to the server: {missing}")
    wf = {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, "adacluster-comfyui/workflows/" + name)), "revision": 0, **wf}
    wf["extra"]["adacluster"] = {"generated_by": "scripts/build_workflows.py", "card": list(g["card"])}
    return wf


# ------------------------------------------------------------------------------------ main


def fetch_object_info(url: str) -> dict:
    with urllib.request.urlopen(url.rstrip("/") + "/object_info", timeout=120) as r:
        return json.loads(r.read())


def object_info_from_throwaway_server() -> dict:
    """/object_info of a throwaway server of the ComfyUI that ADACLUSTER_COMFYUI selects
    (tests/harness/comfy_select.py; the committed files come from `upstream`)."""
    import os
    sys.path.insert(0, str(ROOT))
    from tests.harness.comfy_select import comfy_dir  # dev-only helpers (tests/harness)
    from tests.harness.comfy_server import ComfyServer
    venv = os.environ.get("ADACLUSTER_VENV") or str(ROOT / (".venv-upstream" if os.environ.get(
        "ADACLUSTER_COMFYUI") == "upstream" else ".venv"))
    py = Path(venv) / "bin" / "python"
    with tempfile.TemporaryDirectory(prefix="adacluster_build_wf_") as base:
        srv = ComfyServer(str(py if py.exists() else sys.executable), comfy_dir(), base,
                          custom_nodes={"adacluster": ROOT}, extra_args=[])
        with srv:
            return srv.object_info()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="a running ComfyUI with this pack loaded (default: start a throwaway one)")
    ap.add_argument("--out", default=str(WORKFLOWS_DIR))
    ap.add_argument("--check", action="store_true", help="do not write; exit 1 when a file would change")
    ap.add_argument("--thumbs-only", action="store_true")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.thumbs_only:
        for name, fn in WORKFLOWS.items():
            draw_card(out / f"{name}.jpg", *fn()["card"])
        print("wrote", len(WORKFLOWS), "thumbnails to", out)
        return 0
    info = fetch_object_info(a.url) if a.url else object_info_from_throwaway_server()
    stale = []
    for name in WORKFLOWS:
        if not available(name, info):
            print(f"skipped {name}: this ComfyUI has no {REQUIRES_NODE[name]} (generate against a newer one)")
            continue
        wf = build_one(name, info)
        text = json.dumps(wf, indent=1, ensure_ascii=False) + "\n"
        path = out / f"{name}.json"
        if a.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(path.name)
            continue
        path.write_text(text, encoding="utf-8")
        draw_card(out / f"{name}.jpg", *wf["extra"]["adacluster"]["card"])
        print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: "
              f"{len(wf['nodes'])} nodes, {len(wf['links'])} links (+ .jpg)")
    if a.check:
        if stale:
            print("stale (rerun scripts/build_workflows.py):", ", ".join(stale))
            return 1
        print("workflows/ is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
