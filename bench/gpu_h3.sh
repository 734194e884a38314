#!/usr/bin/env bash
# One GPU call for the MiniMax-H3 numbers (docs/BENCHMARKS.md): kernel check, the attention call at the
# H3 shapes (+ Wan-14B as the reference row) for the presets and a top_k sweep, then whole H3 steps and
# 8-step generations through ComfyUI 0.33's model code. Logs under $OUT (or ./gpu_out).
#   bash bench/gpu_h3.sh [attn] [mem] [e2e]          (default: all three)
# Needs, beside the repo (not committed): .gpu/comfy33/ = ComfyUI >= 0.33 source (comfy/, comfy_api/,
# utils/, top-level *.py) and .gpu/whl/ = comfy-aimdo and comfy-kitchen wheels for the device's Python.
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh" .gpu/whl
what=${*:-attn mem e2e}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
for w in $what; do
  case $w in
    attn)
      python3 bench/attn_speed.py --check --shapes ${ATTN_SHAPES:-h3_5s,h3_15s,wan14b} \
        --variants ${H3_VARIANTS:-balanced,balanced@indexed,fast,quality} \
        2>&1 | tee "$OUT/attn_h3.log" ;;
    mem)
      python3 bench/memory.py --variants ${MEM_VARIANTS:-balanced} --kv indexed,copied,legacy --out "$OUT" \
        2>&1 | tee "$OUT/memory_stdout.log" ;;
    e2e)
      python3 bench/e2e_h3.py --comfy .gpu/comfy33 --clips ${H3_CLIPS:-5s,15s} --layers ${H3_LAYERS:-10} \
        --preset ${H3_PRESET:-balanced} 2>&1 | tee "$OUT/e2e_h3.log" ;;
  esac
done
