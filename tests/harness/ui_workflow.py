"""Turn an API-format prompt into a UI-format (litegraph 0.4) workflow that the ComfyUI frontend
opens. A command-line front to the one converter, `api_to_ui` in scripts/build_workflows.py
(which the bundled workflows and tests/browser use): input order, widget-vs-socket and the nested
V3 inputs (DynamicCombo, Autogrow, DynamicSlot, MatchType) come from a running server's
/object_info.

    python -m tests.harness.ui_workflow prompt.json out.json --url http://127.0.0.1:8188
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import urllib.request
from pathlib import Path

_SPEC = importlib.util.spec_from_file_location(
    "adacluster_build_workflows", Path(__file__).resolve().parents[2] / "scripts" / "build_workflows.py")
BW = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(BW)


def api_to_ui(prompt: dict, object_info: dict, titles: dict | None = None) -> dict:
    """prompt ({id: {"class_type", "inputs"}}) -> UI workflow; titles: id -> node title."""
    layout = {k: {"title": t} for k, t in (titles or {}).items() if t}
    return BW.api_to_ui(prompt, object_info, layout=layout, strict=False)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("prompt")
    ap.add_argument("out")
    ap.add_argument("--url", default="http://127.0.0.1:8188")
    a = ap.parse_args(argv)
    with open(a.prompt) as f:
        prompt = json.load(f)
    info = json.load(urllib.request.urlopen(a.url + "/object_info"))
    wf = api_to_ui(prompt, info)
    with open(a.out, "w") as f:
        json.dump(wf, f, indent=1)
    print("wrote", a.out, len(wf["nodes"]), "nodes", len(wf["links"]), "links")


if __name__ == "__main__":
    main()
