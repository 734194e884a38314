# Sourced by scripts/setup_env.sh, scripts/test.sh and .ci/run: which ComfyUI the tests run against.
#   ADACLUSTER_COMFYUI unset / "" / "0.3.75"  -> .comfyui  + .venv          (0.3.75 from the registry)
#   ADACLUSTER_COMFYUI=upstream               -> .comfyui-upstream + .venv-upstream, unpacked from the
#                                                snapshot in $ADACLUSTER_SHARED_DIR/comfyui-upstream/
#                                                (default: ../shared beside the clone, as in CI)
#   ADACLUSTER_COMFYUI=/path/to/ComfyUI       -> that checkout, used in place, + .venv-comfy-<hash>
# Sets: ADACLUSTER_COMFY_KIND (default|upstream|path), ADACLUSTER_COMFY_DIR, ADACLUSTER_VENV,
# ADACLUSTER_UPSTREAM_TARBALL (upstream only; empty when the snapshot is absent).
# Needs ROOT (the clone). Exports the two dirs so pytest (tests/harness/comfy_select.py) agrees.
adacluster_shared_dir() {
  local d=${ADACLUSTER_SHARED_DIR:-$ROOT/../shared}
  (cd "$d" 2>/dev/null && pwd) || echo "$d"
}
adacluster_upstream_tarball() {  # newest snapshot tarball, or nothing
  { ls -1 "$(adacluster_shared_dir)"/comfyui-upstream/ComfyUI-*.tar.gz 2>/dev/null || true; } | sort | tail -1
}
case "${ADACLUSTER_COMFYUI:-}" in
  ""|default|0.3.75)
    ADACLUSTER_COMFY_KIND=default
    ADACLUSTER_COMFY_DIR=$ROOT/.comfyui
    ADACLUSTER_VENV=$ROOT/.venv ;;
  upstream)
    ADACLUSTER_COMFY_KIND=upstream
    ADACLUSTER_COMFY_DIR=$ROOT/.comfyui-upstream
    ADACLUSTER_VENV=$ROOT/.venv-upstream
    ADACLUSTER_UPSTREAM_TARBALL=$(adacluster_upstream_tarball) ;;
  *)
    ADACLUSTER_COMFY_KIND=path
    ADACLUSTER_COMFY_DIR=$(cd "$ADACLUSTER_COMFYUI" 2>/dev/null && pwd || echo "$ADACLUSTER_COMFYUI")
    ADACLUSTER_VENV=$ROOT/.venv-comfy-$(printf %s "$ADACLUSTER_COMFY_DIR" | sha256sum | cut -c1-10) ;;
esac
export ADACLUSTER_COMFY_KIND ADACLUSTER_COMFY_DIR ADACLUSTER_VENV
