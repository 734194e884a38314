"""The cluster order: tokens grouped by cluster label (a stable sort) and the label dtype the sort
keys on. Used by `clustering` (k-means layout) and by `kernels.centroid_update` (its own sort when
the caller passes none); imports nothing of the package, so neither depends on the other."""
from __future__ import annotations

import torch


_BOUNDARIES: dict = {}  # (G, C, dtype, device) -> arange(C + 1) per group (see _boundaries)


def _boundaries(G: int, C: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Contiguous [G, C + 1] = arange(C + 1) per group (searchsorted copies a non-contiguous
    input). Cached: the reuse call asks for the same few shapes every step."""
    key = (G, C, dtype, device)
    b = _BOUNDARIES.get(key)
    if b is None:
        if len(_BOUNDARIES) > 256:  # many layer shapes: start over rather than grow
            _BOUNDARIES.clear()
        b = torch.arange(C + 1, dtype=dtype, device=device).view(1, C + 1).expand(G, C + 1).contiguous()
        _BOUNDARIES[key] = b
    return b


def label_dtype(num_clusters: int) -> torch.dtype:
    """Narrowest sort key for labels in [0, num_clusters): the radix sort does one pass per key
    byte (int16: 2 instead of 8). The assignment kernel writes its labels in this dtype."""
    return torch.int16 if int(num_clusters) <= 32767 else torch.int32


def sort_by_cluster(labels: torch.Tensor, num_clusters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Group tokens by cluster.

    labels: int [G, N] cluster id per token, in [0, num_clusters).
    Returns perm int64 [G, N] (perm[g, r] = original index of permuted row r; torch.sort's
    indices, not copied) and offsets int32 [G, C+1] (cluster c occupies permuted rows
    offsets[g, c]:offsets[g, c+1]; offsets[g, C] = N since every label is < C).
    Two ops when labels already have `label_dtype(num_clusters)`.
    """
    G, N = labels.shape
    C = int(num_clusters)
    kdt = label_dtype(C)
    vals, perm = torch.sort(labels.to(kdt), dim=1, stable=True)
    # offsets[c] = first sorted position with label >= c (replaces a scatter_add + cumsum)
    offsets = torch.searchsorted(vals, _boundaries(G, C, kdt, labels.device), out_int32=True)
    return perm, offsets
