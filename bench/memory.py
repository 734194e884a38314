"""Peak GPU memory (and time) one attention call adds: cuDNN SDPA vs every preset, inputs in ComfyUI's order.

    python bench/memory.py [--shapes wan1.3b,wan14b,hunyuan,h3_5s,h3_15s] [--variants balanced,fast,quality]
                           [--kv indexed,copied,legacy] [--no-time] [--out DIR] [--core DIR]

Per shape, q, k, v are allocated first, B=1, in the memory order ComfyUI hands them to the attention override:
  wan*     [B, L, H*D] tensors (the override views them as [B, H, L, D]: not contiguous),
  hunyuan  [B, H, L, D] contiguous (ComfyUI concatenates image and text tokens; text last),
  h3_*     [B, H, L, D] views of one [B, L, 3, H, D] projection (not even dense; a 900-row non-video prefix
           first, the always-dense range (0, 900)), 56 heads x 128.
Then, per call, `torch.cuda.reset_peak_memory_stats()` and `max_memory_allocated() - memory_allocated()` before
the call = the peak the call adds (its output included):
  sdpa      cuDNN SDPA alone on the [B, H, L, D] views (the issue's baseline),
  dense     ComfyUI's dense call: cuDNN SDPA, then the output reshaped to [B, L, H*D] (what the pack replaces),
  <preset>/<kv>  the pack's call as nodes/patcher.py makes it: a fresh [B, L, H*D] output, sparse_attention(...,
            out=its [B, H, L, D] view); kv = "indexed" (K / V rows gathered in the kernel; the default) or
            "copied" (permuted K / V copies, TMA loads); "legacy" emulates the code before issue 26 (a
            contiguous copy of q, permuted K / V copies, a new output, then the [B, L, H*D] reshape copy).
            Three calls per preset on one ClusterState: calibration (multi-stage key clustering, output dense),
            first sparse, reuse; the table shows the calibration and the reuse peaks, and the reuse call's
            median time (triton.testing.do_bench) next to cuDNN's, same process.
The guard's computed need (adacluster_core.memory.config_call_bytes) is printed beside each measured peak: it
must stay >= the measurement (else the guard would let an out-of-memory through).
--core DIR: import adacluster_core from DIR first (e.g. an older checkout: calls without out= then run as the
old patcher did). Logs: --out DIR (default $OUT when set) gets memory.log and memory.md.
"""
from __future__ import annotations

import argparse
import inspect
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _early_core_path(argv):
    for i, a in enumerate(argv):
        if a == "--core" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--core="):
            return a.split("=", 1)[1]
    return None


_CORE = _early_core_path(sys.argv[1:])
sys.path.insert(0, ROOT)
if _CORE:
    sys.path.insert(0, os.path.abspath(_CORE))
os.environ.setdefault("ADACLUSTER_STRICT", "1")   # a failing sparse path must fail the benchmark
os.environ.setdefault("TRITON_INTERPRET", "0")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from adacluster_core import AdaClusterConfig, ClusterState, sparse_attention  # noqa: E402
from adacluster_core import layout as lay  # noqa: E402

MiB = float(1 << 20)
HAS_OUT = "out" in inspect.signature(sparse_attention).parameters

# name -> (heads, (t, h, w) video grid, D, non-video rows, where they sit, ComfyUI memory order, config model)
SHAPES = {
    "wan1.3b": (12, (21, 30, 52), 128, 0, None, "wan", "wan"),             # 480p, 81 frames: 32,760 rows
    "wan14b": (40, (21, 45, 80), 128, 0, None, "wan", "wan"),              # 720p, 81 frames: 75,600 rows
    "hunyuan": (24, (33, 45, 80), 128, 256, "end", "bhld", "hunyuan"),    # 720p, 129 frames: 118,800 + 256
    "h3_5s": (56, (32, 24, 42), 128, 900, "start", "qkv", "hunyuan"),    # 32,256 video rows + 900 prefix
    "h3_15s": (56, (91, 24, 42), 128, 900, "start", "qkv", "hunyuan"),   # 91,728 video rows + 900 prefix
    # CPU smoke test of this script (TRITON_INTERPRET=1, no CUDA: peaks read 0): --shapes tiny_wan,tiny_h3
    "tiny_wan": (2, (2, 6, 8), 64, 0, None, "wan", "wan"),
    "tiny_h3": (3, (2, 6, 8), 128, 12, "start", "qkv", "hunyuan"),
}
TINY_CFG = dict(min_tokens=0, q_clusters=4, k_clusters=8)   # the smoke shapes: sparse, no calibration
CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


