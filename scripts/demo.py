#!/usr/bin/env python3
"""Demo: a real ComfyUI 0.3.75 server with the AdaCluster pack runs a tiny random-weight Wan 2.1
text-to-video graph on the CPU (UNETLoader -> [AdaClusterSparseAttention] -> KSampler ->
[AdaClusterStats]). The AdaCluster nodes are used when the server lists them in /object_info;
otherwise the graph runs dense and says so. Outputs go to artifacts/demo/.

Run through `bash scripts/demo.sh` (sets up .venv/.comfyui, TRITON_INTERPRET=1).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness import prompts  # noqa: E402
from tests.harness.comfy_server import ComfyServer, ComfyServerError, PromptError, core_import_note  # noqa: E402
from tests.harness.make_tiny_dits import FILENAMES, make_all  # noqa: E402



class _PackImportFailed(Exception):
    pass


def log(msg):
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


WORKFLOW = ROOT / "workflows" / "wan21_t2v_1.3b_480p_adacluster.json"
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


def workflow_widgets(workflow: dict, node_type: str, info: dict) -> dict:
    """Widget values of `node_type` in a UI-format workflow, as {input name: value}, using the
    server's /object_info input order (what the frontend does when it queues the graph)."""
    node = next((n for n in workflow["nodes"] if n["type"] == node_type), None)
    if node is None:
        return {}
    spec = info[node_type]["input"]
    order = info[node_type].get("input_order", {})
    names = order.get("required", list(spec.get("required", {}))) + order.get("optional", list(spec.get("optional", {})))
    allspec = {**spec.get("required", {}), **spec.get("optional", {})}
    vals = list(node.get("widgets_values") or [])
    out = {}
    for name in names:
        t = allspec[name][0]
        if (isinstance(t, list) or t in WIDGET_TYPES) and vals:
            out[name] = vals.pop(0)
        elif name in spec.get("required", {}) and "default" in (allspec[name][1] if len(allspec[name]) > 1 else {}):
            out[name] = allspec[name][1]["default"]   # a widget newer than the workflow file
    return out


