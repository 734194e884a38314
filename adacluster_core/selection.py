"""Choosing the key clusters each query cluster attends to.

All functions are small batched GEMMs / top-k in torch (fp32), no host synchronisation.
Output convention (docs/DESIGN.md): `sel [G, Cq, S]` key-cluster ids, -1 = unused slot; int32 by
default, int64 in the sparse call (`select_clusters(..., index_dtype=torch.int64)`, as api._select
asks: top-k's int64 ids, the layout indexes with them, so the reuse call skips two casts).
"""
from __future__ import annotations

import math

import torch


def _empty_mask(kmax: torch.Tensor | None, k_counts: torch.Tensor | None) -> torch.Tensor:
    if k_counts is not None:
        return k_counts <= 0
    return ~torch.isfinite(kmax[..., 0])  # empty clusters have kmax = -inf


def tensorquest_scores(cq: torch.Tensor, kmax: torch.Tensor, kmin: torch.Tensor,
                       k_counts: torch.Tensor | None = None) -> torch.Tensor:
    """Upper bound of q̂·k over the members of each key cluster.

    cq: [G, Cq, D] query-cluster representatives; kmax, kmin: float32 [G, Ck, D].
    S = relu(c) @ Kmaxᵀ + min(c, 0) @ Kminᵀ (fp32) -> [G, Cq, Ck]; empty clusters -inf.
    """
    c = cq.float()
    empty = _empty_mask(kmax, k_counts)
    # empty clusters have infinite bounds: zero them for the GEMM, mask afterwards
    kx = kmax.float().masked_fill(empty.unsqueeze(-1), 0.0)
    kn = kmin.float().masked_fill(empty.unsqueeze(-1), 0.0)
    s = torch.bmm(c.clamp_min(0), kx.transpose(1, 2))
    s += torch.bmm(c.clamp_max(0), kn.transpose(1, 2))
    return s.masked_fill_(empty.unsqueeze(1), float("-inf"))


def _topk_ids(scores: torch.Tensor, top_k: int, index_dtype: torch.dtype = torch.int32) -> torch.Tensor:
    Ck = scores.shape[-1]
    k = max(1, min(int(top_k), Ck))
    val, idx = torch.topk(scores, k, dim=-1)
    return torch.where(val > float("-inf"), idx, -1).to(index_dtype)


def select_tensorquest(cq, kmax, kmin, top_k: int, k_counts=None, index_dtype=torch.int32) -> torch.Tensor:
    """top_k key clusters per query cluster by the TensorQuest bound -> [G, Cq, min(top_k, Ck)]."""
    return _topk_ids(tensorquest_scores(cq, kmax, kmin, k_counts), top_k, index_dtype)


def centroid_scores(cq: torch.Tensor, ck: torch.Tensor, k_counts: torch.Tensor | None = None) -> torch.Tensor:
    """q_c · k_c (fp32) [G, Cq, Ck]; empty key clusters -inf."""
    s = torch.bmm(cq.float(), ck.float().transpose(1, 2))
    if k_counts is not None:
        s = s.masked_fill((k_counts <= 0).unsqueeze(1), float("-inf"))
    return s


def select_centroid(cq, ck, top_k: int, k_counts=None, index_dtype=torch.int32) -> torch.Tensor:
    """top_k key clusters per query cluster by centroid score -> [G, Cq, min(top_k, Ck)]."""
    return _topk_ids(centroid_scores(cq, ck, k_counts), top_k, index_dtype)


