"""Choosing the key clusters each query cluster attends to.

All functions are small batched GEMMs / top-k in torch (fp32), no host synchronisation.
Output convention (docs/DESIGN.md): `sel int32 [G, Cq, S]` key-cluster ids, -1 = unused slot.
"""
from __future__ import annotations

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
    kx = torch.where(empty.unsqueeze(-1), torch.zeros_like(kmax), kmax.float())
    kn = torch.where(empty.unsqueeze(-1), torch.zeros_like(kmin), kmin.float())
    s = torch.bmm(c.clamp_min(0), kx.transpose(1, 2)) + torch.bmm(c.clamp_max(0), kn.transpose(1, 2))
    return s.masked_fill(empty.unsqueeze(1), float("-inf"))


def _topk_ids(scores: torch.Tensor, top_k: int) -> torch.Tensor:
    Ck = scores.shape[-1]
    k = max(1, min(int(top_k), Ck))
    val, idx = torch.topk(scores, k, dim=-1)
    return torch.where(val > float("-inf"), idx, torch.full_like(idx, -1)).to(torch.int32)


def select_tensorquest(cq, kmax, kmin, top_k: int, k_counts=None) -> torch.Tensor:
    """top_k key clusters per query cluster by the TensorQuest bound -> int32 [G, Cq, min(top_k, Ck)]."""
    return _topk_ids(tensorquest_scores(cq, kmax, kmin, k_counts), top_k)


def centroid_scores(cq: torch.Tensor, ck: torch.Tensor, k_counts: torch.Tensor | None = None) -> torch.Tensor:
    """q_c · k_c (fp32) [G, Cq, Ck]; empty key clusters -inf."""
    s = torch.bmm(cq.float(), ck.float().transpose(1, 2))
    if k_counts is not None:
        s = s.masked_fill((k_counts <= 0).unsqueeze(1), float("-inf"))
    return s


def select_centroid(cq, ck, top_k: int, k_counts=None) -> torch.Tensor:
    """top_k key clusters per query cluster by centroid score -> int32 [G, Cq, min(top_k, Ck)]."""
    return _topk_ids(centroid_scores(cq, ck, k_counts), top_k)


def select_top_p(cq, ck, k_counts: torch.Tensor, p: float, scale: float,
                 q_norm: torch.Tensor | None = None) -> torch.Tensor:
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
    return torch.where(keep, idx, torch.full_like(idx, -1)).to(torch.int32)


def apply_density_budget(sel: torch.Tensor, k_counts: torch.Tensor, max_density: float) -> torch.Tensor:
    """Cap each query cluster's selection at a key budget (static shapes, no host sync).

    sel: int [G, Cq, S] key-cluster ids in decreasing score order, -1 slots after the valid ones
    (the output of the selectors above). k_counts: int [G, Ck] cluster sizes. Keeps the prefix
    whose cumulative key count is <= floor(max_density x sum(k_counts[g])) (at least the first
    valid cluster); dropped slots become -1. max_density >= 1 returns sel unchanged.
    """
    if max_density >= 1.0 or sel.numel() == 0:
        return sel
    G, Cq, S = sel.shape
    Ck = k_counts.shape[-1]
    valid = sel >= 0
    cnt = k_counts.to(torch.int64)
    n = torch.gather(cnt.unsqueeze(1).expand(G, Cq, Ck), 2, sel.clamp_min(0).to(torch.int64))
    n = torch.where(valid, n, torch.zeros_like(n))
    cum = torch.cumsum(n, dim=-1)
    budget = torch.floor(cnt.sum(-1).to(torch.float64) * float(max_density)).to(torch.int64)
    keep = valid & (cum <= budget.view(G, 1, 1))
    keep[..., 0] = valid[..., 0]
    return torch.where(keep, sel, torch.full_like(sel, -1))


def select_clusters(method: str, *, cq, ck, kmax, kmin, k_counts, top_k: int, top_p: float,
                    scale: float, q_norm=None, max_density: float = 1.0) -> torch.Tensor:
    """Dispatch on `AdaClusterConfig.selection`, then apply the density budget (needs k_counts)."""
    if method == "tensorquest":
        sel = select_tensorquest(cq, kmax, kmin, top_k, k_counts)
    elif method == "centroid":
        sel = select_centroid(cq, ck, top_k, k_counts)
    elif method == "top_p":
        sel = select_top_p(cq, ck, k_counts, top_p, scale, q_norm)
    else:
        raise ValueError(f"selection must be one of ('tensorquest', 'top_p', 'centroid'), got {method!r}")
    if k_counts is not None and max_density < 1.0:
        sel = apply_density_budget(sel, k_counts, max_density)
    return sel
