"""Speed benchmark (issue 7): AdaCluster sparse attention vs dense cuDNN / flash SDPA.

    python -m adacluster_core.bench [--shapes wan1.3b,wan14b] [--quick] [--md FILE]
    python -m adacluster_core.bench --kernel-only [--density 0.15] [--variants]
    python -m adacluster_core.bench --check          # GPU correctness of the kernel

Modes
* default: per shape, dense cuDNN and flash SDPA, then AdaCluster through
  ``adacluster_core.sparse_attention`` (per-model default config): first sparse step (cold
  state: multi-stage key clustering + 10 k-means iterations) and reuse step (warm state),
  with the clustering / selection / attention split measured on the same pipeline built
  from the package's pieces; realised density, TFLOP/s on the computed pairs, rel. L2 error
  vs fp32 dense on 512 random query rows, peak extra GPU memory.
* --kernel-only: the varblock kernel alone on a fixed layout at a given density (cluster
  layout from a few k-means iterations with torch ops), vs cuDNN; --variants times several
  kernel configs.

All timings are ``triton.testing.do_bench`` medians (ms) on CUDA; bf16, B=1.
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

from .kernels.varblock_attn import varblock_attention, varblock_attention_triton
from .layout import pairs_computed, selected_key_ranges, sort_by_cluster

# name: (heads, N total, D, text tokens, grid (t,h,w) of the video tokens, model key)
SHAPES = {
    "cogvideox": (30, 17776, 64, 0, (13, 32, 43), "cogvideox"),  # 17888 grid cut to 17776
    "wan1.3b": (12, 32760, 128, 0, (21, 30, 52), "wan"),
    "wan14b": (40, 75600, 128, 0, (21, 45, 80), "wan"),
    "hunyuan": (24, 119056, 128, 256, (33, 45, 80), "hunyuan"),
    "long": (24, 176400, 128, 0, (49, 60, 60), "wan"),
}
HEADLINE_DENSITY = {"wan14b": 0.15, "long": 0.10}


# ------------------------------------------------------------------------------ inputs

def make_inputs(name: str, device="cuda", dtype=torch.bfloat16, seed=0):
    H, N, D, text, grid, _ = SHAPES[name]
    try:
        from .structured import make_structured_qkv

        q, k, v, info = make_structured_qkv(B=1, H=H, grid=grid, D=D, text_tokens=text, dtype=dtype,
                                            device=device, seed=seed)
        if q.shape[2] != N:  # grid rounding: cut (or pad by repeating) to the exact N
            n = q.shape[2]
            if n > N:
                nv = N - text
                q, k, v = (torch.cat([x[:, :, :nv], x[:, :, n - text:]], 2) if text else x[:, :, :N] for x in (q, k, v))
            else:
                raise ValueError("grid too small")
        return q.contiguous(), k.contiguous(), v.contiguous(), "structured.make_structured_qkv"
    except ImportError:
        pass
    # fallback: smooth features on a (t,h,w) grid + semantic groups + varying norms + sinks
    g = torch.Generator(device=device).manual_seed(seed)
    t_, h_, w_ = grid
    tt, hh, ww = torch.meshgrid(torch.arange(t_, device=device), torch.arange(h_, device=device),
                                torch.arange(w_, device=device), indexing="ij")
    pos = torch.stack([tt / 6.0, hh / (0.3 * h_), ww / (0.3 * w_)], -1).reshape(-1, 3)[: N - text].float()
    om = torch.randn(3, 64, generator=g, device=device)
    feat = torch.cos(pos @ om + torch.rand(64, generator=g, device=device) * 6.28)
    grp = (feat[:, :8].argmax(-1))
    emb = torch.randn(8, 64, generator=g, device=device)
    x = feat + emb[grp]
    if text:
        x = torch.cat([x, torch.randn(text, 64, generator=g, device=device)], 0)
    Wq = torch.randn(H, 64, D, generator=g, device=device) / 8
    Wk = 0.8 * Wq + 0.6 * torch.randn(H, 64, D, generator=g, device=device) / 8
    Wv = torch.randn(H, 64, D, generator=g, device=device) / 8
    q = torch.einsum("nc,hcd->hnd", x, Wq) + 0.3 * torch.randn(H, N, D, generator=g, device=device)
    k = torch.einsum("nc,hcd->hnd", x, Wk) + 0.3 * torch.randn(H, N, D, generator=g, device=device)
    v = torch.einsum("nc,hcd->hnd", x, Wv) + 0.3 * torch.randn(H, N, D, generator=g, device=device)
    q = F.normalize(q, dim=-1) * math.sqrt(D) * 1.6 * torch.exp(0.3 * torch.randn(H, N, 1, generator=g, device=device))
    k = F.normalize(k, dim=-1) * math.sqrt(D)
    k[:, :4] *= 3.0  # sinks
    return (q.unsqueeze(0).to(dtype).contiguous(), k.unsqueeze(0).to(dtype).contiguous(),
            v.unsqueeze(0).to(dtype).contiguous(), "bench fallback generator")


# ------------------------------------------------------------------------------ simple layout (torch ops)

def _kmeans(x: torch.Tensor, C: int, iters: int, seed: int = 0):
    """Plain k-means with torch ops, x [G, N, D] -> labels int64 [G, N], centroids fp32 [G, C, D]."""
    G, N, D = x.shape
    gen = torch.Generator(device=x.device).manual_seed(seed)
    idx = torch.randint(0, N, (G, C), generator=gen, device=x.device)
    c = torch.gather(x, 1, idx.unsqueeze(-1).expand(G, C, D)).float()
    for _ in range(iters + 1):
        d = (c * c).sum(-1).unsqueeze(1) - 2 * torch.bmm(x, c.to(x.dtype).transpose(1, 2)).float()
        lab = d.argmin(-1)
        del d
        if _ == iters:
            break
        s = torch.zeros(G, C, D, device=x.device).scatter_add_(1, lab.unsqueeze(-1).expand(G, N, D), x.float())
        n = torch.zeros(G, C, device=x.device).scatter_add_(1, lab, torch.ones(G, N, device=x.device))
        c = torch.where(n.unsqueeze(-1) > 0, s / n.clamp_min(1).unsqueeze(-1), c)
    return lab, c


def simple_layout(q, k, v, Cq=65, Ck=256, top_k=38, iters=3, text=0, seed=0):
    """Cluster with torch ops, select top_k key clusters by the TensorQuest bound.
    q, k, v: [G, N, D]. Returns the kernel's arguments (dict)."""
    G, N, D = q.shape
    nv = N - text
    qn = F.normalize(q.float(), dim=-1).to(q.dtype)
    lab_q, cq = _kmeans(qn, Cq, iters, seed)
    lab_k, ck = _kmeans(k[:, :nv].contiguous(), Ck, iters, seed + 1)
    perm_q, q_off = sort_by_cluster(lab_q, Cq)
    perm_k, k_off = sort_by_cluster(lab_k, Ck)
    idx = perm_k.long().unsqueeze(-1).expand(G, nv, D)
    k_perm = torch.cat([torch.gather(k[:, :nv], 1, idx), k[:, nv:]], 1).contiguous()
    v_perm = torch.cat([torch.gather(v[:, :nv], 1, idx), v[:, nv:]], 1).contiguous()
    kf = k[:, :nv].float()
    li = lab_k.unsqueeze(-1).expand(G, nv, D)
    kmax = torch.full((G, Ck, D), -1e30, device=q.device).scatter_reduce_(1, li, kf, "amax")
    kmin = torch.full((G, Ck, D), 1e30, device=q.device).scatter_reduce_(1, li, kf, "amin")
    nk = torch.zeros(G, Ck, device=q.device).scatter_add_(1, lab_k, torch.ones(G, nv, device=q.device))
    S = torch.relu(cq) @ kmax.transpose(1, 2) + torch.clamp(cq, max=0) @ kmin.transpose(1, 2)
    S = S.masked_fill(nk.unsqueeze(1) == 0, float("-inf"))
    sel = S.topk(min(top_k, Ck), dim=-1).indices.to(torch.int32)
    rs, re = selected_key_ranges(sel, k_off, extra=(nv, N) if text else None)
    return dict(q=q, k_perm=k_perm, v_perm=v_perm, perm_q=perm_q, q_offsets=q_off,
                range_start=rs, range_end=re, scale=D ** -0.5)


