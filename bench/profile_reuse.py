"""Where the reuse call spends its time: torch.profiler over warm sparse_attention calls.

    python bench/profile_reuse.py [--shapes wan1.3b,wan14b] [--presets balanced,fast]

Prints, per (shape, preset), the reuse-call time, cuDNN's time in the same process, and the
top CUDA kernels of the reuse call (profiler key averages, self CUDA time per call).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from adacluster_core import AdaClusterConfig, ClusterState, sparse_attention  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="wan1.3b,wan14b")
    ap.add_argument("--presets", default="balanced,fast")
    ap.add_argument("--rows", type=int, default=22)
    ap.add_argument("--stack", action="store_true", help="group by the calling Python lines (which op is where)")
    a = ap.parse_args(argv)
    from bench.inputs import SHAPES, bench_ms, dense_cudnn, make_inputs
    for name in a.shapes.split(","):
        H, N, D, text, grid, model = SHAPES[name]
        q, k, v = make_inputs(name)
        t_dense = bench_ms(lambda: dense_cudnn(q, k, v))
        for preset in a.presets.split(","):
            cfg = AdaClusterConfig.for_model(model, preset)
            kw = dict(config=cfg, always_dense_range=(N - text, N)) if text else dict(config=cfg)
            st = ClusterState()
            for _ in range(4):
                out, stats = sparse_attention(q, k, v, state=st, **kw)
            torch.cuda.synchronize()
            t = bench_ms(lambda: sparse_attention(q, k, v, state=st, **kw))
            d = float(stats["density"])
            print(f"== {name} {preset}: reuse {t:.2f} ms, cuDNN {t_dense:.2f} ms, speedup {t_dense / t:.2f}x, "
                  f"density {d:.3f}, ideal ratio {t / (d * t_dense):.2f}, Ck {stats['k_clusters']} stage {stats['stage']}",
                  flush=True)
            from torch.profiler import ProfilerActivity, profile
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], with_stack=a.stack) as prof:
                for _ in range(5):
                    sparse_attention(q, k, v, state=st, **kw)
                torch.cuda.synchronize()
            avg = prof.key_averages(group_by_stack_n=4) if a.stack else prof.key_averages()
            print(avg.table(sort_by="self_cuda_time_total", row_limit=a.rows, max_name_column_width=60,
                            max_src_column_width=90), flush=True)
            del st, out
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
