"""Benchmark inputs and timing helpers shared by the bench/ scripts (GPU).

SHAPES: name -> (heads, N total, D, text tokens, (t, h, w) grid of the video tokens, model key).
The always-dense rows (text) come last, except for PREFIX_FIRST shapes (MiniMax-H3 packs
[text | audio | video]: its 512 text + the audio rows first); `dense_range(name)` says where.
H3 rows from ComfyUI 0.33's own formulas (comfy_extras/nodes_minimax_h3.py): 1344x768 ->
24 x 42 grid; 124 frames (5 s) -> 37 latent frames, 207 audio frames (414 rows); 362 frames (15 s)
-> 107 latent frames, 603 audio frames (1206 rows).
"""
from __future__ import annotations

import datetime
import math
import subprocess

import torch
import torch.nn.functional as F

SHAPES = {
    "cogvideox": (30, 17776, 64, 0, (13, 32, 43), "cogvideox"),  # 17888 grid cut to 17776
    "wan1.3b": (12, 32760, 128, 0, (21, 30, 52), "wan"),
    "wan14b": (40, 75600, 128, 0, (21, 45, 80), "wan"),
    "hunyuan": (24, 119056, 128, 256, (33, 45, 80), "hunyuan"),
    "long": (24, 176400, 128, 0, (49, 60, 60), "wan"),
    "h3_5s": (56, 512 + 414 + 37 * 24 * 42, 128, 512 + 414, (37, 24, 42), "h3"),
    "h3_15s": (56, 512 + 1206 + 107 * 24 * 42, 128, 512 + 1206, (107, 24, 42), "h3"),
}
PREFIX_FIRST = {"h3_5s", "h3_15s"}


def dense_range(name: str) -> tuple[int, int] | None:
    """Where the shape's always-dense rows are: (N - text, N), (0, text) for PREFIX_FIRST, None."""
    _, N, _, text, _, _ = SHAPES[name]
    if not text:
        return None
    return (0, text) if name in PREFIX_FIRST else (N - text, N)


def make_inputs(name: str, device="cuda", dtype=torch.bfloat16, seed=0):
    """Structured video-like q, k, v [1, H, N, D] of a named shape (text tokens last)."""
    from .structured import make_structured_qkv

    H, N, D, text, grid, _ = SHAPES[name]
    q, k, v, _ = make_structured_qkv(B=1, H=H, grid=grid, D=D, text_tokens=text, dtype=dtype, device=device,
                                     seed=seed)
    n = q.shape[2]
    if n > N:  # grid rounding: cut the video tokens to the exact N
        nv = N - text
        q, k, v = (torch.cat([x[:, :, :nv], x[:, :, n - text:]], 2) if text else x[:, :, :N] for x in (q, k, v))
    if name in PREFIX_FIRST:   # the text rows move to the front
        q, k, v = (torch.cat([x[:, :, N - text:], x[:, :, :N - text]], 2) for x in (q, k, v))
    return q.contiguous(), k.contiguous(), v.contiguous()


def bench_ms(fn, warmup=25, rep=100) -> float:
    """Median ms of fn() by CUDA events (triton.testing.do_bench)."""
    import triton

    return triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median")


def once_ms(fn) -> float:
    """Wall time of a single call (synchronised), ms: cold costs (compile, calibration)."""
    import time

    torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) * 1e3


def dense_cudnn(q, k, v):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v)


def rel_err_rows(out, q, k, v, rows) -> float:
    """rel. L2 error of out[..., rows, :] vs fp32 dense attention of those query rows
    (q, k, v, out: [H, N, D])."""
    D = q.shape[-1]
    num = den = 0.0
    for g0 in range(0, q.shape[0], 4):
        qs = q[g0:g0 + 4, rows].float()
        s = (qs @ k[g0:g0 + 4].float().transpose(1, 2)) * D ** -0.5
        ref = torch.softmax(s, -1) @ v[g0:g0 + 4].float()
        del s
        o = out[g0:g0 + 4, rows].float()
        num += (o - ref).pow(2).sum().item()
        den += ref.pow(2).sum().item()
    return math.sqrt(num / max(den, 1e-30))


def env_header() -> str:
    import triton

    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception:
        smi = torch.cuda.get_device_name()
    return (f"card/driver: {smi}; torch {torch.__version__}; triton {triton.__version__}; "
            f"cudnn {torch.backends.cudnn.version()}; date {datetime.date.today()}")
