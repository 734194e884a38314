"""The attention-call benchmark (GPU): correctness check, then every preset vs cuDNN, one process.

    python bench/attn_speed.py [--shapes wan1.3b,wan14b,hunyuan,long] [--variants balanced,notail,fast,quality]
                               [--check] [--md FILE]

Per shape: cuDNN SDPA (bf16) once, then per variant a fresh ClusterState through the public
`sparse_attention`: the calibration call (multi-stage key clustering; the first variant of the
first shape also pays the Triton compilation: "cold"), the first sparse call, the reuse call
(do_bench median), the kernel alone on the reuse call's layout (`layout.build_layout` +
`layout.run_layout`), density, reuse / (density x cuDNN) ("x ideal"), and the rel. L2 error vs
fp32 dense on 512 random query rows (cuDNN's own error beside it).
Variants: balanced / quality / fast = the presets; notail = balanced without the pooled tail;
"@copied" / "@indexed": how the kernel gets K / V in cluster order (layout.KV_ROWS; default copied).
--check: kernel vs the fp32 reference on random layouts (with and without a pooled tail), on ComfyUI
memory orders (Wan [B, N, H*D] views, non-dense qkv views, a text prefix) with K / V rows gathered in
the kernel and from permuted copies, written into a [B, N, H*D] buffer; and every-cluster-selected ==
dense within 2x cuDNN's error in both K / V modes, identical on Wan-ordered inputs with out=, on the GPU.
Every kernel case of the CPU tests, at every dtype / shape / config: bench/kernel_check.py.
Peak memory per call: bench/memory.py.
"""
from __future__ import annotations

import argparse
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("ADACLUSTER_STRICT", "1")  # a failing sparse path must fail the benchmark, not run dense
# --check imports the CPU tests' case builder, which turns the interpreter on when unset: keep the GPU
os.environ.setdefault("TRITON_INTERPRET", "0")

import torch  # noqa: E402

from adacluster_core import AdaClusterConfig, ClusterState, sparse_attention  # noqa: E402
from adacluster_core import api, layout as lay  # noqa: E402
from bench.inputs import SHAPES, bench_ms, dense_range, dense_cudnn, env_header, make_inputs, once_ms, rel_err_rows  # noqa: E402


def variant_config(model: str, variant: str) -> AdaClusterConfig:
    """"balanced" / "quality" / "fast" = the presets; "notail" = balanced without the pooled
    tail; "-noorder" suffix: see run_variant; "@copied" / "@indexed" suffix: layout.KV_ROWS (how the
    kernel gets K / V in cluster order; see run_variant); "+field=value" suffixes override config
    fields (e.g. "balanced+kmeans_iters_reuse=1", "fast+max_density=0.1")."""
    base, *overrides = re.sub(r"@(indexed|copied)", "", variant).replace("-noorder", "").split("+")
    kw = {}
    for o in overrides:
        f, val = o.split("=")
        kw[f] = type(getattr(AdaClusterConfig(), f))(val) if f != "pooled_tail" else val in ("1", "True", "true")
    if base == "notail":
        return AdaClusterConfig.for_model(model, "balanced", pooled_tail=False, **kw)
    return AdaClusterConfig.for_model(model, base, **kw)


def reuse_layout(q, k, v, cfg, st, name, kv_rows=None):
    """The layout the reuse call builds (same steps as api._sparse, warm state)."""
    B, H, N, D = q.shape
    r0, r1 = dense_range(name) or (0, 0)
    backend = api.resolve_backend(cfg.backend, q.device)
    q_clu, _ = lay.split_rows(q, r0, r1)
    k_clu, _ = lay.split_rows(k, r0, r1)
    Ck = int(st.k_clusters)
    Cq = min(cfg.q_clusters, q_clu.shape[2])
    import copy
    st2 = copy.deepcopy(st)
    rq, rk, _ = api._cluster(q_clu, k_clu, Cq, Ck, None, cfg, st2, None, backend)
    sel = api._select(q_clu, rq, rk, cfg, D ** -0.5)
    return lay.build_layout(q, k, v, rq, rk, sel, scale=D ** -0.5, dense_range=(r0, r1), masked_dense=None,
                            pooled=cfg.pooled_tail, backend=backend, kv_rows=kv_rows)


def run_variant(name, variant, q, k, v, t_dense, err_dense, rows, cold, log):
    H, N, D, text, _, model = SHAPES[name]
    cfg = variant_config(model, variant)
    kw = dict(config=cfg, always_dense_range=dense_range(name)) if text else dict(config=cfg)
    # "-noorder": key clusters keep k-means' numbering (A/B of api._co_selection_order)
    saved_order, saved_kv = api._co_selection_order, lay.KV_ROWS
    if "-noorder" in variant:
        api._co_selection_order = lambda rk, sel: rk.centroids
    m = re.search(r"@(indexed|copied)", variant)
    if m:
        lay.KV_ROWS = m.group(1)
    try:
        return _run_variant(name, variant, q, k, v, t_dense, err_dense, rows, cold, log, cfg, kw)
    finally:
        api._co_selection_order, lay.KV_ROWS = saved_order, saved_kv


