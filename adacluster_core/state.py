"""ClusterState: what one attention layer (and one CFG branch) carries between calls."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class ClusterState:
    """Per-layer (+ CFG branch) cache owned by the caller (the patcher).

    q_centroids  float32 [B, H, Cq, D] centroids of the L2-normalised queries (None = cold).
    k_centroids  float32 [B, H, Ck, D] key centroids (None = cold).
    k_clusters   the layer's key-cluster count found by the multi-stage procedure (adaptive
                 mode), None until computed. The patcher may copy it between CFG branches.
    k_cap        optional N_max for the multi-stage procedure (None = N // 3).
    dense        layer judged hard to compress (or marked dense by `plan_layers`): every later
                 call runs dense. `dense_reason` says why.
    calls        number of calls that updated the centroids (sparse calls).

    Centroids whose shape does not match a call are ignored (cold start), never an error;
    they are moved to the call's device if needed.
    """

    q_centroids: Optional[torch.Tensor] = None
    k_centroids: Optional[torch.Tensor] = None
    k_clusters: Optional[int] = None
    k_cap: Optional[int] = None
    dense: bool = False
    dense_reason: str = ""
    calls: int = 0

    def reset(self) -> None:
        """Forget everything (new run)."""
        self.q_centroids = None
        self.k_centroids = None
        self.k_clusters = None
        self.k_cap = None
        self.dense = False
        self.dense_reason = ""
        self.calls = 0

    def nbytes(self) -> int:
        n = 0
        for t in (self.q_centroids, self.k_centroids):
            if t is not None:
                n += t.numel() * t.element_size()
        return n

    def to(self, device) -> "ClusterState":
        """Move the centroids to `device` in place; returns self."""
        if self.q_centroids is not None:
            self.q_centroids = self.q_centroids.to(device)
        if self.k_centroids is not None:
            self.k_centroids = self.k_centroids.to(device)
        return self

    @staticmethod
    def _match(t: Optional[torch.Tensor], shape: tuple, device) -> Optional[torch.Tensor]:
        if t is None or tuple(t.shape) != tuple(shape):
            return None
        return t.to(device=device, dtype=torch.float32)
