"""The 8-bit kernel steps, one by one, on the same layout (GPU): issue 27's measurements (the experiment
in bench/fp8/, stopped by its rule: docs/KERNEL_NOTES.md "fp8").

    python bench/fp8_steps.py [--shapes wan14b,h3_15s] [--preset balanced] [--steps all|name,name]

Per shape: structured inputs, the preset's calibration + one sparse call through the public
`sparse_attention`, then the reuse call's layout (`attn_speed.reuse_layout`) is run by the bf16 kernel
and by every 8-bit step on the very same ranges: kernel ms, x the bf16 kernel, the quantisation's ms
(torch, `quantize_kv`; the gather step's cost), rel. L2 error vs fp32 dense on 512 random query rows and
its increase over the bf16 kernel's. cuDNN SDPA (bf16) timed in the same process. Table printed last.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("ADACLUSTER_STRICT", "1")
os.environ.setdefault("TRITON_INTERPRET", "0")

import torch  # noqa: E402

from adacluster_core import ClusterState, api, sparse_attention  # noqa: E402
from adacluster_core import layout as lay  # noqa: E402
from bench.fp8.attn_kernel import varblock_attention_fp8  # noqa: E402
from bench.fp8.gather_quant import gather_quant_kv  # noqa: E402
from bench.fp8.torch_ref import P_SCALE, kv_stats, quantize_kv  # noqa: E402
from bench.attn_speed import reuse_layout, variant_config  # noqa: E402
from bench.inputs import SHAPES, bench_ms, dense_cudnn, dense_range, env_header, make_inputs, rel_err_rows  # noqa: E402

# name -> (quantize_kv keywords, launch config or None, tensor descriptors)
STEPS = {
    "fp8-qk": (dict(qk="fp8", pv="bf16"), None, None),
    "fp8": (dict(qk="fp8", pv="fp8"), None, None),
    "fp8-kgroup": (dict(qk="fp8", pv="fp8", k_scales="group"), None, None),
    "fp8-nosmooth": (dict(qk="fp8", pv="fp8", smooth=False), None, None),
    "fp8-gather": (dict(qk="fp8", pv="fp8", kernel=True), None, None),
    "fp8-bn128": (dict(qk="fp8", pv="fp8"), (128, 128, 8, 3), None),
    "fp8-bn128s2": (dict(qk="fp8", pv="fp8"), (128, 128, 8, 2), None),
    "fp8-w4": (dict(qk="fp8", pv="fp8"), (128, 64, 4, 3), None),
    "fp8-s4": (dict(qk="fp8", pv="fp8"), (128, 64, 8, 4), None),
    "fp8-ptr": (dict(qk="fp8", pv="fp8"), None, False),
    "int8qk-fp8pv": (dict(qk="int8", pv="fp8"), None, None),
    # the 16-row aligned chunk starts (needed by the transposed 8-bit V) cost one more masked chunk
    # per range: without them, Q·K in fp8 and P·V in bf16 read V rows as the bf16 kernel does
    "fp8-qk-noalign": (dict(qk="fp8", pv="bf16"), None, None, False),
    "fp8-qk-noalign-bn128": (dict(qk="fp8", pv="bf16"), (128, 128, 8, 3), None, False),
    "fp8-qk-noalign-ptr": (dict(qk="fp8", pv="bf16"), None, False, False),
}


def quantise(L, qkv, kw):
    """The gather step's 8-bit operands from the layout's bf16 copies (torch), or (kernel=True) the
    fused Triton gather + quantise from the caller's k / v."""
    kw = dict(kw)
    smooth, fused = kw.pop("smooth", True), kw.pop("kernel", False)
    k_mean, v_scale = kv_stats(qkv[1], qkv[2])
    if not smooth:
        k_mean = torch.zeros_like(k_mean)
    if fused:
        kq, ks, vq = gather_quant_kv(qkv[1], qkv[2], qkv[3], k_mean, v_scale)
        return kq, ks, vq, v_scale, k_mean
    return (*quantize_kv(L.k_rows, L.v_rows, k_mean, v_scale, **kw), k_mean)