# ------------------------------------------------------------------------------ helpers

def _bench(fn, warmup=25, rep=100):
    import triton

    return triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median")


def dense_cudnn(q, k, v):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v)


def dense_flash(q, k, v):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v)


def rel_err_rows(out, q, k, v, rows, key_mask=None):
    """rel. L2 error of out[..., rows, :] vs fp32 dense attention of those query rows.
    q, k, v, out: [G, N, D]."""
    G, N, D = q.shape
    num = den = 0.0
    for g0 in range(0, G, 4):
        qs = q[g0:g0 + 4, rows].float()
        s = (qs @ k[g0:g0 + 4].float().transpose(1, 2)) * D ** -0.5
        ref = torch.softmax(s, -1) @ v[g0:g0 + 4].float()
        del s
        o = out[g0:g0 + 4, rows].float()
        num += (o - ref).pow(2).sum().item()
        den += ref.pow(2).sum().item()
    return math.sqrt(num / max(den, 1e-30))


def tflops(flops, ms):
    return flops / (ms * 1e-3) / 1e12


def env_header():
    import subprocess

    import triton

    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception:
        smi = torch.cuda.get_device_name()
    return (f"card/driver: {smi}; torch {torch.__version__}; triton {triton.__version__}; "
            f"cudnn {torch.backends.cudnn.version()}; date {datetime.date.today()}")


