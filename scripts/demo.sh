#!/usr/bin/env bash
# THE demo command: builds/reuses .venv + .comfyui, starts a real ComfyUI with this pack, runs a
# tiny Wan 2.1 text-to-video graph through it on the CPU and writes results to artifacts/demo/.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash scripts/setup_env.sh || { echo "[demo] scripts/setup_env.sh failed" >&2; exit 2; }
export TRITON_INTERPRET=1
exec .venv/bin/python scripts/demo.py "$@"