def run_step(L, qkv, kw, config, desc, align=None):
    kq, ks, vq, vs, k_mean = quantise(L, qkv, kw)
    k_mean = k_mean[:, None, :]
    tk = tv = None
    if L.tail_keys is not None:
        tk = (L.tail_keys.float() - k_mean).to(L.q.dtype)
        tv = (L.tail_values.float() / vs[:, None, None]).to(L.q.dtype)

    def call():
        return varblock_attention_fp8(L.q, kq, ks, vq, vs, L.perm_q, L.q_offsets, L.range_start, L.range_end,
                                      L.scale, tk, tv, L.tail_bias, p_scale=P_SCALE, config=config,
                                      descriptors=desc, align=align)
    t_quant = bench_ms(lambda: quantise(L, qkv, kw), warmup=3, rep=10)
    return call(), bench_ms(call), t_quant


def run_shape(name, preset, steps, log):
    q, k, v = make_inputs(name)
    H, N, D, text, _, model = SHAPES[name]
    rows = torch.randperm(N, device=q.device)[:512]
    t_dense = bench_ms(lambda: dense_cudnn(q, k, v))
    e_dense = rel_err_rows(dense_cudnn(q, k, v)[0], q[0], k[0], v[0], rows)
    cfg = variant_config(model, preset)
    kw = dict(config=cfg, always_dense_range=dense_range(name)) if text else dict(config=cfg)
    st = ClusterState()
    sparse_attention(q, k, v, state=st, **kw)
    _, stats = sparse_attention(q, k, v, state=st, **kw)
    L = reuse_layout(q, k, v, cfg, st, name)
    # the fused gather reads the caller's k / v through the key order as row ids: its own layout
    L_idx = reuse_layout(q, k, v, cfg, st, name, kv_rows="indexed")
    qkv = (q, k, v, L_idx.k_index)
    backend = api.resolve_backend(cfg.backend, q.device)
    out_bf, _ = lay.run_layout(L, backend)
    t_bf = bench_ms(lambda: lay.run_layout(L, backend))
    e_bf = rel_err_rows(out_bf[0], q[0], k[0], v[0], rows)
    dens = float(stats["density"])
    res = [dict(shape=name, step="bf16", ms=t_bf, x_bf=1.0, quant=0.0, err=e_bf, d_err=0.0, x_cudnn=t_dense / t_bf)]
    log(f"[{name}] {preset}: density {dens:.3f}; cuDNN {t_dense:.2f} ms (err {e_dense:.1e}); "
        f"bf16 kernel {t_bf:.2f} ms (err {e_bf:.4f})")
    for s in steps:
        qkw, config, desc, *align = STEPS[s]
        try:
            out, ms, tq = run_step(L_idx if qkw.get("kernel") else L, qkv, qkw, config, desc, *align)
        except Exception as exc:  # a step that does not compile on this card is a row, not a crash
            log(f"[{name}] {s}: FAILED {type(exc).__name__}: {str(exc)[:300]}")
            continue
        e = rel_err_rows(out[0], q[0], k[0], v[0], rows)
        finite = bool(torch.isfinite(out).all())
        r = dict(shape=name, step=s, ms=ms, x_bf=t_bf / ms, quant=tq, err=e if finite else float("nan"),
                 d_err=e - e_bf, x_cudnn=t_dense / ms)
        res.append(r)
        log(f"[{name}] {s}: kernel {ms:.2f} ms = {r['x_bf']:.2f}x bf16 kernel, {r['x_cudnn']:.2f}x cuDNN; "
            f"quantise {tq:.2f} ms; err {e:.4f} (+{e - e_bf:.4f}); finite {finite}")
    for r in res:
        r.update(density=dens, cudnn=t_dense)
    return res


