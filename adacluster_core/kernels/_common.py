"""What the kernel files share: small helpers, the launch table, the custom ops' CPU dispatch.

* Helpers: `interpreting`, `next_pow2`, `as_bhnd`, `capability`.
* **The launch table** (`LAUNCH_TABLE`, `launch_config`): every kernel's launch configuration, keyed
  by kernel, head dim, dtype, GPU compute capability and, where a kernel's choice depends on it,
  the token count. Nothing reads the environment at launch. bench/ (and the tests) set a config
  through `launch_overrides`, a context manager, instead.
* **The custom ops' CPU kernel** (`register_cpu`): each kernel is a torch custom op whose CUDA
  implementation launches Triton; its CPU implementation runs the same Triton kernel through the
  interpreter under TRITON_INTERPRET=1 (the CPU tests) and the fp32 torch reference
  (`kernels.torch_ref`) otherwise.

torch.library.custom_op / register_fake / register_kernel and `device_types` exist from torch 2.4,
the oldest torch the pack supports (README), so nothing here is feature-tested.
"""
from __future__ import annotations

import contextlib
import os
from typing import Callable, NamedTuple, Optional

import torch


def interpreting() -> bool:
    """TRITON_INTERPRET=1: Triton kernels run in numpy on the CPU."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def next_pow2(n: int) -> int:
    """Smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(0, int(n) - 1).bit_length()


