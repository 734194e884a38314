#!/usr/bin/env bash
# THE test command: builds/reuses .venv + .comfyui (scripts/setup_env.sh), then runs the whole
# suite, including the tests that start a real ComfyUI 0.3.75 server on the CPU.
#   bash scripts/test.sh                  # everything
#   bash scripts/test.sh -m "not server"  # extra args go to pytest
# Triton kernels run on the CPU through the Triton interpreter (TRITON_INTERPRET=1).
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
T0=$(date +%s)
bash scripts/setup_env.sh || { echo "[test] scripts/setup_env.sh failed" >&2; exit 2; }
# Chromium for the browser tests: setup_env.sh installs it on a fresh build, but an environment built
# by scripts/demo.sh (which needs no browser) has none yet. Idempotent, never fatal.
bash scripts/setup_browser.sh || true
export TRITON_INTERPRET=1
export PYTHONDONTWRITEBYTECODE=1
echo "[test] pytest (TRITON_INTERPRET=1) ..."
.venv/bin/python -m pytest -q -rsfE tests/ "$@"
RC=$?
echo "[test] exit code $RC after $(( $(date +%s) - T0 )) s"
exit $RC