def load_report_plot():
    """nodes/report_plot.py (no ComfyUI imports), loaded by path: the pack's own drawing code."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("adacluster_report_plot", ROOT / "nodes" / "report_plot.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def save_report(stats: dict | None, sparse_pt: Path, dense_pt: Path | None, png: Path):
    """One picture of the run: the Stats heatmap, mean density per layer, and the sparse latent next
    to the dense one (enabled = false) with their difference."""
    import torch
    rp = load_report_plot()
    parts = [rp.heatmap_pil(stats), rp.layer_density_bars_pil(stats)]
    if dense_pt is not None and dense_pt.exists():
        parts.append(rp.latent_comparison_pil(torch.load(sparse_pt, map_location="cpu"),
                                              torch.load(dense_pt, map_location="cpu")))
    top = rp.stack(parts[:2], columns=2)
    rp.stack([top, *parts[2:]], columns=1).save(png)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "artifacts" / "demo"))
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--frames", type=int, default=9)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--layers", type=int, default=6, help="blocks of the tiny Wan model")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--backend", default="triton", choices=["triton", "mixed", "torch"],
                    help="triton: the pack's Triton kernels on every layer (on the CPU through the Triton "
                         "interpreter, TRITON_INTERPRET=1: a few minutes); mixed: Triton on --triton-layer, the "
                         "pure-torch reference of the same algorithm on the other layers (faster); torch: the "
                         "reference only")
    ap.add_argument("--triton-layer", type=int, default=2, help="the layer that runs Triton with --backend mixed")
    ap.add_argument("--dense", action="store_true", help="do not insert the AdaCluster nodes")
    ap.add_argument("--timeout", type=float, default=1500)
    return ap.parse_args(argv)


def start_server(srv: ComfyServer) -> None:
    """Start ComfyUI; _PackImportFailed when the pack did not import."""
    srv.start()
    log(f"ComfyUI ready on {srv.url} in {srv.started_in_s:.1f} s")
    failures = srv.import_failures(["adacluster"])   # what ComfyUI says about custom_nodes/adacluster
    if failures:
        log("ERROR: the AdaCluster pack failed to import (exit code 3):\n" + "\n".join(failures[:3]))
        raise _PackImportFailed()
    note = core_import_note(srv.log_text())
    if note:
        log("note: " + note)


def adacluster_chain(a: argparse.Namespace, info: dict) -> tuple:
    """The AdaCluster chain of the bundled Wan 2.1 workflow, with its widget values; only min_tokens
    and the backend are adapted to the tiny CPU model. Returns (patch nodes, post nodes, extra nodes
    {id: [class, inputs]}, video tokens)."""
    wf = json.loads(WORKFLOW.read_text())
    thr = workflow_widgets(wf, "AdaClusterThresholds", info)
    n_tok = ((a.frames - 1) // 4 + 1) * (a.size // 16) ** 2
    thr.update(min_tokens=min(int(thr.get("min_tokens", 1024)), n_tok),
               backend="triton" if a.backend == "triton" else "torch",
               q_clusters=min(int(thr.get("q_clusters", 65)), max(1, n_tok // 8)),
               k_clusters_init=min(int(thr.get("k_clusters_init", 200)), max(1, n_tok // 4)))
    rules = workflow_widgets(wf, "AdaClusterLayerOverrides", info)
    sa = workflow_widgets(wf, "AdaClusterSparseAttention", info)
    if a.backend == "mixed":  # a per-layer field override, as a user could write it
        rules["rules"] = rules.get("rules", "").rstrip() + f"\n{a.triton_layer}: backend=triton\n"
    log(f"AdaCluster chain from {WORKFLOW.name}: Thresholds {thr}")
    interp = os.environ.get("TRITON_INTERPRET") == "1"
    triton_how = ("the pack's Triton kernels, run by the Triton interpreter on the CPU (TRITON_INTERPRET=1: "
                  "the real kernels, far slower than on a GPU)" if interp else
                  "the pack's Triton kernels (the torch reference where no GPU/Triton is found)")
    log("sparse kernels: " + {
        "torch": "the pure-torch reference of the same algorithm (--backend torch)",
        "triton": triton_how + " on every layer",
        "mixed": f"{triton_how} on layer {a.triton_layer}; the pure-torch reference of the same "
                 "algorithm on the other layers"}[a.backend])
    rule_lines = [x for x in rules.get("rules", "").splitlines() if x.strip() and not x.lstrip().startswith("#")]
    log(f"  Layer Overrides: {' | '.join(rule_lines) or '-'}")
    extra = {"thr": ["AdaClusterThresholds", thr], "ovr": ["AdaClusterLayerOverrides", rules]}
    patch = [("AdaClusterSparseAttention", {**sa, "config": ["thr", 0], "layer_overrides": ["ovr", 0]})]
    post = [("AdaClusterStats", {"model": ["p1", 0]})]
    return patch, post, extra, n_tok


def progress_logger():
    """The run_prompt poll callback: a line every 5 s of sampling."""
    last = [0.0]

    def progress(elapsed):
        if elapsed - last[0] >= 5:
            last[0] = elapsed
            log(f"  ... sampling ({elapsed:.0f} s)")
    return progress


def show_outputs(srv: ComfyServer, entry: dict, out: Path):
    """Print the text outputs, save the heatmap and demo_outputs.json; the Stats node's stats (or None)."""
    outputs = entry.get("outputs", {})
    stats = next((o["adacluster_stats"][0] for o in outputs.values() if o.get("adacluster_stats")), None)
    (out / "demo_outputs.json").write_text(json.dumps(outputs, indent=1, default=str))
    for nid, o in outputs.items():
        for t in o.get("text", []):
            print("\n" + str(t) + "\n", flush=True)
        for im in o.get("images", []):
            q = urllib.parse.urlencode({"filename": im["filename"], "subfolder": im.get("subfolder", ""),
                                        "type": im.get("type", "temp")})
            (out / "stats_heatmap.png").write_bytes(srv.get(f"/view?{q}"))
            log(f"stats heatmap (layers x steps): {out / 'stats_heatmap.png'}")
    return stats