# ------------------------------------------------------------------------------ GPU correctness check

def check_kernel(log):
    from .reference import varblock_attention_ref

    dev = "cuda"
    ok = True
    torch.manual_seed(0)
    cfgs = [None] + [c for _, c in D128_VARIANTS]
    for D in (64, 128):
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            G, N, extra = 3, 2500, 37
            q = torch.randn(G, N, D, device=dev, dtype=dtype)
            k = torch.randn(G, N + extra, D, device=dev, dtype=dtype)
            v = torch.randn(G, N + extra, D, device=dev, dtype=dtype)
            Cq, Ck = 17, 41
            lab_q = torch.randint(0, Cq, (G, N), device=dev)
            lab_q[lab_q == 2] = 0
            perm_q, q_off = sort_by_cluster(lab_q, Cq)
            _, k_off = sort_by_cluster(torch.randint(0, Ck, (G, N), device=dev), Ck)
            sel = torch.rand(G, Cq, Ck, device=dev).argsort(-1)[..., :9].to(torch.int32)  # distinct ids
            sel = torch.where(torch.rand(G, Cq, 9, device=dev) < 0.2, -1, sel)
            sel[:, 5] = -1
            rs, re = selected_key_ranges(sel, k_off, extra=(N, N + extra))
            rs[:, 6] = re[:, 6]  # cluster with no keys at all
            case = dict(q=q, k_perm=k, v_perm=v, perm_q=perm_q, q_offsets=q_off, range_start=rs, range_end=re,
                        scale=D ** -0.5)
            ref = varblock_attention_ref(**case).float()
            for cfg in cfgs if dtype != torch.float32 else [None]:
                out = varblock_attention_triton(**case, config=cfg) if cfg else varblock_attention(**case)
                torch.cuda.synchronize()
                err = ((out.float() - ref).norm() / ref.norm()).item()
                tol = {torch.bfloat16: 1e-2, torch.float16: 2e-3, torch.float32: 2e-3}[dtype]
                fin = bool(torch.isfinite(out).all())
                zero = bool((out[:, perm_q[0, q_off[0, 6]:q_off[0, 7]].long()] == 0).all()) if q_off[0, 7] > q_off[0, 6] else True
                good = fin and err < tol
                ok &= good
                log(f"check D={D} {str(dtype):15s} cfg={cfg} rel_err={err:.2e} finite={fin} "
                    f"{'OK' if good else 'FAIL'}")
    # all clusters selected == dense (within 2x bf16 SDPA error vs fp32)
    G, N, D = 12, 32760, 128
    q, k, v, src = make_inputs("wan1.3b")
    q, k, v = (x[0] for x in (q, k, v))
    perm_q, q_off = sort_by_cluster(torch.randint(0, 65, (G, N), device=dev), 65)
    perm_k, k_off = sort_by_cluster(torch.randint(0, 200, (G, N), device=dev), 200)
    idx = perm_k.long().unsqueeze(-1).expand(G, N, D)
    sel = torch.arange(200, device=dev, dtype=torch.int32).view(1, 1, -1).expand(G, 65, 200).contiguous()
    rs, re = selected_key_ranges(sel, k_off)
    out = varblock_attention(q, torch.gather(k, 1, idx), torch.gather(v, 1, idx), perm_q, q_off, rs, re, D ** -0.5)
    rows = torch.randperm(N, device=dev)[:512]
    e_sparse = rel_err_rows(out, q, k, v, rows)
    e_sdpa = rel_err_rows(dense_cudnn(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0))[0], q, k, v, rows)
    good = e_sparse <= 2 * e_sdpa
    ok &= good
    log(f"check all-selected wan1.3b shape: kernel rel_err={e_sparse:.2e}, cuDNN bf16 rel_err={e_sdpa:.2e} "
        f"{'OK' if good else 'FAIL'}")
    return ok


