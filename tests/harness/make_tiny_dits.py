#!/usr/bin/env python3
"""Tiny random-weight video DiT checkpoints that ComfyUI's UNETLoader detects.

Pure torch + safetensors (no ComfyUI import). Keys follow the official checkpoint naming,
which ComfyUI loads as-is. EVERY key the ComfyUI model defines is written: a missing weight
would be left uninitialised (garbage) by ComfyUI's loader.

Detection rules that shape these files (comfy/model_detection.py, ComfyUI 0.3.75):
  * Wan: num_heads = dim // 128 (head_dim 128, so dim must be a multiple of 128);
    text_embedding.0 must be (dim, 4096); in_dim = patch_embedding.weight.shape[1];
    out_dim = head.head.weight.shape[0] // 4; out_dim 48 selects Wan 2.2 TI2V-5B.
  * HunyuanVideo 1.0: num_heads = hidden // 128, vector_in.* must exist (else
    HunyuanImage 2.1 matches first), context width from txt_in.input_embedder.
  * HunyuanVideo 1.5: patch 1x1x1, 65 in / 32 out channels, double blocks only,
    no vector_in, vision_in of width 1152 (SigLIP) + cond_type_embedding.
  * MiniMax-H3 (ComfyUI >= 0.33): video_patch_proj + audio_patch_proj; head_dim from
    blocks.0.attn.q_norm (128: the split-half rope rotates 6 x inv_freq = 96 dims), heads from
    qkv_proj, text width from condition_proj, 24-ch video latent (patch 1x2x2), 32-ch audio.

API:  make_all(outdir, dim=256, layers=2) -> {"wan21": path, "wan22_5b": path,
                                              "hunyuan": path, "hunyuan15": path}
CLI:  python -m tests.harness.make_tiny_dits OUTDIR [--dim 256] [--layers 2] [--only wan21,...]
"""
from __future__ import annotations

import argparse
import os
from typing import Callable, Dict

import torch
from safetensors.torch import save_file

# file names are part of the harness API (prompts refer to them)
FILENAMES = {
    "wan21": "tiny_wan21_t2v.safetensors",
    "wan22_5b": "tiny_wan22_5b_ti2v.safetensors",
    "hunyuan": "tiny_hunyuan_video_t2v.safetensors",
    "hunyuan15": "tiny_hunyuan_video15_t2v.safetensors",
    "h3": "tiny_minimax_h3_t2va.safetensors",
}
WAN_TEXT_DIM = 4096          # fixed by ComfyUI's Wan detection
HUNYUAN_TEXT_DIM = 4096      # LLaVA-Llama hidden size (any width is detected)
HUNYUAN_VEC_DIM = 768        # CLIP-L pooled
HUNYUAN15_TEXT_DIM = 3584    # Qwen2.5-VL hidden size
HUNYUAN15_VISION_DIM = 1152  # SigLIP, selects HunyuanVideo 1.5
H3_TEXT_DIM = 64             # Qwen3-VL width in the real model (5120); any width is detected


class _Init:
    def __init__(self, seed: int):
        self.g = torch.Generator().manual_seed(seed)

    def w(self, *shape, std=0.02):
        return torch.randn(*shape, generator=self.g) * std


def _ones(*s):
    return torch.ones(*s)


def _zeros(*s):
    return torch.zeros(*s)


def wan_state_dict(dim=256, layers=2, ffn=512, in_dim=16, out_dim=16, freq_dim=256, seed=0):
    assert dim % 128 == 0, "ComfyUI derives Wan num_heads = dim // 128"
    r = _Init(seed)
    W = r.w
    sd = {
        "patch_embedding.weight": W(dim, in_dim, 1, 2, 2), "patch_embedding.bias": _zeros(dim),
        "text_embedding.0.weight": W(dim, WAN_TEXT_DIM), "text_embedding.0.bias": _zeros(dim),
        "text_embedding.2.weight": W(dim, dim), "text_embedding.2.bias": _zeros(dim),
        "time_embedding.0.weight": W(dim, freq_dim), "time_embedding.0.bias": _zeros(dim),
        "time_embedding.2.weight": W(dim, dim), "time_embedding.2.bias": _zeros(dim),
        "time_projection.1.weight": W(6 * dim, dim), "time_projection.1.bias": _zeros(6 * dim),
        "head.modulation": W(1, 2, dim),
        "head.head.weight": W(out_dim * 4, dim), "head.head.bias": _zeros(out_dim * 4),
    }
    for i in range(layers):
        p = f"blocks.{i}."
        sd[p + "modulation"] = W(1, 6, dim)
        for att in ("self_attn", "cross_attn"):
            for n in "qkvo":
                sd[f"{p}{att}.{n}.weight"] = W(dim, dim)
                sd[f"{p}{att}.{n}.bias"] = _zeros(dim)
            sd[f"{p}{att}.norm_q.weight"] = _ones(dim)
            sd[f"{p}{att}.norm_k.weight"] = _ones(dim)
        sd[p + "norm3.weight"] = _ones(dim)
        sd[p + "norm3.bias"] = _zeros(dim)
        sd[p + "ffn.0.weight"] = W(ffn, dim)
        sd[p + "ffn.0.bias"] = _zeros(ffn)
        sd[p + "ffn.2.weight"] = W(dim, ffn)
        sd[p + "ffn.2.bias"] = _zeros(dim)
    return sd


