"""Permuted layout: tokens sorted by cluster, and selected key clusters turned into row ranges.

All functions are pure torch, run on any device, and never synchronise with the host, so they
are safe on the reuse-step hot path.
"""
from __future__ import annotations

import torch


def sort_by_cluster(labels: torch.Tensor, num_clusters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Group tokens by cluster.

    labels: int [G, N] cluster id per token, in [0, num_clusters).
    Returns perm int32 [G, N] (perm[g, r] = original index of permuted row r) and
    offsets int32 [G, C+1] (cluster c occupies permuted rows offsets[g, c]:offsets[g, c+1]).
    """
    G, N = labels.shape
    C = int(num_clusters)
    # narrowest key type: the radix sort does one pass per key byte (int16: 2 instead of 8)
    kdt = torch.int16 if C <= 32767 else torch.int32
    vals, perm = torch.sort(labels.to(kdt), dim=1, stable=True)
    # offsets[c] = first sorted position with label >= c (replaces a scatter_add + cumsum)
    bnd = torch.arange(C + 1, dtype=torch.int32, device=labels.device).view(1, C + 1).expand(G, C + 1)
    offsets = torch.searchsorted(vals.to(torch.int32), bnd.contiguous(), right=False)
    offsets[:, C] = N
    return perm.to(torch.int32), offsets.to(torch.int32)


def selected_key_ranges(
    sel: torch.Tensor,
    k_offsets: torch.Tensor,
    extra: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn selected key clusters into half-open row ranges of the permuted key buffer.

    sel: int [G, Cq, S] key-cluster ids per query cluster, -1 = unused slot.
    k_offsets: int [G, Ck+1] from `sort_by_cluster` on the key labels.
    extra: optional (start, stop) rows appended to every query cluster's ranges
        (always-attended tokens such as text, stored after the clustered keys).
    Returns (range_start, range_end), int32 [G, Cq, R] with R = S (+1 with extra).
    Selected clusters with adjacent ids are contiguous in the permuted buffer, so runs of
    consecutive ids are merged into one range; freed slots become empty (start == end) and
    are moved to the end so the kernel sees the real ranges first.
    """
    G, Cq, S = sel.shape
    Ck = k_offsets.shape[1] - 1
    valid = sel >= 0
    # unused slots sort last
    key = torch.where(valid, sel.to(torch.int64), torch.full_like(sel, Ck, dtype=torch.int64))
    key, _ = torch.sort(key, dim=-1)
    valid = key < Ck
    idx = key.clamp(max=max(Ck - 1, 0))
    offs = k_offsets.to(torch.int64).unsqueeze(1).expand(G, Cq, Ck + 1)
    start = torch.gather(offs, 2, idx)
    end = torch.gather(offs, 2, idx + 1)
    start = torch.where(valid, start, torch.zeros_like(start))
    end = torch.where(valid, end, torch.zeros_like(end))
    if S > 1:
        # a slot continues the previous one when its cluster id is the previous id + 1
        cont = torch.zeros_like(valid)
        cont[..., 1:] = valid[..., 1:] & valid[..., :-1] & (key[..., 1:] == key[..., :-1] + 1)
        # run id: increments at every slot that starts a new run
        head = valid & ~cont
        run = torch.cumsum(head.to(torch.int64), dim=-1) - 1  # [G, Cq, S], -1 before first head
        run = torch.where(valid, run, torch.full_like(run, S - 1))
        big = torch.iinfo(torch.int64).max
        rs = torch.full_like(start, big)
        re = torch.zeros_like(end)
        rs.scatter_reduce_(2, run, torch.where(valid, start, torch.full_like(start, big)), reduce="amin")
        re.scatter_reduce_(2, run, torch.where(valid, end, torch.zeros_like(end)), reduce="amax")
        n_runs = head.sum(-1, keepdim=True)
        slot = torch.arange(S, device=sel.device).view(1, 1, S)
        used = slot < n_runs
        start = torch.where(used, rs, torch.zeros_like(rs))
        end = torch.where(used, re, torch.zeros_like(re))
    if extra is not None:
        e0, e1 = int(extra[0]), int(extra[1])
        start = torch.cat([start, torch.full((G, Cq, 1), e0, dtype=start.dtype, device=start.device)], -1)
        end = torch.cat([end, torch.full((G, Cq, 1), e1, dtype=end.dtype, device=end.device)], -1)
    return start.to(torch.int32).contiguous(), end.to(torch.int32).contiguous()


def unselected_ranges(sel: torch.Tensor, num_clusters: int, base_row: int,
                      limit: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Row ranges over the pooled-tail virtual rows of the key clusters a query cluster did
    NOT select (config `pooled_tail`).

    Virtual row `base_row + j` stands for key cluster j. sel: int [G, Cq, S] selected ids
    (-1 = unused slot, any order, ids distinct). limit: optional int [G]: only ids < limit[g]
    are pooled (the caller orders the empty clusters last); default num_clusters.
    Returns (start, end) int32 [G, Cq, S+1]: the gaps between the sorted selected ids, i.e.
    the complement of the selection in [0, limit) shifted by base_row; empty gaps are (0, 0).
    Pure torch, no host sync.
    """
    G, Cq, S = sel.shape
    dev = sel.device
    if limit is None:
        lim = torch.full((G, 1, 1), int(num_clusters), dtype=torch.int64, device=dev)
    else:
        lim = limit.to(torch.int64).view(G, 1, 1)
    key = torch.where(sel >= 0, sel.to(torch.int64), lim.expand(G, Cq, S))
    key, _ = torch.sort(key, dim=-1)
    prev = torch.cat([torch.full((G, Cq, 1), -1, dtype=torch.int64, device=dev), key], -1)
    cur = torch.cat([key, lim.expand(G, Cq, 1)], -1)
    start = prev + 1
    end = torch.minimum(cur, lim)
    ok = end > start
    zero = torch.zeros_like(start)
    start = torch.where(ok, start + int(base_row), zero)
    end = torch.where(ok, end + int(base_row), zero)
    return start.to(torch.int32).contiguous(), end.to(torch.int32).contiguous()


def pairs_computed(q_offsets: torch.Tensor, range_start: torch.Tensor, range_end: torch.Tensor) -> torch.Tensor:
    """Number of query-key pairs the sparse kernel computes, per group: int64 [G]."""
    nq = (q_offsets[:, 1:] - q_offsets[:, :-1]).to(torch.int64)          # [G, Cq]
    nk = (range_end - range_start).clamp(min=0).to(torch.int64).sum(-1)  # [G, Cq]
    return (nq * nk).sum(-1)
