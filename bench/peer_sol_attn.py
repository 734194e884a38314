#!/usr/bin/env python3
"""Peer comparison on one GPU, one process: core ComfyUI's sparse attention kernel
`comfy_kitchen.sol_attn` (PyPI comfy-kitchen) vs AdaCluster (reuse step) vs cuDNN dense SDPA,
on the same structured inputs (bench.structured), time and output error side by side.

sol_attn is run at its defaults (tau=1.0), at tau=1.3, and with SLA-style top-k ratios; the
error is the relative L2 error vs fp32 dense attention on a random subset of query rows.
AdaCluster runs the reuse-step path (warm ClusterState) at several density budgets (max_density), so both
methods trace a speed/error curve.

usage: python bench/peer_sol_attn.py [--shape wan14b] [--md FILE]
(comfy_kitchen must be importable; its wheel is >64 MiB, so it travels to the device machine
repacked without its HIP backend.)
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from adacluster_core import AdaClusterConfig, ClusterState, sparse_attention  # noqa: E402
from bench.inputs import SHAPES, bench_ms as _bench, dense_cudnn, make_inputs, rel_err_rows  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="wan14b")
    ap.add_argument("--heads", type=int, default=0, help="use fewer heads than the model (memory/time)")
    ap.add_argument("--max-density", default="0.1,0.15,0.25,0.4")
    ap.add_argument("--md", default=None)
    ap.add_argument("--skip-sol", action="store_true", help="AdaCluster rows only")
    ap.add_argument("--pooled", default="preset", choices=["preset", "both"],
                    help="both: AdaCluster with pooled_tail off and on at every budget")
    ap.add_argument("--check", action="store_true",
                    help="first compare the triton and torch backends on a small input (pooled tail on)")
    args = ap.parse_args()
    dev = torch.device("cuda")
    H, N, D, text, grid, family = SHAPES[args.shape]
    q, k, v = make_inputs(args.shape, device=dev)
    src = "bench.structured"
    if args.heads:
        q, k, v = (x[:, : args.heads].contiguous() for x in (q, k, v))
        H = args.heads
    G = H
    rows = torch.randperm(N, device=dev)[:512]
    flat = lambda t: t.reshape(G, N, D)  # noqa: E731
    print(f"shape {args.shape}: B=1 H={H} N={N} D={D}, inputs: {src}", flush=True)

    results = []
    t_dense = _bench(lambda: dense_cudnn(q, k, v))
    o = dense_cudnn(q, k, v)
    e_dense = rel_err_rows(flat(o), flat(q), flat(k), flat(v), rows)
    results.append(("cuDNN SDPA (dense)", "-", t_dense, 1.0, e_dense))
    print(results[-1], flush=True)

    if args.check:
        small = [x[:, :2, :4096].contiguous() for x in (q, k, v)]
        ccfg = AdaClusterConfig.for_model(family, preset="balanced").replace(pooled_tail=True, min_tokens=0)
        ot, st_ = sparse_attention(*small, config=ccfg.replace(backend="triton"))
        orf, sr_ = sparse_attention(*small, config=ccfg.replace(backend="torch"))
        agree = float((ot.float() - orf.float()).norm() / orf.float().norm())
        print(f"CHECK pooled_tail triton vs torch at 2x4096x{D}: rel diff {agree:.2e} "
              f"(attention={st_.get('attention')}, reason={st_.get('reason')!r}) -> {'OK' if agree < 2e-2 else 'MISMATCH'}",
              flush=True)
    # --- sol_attn
    try:
        if args.skip_sol:
            raise RuntimeError("skipped (--skip-sol)")
        import comfy_kitchen as ck
        ok = ck.sol_attn_is_available(dev)
    except Exception as e:  # noqa: BLE001
        ok = False
        print("comfy_kitchen unavailable:", repr(e))
    if ok:
        qt, kt, vt = (x.transpose(1, 2).contiguous() for x in (q, k, v))  # (B, T, H, D)
        settings = [("default tau=1.0", dict()), ("tau=1.3", dict(tau=1.3)), ("tau=2.0", dict(tau=2.0)),
                    ("topk_ratio=0.30", dict(topk_ratio=0.30)), ("topk_ratio=0.15", dict(topk_ratio=0.15)),
                    ("topk_ratio=0.10", dict(topk_ratio=0.10))]
        for label, kw in settings:
            try:
                fn = lambda kw=kw: ck.sol_attn(qt, kt, vt, **kw)  # noqa: E731
                t = _bench(fn)
                out = fn().transpose(1, 2).contiguous()
                e = rel_err_rows(flat(out), flat(q), flat(k), flat(v), rows)
                results.append(("sol_attn", label, t, float("nan") if "topk" not in label else kw["topk_ratio"], e))
            except Exception as ex:  # noqa: BLE001
                results.append(("sol_attn", label + f" FAILED {ex!r}"[:80], float("nan"), float("nan"), float("nan")))
            print(results[-1], flush=True)
        del qt, kt, vt

    # --- AdaCluster reuse step
    base = AdaClusterConfig.for_model(family, preset="balanced")
    variants = [(md, pt) for md in [float(x) for x in args.max_density.split(",")]
                for pt in ((False, True) if args.pooled == "both" else (base.pooled_tail,))]
    for md, pt in variants:
        cfg = base.replace(max_density=md, pooled_tail=pt)
        st = ClusterState()
        out, stats = sparse_attention(q, k, v, config=cfg, state=st)          # first (cold) call
        out, stats = sparse_attention(q, k, v, config=cfg, state=st)          # reuse
        dens = float(stats["density"])
        t = _bench(lambda: sparse_attention(q, k, v, config=cfg, state=st))
        e = rel_err_rows(flat(out), flat(q), flat(k), flat(v), rows)
        results.append(("AdaCluster reuse", f"max_density={md}{' pooled' if pt else ''} top_k={cfg.top_k} (Ck={stats.get('k_clusters')})", t, dens, e))
        print(results[-1], flush=True)

    lines = [f"Structured inputs ({src}), {args.shape}: B=1, H={H}, N={N}, D={D}, bf16; error = rel. L2 vs "
             f"fp32 dense on 512 random query rows.", "",
             "| method | setting | ms | speedup vs cuDNN | density | rel L2 err |", "|---|---|---|---|---|---|"]
    for m, s, t, d, e in results:
        sp = t_dense / t if t == t else float("nan")
        ds = f"{d:.3f}" if d == d else "-"
        lines.append(f"| {m} | {s} | {t:.2f} | {sp:.2f}x | {ds} | {e:.4f} |")
    table = "\n".join(lines)
    print("\n" + table)
    if args.md:
        with open(args.md, "a") as f:
            f.write(table + "\n\n")


if __name__ == "__main__":
    main()