# ------------------------------------------------------------------------------ kernel-only

# (name, (BLOCK_M, BLOCK_N, num_warps, num_stages, mode, lazy)); mode 0 ranges, 1 gather, 2 flat
D128_VARIANTS = [
    ("m0 BM128 BN64 w8 s3", (128, 64, 8, 3, 0, False)),
    ("m0 lazy", (128, 64, 8, 3, 0, True)),
    ("m1 BM128 BN64 w8 s3", (128, 64, 8, 3, 1, False)),
    ("m1 lazy", (128, 64, 8, 3, 1, True)),
    ("m2 BM128 BN64 w8 s3", (128, 64, 8, 3, 2, False)),
    ("m2 lazy", (128, 64, 8, 3, 2, True)),
    ("m2 lazy s4", (128, 64, 8, 4, 2, True)),
    ("m0 lazy s4", (128, 64, 8, 4, 0, True)),
    ("m0 lazy BN128", (128, 128, 8, 3, 0, True)),
]
D64_VARIANTS = [
    ("m0 BM128 BN64 w4 s3", (128, 64, 4, 3, 0, False)),
    ("m0 lazy", (128, 64, 4, 3, 0, True)),
    ("m1 lazy", (128, 64, 4, 3, 1, True)),
    ("m2 lazy", (128, 64, 4, 3, 2, True)),
    ("m2 BM128 BN64 w4 s3", (128, 64, 4, 3, 2, False)),
    ("m2 lazy w8", (128, 64, 8, 3, 2, True)),
    ("m0 lazy BN128 w8", (128, 128, 8, 3, 0, True)),
    ("m2 lazy BN128 w8", (128, 128, 8, 3, 2, True)),
]


