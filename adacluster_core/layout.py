"""Permuted layout: selected key clusters turned into row ranges, the always-dense range, the
pooled-tail rows, and `build_layout` (clusters + selection -> the kernel's arguments).

All functions are pure torch, run on any device, and never synchronise with the host, so they
are safe on the reuse-step hot path.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from . import reference as ref


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
    # unused slots (-1) -> Ck + 1: they sort last and never continue a run (Ck - 1 -> Ck + 1)
    key = torch.sort(torch.where(sel >= 0, sel.long(), Ck + 1), dim=-1).values
    valid = key < Ck
    idx = key.clamp_max(max(Ck - 1, 0))
    offs = k_offsets.unsqueeze(1).expand(G, Cq, Ck + 1)
    start = torch.gather(offs, 2, idx)
    end = torch.gather(offs, 2, idx + 1)
    if S > 1:
        # a run of consecutive cluster ids is one range: [start at its head, end at its tail)
        brk = (key[..., 1:] - key[..., :-1]) != 1  # slot j + 1 does not continue slot j's run
        head = F.pad(brk, (1, 0), value=True) & valid
        tail = F.pad(brk, (0, 1), value=True) & valid
        run = torch.cumsum(head, dim=-1) - 1
        # run r goes to slot r; the other slots write 0 into slot S - 1, which holds a real run
        # only when every slot is a run of its own (then nothing else writes)
        start = torch.zeros_like(start).scatter_(2, torch.where(head, run, S - 1), torch.where(head, start, 0))
        end = torch.zeros_like(end).scatter_(2, torch.where(tail, run, S - 1), torch.where(tail, end, 0))
    else:
        start = torch.where(valid, start, 0)
        end = torch.where(valid, end, 0)
    if extra is not None:
        e0, e1 = int(extra[0]), int(extra[1])
        start = torch.cat([start, torch.full((G, Cq, 1), e0, dtype=start.dtype, device=start.device)], -1)
        end = torch.cat([end, torch.full((G, Cq, 1), e1, dtype=end.dtype, device=end.device)], -1)
    return start.to(torch.int32).contiguous(), end.to(torch.int32).contiguous()


# ---- the whole layout of one call ------------------------------------------------------------

# How the kernel gets the keys / values in cluster order (docs/KERNEL_NOTES.md, "Memory"):
#   "indexed": the kernel gathers each row of the caller's k / v through the key permutation
#              (k_index); no permuted copy exists (the call adds ~the output only);
#   "copied":  k / v are first copied into cluster order (gather_rows.gather_kv, 2 x q's bytes
#              more) and the kernel streams them (TMA tensor descriptors on sm90).
KV_MODES = ("indexed", "copied")
# the default: the copies cost 2 x q's bytes and make the kernel 26-40 % faster (H100, docs/KERNEL_NOTES.md,
# "Memory"); the patcher's memory guard picks "indexed" when the copies would not fit
KV_ROWS = "copied"


class Layout(NamedTuple):
    """The kernel's arguments for one sparse call (`kernels.varblock_attention`, same order).

    q [B, H, N, D] (original order, the caller's strides); k_rows, v_rows: keys / values
    sorted by key cluster, then the always-dense rows ([G, Nk, D] copies), or, with k_index
    (int [G, Nk], "indexed" mode), the caller's k / v [B, H, N, D] and the row of each permuted
    key; perm_q int32 [G, N] and q_offsets int32 [G, Cq' + 1]: queries sorted by cluster
    (Cq' = Cq, + 1 for the always-dense query cluster); range_start / range_end int32
    [G, Cq', R]; scale; pooled tail (or None): tail_keys / tail_values [G, Ck, D], tail_bias
    fp32 [G, Cq, Ck].
    """
    q: torch.Tensor
    k_rows: torch.Tensor
    v_rows: torch.Tensor
    perm_q: torch.Tensor
    q_offsets: torch.Tensor
    range_start: torch.Tensor
    range_end: torch.Tensor
    scale: float
    tail_keys: Optional[torch.Tensor] = None
    tail_values: Optional[torch.Tensor] = None
    tail_bias: Optional[torch.Tensor] = None
    k_index: Optional[torch.Tensor] = None

    def pairs(self) -> torch.Tensor:
        """Query-key pairs the kernel computes (0-dim int64; virtual keys with a finite bias
        count as pairs). The ranges are well formed (start <= end), as build_layout makes them."""
        nq = self.q_offsets.diff(dim=1)                                # [G, Cq'] queries
        nk = (self.range_end - self.range_start).sum(-1, dtype=torch.int64)  # [G, Cq'] keys
        if self.tail_bias is not None:  # the bias is log|j| or -inf: "> -inf" is "finite"
            nk[:, :self.tail_bias.shape[1]].add_((self.tail_bias > float("-inf")).sum(-1))
        return (nq * nk).sum()


def split_rows(x: torch.Tensor, r0: int, r1: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(clustered part, always-dense part) of x [..., N, ...] along dim 2; views when possible."""
    N = x.shape[2]
    if r1 == r0:
        return x, x[:, :, :0]
    if r0 == 0:
        return x[:, :, r1:], x[:, :, :r1]
    if r1 == N:
        return x[:, :, :r0], x[:, :, r0:]
    return torch.cat([x[:, :, :r0], x[:, :, r1:]], 2), x[:, :, r0:r1]


def pooled_tail(v_clustered: torch.Tensor, rk, sel: torch.Tensor, dtype: torch.dtype, backend: str):
    """Pooled-tail virtual keys (config `pooled_tail`): per key cluster j its centroid as key and
    the mean of its values as value; per query cluster the logit bias log|j| for every
    non-empty cluster it did not select (-inf for selected and empty ones), so the softmax still
    sees Σ_{k∈j} exp(q·k) ≈ |j|·exp(q·c_j). Returns (keys, values [G, Ck, D] in `dtype`,
    bias fp32 [G, Cq, Ck], a view with rows of Ck + 1)."""
    from . import clustering

    G, Cq, _ = sel.shape
    Ck = rk.centroids.shape[1]
    v_mean, _ = clustering.update(v_clustered, rk.labels, None, num_clusters=Ck, perm=rk.perm,
                                  offsets=rk.offsets, backend=backend, out_dtype=dtype)
    # log|j| (log 0 = -inf for empty clusters), then -inf at the selected clusters; the -1
    # slots go to a spare column Ck (sel mod (Ck + 1)), left out of the returned view
    bias = torch.empty(G, Cq, Ck + 1, device=sel.device)
    bias[..., :Ck] = torch.log(rk.counts[:, None, :Ck])
    bias.scatter_(2, sel.long() % (Ck + 1), float("-inf"))
    return rk.centroids.to(dtype), v_mean, bias[..., :Ck]


def build_layout(q, k, v, rq, rk, sel, *, scale: float, dense_range: tuple[int, int],
                 masked_dense: Optional[torch.Tensor], pooled: bool, backend: str,
                 kv_rows: Optional[str] = None) -> Layout:
    """Turn the clusters and the selection into the kernel's layout.

    q, k, v [B, H, N, D]; rq / rk: `clustering.KMeansResult` of the clustered queries / keys
    (rows outside `dense_range`); sel int [G, Cq, S] selected key clusters (-1 = none);
    dense_range (r0, r1): always-dense tokens (text): their keys follow the clustered keys and
    form one extra range of every query cluster; their queries form one extra query cluster
    that attends every unmasked key. masked_dense: bool [G, r1 - r0] masked always-dense keys
    (moved behind the valid ones, outside the extra range). kv_rows: "indexed" | "copied"
    (default: the module's KV_ROWS). q, k, v are never copied in "indexed" mode. No host sync.
    """
    mode = KV_ROWS if kv_rows is None else kv_rows
    if mode not in KV_MODES:
        raise ValueError(f"kv_rows must be one of {KV_MODES}, got {mode!r}")
    B, H, N, D = q.shape
    G = B * H
    dev = q.device
    r0, r1 = dense_range
    Nt = r1 - r0
    Nv = N - Nt
    Cq, Ck = rq.centroids.shape[1], rk.centroids.shape[1]
    k_off = rk.offsets[:, :Ck + 1]
    rs, re = selected_key_ranges(sel, k_off)  # [G, Cq, S]

    def to_orig(p):  # row of the clustered part -> row of the full sequence
        p = p.to(torch.int64)
        if Nt == 0 or r1 == N:
            return p
        if r0 == 0:
            return p + r1
        return torch.where(p < r0, p, p + Nt)

    if Nt > 0:
        if masked_dense is not None:
            tperm = torch.argsort(masked_dense.to(torch.int8), dim=1, stable=True)
            n_t = (~masked_dense).sum(1).to(torch.int32)  # [G]
        else:
            tperm = torch.arange(Nt, device=dev).view(1, Nt).expand(G, Nt)
            n_t = torch.full((G,), Nt, dtype=torch.int32, device=dev)
        # one row index into the full k / v: clustered keys by cluster, then the dense keys
        kidx = torch.cat([to_orig(rk.perm), r0 + tperm.to(torch.int64)], 1)
        ex_s = torch.full((G, Cq, 1), Nv, dtype=torch.int32, device=dev)
        ex_e = (Nv + n_t).view(G, 1, 1).expand(G, Cq, 1).to(torch.int32)
        rs, re = torch.cat([rs, ex_s], -1), torch.cat([re, ex_e], -1)
        R = rs.shape[-1]
        # the always-dense queries: one more query cluster that sees every unmasked key
        d_s = torch.zeros(G, 1, R, dtype=torch.int32, device=dev)
        d_e = torch.zeros(G, 1, R, dtype=torch.int32, device=dev)
        d_s[:, 0, 1] = Nv
        d_e[:, 0, 0] = k_off[:, Ck]
        d_e[:, 0, 1] = Nv + n_t
        rs, re = torch.cat([rs, d_s], 1), torch.cat([re, d_e], 1)
        pt = (r0 + torch.arange(Nt, device=dev)).view(1, Nt).expand(G, Nt)
        perm_q = torch.cat([to_orig(rq.perm), pt], 1).to(torch.int32)
        q_off = torch.cat([rq.offsets[:, :Cq + 1], torch.full((G, 1), N, dtype=torch.int32, device=dev)], 1)
    else:
        kidx = rk.perm  # int64 (torch.sort's indices): gather_kv reads it as is
        perm_q = rq.perm.to(torch.int32)
        q_off = rq.offsets[:, :Cq + 1]  # all of it without a key mask (no copy below)
    k_index = None
    if mode == "indexed":
        k_rows, v_rows, k_index = k, v, kidx.contiguous()
    elif backend == "triton":  # the custom op: Triton on CUDA, the interpreter or the reference on the CPU
        from .kernels.gather_rows import gather_kv
        k_rows, v_rows = gather_kv(k, v, kidx)
    else:  # the torch backend: the reference on any device
        k_rows, v_rows = ref.gather_kv_ref(k, v, kidx)
    tail = (None, None, None)
    if pooled:
        tail = pooled_tail(split_rows(v, r0, r1)[0], rk, sel, q.dtype, backend)
    return Layout(q, k_rows, v_rows, perm_q.contiguous(), q_off.contiguous(), rs.contiguous(), re.contiguous(),
                  float(scale), *tail, k_index)


def run_layout(layout: Layout, backend: str, out: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, str]:
    """The attention over a layout: (out, kernel name "triton" | "reference"). The result has
    layout.q's shape ([B, H, N, D]) and memory order, or is written into `out` (q's shape, any
    strides) and returned. backend "triton": the custom op, whose device dispatch picks the
    implementation (Triton on CUDA; on the CPU the interpreter under TRITON_INTERPRET=1, else the
    fp32 reference: kernels/_common.register_cpu); "torch": the torch reference on any device."""
    if backend == "triton":
        from .kernels.varblock_attn import varblock_attention  # needs Triton: api.resolve_backend checked
        return varblock_attention(*layout, out=out), "triton"
    res = ref.varblock_attention_ref(*layout)
    if out is None:
        return res, "reference"
    out.copy_(res)
    return out, "reference"
