"""Peers side by side (GPU, one process, same card and inputs): the speed / error plane of issue 27.

    python bench/peer_attn.py [--shapes wan14b,h3_15s] [--densities 0.05,0.07,0.1,0.15,0.25]
                              [--taus 0.5,0.7,1.0,1.3] [--json FILE]

Rows per shape: cuDNN SDPA bf16 (the baseline), comfy_kitchen's dense `int8_attention`, comfy_kitchen's
`sol_attn` (sparse, int8) at several tau (1.0 is its default), SageAttention (PyPI `sageattention`,
Triton int8 QK), and AdaCluster's reuse call (warm ClusterState, the public `sparse_attention`) over
max_density (bf16; the fp8 curve of docs/img/speed_error_plane_h100.png was measured at commit
013776e, when the stopped fp8 experiment of issue 27 was still behind a `precision` setting). Error: rel. L2 vs fp32 dense on 512 random query rows. A peer that is not
importable is a row saying so. `--json` writes the points for `bench/plot_plane.py`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("ADACLUSTER_STRICT", "1")
os.environ.setdefault("TRITON_INTERPRET", "0")

import torch  # noqa: E402

from adacluster_core import AdaClusterConfig, ClusterState, sparse_attention  # noqa: E402
from bench.inputs import SHAPES, bench_ms, dense_cudnn, dense_range, env_header, make_inputs, rel_err_rows  # noqa: E402


def _point(shape, method, setting, ms, t_dense, err, density=float("nan")):
    return dict(shape=shape, method=method, setting=setting, ms=ms, speedup=t_dense / ms if ms == ms else float("nan"),
                err=err, density=density)


def _measure(fn, to_bhnd, q, k, v, rows):
    t = bench_ms(fn)
    out = to_bhnd(fn())
    return t, rel_err_rows(out[0], q[0], k[0], v[0], rows)


def kitchen_points(name, q, k, v, rows, t_dense, taus, log):
    try:
        import comfy_kitchen as ck
        if not ck.sol_attn_is_available(q.device):
            raise RuntimeError("sol_attn not available on this device")
    except Exception as exc:  # noqa: BLE001
        log(f"[{name}] comfy_kitchen unavailable: {exc!r}")
        return []
    pts = []
    try:
        t, e = _measure(lambda: ck.int8_attention(q, k, v), lambda o: o, q, k, v, rows)
        pts.append(_point(name, "comfy_kitchen int8_attention (dense)", "-", t, t_dense, e))
    except Exception as exc:  # noqa: BLE001
        log(f"[{name}] int8_attention failed: {exc!r}"[:300])
    qt, kt, vt = (x.transpose(1, 2).contiguous() for x in (q, k, v))  # (B, T, H, D)
    dr = dense_range(name)
    kw = {}
    if dr is not None and dr[0] == 0:  # a prefix of conditioning rows: sol_attn's sinks
        nb = math.ceil(dr[1] / 64)
        kw = dict(sink_blocks=[0, nb], sink_q=[0, nb])
    for tau in taus:
        try:
            t, e = _measure(lambda tau=tau: ck.sol_attn(qt, kt, vt, tau=tau, **kw), lambda o: o.transpose(1, 2),
                            q, k, v, rows)
            pts.append(_point(name, "comfy_kitchen sol_attn (int8)", f"tau={tau}", t, t_dense, e))
        except Exception as exc:  # noqa: BLE001
            log(f"[{name}] sol_attn tau={tau} failed: {exc!r}"[:300])
    return pts


def sage_points(name, q, k, v, rows, t_dense, log):
    try:
        from sageattention import sageattn
    except Exception as exc:  # noqa: BLE001
        log(f"[{name}] sageattention unavailable: {exc!r}")
        return []
    try:
        t, e = _measure(lambda: sageattn(q, k, v, tensor_layout="HND", is_causal=False), lambda o: o, q, k, v, rows)
        return [_point(name, "SageAttention (PyPI, int8 QK)", "-", t, t_dense, e)]
    except Exception as exc:  # noqa: BLE001
        log(f"[{name}] sageattn failed: {exc!r}"[:300])
        return []


def ours_points(name, q, k, v, rows, t_dense, densities, log):
    H, N, D, text, _, model = SHAPES[name]
    pts = []
    for md in densities:
        cfg = AdaClusterConfig.for_model(model, "balanced").replace(max_density=md)
        kw = dict(config=cfg, always_dense_range=dense_range(name)) if text else dict(config=cfg)
        st = ClusterState()
        try:
            sparse_attention(q, k, v, state=st, **kw)
            out, stats = sparse_attention(q, k, v, state=st, **kw)
            t = bench_ms(lambda: sparse_attention(q, k, v, state=st, **kw))
        except Exception as exc:  # noqa: BLE001 - a row, not a crash
            log(f"[{name}] AdaCluster max_density={md} FAILED {type(exc).__name__}: {str(exc)[:300]}")
            continue
        e = rel_err_rows(out[0], q[0], k[0], v[0], rows)
        pts.append(_point(name, "AdaCluster bf16", f"max_density={md}", t, t_dense, e, float(stats["density"])))
        log(f"[{name}] AdaCluster max_density={md}: {t:.2f} ms {t_dense / t:.2f}x err {e:.4f} "
            f"density {float(stats['density']):.3f}")
    return pts


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="wan14b,h3_15s")
    ap.add_argument("--densities", default="0.05,0.07,0.1,0.15,0.25")
    ap.add_argument("--taus", default="0.5,0.7,1.0,1.3")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)

    def log(s):
        print(s, flush=True)

    log(env_header())
    pts = []
    for name in a.shapes.split(","):
        q, k, v = make_inputs(name)
        rows = torch.randperm(q.shape[2], device=q.device)[:512]
        t_dense, e_dense = _measure(lambda: dense_cudnn(q, k, v), lambda o: o, q, k, v, rows)
        pts.append(_point(name, "cuDNN SDPA bf16 (dense)", "-", t_dense, t_dense, e_dense))
        pts += kitchen_points(name, q, k, v, rows, t_dense, [float(x) for x in a.taus.split(",")], log)
        pts += sage_points(name, q, k, v, rows, t_dense, log)
        pts += ours_points(name, q, k, v, rows, t_dense, [float(x) for x in a.densities.split(",")],
                           log)
        del q, k, v
        torch.cuda.empty_cache()
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(header=env_header(), points=pts), f, indent=1)
    log("")
    log("| shape | method | setting | ms | x cuDNN bf16 | rel err | density |")
    log("|---|---|---|---|---|---|---|")
    for p in pts:
        d = f"{p['density']:.3f}" if p["density"] == p["density"] else "-"
        log(f"| {p['shape']} | {p['method']} | {p['setting']} | {p['ms']:.2f} | {p['speedup']:.2f} | {p['err']:.4f} | {d} |")


if __name__ == "__main__":
    main()
