"""Plain-PyTorch references (fp32 maths). Ground truth for the Triton kernels' tests and the
CPU fallback of the `torch` backend. Clarity over speed; never on the GPU hot path."""
from __future__ import annotations

import torch


def varblock_attention_ref(
    q: torch.Tensor,
    k_perm: torch.Tensor,
    v_perm: torch.Tensor,
    perm_q: torch.Tensor,
    q_offsets: torch.Tensor,
    range_start: torch.Tensor,
    range_end: torch.Tensor,
    scale: float,
    chunk: int = 4096,
) -> torch.Tensor:
    """Reference for `kernels.varblock_attention`: each query cluster attends to the union of
    its key row ranges. q [G, N, D] (original order); k_perm, v_perm [G, Nk, D];
    perm_q int [G, N]; q_offsets int [G, Cq+1]; range_start/end int [G, Cq, R].
    Returns [G, N, D] in original query order, q's dtype. Rows whose cluster attends to
    nothing get zeros. Memory: one [chunk, Nk] block at a time."""
    G, N, D = q.shape
    Nk = k_perm.shape[1]
    Cq = q_offsets.shape[1] - 1
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
        kf, vf = k_perm[g].float(), v_perm[g].float()
        for s in range(0, N, chunk):
            e = min(N, s + chunk)
            sc = (qp[s:e] @ kf.T) * scale
            m = allowed[cl[s:e]]
            sc = sc.masked_fill(~m, float("-inf"))
            p = torch.softmax(sc, dim=-1)
            p = torch.nan_to_num(p, nan=0.0)  # rows with no allowed key
            out[g, perm_q[g, s:e].long()] = p @ vf
    return out.to(q.dtype)


def dense_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
                        key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 dense attention, q/k/v [..., N, D]; key_mask additive, broadcastable to [..., 1, Nk]."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = (q.float() @ k.float().transpose(-1, -2)) * scale
    if key_mask is not None:
        s = s + key_mask.float()
    return (torch.softmax(s, dim=-1) @ v.float()).to(q.dtype)
