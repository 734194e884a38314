#!/usr/bin/env bash
# THE test command: builds/reuses the test environment (scripts/setup_env.sh), then runs the whole
# suite, including the tests that start a real ComfyUI server on the CPU.
#   bash scripts/test.sh                  # everything, against ComfyUI 0.3.75 (.venv + .comfyui)
#   bash scripts/test.sh -m "not server"  # extra args go to pytest
#   ADACLUSTER_COMFYUI=upstream bash scripts/test.sh   # against the newest ComfyUI snapshot (0.33.0) in
#       ../shared/comfyui-upstream/ (.venv-upstream + .comfyui-upstream; ADACLUSTER_SHARED_DIR
#       overrides ../shared); ADACLUSTER_COMFYUI=/path/to/ComfyUI for any other checkout
# Triton kernels run on the CPU through the Triton interpreter (TRITON_INTERPRET=1).
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
T0=$(date +%s)
source scripts/comfy_select.sh
bash scripts/setup_env.sh || { echo "[test] scripts/setup_env.sh failed" >&2; exit 2; }
# Chromium for the browser tests: setup_env.sh installs it on a fresh build, but an environment built
# by scripts/demo.sh (which needs no browser) has none yet. Idempotent, never fatal.
bash scripts/setup_browser.sh || true
export TRITON_INTERPRET=1
export PYTHONDONTWRITEBYTECODE=1
echo "[test] pytest (TRITON_INTERPRET=1) against ComfyUI $ADACLUSTER_COMFY_KIND at $ADACLUSTER_COMFY_DIR ..."
"$ADACLUSTER_VENV/bin/python" -m pytest -q -rsfE tests/ "$@"
RC=$?
echo "[test] exit code $RC after $(( $(date +%s) - T0 )) s"
exit $RC
