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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness import prompts  # noqa: E402
from tests.harness.comfy_server import ComfyServer, ComfyServerError, PromptError  # noqa: E402
from tests.harness.make_tiny_dits import FILENAMES, make_all  # noqa: E402

SPARSE_NODE = "AdaClusterSparseAttention"
STATS_NODE = "AdaClusterStats"


def log(msg):
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def default_inputs(node_info: dict) -> dict:
    """Required widget inputs of a node at their defaults (sockets are wired by the caller)."""
    out = {}
    req = node_info.get("input", {}).get("required", {})
    for name, spec in req.items():
        t = spec[0]
        opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        if isinstance(t, list):
            out[name] = opts.get("default", t[0] if t else None)
        elif t == "COMBO":
            out[name] = opts.get("default", (opts.get("options") or [None])[0])
        elif t in ("INT", "FLOAT", "STRING", "BOOLEAN"):
            if "default" in opts:
                out[name] = opts["default"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "artifacts" / "demo"))
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dense", action="store_true", help="do not insert the AdaCluster nodes")
    ap.add_argument("--timeout", type=float, default=900)
    a = ap.parse_args(argv)

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="adacluster_demo_"))
    t0 = time.time()
    log(f"generating a tiny random-weight Wan 2.1 T2V checkpoint in {work}")
    models = make_all(work / "models", only=["wan21"])

    os.environ["ADACLUSTER_TEST_OUT"] = str(out)
    srv = ComfyServer(sys.executable, ROOT / ".comfyui", work / "base",
                      custom_nodes={"adacluster": ROOT, "adacluster_test_nodes": ROOT / "tests" / "comfy_test_nodes"},
                      env={"ADACLUSTER_TEST_OUT": str(out), "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", "1")})
    srv.prepare_base()
    srv.add_model(models["wan21"])
    log("starting ComfyUI 0.3.75 (CPU) with the AdaCluster pack ...")
    rc = 1
    try:
        srv.start()
        log(f"ComfyUI ready on {srv.url} in {srv.started_in_s:.1f} s")
        failures = srv.import_failures(["adacluster"], paths=[str(ROOT / "nodes") + "/", str(ROOT / "__init__.py")])
        if failures:
            log("ERROR: the AdaCluster pack failed to import (the graph still runs dense; exit code 3):\n"
                + "\n".join(failures[:3]))
        info = srv.object_info()
        patch, post = [], []
        if not a.dense and SPARSE_NODE in info:
            patch = [(SPARSE_NODE, default_inputs(info[SPARSE_NODE]))]
            log(f"graph: UNETLoader -> {SPARSE_NODE} -> KSampler")
            if STATS_NODE in info:
                req = info[STATS_NODE].get("input", {}).get("required", {})
                stats_inputs = default_inputs(info[STATS_NODE])
                lat = next((n for n, s in req.items() if s[0] == "LATENT"), None)
                model_in = next((n for n, s in req.items() if s[0] == "MODEL"), None)
                if lat:
                    stats_inputs["__latent_input__"] = lat
                    if model_in:
                        stats_inputs[model_in] = ["p1", 0]
                    post = [(STATS_NODE, stats_inputs)]
                    log(f"graph: KSampler -> {STATS_NODE}")
        else:
            log(f"graph: UNETLoader -> KSampler (dense: {'--dense' if a.dense else SPARSE_NODE + ' not available yet'})")
        p = prompts.wan21_prompt(steps=a.steps, seed=a.seed, frames=a.frames, size=a.size,
                                 save_name="demo_wan21_latent", patch_nodes=patch, post_nodes=post)
        (out / "demo_prompt_api.json").write_text(json.dumps(p, indent=1))
        log(f"running Wan 2.1 tiny graph: {a.frames} frames {a.size}x{a.size}, {a.steps} steps ...")
        t1 = time.time()
        last = [0.0]

        def progress(elapsed):
            if elapsed - last[0] >= 5:
                last[0] = elapsed
                log(f"  ... still sampling ({elapsed:.0f} s)")

        entry = srv.run_prompt(p, timeout=a.timeout, on_poll=progress)
        log(f"sampling done in {time.time() - t1:.1f} s")
        outputs = entry.get("outputs", {})
        (out / "demo_outputs.json").write_text(json.dumps(outputs, indent=1, default=str))
        for nid, o in outputs.items():
            for t in o.get("text", []):
                log(f"node {nid}: {str(t)[:400]}")
        rc = 3 if failures else 0
    except (ComfyServerError, PromptError) as e:
        log(f"FAILED: {e}")
    finally:
        srv.stop()
        try:
            shutil.copy(srv.log_path, out / "comfyui.log")
        except OSError:
            pass
        shutil.rmtree(work, ignore_errors=True)
    log(f"{'done' if rc == 0 else 'FAILED (exit %d)' % rc} in {time.time() - t0:.1f} s; outputs in {out}:")
    for f in sorted(out.iterdir()):
        print(f"    {f}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