def _mlp(W, prefix, in_dim, hid):
    return {prefix + "in_layer.weight": W(hid, in_dim), prefix + "in_layer.bias": _zeros(hid),
            prefix + "out_layer.weight": W(hid, hid), prefix + "out_layer.bias": _zeros(hid)}


def hunyuan_state_dict(hid=256, layers=2, ctx=HUNYUAN_TEXT_DIM, in_ch=16, out_ch=16,
                       vec_in=HUNYUAN_VEC_DIM, mlp_ratio=4, v15=False, seed=0):
    assert hid % 128 == 0, "ComfyUI derives Hunyuan num_heads = hidden // 128"
    r = _Init(seed)
    W = r.w
    m = hid * mlp_ratio
    hd = 128
    pt = (1, 1, 1) if v15 else (1, 2, 2)
    npatch = pt[0] * pt[1] * pt[2]
    sd = {"img_in.proj.weight": W(hid, in_ch, *pt), "img_in.proj.bias": _zeros(hid),
          "txt_in.input_embedder.weight": W(hid, ctx), "txt_in.input_embedder.bias": _zeros(hid),
          "final_layer.linear.weight": W(out_ch * npatch, hid), "final_layer.linear.bias": _zeros(out_ch * npatch),
          "final_layer.adaLN_modulation.1.weight": W(2 * hid, hid),
          "final_layer.adaLN_modulation.1.bias": _zeros(2 * hid)}
    sd.update(_mlp(W, "time_in.", 256, hid))
    if vec_in:
        sd.update(_mlp(W, "vector_in.", vec_in, hid))
    if v15:
        V = HUNYUAN15_VISION_DIM
        sd.update({"vision_in.proj.0.weight": _ones(V), "vision_in.proj.0.bias": _zeros(V),
                   "vision_in.proj.1.weight": W(V, V), "vision_in.proj.1.bias": _zeros(V),
                   "vision_in.proj.3.weight": W(hid, V), "vision_in.proj.3.bias": _zeros(hid),
                   "vision_in.proj.4.weight": _ones(hid), "vision_in.proj.4.bias": _zeros(hid),
                   "cond_type_embedding.weight": W(3, hid)})
    sd.update(_mlp(W, "txt_in.t_embedder.", 256, hid))
    sd.update(_mlp(W, "txt_in.c_embedder.", ctx, hid))
    for b in range(2):  # the token refiner has 2 blocks (fixed in ComfyUI)
        p = f"txt_in.individual_token_refiner.blocks.{b}."
        sd.update({p + "adaLN_modulation.1.weight": W(2 * hid, hid), p + "adaLN_modulation.1.bias": _zeros(2 * hid),
                   p + "norm1.weight": _ones(hid), p + "norm1.bias": _zeros(hid),
                   p + "self_attn.qkv.weight": W(3 * hid, hid), p + "self_attn.qkv.bias": _zeros(3 * hid),
                   p + "self_attn.proj.weight": W(hid, hid), p + "self_attn.proj.bias": _zeros(hid),
                   p + "norm2.weight": _ones(hid), p + "norm2.bias": _zeros(hid),
                   p + "mlp.0.weight": W(m, hid), p + "mlp.0.bias": _zeros(m),
                   p + "mlp.2.weight": W(hid, m), p + "mlp.2.bias": _zeros(hid)})
    for i in range(layers):
        p = f"double_blocks.{i}."
        for s in ("img", "txt"):
            sd.update({f"{p}{s}_mod.lin.weight": W(6 * hid, hid), f"{p}{s}_mod.lin.bias": _zeros(6 * hid),
                       f"{p}{s}_attn.qkv.weight": W(3 * hid, hid), f"{p}{s}_attn.qkv.bias": _zeros(3 * hid),
                       f"{p}{s}_attn.norm.query_norm.scale": _ones(hd),
                       f"{p}{s}_attn.norm.key_norm.scale": _ones(hd),
                       f"{p}{s}_attn.proj.weight": W(hid, hid), f"{p}{s}_attn.proj.bias": _zeros(hid),
                       f"{p}{s}_mlp.0.weight": W(m, hid), f"{p}{s}_mlp.0.bias": _zeros(m),
                       f"{p}{s}_mlp.2.weight": W(hid, m), f"{p}{s}_mlp.2.bias": _zeros(hid)})
        if v15:
            continue  # HunyuanVideo 1.5 has double blocks only
        p = f"single_blocks.{i}."
        sd.update({p + "linear1.weight": W(3 * hid + m, hid), p + "linear1.bias": _zeros(3 * hid + m),
                   p + "linear2.weight": W(hid, hid + m), p + "linear2.bias": _zeros(hid),
                   p + "norm.query_norm.scale": _ones(hd), p + "norm.key_norm.scale": _ones(hd),
                   p + "modulation.lin.weight": W(3 * hid, hid), p + "modulation.lin.bias": _zeros(3 * hid)})
    return sd


