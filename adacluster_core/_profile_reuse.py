"""Profile one reuse-step `sparse_attention` call (dev tool, not part of the API).

    python -m adacluster_core._profile_reuse [--shape wan14b] [--max-density X] [--top-k K]
Prints: reuse-call ms, attention-kernel ms on the captured layout, overhead, density, and the
torch.profiler table (self CUDA time) of one reuse call.
"""
from __future__ import annotations

import argparse

import torch


def main(argv=None):
    from . import AdaClusterConfig, ClusterState, api, sparse_attention
    from .bench import SHAPES, _bench, make_inputs
    from .kernels.varblock_attn import varblock_attention

    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="wan14b")
    ap.add_argument("--max-density", type=float, default=None)
    ap.add_argument("--top-k", type=int, default=None)
    ap.add_argument("--rows", type=int, default=40)
    a = ap.parse_args(argv)
    H, N, D, text, grid, model = SHAPES[a.shape]
    q, k, v, _ = make_inputs(a.shape)
    cfg = AdaClusterConfig.for_model(model)
    over = {}
    if a.max_density is not None and "max_density" in {f for f in cfg.to_dict()}:
        over["max_density"] = a.max_density
    if a.top_k is not None:
        over["top_k"] = a.top_k
    cfg = cfg.replace(**over)
    kw = dict(config=cfg, always_dense_range=(N - text, N)) if text else dict(config=cfg)
    st = ClusterState()
    for _ in range(3):
        out, stats = sparse_attention(q, k, v, state=st, **kw)
    cap = {}
    orig = api._attention_kernel

    def capturing(backend):
        fn, nm = orig(backend)

        def wrap(*x):
            cap["a"] = x
            return fn(*x)
        return wrap, nm

    api._attention_kernel = capturing
    try:
        out, stats = sparse_attention(q, k, v, state=st, **kw)
    finally:
        api._attention_kernel = orig
    t_reuse = _bench(lambda: sparse_attention(q, k, v, state=st, **kw), warmup=5, rep=30)
    t_attn = _bench(lambda: varblock_attention(*cap["a"]), warmup=5, rep=30)
    del cap["a"]
    dens = float(stats["density"])
    print(f"[{a.shape}] cfg top_k={cfg.top_k} {over} stage={stats['stage']} Ck={stats['k_clusters']} "
          f"density={dens:.3f} reuse={t_reuse:.2f} ms attn={t_attn:.2f} ms overhead={t_reuse - t_attn:.2f} ms "
          f"({100 * (t_reuse - t_attn) / t_reuse:.0f}%)")
    from torch.profiler import ProfilerActivity, profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        sparse_attention(q, k, v, state=st, **kw)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=a.rows, max_name_column_width=60))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