def kernel_only(name, density, variants, log, Ck=256):
    H, N, D, text, grid, _ = SHAPES[name]
    q, k, v, src = make_inputs(name)
    flops_dense = 4.0 * H * N * N * D
    t_cudnn = _bench(lambda: dense_cudnn(q, k, v))
    t_flash = _bench(lambda: dense_flash(q, k, v))
    top_k = max(1, round(density * Ck))
    lay = simple_layout(q[0], k[0], v[0], Ck=Ck, top_k=top_k, text=text)
    pairs = pairs_computed(lay["q_offsets"], lay["range_start"], lay["range_end"]).sum().item()
    dens = pairs / (H * N * N)
    nr = ((lay["range_end"] - lay["range_start"]) > 0).sum(-1).float().mean().item()
    rows_sel = (lay["range_end"] - lay["range_start"]).clamp_min(0).sum(-1).float().mean().item()
    log(f"[{name}] inputs={src} cuDNN {t_cudnn:.3f} ms ({tflops(flops_dense, t_cudnn):.0f} TFLOP/s) "
        f"flash {t_flash:.3f} ms ({tflops(flops_dense, t_flash):.0f}); top_k={top_k}/{Ck} density={dens:.3f} "
        f"ranges/cluster={nr:.1f} keys/cluster={rows_sel:.0f}")
    rows = torch.randperm(N, device=q.device)[:512]
    res = []
    for vname, cfg in variants:
        if cfg is not None and cfg[0] * D > 128 * 128 and D > 128:
            continue
        try:
            fn = (lambda c=cfg: varblock_attention_triton(**lay, config=c))
            out = fn()
            torch.cuda.synchronize()
            t = _bench(fn)
        except Exception as e:  # noqa: BLE001
            log(f"  {vname}: FAILED {type(e).__name__}: {str(e)[:200]}")
            continue
        ref_out = varblock_attention_triton(**lay, config=variants[0][1])
        diff = ((out.float() - ref_out.float()).norm() / ref_out.float().norm()).item()
        tf = tflops(4.0 * pairs * D, t)
        eff = tf / tflops(flops_dense, t_cudnn)
        ideal = dens * t_cudnn
        res.append(dict(shape=name, variant=vname, ms=t, tflops=tf, eff=eff, ideal=ideal, vs_ideal=t / ideal,
                        speedup=t_cudnn / t, density=dens, diff=diff))
        log(f"  {vname:22s} {t:8.3f} ms  {tf:6.0f} TFLOP/s  {100 * eff:5.1f}% of cuDNN  "
            f"{t / ideal:5.2f}x ideal  {t_cudnn / t:5.2f}x faster  (diff vs v0 {diff:.1e})")
    if res:
        best = min(res, key=lambda x: x["ms"])
        log(f"  best: {best['variant']}")
        from .kernels import varblock_attn as _va

        _va._GPU_DEFAULTS[D] = dict(variants)[best["variant"]]
    return dict(shape=name, cudnn=t_cudnn, flash=t_flash, density=dens, top_k=top_k, Ck=Ck, variants=res)


# ------------------------------------------------------------------------------ full pipeline

def full_pipeline(name, log, top_k=None, target_density=None, quick=False, label=None, max_density=None):
    """AdaCluster through the public API. Stages as the API runs them with a per-layer state:
    call 1 = calibration (multi-stage key clustering, output dense), call 2 = first sparse
    step (10 k-means iterations from the calibrated centroids), call 3+ = reuse (2 iterations).
    The attention kernel is timed alone on the exact layout the API built (captured)."""
    from . import AdaClusterConfig, ClusterState, api, sparse_attention

    H, N, D, text, grid, model = SHAPES[name]
    q, k, v, src = make_inputs(name)
    flops_dense = 4.0 * H * N * N * D
    t_cudnn = _bench(lambda: dense_cudnn(q, k, v))
    t_flash = _bench(lambda: dense_flash(q, k, v))
    cfg = AdaClusterConfig.for_model(model)
    if top_k is not None:
        cfg = cfg.replace(top_k=top_k)
    if max_density is not None:
        cfg = cfg.replace(max_density=max_density)
    if target_density is not None:  # headline runs: the density budget is the target
        cfg = cfg.replace(max_density=target_density)
    kw = dict(config=cfg, always_dense_range=(N - text, N)) if text else dict(config=cfg)

    captured = {}
    orig = api._attention_kernel

    def capturing(backend):
        fn, nm = orig(backend)

        def wrap(*a):
            captured["args"] = a
            return fn(*a)

        return wrap, nm

    # calibration call (fresh state): multi-stage key clustering + dense output
    def calib():
        st = ClusterState()
        return sparse_attention(q, k, v, state=st, **kw), st

    _, st_cal = calib()
    torch.cuda.synchronize()
    t_calib = _bench(lambda: calib(), warmup=1, rep=1)
    Ck = int(st_cal.k_clusters or 0)
    st = ClusterState()
    sparse_attention(q, k, v, state=st, **kw)  # calibration
    def first_sparse():
        st.calls = 0
        return sparse_attention(q, k, v, state=st, **kw)

    out, stats = first_sparse()
    torch.cuda.synchronize()
    stage_first = stats.get("stage")
    t_first = _bench(first_sparse, warmup=1, rep=50)
    sparse_attention(q, k, v, state=st, **kw)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    api._attention_kernel = capturing
    try:
        out, stats = sparse_attention(q, k, v, state=st, **kw)
    finally:
        api._attention_kernel = orig
    torch.cuda.synchronize()
    peak_extra = torch.cuda.max_memory_allocated() - base - out.numel() * out.element_size()
    stage_reuse = stats.get("stage")
    t_warm = _bench(lambda: sparse_attention(q, k, v, state=st, **kw))
    dens = float(stats["density"])
    a = captured.get("args")
    t_attn = tf_attn = float("nan")
    if a is not None:
        t_attn = _bench(lambda: varblock_attention(*a))
        pairs = pairs_computed(a[4], a[5], a[6]).sum().item()
        tf_attn = tflops(4.0 * pairs * D, t_attn)
        del a, captured["args"]
    rows = torch.randperm(N, device=q.device)[:512]
    err = rel_err_rows(out[0], q[0], k[0], v[0], rows)
    err_sdpa = rel_err_rows(dense_cudnn(q, k, v)[0], q[0], k[0], v[0], rows)
    res = dict(shape=label or name, cudnn=t_cudnn, flash=t_flash, calib=t_calib, first=t_first, warm=t_warm,
               attn=t_attn, tf_attn=tf_attn, tf_cudnn=tflops(flops_dense, t_cudnn), density=dens, err=err,
               err_sdpa=err_sdpa, peak_extra_mb=peak_extra / 2**20, top_k=cfg.top_k, max_density=cfg.max_density, Ck=int(stats.get("k_clusters", 0)),
               dense=bool(stats.get("dense")), reason=stats.get("reason", ""))
    log(f"[{res['shape']}] inputs={src} Ck={res['Ck']} top_k={cfg.top_k} max_density={cfg.max_density} stages {stage_first}/{stage_reuse} "
        f"cuDNN {t_cudnn:.3f} flash {t_flash:.3f} calib {t_calib:.3f} first {t_first:.3f} reuse {t_warm:.3f} "
        f"attn {t_attn:.3f} ms ({tf_attn:.0f} TFLOP/s vs cuDNN {res['tf_cudnn']:.0f}) density {dens:.3f} "
        f"err {err:.2e} (cuDNN {err_sdpa:.2e}) peak extra {peak_extra / 2**20:.0f} MiB dense={res['dense']} {res['reason']}")
    return res