def check(log) -> bool:
    """The compiled 8-bit kernels vs the torch emulation (`bench.fp8.torch_ref`), on the GPU: the tests'
    random layouts (tests/core/test_fp8_experiment.py) at D 64 / 128, P·V in bf16 and fp8, with and without a
    pooled tail, plus the fused gather + quantise vs its torch form, bit for bit."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
    from core.test_fp8_experiment import _case, _fp8_args  # noqa: E402
    from bench.fp8.torch_ref import varblock_attention_fp8_ref

    ok = True
    for D in (64, 128):
        for pv in ("bf16", "fp8"):
            for tail in (False, True):
                c = {k: (x.cuda() if torch.is_tensor(x) else x) for k, x in _case(D=D, N=3000, Nk=2500, tail=tail).items()}
                qb = c["q"].to(torch.bfloat16)
                c["q"] = qb
                k_mean, v_scale = kv_stats(c["k"].unsqueeze(0), c["v"].unsqueeze(0))
                kq, ks, vq, vs = quantize_kv(c["k"], c["v"].to(torch.bfloat16), k_mean, v_scale, pv=pv)
                args = _fp8_args(c, k_mean, vs, kq, ks, vq)
                if tail:
                    args = args[:10] + tuple(x.to(torch.bfloat16) for x in args[10:12]) + args[12:]
                out = varblock_attention_fp8(*args, p_scale=P_SCALE)
                emu = varblock_attention_fp8_ref(*args)
                emu_p = varblock_attention_fp8_ref(*args, p_scale=None)
                e = ((out.float() - emu.float()).norm() / emu.float().norm()).item()
                # bf16 output rounding (2^-9 relative) + one more rounding of P where P is 8-bit
                bound = 4e-3 + (2 * ((emu.float() - emu_p.float()).norm() / emu.float().norm()).item()
                                if pv == "fp8" else 0.0)
                good = e <= bound and bool(torch.isfinite(out).all())
                ok &= good
                log(f"check fp8 kernel D={D} pv={pv} tail={tail}: rel diff vs emulation {e:.2e} (bound {bound:.2e}) "
                    f"{'ok' if good else 'FAIL'}")
    c = {k: (x.cuda() if torch.is_tensor(x) else x) for k, x in _case(D=128, N=100, Nk=4000).items()}
    G, Nk, D = c["k"].shape
    k4, v4 = c["k"].to(torch.bfloat16).view(1, G, Nk, D), c["v"].to(torch.bfloat16).view(1, G, Nk, D)
    idx = torch.stack([torch.randperm(Nk, device="cuda")[:3999] for _ in range(G)])
    k_mean, v_scale = kv_stats(k4, v4)
    kq, ks, vq = gather_quant_kv(k4, v4, idx, k_mean, v_scale)
    rows = lambda x: torch.gather(x.view(G, Nk, D), 1, idx[..., None].expand(G, 3999, D))  # noqa: E731
    kq2, ks2, vq2, _ = quantize_kv(rows(k4), rows(v4), k_mean, v_scale)
    same = (torch.equal(ks, ks2) and torch.equal(kq.view(torch.uint8), kq2.view(torch.uint8))
            and torch.equal(vq.view(torch.uint8), vq2.view(torch.uint8)))
    ok &= same
    log(f"check fused gather + quantise == torch quantize_kv (bit for bit): {'ok' if same else 'FAIL'}")
    return ok


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="wan14b,h3_15s")
    ap.add_argument("--preset", default="balanced")
    ap.add_argument("--steps", default="all")
    ap.add_argument("--check", action="store_true", help="first the kernels vs the torch emulation")
    a = ap.parse_args(argv)
    steps = list(STEPS) if a.steps == "all" else a.steps.split(",")

    def log(s):
        print(s, flush=True)

    log(env_header())
    if a.check:
        log(f"CHECK {'PASSED' if check(log) else 'FAILED'}")
    rows = []
    for name in a.shapes.split(","):
        rows += run_shape(name, a.preset, steps, log)
        torch.cuda.empty_cache()
    log("")
    log("| shape | step | density | kernel ms | x bf16 kernel | x cuDNN | quantise ms | rel err | + over bf16 |")
    log("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        log(f"| {r['shape']} | {r['step']} | {r['density']:.3f} | {r['ms']:.2f} | {r['x_bf']:.2f} | "
            f"{r['x_cudnn']:.2f} | {r['quant']:.2f} | {r['err']:.4f} | {r['d_err']:+.4f} |")


if __name__ == "__main__":
    main()