def dense_reference(srv: ComfyServer, a: argparse.Namespace, p: dict, out: Path, progress) -> Path:
    """The same graph with the switch off: the dense reference to compare the latent with."""
    pd = json.loads(json.dumps(p))
    pd["p1"]["inputs"]["enabled"] = False
    pd["6"]["inputs"]["name"] = "demo_wan21_latent_dense"
    pd.pop("q1", None)
    log("running the same graph with enabled=false (dense reference) ...")
    srv.run_prompt(pd, timeout=a.timeout, on_poll=progress)
    import torch
    xs = torch.load(out / "demo_wan21_latent.pt").float()
    xd = torch.load(out / "demo_wan21_latent_dense.pt").float()
    rel = float((xs - xd).norm() / xd.norm().clamp_min(1e-12))
    log(f"sampled latent vs dense reference: relative L2 difference {rel:.4f}")
    return out / "demo_wan21_latent_dense.pt"


def run_demo(srv: ComfyServer, a: argparse.Namespace, out: Path) -> None:
    """The graph (with the AdaCluster chain unless --dense), its outputs, the dense reference and
    the report, on a started server."""
    info = srv.object_info()
    patch, post, extra, n_tok = [], [], {}, None
    if not a.dense:
        patch, post, extra, n_tok = adacluster_chain(a, info)
    p = prompts.wan21_prompt(steps=a.steps, seed=a.seed, frames=a.frames, size=a.size,
                             save_name="demo_wan21_latent", patch_nodes=patch, post_nodes=post)
    for nid, (cls, inputs) in extra.items():
        p[nid] = {"class_type": cls, "inputs": inputs}
    (out / "demo_prompt_api.json").write_text(json.dumps(p, indent=1))
    log(f"running the graph: {a.frames} frames {a.size}x{a.size} ({n_tok if not a.dense else '?'} video tokens), "
        f"{a.steps} steps, CFG 2 ...")
    t1 = time.time()
    progress = progress_logger()
    entry = srv.run_prompt(p, timeout=a.timeout, on_poll=progress)
    log(f"sampling done in {time.time() - t1:.1f} s")
    stats = show_outputs(srv, entry, out)
    if stats and stats.get("kernels"):
        log("kernels that ran the sparse calls (from the Stats node): "
            + ", ".join(f"{k} {v}" for k, v in sorted(stats["kernels"].items())))
    elif not a.dense:
        log("no call ran sparse: see the Stats text above for the reasons")
    dense_lat = None if a.dense else dense_reference(srv, a, p, out, progress)
    lat = out / "demo_wan21_latent.pt"
    if lat.exists():
        save_report(stats, lat, dense_lat, out / "demo_report.png")
        log(f"report (heatmap, density per layer, sparse vs dense latent): {out / 'demo_report.png'}")
    summary = [ln for ln in srv.log_text().splitlines() if "AdaCluster:" in ln]
    if summary:
        log("run summary from the server log: " + summary[0].split("AdaCluster:", 1)[1].strip())


def main(argv=None) -> int:
    a = parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="adacluster_demo_"))
    t0 = time.time()
    log(f"generating a tiny random-weight Wan 2.1 T2V checkpoint ({a.layers} blocks) in {work}")
    models = make_all(work / "models", layers=a.layers, only=["wan21"])

    os.environ["ADACLUSTER_TEST_OUT"] = str(out)
    srv = ComfyServer(sys.executable, ROOT / ".comfyui", work / "base",
                      custom_nodes={"adacluster": ROOT, "adacluster_test_nodes": ROOT / "tests" / "comfy_test_nodes"},
                      env={"ADACLUSTER_TEST_OUT": str(out), "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", "1")})
    srv.prepare_base()
    srv.add_model(models["wan21"])
    log("starting ComfyUI 0.3.75 (CPU) with the AdaCluster pack ...")
    rc = 1
    try:
        start_server(srv)
        run_demo(srv, a, out)
        rc = 0
    except _PackImportFailed:
        rc = 3
    except (ComfyServerError, PromptError) as e:
        log(f"FAILED: {e}")
    except Exception as e:  # noqa: BLE001 - say where the log is whatever went wrong
        log(f"FAILED: {type(e).__name__}: {e}")
    finally:
        srv.stop()
        try:
            shutil.copy(srv.log_path, out / "comfyui.log")
        except OSError:
            pass
        shutil.rmtree(work, ignore_errors=True)
    log(f"{'done' if rc == 0 else 'FAILED (exit %d)' % rc} in {time.time() - t0:.1f} s; outputs in {out}:")
    if rc != 0:
        log(f"the ComfyUI server log: {out / 'comfyui.log'}")
    for f in sorted(out.iterdir()):
        print(f"    {f}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