def make_comfy_inputs(name, dtype=torch.bfloat16, seed=0):
    """Structured q, k, v (bench/structured.py) placed in the shape's ComfyUI memory order.
    Returns (q4, k4, v4 [B, H, L, D] views, the tensors ComfyUI holds, (r0, r1) always-dense range or None)."""
    from bench.structured import make_structured_qkv

    H, grid, D, n_text, where, order, _ = SHAPES[name]
    q, k, v, _ = make_structured_qkv(B=1, H=H, grid=grid, D=D, text_tokens=n_text, dtype=dtype, device=DEVICE,
                                     seed=seed)
    L = q.shape[2]
    rng = None
    if n_text:
        if where == "start":   # text generated last: move it in front
            q, k, v = (torch.cat([x[:, :, L - n_text:], x[:, :, :L - n_text]], 2) for x in (q, k, v))
            rng = (0, n_text)
        else:
            rng = (L - n_text, L)
    B = 1
    if order == "wan":
        held = [x.transpose(1, 2).reshape(B, L, H * D).contiguous() for x in (q, k, v)]
        views = [t.view(B, L, H, D).transpose(1, 2) for t in held]
    elif order == "bhld":
        held = [x.contiguous() for x in (q, k, v)]
        views = held
    else:  # one [B, L, 3, H, D] projection, q / k / v its (non-dense) [B, H, L, D] views
        buf = torch.stack([x.transpose(1, 2) for x in (q, k, v)], 2).contiguous()
        held = [buf]
        views = list(buf.permute(2, 0, 3, 1, 4).unbind(0))
    del q, k, v
    if CUDA:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    return views, held, rng


def peak_mib(fn):
    """(peak MiB the call adds, its result). The result stays allocated until the caller drops it."""
    if not CUDA:   # CPU smoke test: no peaks (1e-9 keeps the ratios finite)
        return 1e-9, fn()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    r = fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / MiB, r


def cudnn(q4, k4, v4):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if not CUDA:
        return F.scaled_dot_product_attention(q4, k4, v4)
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        return F.scaled_dot_product_attention(q4, k4, v4)


def comfy_dense(q4, k4, v4):
    B, H, L, D = q4.shape
    return cudnn(q4, k4, v4).transpose(1, 2).reshape(B, L, H * D)


def sparse_call(q4, k4, v4, cfg, st, rng, kv):
    """One call the way nodes/patcher.py makes it (kv "legacy": the way it was made before issue 26)."""
    B, H, L, D = q4.shape
    kw = dict(config=cfg, state=st, always_dense_range=rng)
    if kv == "legacy" or not HAS_OUT:
        if kv == "legacy" and HAS_OUT:
            q4 = q4.contiguous()   # the old layout's q.reshape(G, N, D) copy of a non-contiguous q
        o, stats = sparse_attention(q4, k4, v4, **kw)
        return o.transpose(1, 2).reshape(B, L, H * D), stats
    out = torch.empty(B, L, H * D, dtype=q4.dtype, device=q4.device)
    o, stats = sparse_attention(q4, k4, v4, out=out.view(B, L, H, D).transpose(1, 2), **kw)
    return out, stats


def need_mib(q4, cfg, kv, calibrating, k_clusters):
    try:
        from adacluster_core import memory as M
    except ImportError:   # an older core (--core): no guard
        return float("nan")
    B, H, L, D = q4.shape
    mode = "copied" if kv in ("copied", "legacy") else "indexed"
    return M.config_call_bytes(B, H, L, D, q4.element_size(), cfg, calibrating=calibrating,
                               k_clusters=k_clusters, kv_rows=mode) / MiB