def _run_variant(name, variant, q, k, v, t_dense, err_dense, rows, cold, log, cfg, kw):
    H, N, D, text, _, model = SHAPES[name]
    st = ClusterState()
    t_cal = once_ms(lambda: sparse_attention(q, k, v, state=st, **kw))
    t_first = once_ms(lambda: sparse_attention(q, k, v, state=st, **kw))
    out, stats = sparse_attention(q, k, v, state=st, **kw)
    t_reuse = bench_ms(lambda: sparse_attention(q, k, v, state=st, **kw))
    L = reuse_layout(q, k, v, cfg, st, name)
    backend = api.resolve_backend(cfg.backend, q.device)
    t_kernel = bench_ms(lambda: lay.run_layout(L, backend))
    used = L.range_end > L.range_start
    n_ranges = float(used.sum(-1).float().mean())
    mean_len = float((L.range_end - L.range_start).clamp_min(0).sum() / used.sum().clamp_min(1))
    dens = float(stats["density"])
    err = rel_err_rows(out[0], q[0], k[0], v[0], rows)
    r = dict(shape=name, variant=variant, Ck=int(stats["k_clusters"]), density=dens, cudnn=t_dense, calib=t_cal,
             cold=cold, first=t_first, reuse=t_reuse, kernel=t_kernel, speedup=t_dense / t_reuse,
             ideal=t_reuse / (dens * t_dense), err=err, err_dense=err_dense, stage=stats["stage"],
             n_ranges=n_ranges, range_len=mean_len)
    log(f"[{name} {variant}] Ck {r['Ck']} stage {r['stage']} calib {t_cal:.1f}{' (cold)' if cold else ''} "
        f"first {t_first:.1f} reuse {t_reuse:.2f} kernel {t_kernel:.2f} ms; cuDNN {t_dense:.2f}; "
        f"density {dens:.3f}; ranges/cluster {n_ranges:.1f} x {mean_len:.0f} rows; {r['speedup']:.2f}x; x ideal {r['ideal']:.2f}; err {err:.3f} (cuDNN {err_dense:.1e})")
    return r


