#!/usr/bin/env bash
# The second test environment: a ComfyUI other than 0.3.75, chosen by ADACLUSTER_COMFYUI
# (scripts/comfy_select.sh), built beside .venv/.comfyui the way scripts/setup_env.sh builds those:
#   upstream  .comfyui-upstream/ unpacked (unmodified) from ../shared/comfyui-upstream/ComfyUI-*.tar.gz
#             (override the shared folder with ADACLUSTER_SHARED_DIR) + .venv-upstream/
#   <path>    that ComfyUI checkout, used in place + .venv-comfy-<hash>/
# The venv: torch 2.13.0 CPU + torchvision (--no-deps, same import shim as .venv) + torchaudio (see
# below) + the ComfyUI's own requirements.txt minus torch* + the pack's requirements and test tools.
# A separate venv, not .venv plus extras: 0.26.0 pins another comfyui-frontend-package (1.45.19 vs
# 1.32.9), workflow-templates and embedded-docs than 0.3.75, and the frontend is what the browser
# tests test. Stamp-hashed: a second run returns at once. ADACLUSTER_FORCE_SETUP=1 redoes it.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/comfy_select.sh
source scripts/comfy_select.sh
PY=${PYTHON:-python3}
VENV=$ADACLUSTER_VENV
COMFY=$ADACLUSTER_COMFY_DIR
STAMP="$VENV/.adacluster_setup_stamp"
T_START=$(date +%s)
say() { echo "[setup_env:$ADACLUSTER_COMFY_KIND] $*"; }

case "$ADACLUSTER_COMFY_KIND" in
  upstream)
    SRC=${ADACLUSTER_UPSTREAM_TARBALL:-}
    if [ -z "$SRC" ]; then
      echo "[setup_env] ADACLUSTER_COMFYUI=upstream but no ComfyUI snapshot at" \
           "$(adacluster_shared_dir)/comfyui-upstream/ComfyUI-*.tar.gz (set ADACLUSTER_SHARED_DIR)" >&2
      exit 3
    fi
    SRC_ID=$(sha256sum "$SRC" | cut -d' ' -f1) ;;
  path)
    if [ ! -f "$COMFY/main.py" ]; then
      echo "[setup_env] ADACLUSTER_COMFYUI=$ADACLUSTER_COMFYUI: no ComfyUI (main.py) there" >&2
      exit 3
    fi
    SRC_ID=$(cat "$COMFY/requirements.txt" 2>/dev/null | sha256sum | cut -d' ' -f1) ;;
  *) echo "[setup_env] setup_env_upstream.sh is for ADACLUSTER_COMFYUI=upstream|<path>" >&2; exit 3 ;;
esac

want_stamp() {
  { cat scripts/setup_env_upstream.sh scripts/comfy_select.sh scripts/sitecustomize_torchvision_shim.py \
        requirements.txt requirements-test.txt; echo "$SRC_ID $COMFY"; } | sha256sum | cut -d' ' -f1
}
WANT=$(want_stamp)
if [ "${ADACLUSTER_FORCE_SETUP:-0}" != 1 ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] \
   && [ -x "$VENV/bin/python" ] && [ -f "$COMFY/main.py" ]; then
  say "environment up to date ($(basename "$VENV"), $COMFY); skipping (ADACLUSTER_FORCE_SETUP=1 to redo)"
  exit 0
fi

step() {
  local label=$1; shift
  local s; s=$(date +%s)
  say "$label ..."
  "$@"
  say "  done in $(( $(date +%s) - s )) s"
}
quiet_pip() {
  "$VENV/bin/python" -m pip "$@" -q --disable-pip-version-check 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
PIP=(quiet_pip install)

if [ ! -x "$VENV/bin/python" ]; then
  step "create venv $(basename "$VENV") with $($PY --version 2>&1)" "$PY" -m venv "$VENV"
fi
rm -f "$STAMP"

if [ "$ADACLUSTER_COMFY_KIND" = upstream ]; then
  unpack() {
    local tmp="$COMFY.tmp"
    rm -rf "$tmp" "$COMFY"
    mkdir -p "$tmp"
    tar xzf "$SRC" -C "$tmp"
    [ -f "$tmp/ComfyUI/main.py" ] || { echo "[setup_env] no ComfyUI/main.py in $SRC" >&2; return 1; }
    mv "$tmp/ComfyUI" "$COMFY"
    rm -rf "$tmp"
  }
  step "unpack $(basename "$SRC") into $(basename "$COMFY")/" unpack
fi

step "torch 2.13.0 (CPU)" "${PIP[@]}" torch==2.13.0
step "torchvision 0.28.0 (--no-deps)" "${PIP[@]}" --no-deps torchvision==0.28.0
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cp scripts/sitecustomize_torchvision_shim.py "$SITE/sitecustomize.py"
# torchaudio: 0.26.0 imports it unguarded (comfy/sd.py -> lightricks audio VAE). The registry's
# builds are CUDA builds whose native library cannot load next to CPU torch; without the native
# library torchaudio imports as pure Python (resample/MelSpectrogram are torch code), which is all
# ComfyUI's import needs. --no-deps keeps it from pulling a second torch.
strip_torchaudio_native() {
  "${PIP[@]}" --no-deps torchaudio
  local ta; ta=$("$VENV/bin/python" -c 'import importlib.util,os;print(os.path.dirname(importlib.util.find_spec("torchaudio").origin))')
  find "$ta" -name '*.so' -delete
  "$VENV/bin/python" -c 'import torchaudio, torchaudio.functional, torchaudio.transforms'
}
step "torchaudio (--no-deps, pure Python)" strip_torchaudio_native

# The ComfyUI's requirements minus torch* (installed above) and the optional OpenGL extras.
grep -v -E '^\s*(torch|torchvision|torchaudio|PyOpenGL.*|comfy-angle.*)\s*$' "$COMFY/requirements.txt" \
  > "$VENV/comfy_requirements_no_torch.txt"
step "ComfyUI requirements (+ requests)" "${PIP[@]}" -r "$VENV/comfy_requirements_no_torch.txt" requests
step "pack requirements.txt" "${PIP[@]}" -r requirements.txt
step "requirements-test.txt" "${PIP[@]}" -r requirements-test.txt

"$VENV/bin/python" - <<'PY'
import torch, torchvision, triton, comfyui_frontend_package as f
print(f"[setup_env] torch {torch.__version__}, torchvision {torchvision.__version__}, triton {triton.__version__}, "
      f"frontend {getattr(f, '__version__', '?')}")
PY
echo "$WANT" > "$STAMP"
say "ready in $(( $(date +%s) - T_START )) s: venv $VENV, ComfyUI $COMFY"