def select_top_p(cq, ck, k_counts: torch.Tensor, p: float, scale: float,
                 q_norm: torch.Tensor | None = None, index_dtype=torch.int32) -> torch.Tensor:
    """SVG2-style cluster-size-weighted top-p.

    Probability of key cluster j for a query cluster: ∝ |j| · exp(scale · q_c·k_j), with
    q_c = normalised-query centroid × the cluster's mean query norm (`q_norm` [G, Cq], 1 if
    None). Keeps the smallest set of clusters (in decreasing probability) whose mass reaches
    p. Returns int32 [G, Cq, Ck], kept ids first, padded with -1.
    """
    c = cq.float()
    if q_norm is not None:
        c = c * q_norm.float().unsqueeze(-1)
    s = torch.bmm(c, ck.float().transpose(1, 2)) * scale  # [G, Cq, Ck]
    cnt = k_counts.float().unsqueeze(1)
    logw = s + torch.log(cnt.clamp_min(1e-30))
    logw = logw.masked_fill(cnt <= 0, float("-inf"))
    prob = torch.softmax(logw, dim=-1)
    prob = torch.nan_to_num(prob, nan=0.0)
    pv, idx = torch.sort(prob, dim=-1, descending=True)
    before = torch.cumsum(pv, dim=-1) - pv
    keep = (before < p) & (pv > 0)
    keep[..., 0] = keep[..., 0] | (pv[..., 0] > 0)
    return torch.where(keep, idx, -1).to(index_dtype)


def apply_density_budget(sel: torch.Tensor, k_counts: torch.Tensor, max_density: float,
                         n_keys: int | None = None) -> torch.Tensor:
    """Cap each query cluster's selection at a key budget (static shapes, no host sync).

    sel: int [G, Cq, S] key-cluster ids in decreasing score order, -1 slots after the valid ones
    (the output of the selectors above). k_counts: int [G, Ck] cluster sizes. Keeps the prefix
    whose cumulative key count is <= floor(max_density x sum(k_counts[g])) (at least the first
    valid cluster); dropped slots become -1. max_density >= 1 returns sel unchanged.
    n_keys: sum(k_counts[g]) when the caller knows it (every clustered key counted, no mask):
    the budget is then a host number instead of five tensor ops.
    """
    if max_density >= 1.0 or sel.numel() == 0:
        return sel
    G, Cq, S = sel.shape
    Ck = k_counts.shape[-1]
    # the -1 slots trail the valid ones and stay -1 whatever they count, so they need no mask
    n = torch.gather(k_counts.unsqueeze(1).expand(G, Cq, Ck), 2, sel.clamp_min(0).long())
    cum = torch.cumsum(n, dim=-1, dtype=torch.int64)
    if n_keys is not None:  # the same float64 product and floor as below, on the host
        budget = math.floor(float(n_keys) * float(max_density))
    else:
        total = k_counts.sum(-1, dtype=torch.int64).to(torch.float64)
        budget = torch.floor(total * float(max_density)).to(torch.int64).view(G, 1, 1)
    keep = cum <= budget
    keep[..., 0] = True  # at least the first cluster (a -1 there stays -1)
    return torch.where(keep, sel, -1)


def select_clusters(method: str, *, cq, ck, kmax, kmin, k_counts, top_k: int, top_p: float,
                    scale: float, q_norm=None, max_density: float = 1.0, n_keys: int | None = None,
                    index_dtype: torch.dtype = torch.int32) -> torch.Tensor:
    """Dispatch on `AdaClusterConfig.selection`, then apply the density budget (needs k_counts;
    n_keys: see apply_density_budget). Ids in index_dtype (int32 or int64)."""
    if method == "tensorquest":
        sel = select_tensorquest(cq, kmax, kmin, top_k, k_counts, index_dtype)
    elif method == "centroid":
        sel = select_centroid(cq, ck, top_k, k_counts, index_dtype)
    elif method == "top_p":
        sel = select_top_p(cq, ck, k_counts, top_p, scale, q_norm, index_dtype)
    else:
        raise ValueError(f"selection must be one of ('tensorquest', 'top_p', 'centroid'), got {method!r}")
    if k_counts is not None and max_density < 1.0:
        sel = apply_density_budget(sel, k_counts, max_density, n_keys)
    return sel
