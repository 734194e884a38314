"""K-means on queries / keys, the multi-stage adaptive key clustering, and the per-run layer plan.

Tensors: x is [G, N, D] or [B, H, N, D] (any strides, fp16/bf16/fp32); centroids float32
[G, C, D]; labels int [G, N] (int16 from the Triton kernel, `label_dtype`; int32 from the torch
reference); counts int32 [G, C] (one call's dtypes: docs/DESIGN.md, "Tensor conventions").
`ignore` (bool [G, N]) marks tokens that take no part (masked keys): they get the label C, sort
after every cluster and never touch a centroid.

`kmeans` has fixed shapes and no host synchronisation (reuse-step safe). The multi-stage
procedure (`multi_stage_key_clustering`) and `plan_layers` synchronise freely: they run once,
at the first sparse step.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, NamedTuple, Optional

import torch

from . import reference as ref
# the cluster order lives in its own module, which the centroid-update kernel imports too (no
# clustering <-> kernels cycle); clustering.sort_by_cluster / label_dtype stay importable here
from .cluster_sort import label_dtype, sort_by_cluster  # noqa: F401


# ---- backend dispatch -----------------------------------------------------------------------

def assign(x, centroids, *, normalize=False, return_dist=False, backend="torch", labels_dtype=torch.int32):
    """Nearest centroid: labels int [G, N] (+ dist float32 [G, N] with return_dist).
    labels_dtype is a wish the Triton kernel honours (it stores in that dtype)."""
    if backend == "triton":
        from .kernels.kmeans_assign import kmeans_assign
        return kmeans_assign(x, centroids, normalize=normalize, return_dist=return_dist,
                             labels_dtype=labels_dtype)
    return ref.kmeans_assign_ref(x, centroids, normalize=normalize, return_dist=return_dist)


def update(x, labels, old, *, normalize=False, perm=None, offsets=None, backend="torch", with_bounds=False,
           num_clusters=None, out_dtype=torch.float32):
    """Segment means: (centroids [G, C, D] in out_dtype (float32), counts int32 [G, C]);
    with_bounds=True also (kmax, kmin) float32 [G, C, D] of the raw rows (fused into the same
    pass on triton). old=None (then num_clusters=C): empty clusters get zeros."""
    if backend == "triton":
        from .kernels.centroid_update import centroid_update
        return centroid_update(x, labels, old, normalize=normalize, perm=perm, offsets=offsets,
                               bounds=with_bounds, num_clusters=num_clusters, out_dtype=out_dtype)
    if old is None:
        G, _, D = _shape(x)
        old = torch.zeros(G, int(num_clusters), D, device=x.device)
    c, n = ref.centroid_update_ref(x, labels, old, normalize=normalize)
    c = c.to(out_dtype)
    if with_bounds:
        return (c, n) + tuple(ref.cluster_bounds_ref(x, labels, old.shape[1]))
    return c, n


# ---- k-means ----------------------------------------------------------------------------------

def _shape(x: torch.Tensor) -> tuple[int, int, int]:
    if x.dim() == 4:
        return x.shape[0] * x.shape[1], x.shape[2], x.shape[3]
    return x.shape[0], x.shape[1], x.shape[2]


def _gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x [G,N,D] or [B,H,N,D]; idx int64 [n] shared by all groups -> float32 [G, n, D]."""
    G, N, D = _shape(x)
    if x.dim() == 4:
        return x.index_select(2, idx).reshape(G, idx.numel(), D).float()
    return x.index_select(1, idx).float()


def init_centroids(x: torch.Tensor, num_clusters: int, *, normalize: bool = False) -> torch.Tensor:
    """Cold start: `num_clusters` distinct random tokens (the same token ids in every group),
    from a CPU generator seeded by the shape, so runs are reproducible. -> float32 [G, C, D]."""
    G, N, D = _shape(x)
    C = int(num_clusters)
    gen = torch.Generator(device="cpu")
    gen.manual_seed((N * 1_000_003 + C * 7919 + D * 31 + 12345) % (2 ** 31))
    if C <= N:
        idx = torch.randperm(N, generator=gen)[:C]
    else:  # more clusters than tokens (caller normally clamps): repeat tokens
        idx = torch.randint(0, N, (C,), generator=gen)
    c = _gather_tokens(x, idx.to(x.device))
    if normalize:
        c = c / c.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    return c


class KMeansResult(NamedTuple):
    labels: torch.Tensor     # int [G, N] (int16 when C < 32767; C for ignored tokens)
    centroids: torch.Tensor  # float32 [G, C, D], means of `labels`
    counts: torch.Tensor     # int32 [G, C]
    perm: torch.Tensor       # int64 [G, N] from sort_by_cluster(labels, C (+ 1 with ignore))
    offsets: torch.Tensor    # int32 [G, C + 1] (+ 1 column with ignore: the ignored rows' end);
    #                          cluster c = rows offsets[c]:offsets[c+1]
    kmax: Optional[torch.Tensor] = None  # float32 [G, C, D] (kmeans(..., with_bounds=True))
    kmin: Optional[torch.Tensor] = None


