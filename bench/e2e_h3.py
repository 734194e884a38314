#!/usr/bin/env python3
"""MiniMax-H3 whole-step benchmark through ComfyUI 0.33's own model code (GPU).

Builds `comfy.ldm.minimax.model.MiniMaxH3Model` at its real width (hidden 5376, 56 heads x 128,
FFN 14336) with random bf16 weights and `--layers` DiT blocks (the real model has 50; the per-block
work is identical, so step times scale with the block count: `--layers 50` needs ~60 GB of weights),
and times one denoising forward on the packed t2va sequence [text 512 | audio | video], unpatched
(ComfyUI's own attention, SDPA) vs patched through the pack's wrapper + override (nodes/patcher.py,
the code path users run), with the H3 preset:
  * a warmup step, the last warmup step (it calibrates: dense + the multi-stage key clustering),
  * the first sparse step (cold query k-means), a reuse step (warm start);
  * real 8-step generations (turbo schedule, shift 12, every step run): dense, the first patched
    generation and the second (key-cluster counts from the plan cache);
  * the 50-step projection from the step times; peak GPU memory of a dense and a patched forward;
    the reuse step's rel. L2 error vs the dense forward at the same sigma (random weights: not a
    quality figure).

usage: python bench/e2e_h3.py --comfy DIR [--clips 5s,15s] [--layers 10] [--preset balanced] [--md FILE]
DIR: ComfyUI >= 0.33 source (comfy-aimdo and comfy-kitchen importable).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.e2e_dit import import_comfy, import_patcher, timed  # noqa: E402

CLIPS = {  # ComfyUI 0.33's formulas (nodes_minimax_h3.temporal_shape): 1344x768 -> latent 48 x 84
    "5s": dict(frames=124, latent_t=37, audio_t=207),
    "15s": dict(frames=362, latent_t=107, audio_t=603),
    "tiny": dict(frames=39, latent_t=12, audio_t=65, h=8, w=16),   # CPU smoke test (--tiny)
}
TINY_DIMS = dict(hidden_size=256, num_attention_heads=2, ffn_hidden_size=512, text_dim=64, time_embed_dim=128,
                 time_embed_hidden_size=256)
SHIFT = 12.0   # H3's video sigma shift (supported_models.MiniMaxH3.sampling_settings)


class FlowShift:
    """model_sampling stand-in for the patcher's warmup: percent -> sigma with H3's shift."""

    @staticmethod
    def percent_to_sigma(p):
        t = 1.0 - p
        return SHIFT * t / (1 + (SHIFT - 1) * t)


def schedule(steps: int, device) -> torch.Tensor:
    return torch.tensor([FlowShift.percent_to_sigma(i / steps) for i in range(steps)] + [0.0], device=device)


@torch.no_grad()
def build(layers: int, device, dims: dict):
    import comfy.ops
    from comfy.ldm.minimax.model import MiniMaxH3Model
    dm = MiniMaxH3Model(num_layers=layers, token_refiner_num_layers=1, dtype=torch.bfloat16, device=device,
                        operations=comfy.ops.disable_weight_init, **dims)
    g = torch.Generator(device=device).manual_seed(0)
    for name, p in dm.named_parameters():
        if p.ndim == 1 and "norm" in name:
            p.fill_(1.0)
        elif name.endswith("bias"):
            p.zero_()
        else:
            p.normal_(0.0, 1.0 / math.sqrt(max(1, p[0].numel() if p.ndim > 1 else p.numel())), generator=g)
    dm.rope.inv_freq.copy_(10000.0 ** (-torch.arange(16, dtype=torch.float32, device=device) / 16) * 0.1)
    return dm.eval().requires_grad_(False)


def inputs(clip: dict, device, hidden: int, seed=0):
    from comfy.ldm.minimax.model import PackedLayout
    g = torch.Generator(device=device).manual_seed(seed)
    h, w = clip.get("h", 48), clip.get("w", 84)
    video = torch.randn(1, 24, clip["latent_t"], h, w, device=device, generator=g)
    audio = torch.randn(1, 32, 2, clip["audio_t"], device=device, generator=g)
    ctx = torch.randn(1, 512, hidden, device=device, dtype=torch.bfloat16, generator=g)   # refined text
    payload = {"layout": PackedLayout(512, clip["latent_t"], h, w, clip["audio_t"])}
    return [video, audio], ctx, payload


def forward_fn(dm, x, ctx, payload, sched, run=None, wrapper=None):
    import comfy.patcher_extension as pe

    def fwd(sigma: float):
        to = {"sigmas": torch.tensor([sigma], device=ctx.device), "sample_sigmas": sched, "cond_or_uncond": [0]}
        if run is not None:
            to["optimized_attention_override"] = run.override
            to["wrappers"] = {pe.WrappersMP.DIFFUSION_MODEL: {"adacluster": [wrapper]}}
        return dm(list(x), torch.tensor([sigma * 1000.0], device=ctx.device), ctx, transformer_options=to,
                  minimax_payload=dict(payload))
    return fwd


def peak_gib(fn) -> float:
    if not torch.cuda.is_available():
        fn()
        return float("nan")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**30


def rel(a, b) -> float:
    a = torch.cat([t.float().flatten() for t in a])
    b = torch.cat([t.float().flatten() for t in b])
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


@torch.inference_mode()
def bench_clip(P, name: str, args, device) -> dict:
    clip = CLIPS[name]
    dims = TINY_DIMS if name == "tiny" else {}
    dm = build(args.layers, device, dims)
    x, ctx, payload = inputs(clip, device, dims.get("hidden_size", 5376))
    n_vid = clip["latent_t"] * clip.get("h", 48) // 2 * clip.get("w", 84) // 2
    cuda = device.type == "cuda"
    print(f"\n=== H3 {name}: {args.layers} blocks, {n_vid} video rows + {512 + 2 * clip['audio_t']} prefix rows; "
          f"weights {torch.cuda.memory_allocated() / 2**30 if cuda else 0:.1f} GiB ===", flush=True)
    s50, s8 = schedule(50, device), schedule(8, device)
    dense50 = forward_fn(dm, x, ctx, payload, s50)
    dense50(0.5)
    t_dense, _ = timed(lambda: dense50(0.5), 2)
    peak_dense = peak_gib(lambda: dense50(0.5))
    cfg = sys.modules[P.__package__ + ".config_widgets"].preset_config("h3", args.preset)
    patcher = type("Patcher", (), {"model": type("M", (), {"model_sampling": FlowShift()})()})()

    def new_run():
        run = P.PatchHolder(cfg, None, args.preset)
        run.override = P.make_override(run, None)
        return run, P._diffusion_model_wrapper_factory(run)

    # --- step times on the 50-step schedule ---
    run, wrapper = new_run()
    run.begin(patcher)
    pf = forward_fn(dm, x, ctx, payload, s50, run, wrapper)
    sig = s50.tolist()
    w = sum(1 for s in sig[:-1] if s > FlowShift.percent_to_sigma(cfg.warmup) + 1e-6)
    t_warm, _ = timed(lambda: pf(sig[0]))
    for ca in list(run.compiles.values()):   # a real run hides the compile behind its warmup steps
        ca.wait(900)
    t_cal, _ = timed(lambda: pf(sig[w - 1]))          # the last warmup step calibrates
    t_first, _ = timed(lambda: pf(sig[w]))
    t_reuse, out = timed(lambda: pf(sig[w + 1]))
    t_reuse2, out = timed(lambda: pf(sig[w + 2]))
    t_reuse = min(t_reuse, t_reuse2)
    peak_sparse = peak_gib(lambda: pf(sig[w + 3]))
    _, ref = timed(lambda: dense50(sig[w + 2]))
    err = rel(out, ref)
    P.end_run(run, patcher)
    summ = run.last_run
    proj_dense50 = 50 * t_dense
    proj_sparse50 = (w - 1) * t_warm + t_cal + t_first + (50 - w - 1) * t_reuse
    # --- real 8-step generations ---
    d8 = forward_fn(dm, x, ctx, payload, s8)
    t0 = time.perf_counter()
    for s in s8.tolist()[:-1]:
        d8(s)
    sync()
    gen8_dense = time.perf_counter() - t0
    run8, wrapper8 = new_run()
    p8 = forward_fn(dm, x, ctx, payload, s8, run8, wrapper8)
    gens = []
    for _ in range(2):
        run8.begin(patcher)
        t0 = time.perf_counter()
        for s in s8.tolist()[:-1]:
            p8(s)
        sync()
        gens.append(time.perf_counter() - t0)
        P.end_run(run8, patcher)
        s8summ = run8.last_run
        print(f"8-step generation: {gens[-1]:.1f} s vs dense {gen8_dense:.1f} s; {s8summ.get('summary')}", flush=True)
    res = dict(clip=f"H3 {name} ({args.preset}, {args.layers} blocks)", video_rows=n_vid, dense_ms=t_dense,
               warm_ms=t_warm, calib_ms=t_cal, first_ms=t_first, reuse_ms=t_reuse, step_speedup=t_dense / t_reuse,
               density=summ.get("mean_density"), rel_err=err, warmup_steps_50=w,
               proj50_speedup=proj_dense50 / proj_sparse50, gen8_dense_s=gen8_dense, gen8_first_s=gens[0],
               gen8_second_s=gens[1], gen8_first_speedup=gen8_dense / gens[0], gen8_second_speedup=gen8_dense / gens[1],
               peak_dense_gib=peak_dense, peak_sparse_gib=peak_sparse, summary=summ.get("summary"))
    print(json.dumps(res, indent=1, default=str), flush=True)
    del dm, x, ctx, out, ref
    if cuda:
        torch.cuda.empty_cache()
    return res


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--comfy", default=os.environ.get("ADACLUSTER_COMFY_DIR"))
    ap.add_argument("--clips", default="5s,15s")
    ap.add_argument("--layers", type=int, default=10)
    ap.add_argument("--preset", default="balanced", choices=["quality", "balanced", "fast"])
    ap.add_argument("--md", default=None)
    a = ap.parse_args()
    if not a.comfy:
        sys.exit("pass --comfy DIR (ComfyUI >= 0.33 source)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    import_comfy(a.comfy)
    P = import_patcher()
    rows = []
    for c in a.clips.split(","):
        try:
            rows.append(bench_clip(P, c.strip(), a, device))
        except Exception as e:  # keep the other clip's numbers
            import traceback
            traceback.print_exc()
            rows.append(dict(clip=c, error=repr(e)))
    hdr = ("| clip | video rows | dense step ms | last warmup (calibrating) ms | first sparse ms | reuse ms | "
           "step speedup | density | rel err | 50-step projected | 8-step dense s | 8-step 1st gen | 8-step 2nd gen | "
           "peak dense / patched GiB |")
    lines = [hdr, "|" + "---|" * 14]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['clip']} | error: {r['error'][:100]} |" + " |" * 12)
            continue
        lines.append(f"| {r['clip']} | {r['video_rows']} | {r['dense_ms']:.0f} | {r['calib_ms']:.0f} | {r['first_ms']:.0f} | "
                     f"{r['reuse_ms']:.0f} | {r['step_speedup']:.2f}x | {(r['density'] or float('nan')):.3f} | "
                     f"{r['rel_err']:.3f} | {r['proj50_speedup']:.2f}x | {r['gen8_dense_s']:.1f} | "
                     f"{r['gen8_first_s']:.1f} s = {r['gen8_first_speedup']:.2f}x | "
                     f"{r['gen8_second_s']:.1f} s = {r['gen8_second_speedup']:.2f}x | "
                     f"{r['peak_dense_gib']:.2f} / {r['peak_sparse_gib']:.2f} |")
    print("\n" + "\n".join(lines))
    if a.md:
        with open(a.md, "a") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
