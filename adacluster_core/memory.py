"""The GPU memory one sparse call needs, and whether it is free (issue 26: never worse than dense).

`sparse_call_bytes` is a pure function of the call's shapes, dtype and config: the peak memory
the call adds on top of its (already allocated) q, k, v, output included. `fits(need, free)`
compares it with the free memory (`free_bytes`: the driver's free memory plus what PyTorch's
caching allocator holds unused). The patcher asks before every sparse call
(`nodes/memory_guard.py`); a call that does not fit runs dense with the reason `memory`.

What one call allocates (docs/KERNEL_NOTES.md, "Memory"; bytes, G = B·H groups, e = element size):
  output                 B·H·N·D·e (dense attention allocates the same)
  K / V permuted copies  2·G·N·D·e, only with layout.KV_ROWS == "copied"
  per-token indices      labels, sort keys / temporaries, permutations of queries and keys,
                         the key row index: ~ROW_INDEX_BYTES per token and group
  cluster tensors        centroids, bounds, pooled-tail keys / values, selection scores / bias:
                         ~CLUSTER_COPIES·G·(Cq + Ck)·D·4 + SELECT_COPIES·G·Cq·Ck·4
  calibration            the multi-stage key clustering's fp32 copy of the keys (G·N·D·4) and
                         its distances (the call's output then comes from dense attention)
  top_p selection        an fp32 copy of the queries for their norms (G·N·D·4)
The constants are upper estimates (measured peaks: bench/memory.py); SLACK_BYTES covers the
allocator's rounding and the launch's small buffers.
"""
from __future__ import annotations

from typing import Optional

import torch

ROW_INDEX_BYTES = 96       # per token and group: labels (2) + sort keys / values / temporaries + perms (8 each)
CLUSTER_COPIES = 8         # fp32 [G, C, D] tensors alive at once (centroids, bounds, tail, co-selection order)
SELECT_COPIES = 4          # fp32 [G, Cq, Ck] tensors (scores, top-k, tail bias)
SLACK_BYTES = 64 << 20     # allocator rounding, tensor descriptors, small per-call tensors
DEFAULT_K_CLUSTERS = 800   # Ck estimate when neither the config nor the layer's state knows it yet
KV_PREFERENCE = ("copied", "indexed")   # the faster K / V mode first (layout.KV_MODES), the leaner next


def sparse_call_bytes(B: int, H: int, N: int, D: int, elem_size: int, *, q_clusters: int = 65,
                      k_clusters: Optional[int] = None, kv_rows: str = "indexed", calibrating: bool = False,
                      calibration_dense: bool = True, top_p: bool = False, pooled_tail: bool = True) -> int:
    """Peak bytes one sparse call adds to the already allocated q, k, v [B, H, N, D] (output
    included). Pure: shapes, element size and the config's relevant fields only.
    kv_rows: "indexed" (rows gathered in the kernel) | "copied" (permuted K / V copies);
    calibrating: the layer's first sparse step (multi-stage key clustering); with
    calibration_dense its output comes from dense attention and no sparse work follows."""
    G = B * H
    e = int(elem_size)
    Ck = int(k_clusters) if k_clusters else DEFAULT_K_CLUSTERS
    Cq = int(q_clusters)
    out = G * N * D * e
    rows = G * N * ROW_INDEX_BYTES
    clusters = CLUSTER_COPIES * G * (Cq + Ck) * D * 4 + SELECT_COPIES * G * (Cq + 1) * Ck * 4
    # measured (H100, bench/memory.py): indexed peaks at 2.0x the output, copied at 3.2x; the second
    # output-sized buffer of the indexed path is part of the copied path's copies
    sparse = 2 * out + rows + clusters
    if kv_rows == "copied":
        sparse += out
    if top_p:
        sparse += G * N * D * 4
    if not calibrating:
        return sparse
    # multi-stage key clustering: fp32 keys + distances + labels, then the k-means of its stages
    calib = G * N * D * 4 + G * N * (4 + 8) + rows + clusters
    if calibration_dense:   # + the dense output and dense attention's own buffer (measured 4.0x the output)
        return calib + 2 * out
    return max(calib, sparse)


def config_call_bytes(B: int, H: int, N: int, D: int, elem_size: int, cfg, *, calibrating: bool = False,
                      k_clusters: Optional[int] = None, kv_rows: Optional[str] = None) -> int:
    """`sparse_call_bytes` with the fields taken from an AdaClusterConfig (and layout.KV_ROWS)."""
    if kv_rows is None:
        from .layout import KV_ROWS as kv_rows
    return sparse_call_bytes(B, H, N, D, elem_size, q_clusters=cfg.q_clusters,
                             k_clusters=k_clusters or cfg.k_clusters, kv_rows=kv_rows, calibrating=calibrating,
                             calibration_dense=cfg.calibration_dense, top_p=cfg.selection == "top_p",
                             pooled_tail=cfg.pooled_tail)


def free_bytes(device) -> Optional[int]:
    """Memory a new allocation on `device` can get: the driver's free memory plus what PyTorch's
    caching allocator reserved but does not use. None off CUDA (no limit known)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free) + int(torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def fits(need: int, free: Optional[int]) -> bool:
    """True when `need` bytes (plus SLACK_BYTES) are free; an unknown `free` (None) always fits."""
    return free is None or int(need) + SLACK_BYTES <= int(free)