def check(log) -> bool:
    from adacluster_core.kernels.varblock_attn import varblock_attention
    from adacluster_core.reference import varblock_attention_ref

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
    from core.kernel_cases import make_case  # noqa: E402

    ok = True
    for D in (64, 128):
        for dt in (torch.bfloat16, torch.float16):
            for tail in (False, True):
                case = make_case(G=3, N=1000, D=D, Cq=9, Ck=40, S=12, extra=17, dtype=dt, seed=D, device="cuda")
                if tail:
                    G = 3
                    case["tail_keys"] = torch.randn(G, 40, D, device="cuda").to(dt)
                    case["tail_values"] = torch.randn(G, 40, D, device="cuda").to(dt)
                    b = torch.randn(G, 8, 40, device="cuda")
                    b[:, :, ::3] = float("-inf")
                    case["tail_bias"] = b
                out = varblock_attention(**case)
                ref = varblock_attention_ref(**{k: (x.cpu() if torch.is_tensor(x) else x) for k, x in case.items()})
                e = ((out.float().cpu() - ref.float()).norm() / ref.float().norm()).item()
                good = e < (2e-2 if dt == torch.bfloat16 else 3e-3) and torch.isfinite(out).all().item()
                ok &= good
                log(f"check kernel D={D} {dt} tail={tail}: rel err vs reference {e:.2e} {'ok' if good else 'FAIL'}")
    # ComfyUI memory orders (issue 26): q read / out written through strides, K / V rows gathered in the kernel
    # ("indexed") or from permuted copies ("copied", TMA on sm90), a text prefix, out= a [B, L, H*D] buffer
    from core.kernel_cases import kernel_case, memory_order_reference as _reference  # noqa: E402
    for order in ("wan", "qkv"):
        for dt in (torch.bfloat16, torch.float16):
            q4, k4, v4, perm_q, q_off, rs, re, kidx = kernel_case(B=2, H=4, N=3000, D=128, Cq=12, Ck=40, S=10,
                                                                  text=300, order=order, dtype=dt, seed=1)
            B, H, N, D = q4.shape
            G = B * H
            ref = _reference(q4.cpu(), k4.cpu(), v4.cpu(), perm_q.cpu(), q_off.cpu(), rs.cpu(), re.cpu(), kidx.cpu(),
                             D ** -0.5)
            idx = kidx.long().unsqueeze(-1).expand(G, N, D)
            copies = tuple(torch.gather(x.reshape(G, N, D), 1, idx) for x in (k4, v4))
            for mode in ("indexed", "copied"):
                buf = torch.full((B, N, H * D), float("nan"), dtype=dt, device="cuda")
                o4 = buf.view(B, N, H, D).transpose(1, 2)
                if mode == "indexed":
                    varblock_attention(q4, k4, v4, perm_q, q_off, rs, re, D ** -0.5, k_index=kidx, out=o4)
                else:
                    varblock_attention(q4, *copies, perm_q, q_off, rs, re, D ** -0.5, out=o4)
                e = ((o4.float().cpu() - ref.float()).norm() / ref.float().norm()).item()
                good = e < (2e-2 if dt == torch.bfloat16 else 3e-3) and torch.isfinite(buf).all().item()
                ok &= good
                log(f"check kernel {order} order {mode} {dt}: rel err vs reference {e:.2e} {'ok' if good else 'FAIL'}")
    q, k, v = make_inputs("wan1.3b")
    B, H, N, D = q.shape
    rows = torch.randperm(N, device=q.device)[:512]
    e_d = rel_err_rows(dense_cudnn(q, k, v)[0], q[0], k[0], v[0], rows)
    # the same tokens in Wan's memory order: [B, N, H*D] tensors viewed as [B, H, N, D]
    qw, kw_, vw = (x.transpose(1, 2).reshape(B, N, H * D).contiguous().view(B, N, H, D).transpose(1, 2)
                   for x in (q, k, v))
    saved = lay.KV_ROWS
    try:
        for mode in lay.KV_MODES:
            lay.KV_ROWS = mode
            for tail in (False, True):
                cfg = AdaClusterConfig(k_clusters=200, top_k=200, calibration_dense=False, pooled_tail=tail)
                out, st = sparse_attention(q, k, v, config=cfg)
                e = rel_err_rows(out[0], q[0], k[0], v[0], rows)
                buf = torch.empty(B, N, H * D, dtype=q.dtype, device=q.device)
                out_w, _ = sparse_attention(qw, kw_, vw, config=cfg, out=buf.view(B, N, H, D).transpose(1, 2))
                same = torch.equal(out_w, out)
                good = float(st["density"]) > 0.999 and e <= 2 * e_d and same
                ok &= good
                log(f"check all clusters selected (wan1.3b, {mode}, tail={tail}): density {float(st['density']):.4f} "
                    f"err {e:.2e} vs cuDNN {e_d:.2e}; Wan memory order + out= identical: {same} "
                    f"-> {'ok' if good else 'FAIL'}")
    finally:
        lay.KV_ROWS = saved
    return ok


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="wan1.3b,wan14b,hunyuan,long")
    ap.add_argument("--variants", default="balanced,balanced@copied,balanced-noorder,notail,fast,quality")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--md", default=None)
    a = ap.parse_args(argv)
    lines = []

    def log(s):
        print(s, flush=True)
        lines.append(s)

    log(env_header())
    log("cmd: python bench/attn_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    if a.check:
        log(f"CHECK {'PASSED' if check(log) else 'FAILED'}")
    res = []
    cold = True
    for name in [s for s in a.shapes.split(",") if s]:
        q, k, v = make_inputs(name)
        t_dense = bench_ms(lambda: dense_cudnn(q, k, v))
        rows = torch.randperm(q.shape[2], device=q.device)[:512]
        err_dense = rel_err_rows(dense_cudnn(q, k, v)[0], q[0], k[0], v[0], rows)
        for variant in a.variants.split(","):
            try:
                res.append(run_variant(name, variant, q, k, v, t_dense, err_dense, rows, cold, log))
            except Exception as e:  # noqa: BLE001
                import traceback
                log(f"[{name} {variant}] FAILED: {type(e).__name__}: {e}\n{traceback.format_exc()[-1200:]}")
            cold = False
            torch.cuda.empty_cache()
        del q, k, v
        torch.cuda.empty_cache()
    md = ["| shape | variant | Ck | density | cuDNN ms | calib ms | first ms | reuse ms | kernel ms | speedup | x ideal | rel err (cuDNN) |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res:
        md.append(f"| {r['shape']} | {r['variant']} | {r['Ck']} | {r['density']:.3f} | {r['cudnn']:.2f} | "
                  f"{r['calib']:.0f}{' (cold)' if r['cold'] else ''} | {r['first']:.1f} | {r['reuse']:.2f} | "
                  f"{r['kernel']:.2f} | {r['speedup']:.2f}x | {r['ideal']:.2f} | {r['err']:.3f} ({r['err_dense']:.1e}) |")
    log("")
    for l in md:
        log(l)
    if a.md:
        with open(a.md, "a") as f:
            f.write("\n".join(lines) + "\n\n")


if __name__ == "__main__":
    main()