def kmeans(x: torch.Tensor, init: torch.Tensor, iters: int, *, normalize: bool = False,
           ignore: Optional[torch.Tensor] = None, backend: str = "torch",
           with_bounds: bool = False, check: Optional[Callable[[], None]] = None) -> KMeansResult:
    """Lloyd iterations (assign, then update) from `init` float32 [G, C, D].

    The returned centroids are the means of the returned labels (the last update), so the
    layout (perm / offsets) and the centroids are consistent. with_bounds=True also returns the
    per-cluster Kmax / Kmin of the raw rows (TensorQuest), computed in the last update's pass.
    No host synchronisation. `check` (the caller's interrupt check) runs before each iteration.
    """
    C = init.shape[1]
    c = init.float()
    lab = perm = offs = cnt = None
    kmax = kmin = None
    n_it = max(1, int(iters))
    kdt = label_dtype(C + 1)  # labels written in the sort's key dtype: no cast before the sort
    # without ignored tokens no label is C: offsets [G, C + 1], the layout's q_offsets as they are
    n_sorted = C + 1 if ignore is not None else C
    for it in range(n_it):
        if check is not None:
            check()
        lab = assign(x, c, normalize=normalize, backend=backend, labels_dtype=kdt)
        if ignore is not None:
            lab = lab.masked_fill(ignore, C)
        perm, offs = sort_by_cluster(lab, n_sorted)
        if with_bounds and it == n_it - 1:
            c, cnt, kmax, kmin = update(x, lab, c, normalize=normalize, perm=perm, offsets=offs,
                                        backend=backend, with_bounds=True)
        else:
            c, cnt = update(x, lab, c, normalize=normalize, perm=perm, offsets=offs, backend=backend)
    return KMeansResult(lab, c, cnt, perm, offs, kmax, kmin)


# ---- multi-stage adaptive key clustering ----------------------------------------------------

class MultiStageResult(NamedTuple):
    centroids: Optional[torch.Tensor]  # float32 [G, Ck, D] initial key centroids (None if dense)
    k_clusters: int                    # Ck (multiple of 8 unless clamped to N); kept count if dense
    dense: bool                        # layer is "hard to compress"
    stages: int
    tau: float
    reason: str


def _round8(n: int) -> int:
    return int(math.ceil(n / 8.0) * 8)


