#!/usr/bin/env python3
"""Tiny models for the A/B (AdaCluster Compare) tests, test-only:

* a random-weight Wan 2.1 VAE that ComfyUI's VAELoader detects. ComfyUI 0.3.75 reads the Wan 2.1
  VAE width from `decoder.head.0.gamma` (comfy/sd.py), so a dim-16 model (3.6 M parameters, ~14 MB)
  loads through the real VAELoader / VAEDecode path. The state dict comes from ComfyUI's own WanVAE
  module (so every key is there), with weights set here: ComfyUI's ops leave them uninitialised.
  Norm gains 1, biases 0, conv weights N(0, 1/fan_in), the output conv scaled down so the decoded
  frames stay inside [-1, 1] (no clipping: pixel differences follow latent differences).
* a "sharp attention" variant of the tiny Wan 2.1 DiT (make_tiny_dits.wan_state_dict with the
  self-attention q/k RMS-norm gains x4 and the output projection x25): in the plain tiny model
  attention is near-uniform and adds little to the residual stream, so any sparse run decodes to
  within ~70 dB of dense; here attention shapes the video and PSNR lands in a readable range.

The VAE needs ComfyUI importable: `make_tiny_vae` runs this file as a subprocess with .comfyui on
sys.path.
    cd .comfyui && PYTHONPATH=. ../.venv/bin/python ../tests/harness/make_ab_models.py OUT.safetensors
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

FILENAME = "tiny_wan21_vae.safetensors"
SHARP_WAN21_FILENAME = "tiny_wan21_t2v_sharp_attention.safetensors"
DIM = 16
SHARP_QK_GAIN, SHARP_O_GAIN = 4.0, 25.0


def build_state_dict(dim: int = DIM, seed: int = 0) -> dict:
    import torch

    import comfy.cli_args
    comfy.cli_args.args.cpu = True
    import comfy.ldm.wan.vae as wan_vae

    m = wan_vae.WanVAE(dim=dim, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                       temperal_downsample=[False, True, True], dropout=0.0)
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in m.state_dict().items():
        if k.endswith("gamma"):
            t = torch.ones(v.shape)
        elif k.endswith("bias"):
            t = torch.zeros(v.shape)
        else:
            fan_in = max(1, v[0].numel())
            t = torch.randn(v.shape, generator=g) / fan_in ** 0.5
            if k == "decoder.head.2.weight":
                t = t * 0.3  # keep the decoded frames mostly inside [-1, 1]
        sd[k] = t.to(torch.float32).contiguous()
    return sd


def make_tiny_vae(outdir, comfy_dir, python: str | None = None) -> str:
    """Write outdir/FILENAME (once) by running this file with ComfyUI importable; return its path."""
    path = os.path.join(str(outdir), FILENAME)
    if not os.path.exists(path):
        os.makedirs(str(outdir), exist_ok=True)
        env = dict(os.environ, PYTHONPATH=str(comfy_dir) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        r = subprocess.run([python or sys.executable, os.path.abspath(__file__), path], cwd=str(comfy_dir), env=env,
                           capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise RuntimeError(f"making the tiny VAE failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
    return path


def make_sharp_wan21(outdir) -> str:
    """Write outdir/SHARP_WAN21_FILENAME (once, pure torch); return its path."""
    import torch
    from safetensors.torch import save_file

    from tests.harness.make_tiny_dits import wan_state_dict

    path = os.path.join(str(outdir), SHARP_WAN21_FILENAME)
    if not os.path.exists(path):
        os.makedirs(str(outdir), exist_ok=True)
        sd = wan_state_dict(256, 2)
        for k in sd:
            if ".self_attn.norm_q." in k or ".self_attn.norm_k." in k:
                sd[k] = sd[k] * SHARP_QK_GAIN
            elif ".self_attn.o.weight" in k:
                sd[k] = sd[k] * SHARP_O_GAIN
        tmp = path + ".tmp"
        save_file({k: v.to(torch.float32).contiguous() for k, v in sd.items()}, tmp)
        os.replace(tmp, path)
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--dim", type=int, default=DIM)
    a = ap.parse_args(argv)
    from safetensors.torch import save_file
    tmp = a.out + ".tmp"
    save_file(build_state_dict(a.dim), tmp)
    os.replace(tmp, a.out)


if __name__ == "__main__":
    main()