def prove_wan13b(log):
    """sparse_attention on CUDA at Wan 1.3B's shape: all clusters selected == dense (within 2x
    the bf16 SDPA error vs fp32); default config -> error and density."""
    from . import AdaClusterConfig, ClusterState, sparse_attention

    H, N, D = 12, 32760, 128
    q, k, v, _ = make_inputs("wan1.3b")
    rows = torch.randperm(N, device=q.device)[:512]
    e_sdpa = rel_err_rows(dense_cudnn(q, k, v)[0], q[0], k[0], v[0], rows)
    cfg = AdaClusterConfig.for_model("wan", k_clusters=200, top_k=200, calibration_dense=False, max_density=1.0)
    out, st = sparse_attention(q, k, v, config=cfg, state=None)
    e_all = rel_err_rows(out[0], q[0], k[0], v[0], rows)
    ok = (not st["dense"]) and float(st["density"]) > 0.999 and e_all <= 2 * e_sdpa
    log(f"prove wan1.3b all-selected: density {float(st['density']):.4f} attention={st['attention']} "
        f"err {e_all:.2e} vs cuDNN {e_sdpa:.2e} -> {'OK' if ok else 'FAIL'}")
    cfg = AdaClusterConfig.for_model("wan")
    s = ClusterState()
    for _ in range(3):
        out, st = sparse_attention(q, k, v, config=cfg, state=s)
    e = rel_err_rows(out[0], q[0], k[0], v[0], rows)
    log(f"prove wan1.3b default config: stage {st['stage']} Ck {st['k_clusters']} top_k {st['top_k']} "
        f"density {float(st['density']):.3f} err {e:.2e} (cuDNN {e_sdpa:.2e}) dense={st['dense']} {st['reason']}")
    return ok