def as_bhnd(x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """View x ([G, N, D] or [B, H, N, D], any strides) as 4-D without copying.
    Returns (x4 [B, H, N, D], G, H)."""
    if x.dim() == 3:
        x4 = x.unsqueeze(1)
    elif x.dim() == 4:
        x4 = x
    else:
        raise ValueError(f"expected a [G, N, D] or [B, H, N, D] tensor, got shape {tuple(x.shape)}")
    B, H = x4.shape[0], x4.shape[1]
    return x4, B * H, H


def capability(device: torch.device) -> Optional[tuple[int, int]]:
    """The GPU's compute capability, e.g. (9, 0) on H100 / H200; None where the kernels run in the
    interpreter (TRITON_INTERPRET=1) or off CUDA: the launch table's interpreter rows."""
    if interpreting() or device.type != "cuda":
        return None
    return torch.cuda.get_device_capability(device)


# ---- the launch table -----------------------------------------------------------------------
# Configs: varblock_attn (BLOCK_M, BLOCK_N, num_warps, num_stages); kmeans_assign (BLOCK_N, BLOCK_C,
# num_warps, num_stages) by the padded head dim (BLOCK_D); centroid_update (BLOCK_N, num_warps);
# gather_kv (BLOCK_R, num_warps). Measured on Hopper (H200 2026-11-27 / 2026-12-02, H100 2026-12-05;
# docs/KERNEL_NOTES.md, bench/kernel_sweep.py).

class Row(NamedTuple):
    kernel: str
    arch: str                                  # "hopper" (capability 9.x), "any" GPU, "interpreter"
    config: tuple
    head_dims: Optional[tuple] = None          # None: any head dim
    dtypes: Optional[tuple] = None             # None: any dtype
    below_tokens: Optional[int] = None         # only when 0 < n_tokens < this
    min_rows_per_cluster: Optional[int] = None  # only when n_tokens >= this x n_clusters


_F32 = (torch.float32,)
LAUNCH_TABLE: tuple[Row, ...] = (
    # varblock_attn. Hopper: the measured table; below 150K tokens D = 128 uses half-height query
    # tiles (more, shorter programs balance better when heads are short: -12 % at 32.8K); fp32
    # tiles are twice as large, BLOCK_M 64 at D >= 128. Other GPUs run the same rows, as they did
    # before the table was keyed by architecture (not measured there).
    Row("varblock_attn", "interpreter", (16, 16, 4, 1)),  # the interpreter is numpy: small tiles
    Row("varblock_attn", "any", (64, 64, 4, 3), head_dims=(128,), below_tokens=150_000),
    Row("varblock_attn", "any", (64, 64, 8, 3), head_dims=(128,), dtypes=_F32),
    Row("varblock_attn", "any", (128, 64, 4, 3), head_dims=(16, 32, 64)),
    Row("varblock_attn", "any", (128, 64, 8, 3), head_dims=(128,)),
    Row("varblock_attn", "any", (64, 32, 8, 2), head_dims=(256,)),
    # kmeans_assign. Hopper (H200, wan14b: K vs 400 centroids / normalised Q vs 65): (128, 128, 4, 2)
    # 1.04 / 0.56 ms, best of 11 ((64, 64, 4, 1) 1.17 / 0.60, (128, 64, 8, 2) 1.30 / 1.02). Any other
    # GPU or head dim: the code's small default (a 128 x 128 tile pair in 2 stages is ~96 KB of
    # shared memory, at the limit of sm86 / sm89 cards).
    Row("kmeans_assign", "interpreter", (64, 64, 4, 1)),
    Row("kmeans_assign", "hopper", (128, 128, 4, 2), head_dims=(64, 128)),
    Row("kmeans_assign", "any", (64, 64, 4, 1)),
    # centroid_update by the mean cluster size (H200, wan14b): ~1160-row query clusters (Cq 65):
    # (128 rows, 4 warps) 0.40 ms vs 0.52 / 0.72; ~190-row key clusters (Ck 400): (64, 2) 0.45 ms vs
    # 0.83 for (64, 4) and 1.46 for the old (32, 4). No tensor cores or shared-memory pipeline:
    # every GPU runs these rows, as before.
    Row("centroid_update", "interpreter", (64, 4)),
    Row("centroid_update", "any", (128, 4), min_rows_per_cluster=512),
    Row("centroid_update", "any", (64, 2)),
    # gather_kv: row copies, 32 rows x 4 warps on every GPU (0.75 ms at Wan-14B on H200)
    Row("gather_kv", "interpreter", (16, 4)),
    Row("gather_kv", "any", (32, 4)),
)
KERNELS = ("varblock_attn", "kmeans_assign", "centroid_update", "gather_kv")
FLAGS = ("varblock_descriptors",)   # the attention kernel's K / V load path (TMA or pointers)

_OVERRIDES: dict = {}  # set by `launch_overrides` only (bench/, tests)


def _arch(cap: Optional[tuple[int, int]]) -> str:
    if cap is None:
        return "interpreter"
    return "hopper" if cap[0] == 9 else "gpu"


def _matches(row: Row, head_dim: int, dtype: torch.dtype, n_tokens: int, n_clusters: int) -> bool:
    if row.head_dims is not None and head_dim not in row.head_dims:
        return False
    if row.dtypes is not None and dtype not in row.dtypes:
        return False
    if row.below_tokens is not None and not 0 < n_tokens < row.below_tokens:
        return False
    return row.min_rows_per_cluster is None or n_tokens >= row.min_rows_per_cluster * n_clusters


def launch_config(kernel: str, head_dim: int, dtype: torch.dtype, capability: Optional[tuple[int, int]],
                  n_tokens: int = 0, n_clusters: int = 0) -> tuple:
    """The launch config of `kernel` (see `LAUNCH_TABLE` for each kernel's tuple).

    capability: `capability(device)` ((9, 0) on Hopper; None = the interpreter rows). The
    architecture's own rows are tried first, then the "any" rows; in each, the first row whose
    head dim, dtype and sizes match wins. A `launch_overrides` config for this kernel wins over
    the table. Raises ValueError when nothing matches (an unsupported head dim)."""
    if kernel in _OVERRIDES:
        return tuple(_OVERRIDES[kernel])
    arch = _arch(capability)
    for want in ((arch,) if arch == "interpreter" else (arch, "any")):
        for row in LAUNCH_TABLE:
            if row.kernel == kernel and row.arch == want and _matches(row, head_dim, dtype, n_tokens, n_clusters):
                return row.config
    raise ValueError(f"{kernel}: no launch config for head dim {head_dim}, {dtype}, capability {capability}")


def launch_override(name: str, default=None):
    """The value `launch_overrides` set for `name` (a kernel, or a flag such as
    "varblock_descriptors"), else `default`."""
    return _OVERRIDES.get(name, default)


@contextlib.contextmanager
def launch_overrides(**configs):
    """Override launch configs inside a `with` block (bench/ sweeps and the tests only; the
    library never calls it): `launch_overrides(varblock_attn=(64, 64, 4, 3))`, keys from KERNELS,
    values the kernel's config tuple, plus `varblock_descriptors=True | False` (the K / V load path
    of the attention kernel). Process-wide and not thread-safe: single-threaded scripts only."""
    unknown = set(configs) - set(KERNELS) - set(FLAGS)
    if unknown:
        raise ValueError(f"launch_overrides: unknown names {sorted(unknown)}")
    saved = dict(_OVERRIDES)
    _OVERRIDES.update({k: v for k, v in configs.items() if v is not None})
    try:
        yield
    finally:
        _OVERRIDES.clear()
        _OVERRIDES.update(saved)


# ---- the custom ops' CPU kernel ---------------------------------------------------------------

def register_cpu(op, triton_impl: Callable, reference_impl: Callable) -> None:
    """Register `op`'s CPU kernel: `triton_impl` (the Triton kernel, run by the interpreter) under
    TRITON_INTERPRET=1, else `reference_impl` (fp32 torch). Both take the op's arguments."""
    def cpu_kernel(*args):
        return triton_impl(*args) if interpreting() else reference_impl(*args)

    op.register_kernel("cpu")(cpu_kernel)
