"""Kernel launch configs on real reuse-call layouts (GPU).

    python bench/kernel_sweep.py [--shapes wan1.3b,wan14b,hunyuan,long] [--preset balanced]

Per shape: the reuse call's layout at the preset (warm state, as `bench/attn_speed.py` builds it),
the production kernel at its table config (and with pointer loads), then each (BLOCK_M, BLOCK_N,
warps, stages) config: ms (do_bench median), TFLOP/s on the computed pairs
(4·D FLOPs per pair), and the max abs difference to the production kernel's output (a variant
that differs by more than bf16 noise is marked BAD). cuDNN SDPA timed in the same process.

Configs are passed with `adacluster_core.kernels._common.launch_overrides` (a context manager; the
library itself reads no environment variable and takes no config argument at launch):
    with launch_overrides(varblock_attn=(64, 64, 4, 3), varblock_descriptors=False): ...
    with launch_overrides(kmeans_assign=(128, 64, 4, 2)): ...
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("ADACLUSTER_STRICT", "1")

import torch  # noqa: E402

from adacluster_core import ClusterState, sparse_attention  # noqa: E402
from adacluster_core.kernels._common import capability, launch_config, launch_overrides  # noqa: E402
from adacluster_core.kernels.varblock_attn import varblock_attention_triton  # noqa: E402
from bench.attn_speed import reuse_layout, variant_config  # noqa: E402
from bench.inputs import dense_range, SHAPES, bench_ms, dense_cudnn, env_header, make_inputs  # noqa: E402

CONFIGS = [(128, 64, 8, 3), (64, 64, 4, 3)]


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="wan1.3b,wan14b,hunyuan,long")
    ap.add_argument("--preset", default="balanced")
    ap.add_argument("--no-assign", action="store_true", help="skip the k-means assignment configs")
    a = ap.parse_args(argv)
    print(env_header(), flush=True)
    rows = []
    for name in a.shapes.split(","):
        H, N, D, text, _, model = SHAPES[name]
        q, k, v = make_inputs(name)
        t_dense = bench_ms(lambda: dense_cudnn(q, k, v))
        cfg = variant_config(model, a.preset)
        kw = dict(config=cfg, always_dense_range=dense_range(name)) if text else dict(config=cfg)
        st = ClusterState()
        for _ in range(3):
            sparse_attention(q, k, v, state=st, **kw)
        L = reuse_layout(q, k, v, cfg, st, name)
        pairs = float(L.pairs())
        ref = varblock_attention_triton(*L)
        base_cfg = launch_config("varblock_attn", D, q.dtype, capability(q.device), n_tokens=N)

        def with_overrides(fn, **ov):
            def run():
                with launch_overrides(**ov):
                    return fn()
            return run

        def row(label, fn):
            try:
                out = fn()
                diff = float((out.float() - ref.float()).abs().max())
                t = bench_ms(fn)
                tf = 4 * D * pairs / (t * 1e-3) / 1e12
                mark = "" if diff < 2e-2 else " BAD"
                rows.append((name, label, t, tf, diff, t_dense))
                print(f"[{name}] {label}: {t:.2f} ms {tf:.0f} TFLOP/s maxdiff {diff:.1e}{mark}", flush=True)
            except Exception as e:  # noqa: BLE001
                msg = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
                rows.append((name, label, float("nan"), float("nan"), float("nan"), t_dense))
                print(f"[{name}] {label}: FAILED {msg}", flush=True)

        print(f"[{name}] cuDNN {t_dense:.2f} ms ({4 * D * N * N * H / (t_dense * 1e-3) / 1e12:.0f} TFLOP/s); "
              f"density {pairs / (H * N * N):.3f}", flush=True)
        row(f"prod {base_cfg}", lambda: varblock_attention_triton(*L))
        row(f"prod {base_cfg} pointer loads",
            with_overrides(lambda: varblock_attention_triton(*L), varblock_descriptors=False))
        for c in CONFIGS:
            if c != tuple(base_cfg):
                row(f"cfg {c}", with_overrides(lambda: varblock_attention_triton(*L), varblock_attn=c))
        # k-means assignment (two per k-means iteration): keys vs Ck centroids, normalised queries vs Cq
        from adacluster_core.kernels import kmeans_assign as ka
        kc = st.k_centroids.reshape(H, -1, D).float()
        qc = st.q_centroids.reshape(H, -1, D).float()
        kv = k[:, :, :N - text] if text else k
        qv = q[:, :, :N - text] if text else q
        for ac in ([] if a.no_assign else [None, (128, 64, 4, 2), (256, 64, 8, 2), (64, 128, 4, 2)]):
            try:
                with launch_overrides(kmeans_assign=ac):  # None: the table's row
                    tk_ = bench_ms(lambda: ka.kmeans_assign(kv, kc))
                    tq_ = bench_ms(lambda: ka.kmeans_assign(qv, qc, normalize=True))
                shown = ac or launch_config("kmeans_assign", 128, q.dtype, capability(q.device))
                print(f"[{name}] assign {shown}: K vs {kc.shape[1]} {tk_:.3f} ms, "
                      f"Q vs {qc.shape[1]} {tq_:.3f} ms", flush=True)
            except Exception as e:  # noqa: BLE001
                print(f"[{name}] assign {ac}: FAILED {type(e).__name__}: {str(e)[:160]}", flush=True)
        del q, k, v, L, ref
        torch.cuda.empty_cache()
    print("\n| shape | kernel | ms | TFLOP/s on pairs | % cuDNN rate | max diff |\n|---|---|---|---|---|---|")
    for name, label, t, tf, diff, td in rows:
        H, N, D = SHAPES[name][:3]
        rate = 4 * D * N * N * H / (td * 1e-3) / 1e12
        print(f"| {name} | {label} | {t:.2f} | {tf:.0f} | {100 * tf / rate:.0f} % | {diff:.1e} |")


if __name__ == "__main__":
    main()
