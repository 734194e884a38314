#!/usr/bin/env python3
"""Issue-7 fidelity goal at one operating point: output error at ~15 % density on the structured
inputs (make_structured_qkv, grid (8, 24, 24) = 4608 tokens, H=2, D=128, bf16), for block top-k
(64-token raster blocks), AdaCluster without the pooled tail (max_density 0.15) and AdaCluster with
it (max_density 0.10: its Ck/N virtual keys bring the counted density to ~0.15). CPU, ~10 s.

usage: python bench/fidelity_equal_density.py [--seeds 0,1] [--grid 8,24,24]
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from adacluster_core import AdaClusterConfig, sparse_attention  # noqa: E402
from bench.baselines import block_topk_attention, relative_l2  # noqa: E402
from adacluster_core.reference import dense_attention_ref  # noqa: E402
from bench.structured import make_structured_qkv  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--grid", default="8,24,24")
    a = ap.parse_args()
    grid = tuple(int(x) for x in a.grid.split(","))
    print("| seed | method | density | rel. L2 error | ratio to block top-k |\n|---|---|---|---|---|")
    for seed in (int(s) for s in a.seeds.split(",")):
        q, k, v, _ = make_structured_qkv(B=1, H=2, grid=grid, D=128, seed=seed)
        ref = dense_attention_ref(q.float(), k.float(), v.float())
        nb = -(-q.shape[2] // 64)
        out, st = block_topk_attention(q, k, v, max(1, round(0.15 * nb)))
        base = relative_l2(out, ref)
        print(f"| {seed} | block top-k (15 % of blocks) | {float(st['density']):.3f} | {base:.4f} | 1 |")
        for label, md, pooled in (("AdaCluster, max_density 0.15", 0.15, False),
                                  ("AdaCluster + pooled tail, max_density 0.10", 0.10, True)):
            cfg = AdaClusterConfig.for_model("wan").replace(max_density=md, pooled_tail=pooled, min_tokens=0,
                                                            backend="torch")
            out, st = sparse_attention(q, k, v, config=cfg)
            e = relative_l2(out, ref)
            print(f"| {seed} | {label} (Ck {st['k_clusters']}) | {float(st['density']):.3f} | {e:.4f} | {e / base:.2f} |")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
