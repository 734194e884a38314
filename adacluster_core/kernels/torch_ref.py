"""The fp32 torch implementation of every kernel: each custom op's CPU kernel (without the
interpreter) and the ground truth of the kernels' tests and of bench/kernel_check.py. Clarity over
speed; any device; never on the GPU hot path. Imports torch only: `adacluster_core.reference`
re-exports these names for the modules above the kernels (the `torch` backend)."""
from __future__ import annotations

import torch


def varblock_attention_ref(
    q: torch.Tensor,
    k_rows: torch.Tensor,
    v_rows: torch.Tensor,
    perm_q: torch.Tensor,
    q_offsets: torch.Tensor,
    range_start: torch.Tensor,
    range_end: torch.Tensor,
    scale: float,
    tail_keys: torch.Tensor | None = None,
    tail_values: torch.Tensor | None = None,
    tail_bias: torch.Tensor | None = None,
    k_index: torch.Tensor | None = None,
    chunk: int = 4096,
) -> torch.Tensor:
    """Reference for `kernels.varblock_attention`: each query cluster attends to the union of
    its key row ranges, plus (pooled tail) the virtual keys `tail_keys / tail_values [G, Ct, D]`
    with logit bias `tail_bias [G, Cqt, Ct]` (after the scale; -inf = not attended; query
    clusters >= Cqt see no virtual key). q [G, N, D] (original order); k_rows, v_rows
    [G, Nk, D]; perm_q int [G, N]; q_offsets int [G, Cq+1]; range_start/end int [G, Cq, R].
    Returns [G, N, D] in original query order, q's dtype. Rows that attend to nothing get
    zeros. Memory: one [chunk, Nk + Ct] block at a time.
    q may also be [B, H, N, D] (then k_rows / v_rows [B, H, ., D] or [G, ., D]; the result has q's
    shape); k_index int [G, Nk]: k_rows / v_rows are the unpermuted k / v and permuted row r is
    source row k_index[g, r] (the kernel's in-kernel gather)."""
    if q.dim() == 4:
        B, H, N, D = q.shape
        flat = lambda x: x.reshape(B * H, x.shape[-2], x.shape[-1])  # noqa: E731
        o = varblock_attention_ref(flat(q), flat(k_rows), flat(v_rows), perm_q, q_offsets, range_start,
                                   range_end, scale, tail_keys, tail_values, tail_bias, k_index, chunk)
        return o.view(B, H, N, D)
    if k_index is not None:
        idx = k_index.long().unsqueeze(-1).expand(-1, -1, k_rows.shape[-1])
        k_rows, v_rows = torch.gather(k_rows, 1, idx), torch.gather(v_rows, 1, idx)
    G, N, D = q.shape
    Nk = k_rows.shape[1]
    Cq = q_offsets.shape[1] - 1
    has_tail = tail_keys is not None and tail_bias is not None
    out = torch.zeros(G, N, D, dtype=torch.float32, device=q.device)
    rows = torch.arange(N, device=q.device)
    keys = torch.arange(Nk, device=q.device)
    for g in range(G):
        # cluster id of every permuted query row
        cl = torch.searchsorted(q_offsets[g, 1:].to(torch.int64).contiguous(), rows, right=True).clamp(max=Cq - 1)
        # allowed[c, j]: key row j is inside one of cluster c's ranges
        rs, re = range_start[g].to(torch.int64), range_end[g].to(torch.int64)  # [Cq, R]
        allowed = ((keys.view(1, 1, Nk) >= rs.unsqueeze(-1)) & (keys.view(1, 1, Nk) < re.unsqueeze(-1))).any(1)
        qp = q[g].float()[perm_q[g].long()]
        kf, vf = k_rows[g].float(), v_rows[g].float()
        if has_tail:
            Cqt = tail_bias.shape[1]
            tb = torch.cat([tail_bias[g].float(),
                            torch.full((Cq + 1 - Cqt, tail_bias.shape[2]), float("-inf"), device=q.device)], 0)
            kf = torch.cat([kf, tail_keys[g].float()], 0)
            vf = torch.cat([vf, tail_values[g].float()], 0)
        for s in range(0, N, chunk):
            e = min(N, s + chunk)
            sc = (qp[s:e] @ kf.T) * scale
            m = allowed[cl[s:e]]
            if has_tail:
                sc[:, Nk:] += tb[cl[s:e]]
                m = torch.cat([m, torch.ones(e - s, kf.shape[0] - Nk, dtype=torch.bool, device=q.device)], 1)
            sc = sc.masked_fill(~m, float("-inf"))
            p = torch.softmax(sc, dim=-1)
            p = torch.nan_to_num(p, nan=0.0)  # rows with no allowed key
            out[g, perm_q[g, s:e].long()] = p @ vf
    return out.to(q.dtype)


