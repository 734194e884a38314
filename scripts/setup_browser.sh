#!/usr/bin/env bash
# Browser-test prerequisites (only the `browser` pytest marker needs them), idempotent:
#   /usr/bin/chromium   Debian's Chromium (apt-get install -y chromium), used headless
#   playwright          the Python package in .venv (drives that Chromium; NO downloaded browser)
# Never fatal: when something cannot be installed (no root, no apt, offline) it says so and exits 0;
# tests/browser then fails with a message that names this script. Called by scripts/setup_env.sh.
# Env: ADACLUSTER_SKIP_BROWSER_SETUP=1 to skip, CHROMIUM (default /usr/bin/chromium).
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
# the venv chosen by ADACLUSTER_COMFYUI (scripts/comfy_select.sh): .venv by default
source "$ROOT/scripts/comfy_select.sh"
VENV=$ADACLUSTER_VENV
say() { echo "[setup_browser] $*"; }

if [ "${ADACLUSTER_SKIP_BROWSER_SETUP:-0}" = 1 ]; then
  say "ADACLUSTER_SKIP_BROWSER_SETUP=1: skipped"; exit 0
fi

if [ -x "$CHROMIUM" ]; then
  say "chromium present: $("$CHROMIUM" --version 2>/dev/null | head -1)"
elif command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" = 0 ] || { command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null && SUDO="sudo -n"; }
  if [ "$(id -u)" = 0 ] || [ -n "$SUDO" ]; then
    say "installing Debian chromium (apt-get install -y chromium) ..."
    if ! DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium >/tmp/adacluster_apt_chromium.log 2>&1; then
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get update -q >>/tmp/adacluster_apt_chromium.log 2>&1 || true
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium >>/tmp/adacluster_apt_chromium.log 2>&1 \
        || say "WARNING: apt-get install chromium failed (log: /tmp/adacluster_apt_chromium.log); browser tests will fail"
    fi
    [ -x "$CHROMIUM" ] && say "chromium installed: $("$CHROMIUM" --version 2>/dev/null | head -1)"
  else
    say "WARNING: $CHROMIUM missing and not root (run: sudo apt-get install -y chromium); browser tests will fail"
  fi
else
  say "WARNING: $CHROMIUM missing and no apt-get; install Chromium and set CHROMIUM=...; browser tests will fail"
fi

if [ -x "$VENV/bin/python" ]; then
  if "$VENV/bin/python" -c "import playwright" 2>/dev/null; then
    say "playwright present in $(basename "$VENV")"
  else
    say "installing playwright into $(basename "$VENV") (python package only; no browser download) ..."
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check playwright \
      || say "WARNING: pip install playwright failed; browser tests will fail"
  fi
else
  say "no .venv yet (run scripts/setup_env.sh first); playwright not installed"
fi
exit 0
