#!/usr/bin/env bash
# One GPU call for issue 27 (docs/KERNEL_NOTES.md "fp8", docs/BENCHMARKS.md): the 8-bit kernels vs their
# torch emulation, the fp8 steps one by one on the same layouts, then the peers' speed / error plane.
#   bash bench/gpu_fp8.sh [steps] [peers]      (default: both; logs and peers.json under $OUT or ./gpu_out)
# Needs, beside the repo (not committed), for the peers: .gpu/peer/ = the comfy_kitchen wheel for the
# device's Python repacked without its HIP backend, and PyPI's sageattention 1.0.6 wheel.
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh" .gpu/peer
what=${*:-steps peers}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
for w in $what; do
  case $w in
    steps)
      python3 bench/fp8_steps.py --check --shapes ${FP8_SHAPES:-wan14b,h3_15s} --steps ${FP8_STEPS:-fp8-qk,fp8,fp8-kgroup,fp8-nosmooth,fp8-gather,fp8-bn128,fp8-w4,int8qk-fp8pv} \
        2>&1 | tee "$OUT/fp8_steps.log" ;;
    peers)
      python3 bench/peer_attn.py --shapes ${PEER_SHAPES:-wan14b,h3_15s} --densities ${PEER_DENSITIES:-0.07,0.1,0.15,0.25} \
        --json "$OUT/peers.json" 2>&1 | tee "$OUT/peers.log" ;;
  esac
done
