"""Turn an API-format prompt into a UI-format (litegraph 0.4) workflow that the ComfyUI frontend
opens, e.g. for the pack's workflows/ folder. Input order and widget-vs-socket come from a
running server's /object_info (pass the dict).

    python -m tests.harness.ui_workflow prompt.json out.json --url http://127.0.0.1:8188
"""
from __future__ import annotations

import argparse
import json
import urllib.request

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SEED_NAMES = {"seed", "noise_seed"}


def api_to_ui(prompt: dict, object_info: dict, titles: dict | None = None) -> dict:
    ids = {k: i + 1 for i, k in enumerate(prompt)}
    nodes, links, out_links = [], [], {}
    link_id = 0
    infos = {}
    for k, n in prompt.items():
        oi = object_info[n["class_type"]]
        infos[ids[k]] = oi
        order = oi.get("input_order", {})
        names = order.get("required", []) + order.get("optional", [])
        spec = {**oi["input"].get("required", {}), **oi["input"].get("optional", {})}
        inputs, widgets = [], []
        for name in names:
            t = spec[name][0]
            t = "COMBO" if isinstance(t, list) else t
            v = n["inputs"].get(name)
            if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str):
                link_id += 1
                inputs.append({"name": name, "type": t, "link": link_id})
                links.append([link_id, ids[v[0]], v[1], ids[k], len(inputs) - 1, t])
                out_links.setdefault((ids[v[0]], v[1]), []).append(link_id)
            elif t in WIDGET_TYPES:
                if v is None:
                    opts = spec[name][1] if len(spec[name]) > 1 else {}
                    v = opts.get("default") if isinstance(opts, dict) else None
                    if v is None and isinstance(spec[name][0], list) and spec[name][0]:
                        v = spec[name][0][0]
                widgets.append(v)
                if name in SEED_NAMES:
                    widgets.append("fixed")  # the frontend's control_after_generate widget
        node = {"id": ids[k], "type": n["class_type"], "pos": [40 + 320 * ((ids[k] - 1) % 4), 80 + 300 * ((ids[k] - 1) // 4)],
                "size": [300, 160], "flags": {}, "order": ids[k] - 1, "mode": 0, "inputs": inputs, "outputs": [],
                "properties": {"Node name for S&R": n["class_type"]}, "widgets_values": widgets}
        title = (titles or {}).get(k) or n.get("_meta", {}).get("title")
        if title:
            node["title"] = title
        nodes.append(node)
    for nd in nodes:
        oi = infos[nd["id"]]
        nd["outputs"] = [{"name": nm, "type": t, "links": out_links.get((nd["id"], i), [])}
                         for i, (nm, t) in enumerate(zip(oi["output_name"], oi["output"]))]
    return {"last_node_id": len(nodes), "last_link_id": link_id, "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {}, "version": 0.4}


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