def run_shape(name, variants, kvs, timed, log):
    if CUDA:
        from bench.inputs import bench_ms
    else:
        def bench_ms(fn):
            import time
            t = time.perf_counter()
            fn()
            return (time.perf_counter() - t) * 1e3

    (q4, k4, v4), held, rng = make_comfy_inputs(name)
    H, grid, D, n_text, where, order, model = SHAPES[name]
    L = q4.shape[2]
    one = q4.numel() * q4.element_size() / MiB
    log(f"[{name}] H {H} L {L} D {D} order {order} text {rng}; one q/k/v/out tensor = {one:.0f} MiB; "
        f"q strides {tuple(q4.stride())}")
    rows = []
    p_sdpa, o = peak_mib(lambda: cudnn(q4, k4, v4))
    del o
    p_dense, o = peak_mib(lambda: comfy_dense(q4, k4, v4))
    del o
    t_dense = bench_ms(lambda: comfy_dense(q4, k4, v4)) if timed else float("nan")
    log(f"[{name}] cuDNN SDPA alone {p_sdpa:.0f} MiB; ComfyUI dense call (SDPA + [B, L, H*D] reshape) "
        f"{p_dense:.0f} MiB, {t_dense:.2f} ms")
    rows.append(dict(shape=name, variant="cudnn sdpa", calib=float("nan"), peak=p_sdpa, need=float("nan"),
                     ms=float("nan"), sdpa=p_sdpa, dense=p_dense, t_dense=t_dense, density=1.0))
    rows.append(dict(shape=name, variant="comfy dense", calib=float("nan"), peak=p_dense, need=float("nan"),
                     ms=t_dense, sdpa=p_sdpa, dense=p_dense, t_dense=t_dense, density=1.0))
    saved = getattr(lay, "KV_ROWS", None)
    for preset in variants:
        for kv in kvs:
            label = f"{preset}/{kv}"
            try:
                if saved is not None:
                    lay.KV_ROWS = "copied" if kv in ("copied", "legacy") else "indexed"
                elif kv == "indexed":
                    log(f"[{name} {label}] skipped: this core has no indexed mode")
                    continue
                cfg = AdaClusterConfig.for_model(model, preset, **(TINY_CFG if name.startswith("tiny") else {}))
                st = ClusterState()
                p_cal, (o, s0) = peak_mib(lambda: sparse_call(q4, k4, v4, cfg, st, rng, kv))
                del o
                n_cal = need_mib(q4, cfg, kv, True, None)
                p_first, (o, s1) = peak_mib(lambda: sparse_call(q4, k4, v4, cfg, st, rng, kv))
                del o
                p_reuse, (o, s2) = peak_mib(lambda: sparse_call(q4, k4, v4, cfg, st, rng, kv))
                del o
                n_reuse = need_mib(q4, cfg, kv, False, st.k_clusters)
                ms = bench_ms(lambda: sparse_call(q4, k4, v4, cfg, st, rng, kv)) if timed else float("nan")
                dens = float(s2["density"])
                why = s0["reason"] or s0["stage"]
                log(f"[{name} {label}] calibration {p_cal:.0f} MiB (need {n_cal:.0f}; {why}), "
                    f"first {p_first:.0f}, reuse {p_reuse:.0f} MiB (need {n_reuse:.0f}; {s2['stage']}, "
                    f"Ck {s2['k_clusters']}, density {dens:.3f}) = {p_reuse / p_sdpa:.2f}x SDPA, "
                    f"{p_reuse / p_dense:.2f}x the dense call; reuse {ms:.2f} ms (dense call {t_dense:.2f})")
                if kv != "legacy" and not (n_reuse >= p_reuse and n_cal >= p_cal):
                    log(f"[{name} {label}] WARNING: the guard's need is below the measured peak")
                rows.append(dict(shape=name, variant=label, calib=p_cal, peak=p_reuse, need=n_reuse, ms=ms,
                                 sdpa=p_sdpa, dense=p_dense, t_dense=t_dense, density=dens))
            except Exception as e:  # noqa: BLE001
                import traceback
                log(f"[{name} {label}] FAILED: {type(e).__name__}: {e}\n{traceback.format_exc()[-1500:]}")
            finally:
                if saved is not None:
                    lay.KV_ROWS = saved
                torch.cuda.empty_cache()
    del q4, k4, v4, held
    torch.cuda.empty_cache()
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--variants", default="balanced,fast,quality")
    ap.add_argument("--kv", default="indexed,copied,legacy")
    ap.add_argument("--no-time", action="store_true", help="peaks only (no do_bench timing)")
    ap.add_argument("--out", default=os.environ.get("OUT"))
    ap.add_argument("--core", default=None, help="import adacluster_core from this directory first")
    a = ap.parse_args(argv)
    lines = []

    def log(s=""):
        print(s, flush=True)
        lines.append(s)

    from bench.inputs import env_header

    log(env_header() if CUDA else f"CPU smoke test (no CUDA): torch {torch.__version__}")
    log("cmd: python bench/memory.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    import adacluster_core
    log(f"core: {os.path.dirname(adacluster_core.__file__)} (out= {'yes' if HAS_OUT else 'no'})")
    res = []
    for name in [s for s in a.shapes.split(",") if s]:
        res += run_shape(name, [v for v in a.variants.split(",") if v], [k for k in a.kv.split(",") if k],
                         not a.no_time, log)
    md = ["| shape | call | calibration MiB | reuse peak MiB | guard need MiB | x cuDNN SDPA | x dense call | "
          "reuse ms | dense call ms | density |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    f = lambda x, fmt: "—" if x != x else format(x, fmt)  # noqa: E731 - NaN -> dash
    for r in res:
        md.append(f"| {r['shape']} | {r['variant']} | {f(r['calib'], '.0f')} | {r['peak']:.0f} | "
                  f"{f(r['need'], '.0f')} | "
                  f"{r['peak'] / r['sdpa']:.2f} | {r['peak'] / r['dense']:.2f} | {f(r['ms'], '.2f')} | "
                  f"{f(r['t_dense'], '.2f')} | {r['density']:.3f} |")
    log("")
    for m in md:
        log(m)
    bad = [r for r in res if r["variant"].endswith("/indexed") and r["peak"] > 1.5 * r["sdpa"]]
    log(f"goal (issue 26) reuse peak <= 1.5x cuDNN SDPA, indexed: "
        f"{'met at every shape' if not bad else 'NOT met: ' + ', '.join(r['shape'] + ' ' + r['variant'] for r in bad)}")
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "memory.log"), "w") as fh:
            fh.write("\n".join(lines) + "\n")
        with open(os.path.join(a.out, "memory.md"), "w") as fh:
            fh.write("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
