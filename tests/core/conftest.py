"""Helpers for the adacluster_core tests (CPU; Triton tests need TRITON_INTERPRET=1)."""
from __future__ import annotations

import os

import pytest
import torch

# internal errors must surface in tests instead of falling back to dense
os.environ.setdefault("ADACLUSTER_STRICT", "1")

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
try:
    import triton  # noqa: F401
    HAVE_TRITON = True
except Exception:  # pragma: no cover
    HAVE_TRITON = False

TRITON_OK = HAVE_TRITON and (INTERPRET or torch.cuda.is_available())
needs_triton = pytest.mark.skipif(not TRITON_OK, reason="Triton needs CUDA or TRITON_INTERPRET=1")
BACKENDS = ["torch", pytest.param("triton", marks=needs_triton)]


def forbid_host_sync(monkeypatch):
    """Make every host-synchronising tensor op raise (undo with monkeypatch.undo())."""
    def boom(*a, **kw):
        raise AssertionError("host sync on the reuse path")
    for name in ("item", "__bool__", "__int__", "__float__", "tolist", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, boom)
    monkeypatch.setattr(torch, "nonzero", boom)


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def clustered(B, H, N, D, n_centers=8, spread=3.0, noise=0.3, seed=0, dtype=torch.float32, dev="cpu"):
    """Tokens drawn around a few centres per head: structured, clusterable input."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(B, H, n_centers, D, generator=g) * spread
    idx = torch.randint(0, n_centers, (B, H, N), generator=g)
    x = torch.gather(centers, 2, idx.unsqueeze(-1).expand(B, H, N, D))
    x = x + noise * torch.randn(B, H, N, D, generator=g)
    return x.to(dtype=dtype, device=dev)


def qkv_clustered(B, H, N, D, dtype=torch.float32, seed=0, dev="cpu", n_centers=8):
    q = clustered(B, H, N, D, n_centers, spread=1.0, noise=0.3, seed=seed, dtype=dtype, dev=dev)
    k = clustered(B, H, N, D, n_centers, spread=1.0, noise=0.3, seed=seed + 1, dtype=dtype, dev=dev)
    g = torch.Generator().manual_seed(seed + 2)
    v = torch.randn(B, H, N, D, generator=g).to(dtype=dtype, device=dev)
    return q, k, v