def h3_state_dict(hid=256, layers=2, ffn=512, text_dim=H3_TEXT_DIM, t_dim=128, refiner_layers=1, seed=0):
    """MiniMax-H3 (comfy/ldm/minimax/model.py of ComfyUI 0.33), every key of the module."""
    assert hid % 128 == 0, "head_dim 128: heads = hidden // 128"
    r = _Init(seed)
    W = r.w
    hd = 128
    sd = {"video_patch_proj.weight": W(hid, 24 * 4), "video_patch_proj.bias": _zeros(hid),
          "audio_patch_proj.weight": W(hid, 32), "audio_patch_proj.bias": _zeros(hid),
          "condition_proj.weight": W(hid, text_dim), "condition_proj.bias": _zeros(hid),
          "time_embedder.proj_in.weight": W(hid, 256), "time_embedder.proj_in.bias": _zeros(hid),
          "time_embedder.proj_out.weight": W(t_dim, hid), "time_embedder.proj_out.bias": _zeros(t_dim),
          "rope.inv_freq": 10000.0 ** (-torch.arange(16, dtype=torch.float32) / 16),
          "token_refiner.final_norm.weight": _ones(hid),
          "final_layer.norm.weight": _ones(hid),
          "final_layer.adaln_proj.linear.weight": W(2 * hid, t_dim), "final_layer.adaln_proj.linear.bias": _zeros(2 * hid),
          "final_layer.video_out.weight": W(24 * 4, hid), "final_layer.video_out.bias": _zeros(24 * 4),
          "final_layer.audio_out.weight": W(32, hid), "final_layer.audio_out.bias": _zeros(32)}

    def block(p, adaln):
        sd.update({p + "norm1.weight": _ones(hid), p + "norm2.weight": _ones(hid),
                   p + "attn.qkv_proj.weight": W(3 * hid, hid, std=0.05),
                   p + "attn.q_norm.weight": _ones(hd), p + "attn.k_norm.weight": _ones(hd),
                   p + "attn.out_proj.weight": W(hid, hid),
                   p + "mlp.fc1.weight": W(2 * ffn, hid), p + "mlp.fc2.weight": W(hid, ffn)})
        if adaln:
            sd.update({p + "adaln_proj.linear.weight": W(6 * 3 * hid, t_dim),
                       p + "adaln_proj.linear.bias": _zeros(6 * 3 * hid)})

    for i in range(refiner_layers):
        block(f"token_refiner.blocks.{i}.", adaln=False)
    for i in range(layers):
        block(f"blocks.{i}.", adaln=True)
    return sd


BUILDERS: Dict[str, Callable[[int, int], dict]] = {
    "wan21": lambda dim, layers: wan_state_dict(dim, layers),
    "wan22_5b": lambda dim, layers: wan_state_dict(dim, layers, in_dim=48, out_dim=48),
    "hunyuan": lambda dim, layers: hunyuan_state_dict(dim, layers),
    "hunyuan15": lambda dim, layers: hunyuan_state_dict(dim, layers, ctx=HUNYUAN15_TEXT_DIM, in_ch=65,
                                                        out_ch=32, vec_in=None, v15=True),
    "h3": lambda dim, layers: h3_state_dict(dim, layers),
}


# made only when asked for by name: no ComfyUI before 0.33 knows the model (tests that load every
# default checkpoint in-process would fail on it)
OPT_IN = ("h3",)


def make_all(outdir, dim: int = 256, layers: int = 2, only=None, verbose: bool = False) -> Dict[str, str]:
    """Write the tiny checkpoints into outdir (skipping ones that already exist); return name -> path."""
    os.makedirs(outdir, exist_ok=True)
    paths = {}
    for name, build in BUILDERS.items():
        if (only and name not in only) or (not only and name in OPT_IN):
            continue
        path = os.path.join(str(outdir), FILENAMES[name])
        if not os.path.exists(path):
            sd = {k: v.to(torch.float32).contiguous() for k, v in build(dim, layers).items()}
            tmp = path + ".tmp"
            save_file(sd, tmp)
            os.replace(tmp, path)
            if verbose:
                n = sum(v.numel() for v in sd.values())
                print(f"{path}: {len(sd)} tensors, {n / 1e6:.2f} M params, {os.path.getsize(path) / 1e6:.1f} MB")
        paths[name] = path
    return paths


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("outdir")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--only", default="", help="comma-separated subset of " + ",".join(BUILDERS))
    a = ap.parse_args(argv)
    only = [s for s in a.only.split(",") if s] or None
    for name, path in make_all(a.outdir, a.dim, a.layers, only=only, verbose=True).items():
        print(name, path)


if __name__ == "__main__":
    main()
