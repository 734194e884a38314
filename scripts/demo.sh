#!/usr/bin/env bash
# THE demo command: builds/reuses .venv + .comfyui, starts a real ComfyUI with this pack, runs a
# tiny Wan 2.1 text-to-video graph through it on the CPU and writes results to artifacts/demo/.
# The sparse calls run the pack's Triton kernels through the Triton interpreter (TRITON_INTERPRET=1;
# `--backend torch` uses the pure-torch reference instead). Chromium is not needed (only the browser
# tests use it), so the browser setup is skipped here.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
ADACLUSTER_SKIP_BROWSER_SETUP=1 bash scripts/setup_env.sh || { echo "[demo] scripts/setup_env.sh failed" >&2; exit 2; }
export TRITON_INTERPRET=1
exec .venv/bin/python scripts/demo.py "$@"