# ------------------------------------------------------------------------------ main

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="cogvideox,wan1.3b,wan14b,hunyuan,long")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--kernel-only", action="store_true")
    ap.add_argument("--variants", action="store_true", help="time several kernel configs (kernel-only)")
    ap.add_argument("--density", type=float, default=None, help="kernel-only target density")
    ap.add_argument("--ck", type=int, default=256, help="kernel-only key clusters")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--prove", action="store_true", help="also run the Wan 1.3B correctness proof")
    ap.add_argument("--prove-only", action="store_true")
    ap.add_argument("--headline", default="", help="comma list of shapes for headline-density runs (wan14b,long)")
    ap.add_argument("--unbudgeted", default="", help="comma list of shapes also run with max_density=1.0 (no cap)")
    ap.add_argument("--md", default=None, help="also write a markdown table to this file")
    args = ap.parse_args(argv)
    lines = []

    def log(s):
        print(s, flush=True)
        lines.append(s)

    log(env_header())
    log("cmd: python -m adacluster_core.bench " + " ".join(argv if argv is not None else sys.argv[1:]))
    if args.check:
        ok = check_kernel(log)
        log(f"CHECK {'PASSED' if ok else 'FAILED'}")
    shapes = [s for s in args.shapes.split(",") if s]
    md = []
    if args.kernel_only:
        md += ["| shape | variant | density | cuDNN ms | kernel ms | TFLOP/s (pairs) | % cuDNN | x ideal (d·cuDNN) | speedup |",
               "|---|---|---|---|---|---|---|---|---|"]
        for s in shapes:
            d = args.density if args.density is not None else HEADLINE_DENSITY.get(s, 0.15)
            D = SHAPES[s][2]
            vs = (D128_VARIANTS if D >= 128 else D64_VARIANTS) if args.variants else [("default", None)]
            r = kernel_only(s, d, vs, log, Ck=args.ck)
            for x in r["variants"]:
                md.append(f"| {s} | {x['variant']} | {x['density']:.3f} | {r['cudnn']:.3f} | {x['ms']:.3f} | "
                          f"{x['tflops']:.0f} | {100 * x['eff']:.0f}% | {x['vs_ideal']:.2f} | {x['speedup']:.2f}x |")
            torch.cuda.empty_cache()
    elif not args.prove_only:
        if args.prove:
            prove_wan13b(log)
        md += ["| shape | Ck | top_k / max_density | density | cuDNN ms | flash ms | calib call ms | first sparse ms | reuse ms | attn kernel ms | cluster+select ms | kernel TFLOP/s (cuDNN) | reuse/(d·cuDNN) | speedup reuse | rel err (cuDNN bf16) | peak extra MiB |",
               "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        runs = [(s, None, None) for s in shapes]
        runs += [(s, HEADLINE_DENSITY[s], None) for s in (args.headline.split(",") if args.headline else [])]
        runs += [(s, None, 1.0) for s in (args.unbudgeted.split(",") if args.unbudgeted else [])]
        for s, td, mdn in runs:
            try:
                r = full_pipeline(s, log, target_density=td, quick=args.quick, max_density=mdn,
                                  label=(f"{s}@{td:.0%}" if td else (f"{s} (max_density 1)" if mdn else None)))
            except Exception as e:  # noqa: BLE001
                import traceback

                log(f"[{s}] FAILED: {type(e).__name__}: {e}")
                log(traceback.format_exc()[-1500:])
                continue
            d = r["density"]
            md.append(f"| {r['shape']} | {r['Ck']} | {r['top_k']} / {r['max_density']:g} | {d:.3f} | {r['cudnn']:.2f} | {r['flash']:.2f} | "
                      f"{r['calib']:.2f} | {r['first']:.2f} | {r['warm']:.2f} | {r['attn']:.2f} | {r['warm'] - r['attn']:.2f} | "
                      f"{r['tf_attn']:.0f} ({r['tf_cudnn']:.0f}) | {r['warm'] / (d * r['cudnn']):.2f} | {r['cudnn'] / r['warm']:.2f}x | "
                      f"{r['err']:.2e} ({r['err_sdpa']:.2e}) | {r['peak_extra_mb']:.0f} |")
            torch.cuda.empty_cache()
    else:
        prove_wan13b(log)
    if md:
        log("")
        for l in md:
            log(l)
        if args.md:
            os.makedirs(os.path.dirname(os.path.abspath(args.md)), exist_ok=True)
            with open(args.md, "a") as f:
                f.write("\n".join(lines) + "\n\n")


if __name__ == "__main__":
    main()