def gather_kv_ref(k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference for `kernels.gather_kv`: k, v [G, N, D] or [B, H, N, D] (any strides), idx int
    [G, M] -> contiguous (k_perm, v_perm) [G, M, D], k_perm[g, r] = k[g, idx[g, r]] (torch.gather)."""
    return _gather_rows(k, idx), _gather_rows(v, idx)


def _gather_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    x3 = _as_gnd(x)
    G, _, D = x3.shape
    m = idx.shape[1]
    if x.dim() == 4:  # gather on the 4-D view: no copy of a strided x
        B, H = x.shape[0], x.shape[1]
        return torch.gather(x, 2, idx.long().view(B, H, m, 1).expand(B, H, m, D)).reshape(G, m, D)
    return torch.gather(x3, 1, idx.long().view(G, m, 1).expand(G, m, D)).contiguous()


# ---- clustering (kmeans_assign.py, centroid_update.py; the bounds are fused into its last pass) ----

def _as_gnd(x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 4:
        return x.reshape(x.shape[0] * x.shape[1], x.shape[2], x.shape[3])
    return x


def _maybe_normalize(xf: torch.Tensor, normalize: bool) -> torch.Tensor:
    if normalize:
        return xf / xf.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    return xf


def kmeans_assign_ref(x: torch.Tensor, centroids: torch.Tensor, *, normalize: bool = False,
                      return_dist: bool = False, chunk: int = 8192):
    """Reference for `kernels.kmeans_assign`: labels int32 [G, N] = argmin_c ‖c‖² − 2 x·c
    (fp32), optionally dist float32 [G, N] = ‖x − c_label‖. x [G, N, D] or [B, H, N, D];
    centroids float32 [G, C, D]. Ties go to the lowest centroid id."""
    x = _as_gnd(x)
    G, N, D = x.shape
    c = centroids.float().to(x.device)
    cc = (c * c).sum(-1)  # [G, C]
    labels = torch.empty(G, N, dtype=torch.int32, device=x.device)
    dist = torch.empty(G, N, dtype=torch.float32, device=x.device)
    for s in range(0, N, chunk):
        xf = _maybe_normalize(x[:, s:s + chunk].float(), normalize)
        score = cc.unsqueeze(1) - 2.0 * (xf @ c.transpose(1, 2))  # [G, n, C]
        best, arg = score.min(dim=-1)
        labels[:, s:s + chunk] = arg.to(torch.int32)
        cl = torch.gather(c, 1, arg.unsqueeze(-1).expand(-1, -1, D))
        dist[:, s:s + chunk] = (xf - cl).norm(dim=-1)
    return (labels, dist) if return_dist else labels


def centroid_update_ref(x: torch.Tensor, labels: torch.Tensor, old_centroids: torch.Tensor, *,
                        normalize: bool = False):
    """Reference for `kernels.centroid_update`: fp32 means by label (label C = ignored);
    empty clusters keep their old centroid. Returns (centroids f32 [G, C, D], counts i32 [G, C])."""
    x = _as_gnd(x)
    G, N, D = x.shape
    C = old_centroids.shape[1]
    xf = _maybe_normalize(x.float(), normalize)
    lab = labels.to(torch.int64)
    sums = torch.zeros(G, C + 1, D, dtype=torch.float32, device=x.device)
    sums.scatter_add_(1, lab.unsqueeze(-1).expand(G, N, D), xf)
    cnt = torch.zeros(G, C + 1, dtype=torch.float32, device=x.device)
    cnt.scatter_add_(1, lab, torch.ones_like(lab, dtype=torch.float32))
    sums, cnt = sums[:, :C], cnt[:, :C]
    mean = sums / cnt.clamp_min(1).unsqueeze(-1)
    new = torch.where(cnt.unsqueeze(-1) > 0, mean, old_centroids.float().to(x.device))
    return new, cnt.to(torch.int32)


def cluster_bounds_ref(x: torch.Tensor, labels: torch.Tensor, num_clusters: int):
    """Reference for the bounds of `kernels.centroid_update(bounds=True)`: per-cluster per-dimension (max, min) in fp32,
    label C = ignored; empty clusters get (-inf, +inf)."""
    x = _as_gnd(x)
    G, N, D = x.shape
    C = int(num_clusters)
    xf = x.float()
    idx = labels.to(torch.int64).unsqueeze(-1).expand(G, N, D)
    kmax = torch.full((G, C + 1, D), float("-inf"), dtype=torch.float32, device=x.device)
    kmin = torch.full((G, C + 1, D), float("inf"), dtype=torch.float32, device=x.device)
    kmax.scatter_reduce_(1, idx, xf, reduce="amax", include_self=True)
    kmin.scatter_reduce_(1, idx, xf, reduce="amin", include_self=True)
    return kmax[:, :C].contiguous(), kmin[:, :C].contiguous()
