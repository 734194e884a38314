# Sourced by the one-call GPU scripts (bench/gpu_*.sh): repo root as the working folder, $OUT for the
# logs, compiled (not interpreted) Triton, and the wheels of the given folder (not committed; see the
# calling script) installed into /tmp/site when the folder exists.
#   source "$(dirname "$0")/gpu_env.sh" .gpu/whl
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
if [ -n "${1:-}" ] && [ -d "$1" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$1"/*.whl \
    && export PYTHONPATH=/tmp/site
fi
