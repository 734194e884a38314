#!/usr/bin/env python3
"""A tiny random-weight Wan 2.1 VAE that ComfyUI's VAELoader detects (test-only).

ComfyUI 0.3.75 reads the Wan 2.1 VAE width from `decoder.head.0.gamma` (comfy/sd.py), so a
dim-16 model (3.6 M parameters, ~14 MB) loads through the real VAELoader / VAEDecode path. The
state dict comes from ComfyUI's own WanVAE module (so every key is there), with weights set
here: ComfyUI's ops leave them uninitialised. Norm gains 1, biases 0, conv weights
N(0, 1/fan_in), the output conv scaled down so the decoded frames stay inside [-1, 1] (no
clipping: pixel differences follow latent differences).

Needs ComfyUI importable: run it with .comfyui on sys.path (the harness runs it as a subprocess).
    python tests/harness/make_tiny_vae.py OUT.safetensors --comfy .comfyui
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

FILENAME = "tiny_wan21_vae.safetensors"
DIM = 16


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