def multi_stage_key_clustering(k: torch.Tensor, *, init_clusters: int = 200, tau_scale: float = 1.5,
                               max_stages: int = 10, stage_iters: int = 3,
                               n_max: Optional[int] = None, ignore: Optional[torch.Tensor] = None,
                               backend: str = "torch", check: Optional[Callable[[], None]] = None
                               ) -> MultiStageResult:
    """Threshold-wise adaptive key clustering (docs/ALGORITHM.md, idea 3).

    k: raw keys [G, N, D] or [B, H, N, D]. ignore: optional bool [G, N] masked keys (a token
    masked in any group is left out of the procedure). n_max: cap on the count (default N // 3).

    One accept decision per token: its distance to its stage centroid averaged over all groups
    (B and H) against tau = tau_scale × mean first-stage distance. Each stage keeps the
    centroids that own accepted tokens; rejected tokens go to the next stage.
    [choices] the last allowed stage accepts all remaining tokens; a stage accepting < 1% of
    the remaining tokens relaxes tau by 1.1x; per-group kept counts differ, Ck is their max
    rounded up to a multiple of 8, and the free slots of each group are seeded with the
    tokens farthest from their nearest kept centroid (they become fine clusters at the next
    k-means iteration).
    """
    G, N, D = _shape(k)
    dev = k.device
    if n_max is None:
        n_max = max(1, N // 3)
    if ignore is not None:
        R = torch.nonzero(~ignore.any(0), as_tuple=False).flatten()
    else:
        R = torch.arange(N, device=dev)
    if R.numel() == 0:
        return MultiStageResult(None, 0, True, 0, 0.0, "no valid keys to cluster")

    def stage(Ridx):
        xR = _gather_tokens(k, Ridx)  # [G, |R|, D] fp32
        n = min(int(init_clusters), Ridx.numel())
        res = kmeans(xR, init_centroids(xR, n), stage_iters, backend=backend, check=check)
        lab, dist = assign(xR, res.centroids, return_dist=True, backend=backend)
        return res.centroids, lab.long(), dist

    c, lab, dist = stage(R)
    tau = float(tau_scale) * float(dist.mean())
    kept_c, kept_own = [], []
    n_kept = torch.zeros(G, dtype=torch.int64, device=dev)
    stages = 1
    for s in range(max_stages):
        dtok = dist.mean(0)  # averaged over batch and heads: one decision per token
        accept = dtok <= tau
        if s == max_stages - 1:
            accept = torch.ones_like(accept)
        own = torch.zeros(G, c.shape[1], dtype=torch.bool, device=dev)
        acc_lab = lab[:, accept]
        if acc_lab.numel():
            own.scatter_(1, acc_lab, True)
        kept_c.append(c)
        kept_own.append(own)
        n_kept += own.sum(1)
        frac = float(accept.float().mean())
        R = R[~accept]
        if R.numel() == 0:
            break
        nxt = min(int(init_clusters), R.numel())
        if int(n_kept.max()) + nxt > n_max:
            return MultiStageResult(None, int(n_kept.max()), True, stages, tau,
                                    f"hard to compress: key clusters would exceed N_max={n_max}")
        if frac < 0.01:
            tau *= 1.1
        c, lab, dist = stage(R)
        stages += 1

    n_raw = int(n_kept.max())
    if n_raw > n_max:
        return MultiStageResult(None, n_raw, True, stages, tau,
                                f"hard to compress: {n_raw} key clusters > N_max={n_max}")
    comp, Ck = _final_centroids(k, kept_c, kept_own, n_kept, n_raw, ignore, backend)
    return MultiStageResult(comp, int(Ck), False, stages, tau, "")


def _final_centroids(k, kept_c, kept_own, n_kept, n_raw: int, ignore, backend: str):
    """The multi-stage result's centroids [G, Ck, D] and Ck: each group's kept centroids first
    (owners of accepted tokens), Ck = the largest group's count rounded up to a multiple of 8,
    free slots seeded with the tokens farthest from their nearest kept centroid."""
    G, N, D = _shape(k)
    dev = k.device
    allc = torch.cat(kept_c, 1)        # [G, T, D]
    own = torch.cat(kept_own, 1)       # [G, T]
    n_valid = N if ignore is None else int((~ignore.any(0)).sum())
    Ck = min(_round8(n_raw), max(n_raw, n_valid))
    order = torch.argsort((~own).to(torch.int8), dim=1, stable=True)  # owners first
    comp = torch.gather(allc, 1, order.unsqueeze(-1).expand(-1, -1, D))
    T = comp.shape[1]
    if T < Ck:
        comp = torch.cat([comp, comp[:, :1].expand(G, Ck - T, D)], 1)
    comp = comp[:, :Ck].contiguous()
    ng = n_kept.view(G, 1)
    slot = torch.arange(Ck, device=dev).view(1, Ck)
    # empty slots first duplicate slot 0 (ties go to the lowest id, so they win nothing)...
    comp = torch.where((slot < ng).unsqueeze(-1), comp, comp[:, :1].expand(G, Ck, D))
    n_pad = int(Ck - n_kept.min())
    if n_pad > 0:
        # ... then take the tokens farthest from their nearest kept centroid
        _, d_all = assign(k, comp, return_dist=True, backend=backend)
        if ignore is not None:
            d_all = d_all.masked_fill(ignore, float("-inf"))
        far = torch.topk(d_all, min(n_pad, N), dim=1).indices  # [G, n_pad]
        rank = (slot - ng).clamp(min=0, max=far.shape[1] - 1)   # [G, Ck]
        tok = torch.gather(far, 1, rank)                         # [G, Ck]
        if k.dim() == 4:
            B, H = k.shape[0], k.shape[1]
            cand = torch.gather(k, 2, tok.view(B, H, Ck, 1).expand(B, H, Ck, D)).reshape(G, Ck, D)
        else:
            cand = torch.gather(k, 1, tok.unsqueeze(-1).expand(G, Ck, D))
        comp = torch.where((slot < ng).unsqueeze(-1), comp, cand.float())
    return comp, int(Ck)


# ---- per-run layer plan -------------------------------------------------------------------

def plan_layers(counts: Dict[int, Optional[int]], dense_layer_fraction: float = 0.15,
                n_tokens: int = 0) -> tuple[set, int]:
    """N_max choice of the spec, after every layer ran the multi-stage procedure once.

    counts: layer id -> its key-cluster count Ck_l (None = already judged hard to compress).
    Returns (dense_layers, cap): the ~dense_layer_fraction of layers with the largest Ck
    (ties broken by layer id), every layer whose Ck exceeds the cap, and the None layers are
    dense; cap = min(n_tokens // 3, the (1 - fraction) quantile of the counts) — the 85th
    percentile by default; n_tokens <= 0 means no N/3 term.
    """
    dense = {l for l, c in counts.items() if c is None}
    known = {l: int(c) for l, c in counts.items() if c is not None}
    L = len(counts)
    big = n_tokens // 3 if n_tokens > 0 else None
    if not known:
        return dense, (big if big is not None else 0)
    n_dense = int(round(dense_layer_fraction * L)) - len(dense)
    by_size = sorted(known, key=lambda l: (-known[l], l))
    if n_dense > 0:
        dense.update(by_size[:n_dense])
    vals = sorted(known.values())
    qpos = (1.0 - dense_layer_fraction) * (len(vals) - 1)
    lo, hi = int(math.floor(qpos)), int(math.ceil(qpos))
    pct = vals[lo] + (vals[hi] - vals[lo]) * (qpos - lo)
    cap = int(math.ceil(pct))
    if big is not None:
        cap = min(cap, big)
    dense.update(l for l, c in known.items() if c > cap)
    return dense, cap
