"""Variable-block sparse flash-attention forward (Triton) over the permuted cluster layout.

    out = varblock_attention(q, k_perm, v_perm, perm_q, q_offsets, range_start, range_end, scale)

* ``q [G, N, D]`` in original token order; ``k_perm, v_perm [G, Nk, D]`` keys/values sorted
  by key cluster (optionally followed by always-attended rows, e.g. text tokens).
* ``perm_q int32 [G, N]``: permuted query row r is original row ``perm_q[g, r]``;
  query cluster c owns permuted rows ``q_offsets[g, c] : q_offsets[g, c+1]``.
* ``range_start / range_end int32 [G, Cq, R]``: half-open key-row ranges attended by each
  query cluster (empty slots have start == end).
* optional ``key_bias fp32 [G, Nk]``: additive logit per key row (pooled-tail virtual keys:
  log of the cluster size; -inf for empty clusters). Loaded per chunk and added to the scores
  before the online softmax (constexpr HAS_BIAS; the no-bias path is unchanged).

Returns ``[G, N, D]`` in original query order, q's dtype; rows whose cluster attends to no
key are zeros.

Kernel design (see docs/KERNEL_NOTES.md for measurements):

* one program per (query tile, group). The tile table is built *inside* the kernel from
  ``q_offsets`` (tiles per cluster = ceil(n_c / BLOCK_M), in-register cumsum over the Cq
  clusters); the grid is the fixed upper bound ``ceil(N / BLOCK_M) + Cq`` per group, spare
  programs do nothing. No host sync, no padding of clusters to the tile size.
* query rows are gathered through ``perm_q`` and the output is scattered back through it
  (inverse permutation fused into the store).
* three loop modes (constexpr MODE; defaults per head dim chosen by measurement):
  0 "ranges" (D=128 default): loop over the ranges, full BLOCK_N chunks unmasked (pipelined
    tl.range) + one masked tail chunk per range;
  1 "gather": the selected ranges are one virtual concatenated key sequence, each chunk
    finds its rows with a [BLOCK_N, R] lookup, only the last chunk is ragged;
  2 "flat" (D=64 default): one pipelined loop over every range's chunks (chunk -> range by
    one packed [R] reduction), every chunk masked.
* optional lazy rescale (LAZY): move the running max only when it grows by > 8 (log2);
  measured slower on H200 (tile-wide max + branch per chunk), off by default.
* online softmax in fp32 with exp2 (log2(e) folded into the scale), fp32 accumulator.

The public entry point goes through the torch custom op ``adacluster::varblock_attention``
so that torch.compile treats it as opaque.
"""
from __future__ import annotations

import math
import os
from typing import Optional

import torch

try:  # triton is optional at import time (CPU-only installs fall back to the reference)
    import triton
    import triton.language as tl

    HAS_TRITON = True
except Exception:  # pragma: no cover
    triton = None
    tl = None
    HAS_TRITON = False

LOG2E = 1.4426950408889634


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


if HAS_TRITON:

    @triton.jit
    def _chunk_update_bias(acc, m_i, l_i, q, k, v, qk_scale, kb, col_ok, MASK: tl.constexpr,
                           DOT_F32: tl.constexpr):
        # pooled-tail variant: kb [BN] fp32 per-key additive bias (log2 domain, may be -inf);
        # a row may see only -inf scores in a chunk, so the exp offset is guarded (no NaN)
        if DOT_F32:
            q = q.to(tl.float32)
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k)) * qk_scale + kb[None, :]
        if MASK:
            s = tl.where(col_ok[None, :], s, float("-inf"))
        m_ij = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_ij == float("-inf"), 0.0, m_ij)
        p = tl.math.exp2(s - m_use[:, None])
        alpha = tl.math.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc)
        return acc, m_ij, l_i

    @triton.jit
    def _chunk_update(acc, m_i, l_i, q, k, v, qk_scale, col_ok, MASK: tl.constexpr, DOT_F32: tl.constexpr,
                      LAZY: tl.constexpr):
        # q [BM, D], k [BN, D], v [BN, D]; m_i is kept in the log2 domain (scaled)
        if DOT_F32:  # interpreter: its bf16 tl.dot is wrong (triton 3.8), compute in fp32
            q = q.to(tl.float32)
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        qk = tl.dot(q, tl.trans(k))
        if MASK:
            qk = tl.where(col_ok[None, :], qk, float("-inf"))
        m_ij = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        if LAZY:
            # move the running max only when it grew by > 8 (p stays <= 2^8): skips the
            # rescale of acc on most chunks (one tile-wide max per chunk instead)
            if tl.max(m_ij - m_i, 0) > 8.0:
                alpha = tl.math.exp2(m_i - m_ij)
                acc = acc * alpha[:, None]
                l_i = l_i * alpha
                m_i = m_ij
            p = tl.math.exp2(qk * qk_scale - m_i[:, None])
            l_i = l_i + tl.sum(p, 1)
            acc = tl.dot(p.to(v.dtype), v, acc)
            return acc, m_i, l_i
        else:
            p = tl.math.exp2(qk * qk_scale - m_ij[:, None])
            alpha = tl.math.exp2(m_i - m_ij)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None]
            acc = tl.dot(p.to(v.dtype), v, acc)
            return acc, m_ij, l_i

    @triton.jit
    def _varblock_fwd(
        Q, K, V, O, PERM, QOFF, RS, RE, KB,
        qk_scale,
        N, NK, CQ, R,
        D: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        CQ_P2: tl.constexpr,
        R_P2: tl.constexpr,
        MODE: tl.constexpr,
        NUM_STAGES: tl.constexpr,
        DOT_F32: tl.constexpr,
        LAZY: tl.constexpr,
        HAS_BIAS: tl.constexpr,
    ):
        tile = tl.program_id(0)
        g = tl.program_id(1)
        g64 = g.to(tl.int64)

        # ---- tile table from q_offsets (in registers) ----
        ci = tl.arange(0, CQ_P2)
        cmask = ci < CQ
        qoff = QOFF + g64 * (CQ + 1)
        lo = tl.load(qoff + ci, mask=cmask, other=0)
        hi = tl.load(qoff + ci + 1, mask=cmask, other=0)
        nt = (hi - lo + BLOCK_M - 1) // BLOCK_M
        nt = tl.where(cmask, nt, 0)
        cum = tl.cumsum(nt, 0)  # inclusive
        total_tiles = tl.sum(nt, 0)
        if tile < total_tiles:
            c = tl.sum((cum <= tile).to(tl.int32), 0)
            sel = ci == c
            t0 = tl.sum(tl.where(sel, cum - nt, 0), 0)
            q_lo = tl.sum(tl.where(sel, lo, 0), 0)
            q_hi = tl.sum(tl.where(sel, hi, 0), 0)
            row0 = q_lo + (tile - t0) * BLOCK_M

            offs_m = tl.arange(0, BLOCK_M)
            offs_d = tl.arange(0, D)
            offs_n = tl.arange(0, BLOCK_N)
            prow = row0 + offs_m
            mrow = prow < q_hi
            orig = tl.load(PERM + g64 * N + prow, mask=mrow, other=0)
            q_base = Q + g64 * N * D
            q = tl.load(q_base + orig[:, None] * D + offs_d[None, :], mask=mrow[:, None], other=0.0)

            k_base = K + g64 * NK * D
            v_base = V + g64 * NK * D
            b_base = KB + g64 * NK
            m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
            l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
            acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)

            rbase = (g64 * CQ + c) * R
            if MODE == 1:
                ri = tl.arange(0, R_P2)
                rmask = ri < R
                rs = tl.load(RS + rbase + ri, mask=rmask, other=0)
                re = tl.load(RE + rbase + ri, mask=rmask, other=0)
                ln = tl.maximum(re - rs, 0)
                cend = tl.cumsum(ln, 0)
                cbeg = cend - ln
                shift = rs - cbeg
                total = tl.sum(ln, 0)
                n_full = total // BLOCK_N
                for j in tl.range(0, n_full, num_stages=NUM_STAGES):
                    p = j * BLOCK_N + offs_n
                    hit = (cbeg[None, :] <= p[:, None]) & (p[:, None] < cend[None, :])
                    rows = p + tl.sum(tl.where(hit, shift[None, :], 0), 1)
                    k = tl.load(k_base + rows[:, None] * D + offs_d[None, :])
                    v = tl.load(v_base + rows[:, None] * D + offs_d[None, :])
                    if HAS_BIAS:
                        kb = tl.load(b_base + rows)
                        acc, m_i, l_i = _chunk_update_bias(acc, m_i, l_i, q, k, v, qk_scale, kb, offs_n, False, DOT_F32)
                    else:
                        acc, m_i, l_i = _chunk_update(acc, m_i, l_i, q, k, v, qk_scale, offs_n, False, DOT_F32, LAZY)
                if n_full * BLOCK_N < total:
                    p = n_full * BLOCK_N + offs_n
                    ok = p < total
                    hit = (cbeg[None, :] <= p[:, None]) & (p[:, None] < cend[None, :])
                    rows = p + tl.sum(tl.where(hit, shift[None, :], 0), 1)
                    rows = tl.where(ok, rows, 0)
                    k = tl.load(k_base + rows[:, None] * D + offs_d[None, :], mask=ok[:, None], other=0.0)
                    v = tl.load(v_base + rows[:, None] * D + offs_d[None, :], mask=ok[:, None], other=0.0)
                    if HAS_BIAS:
                        kb = tl.load(b_base + rows, mask=ok, other=float("-inf"))
                        acc, m_i, l_i = _chunk_update_bias(acc, m_i, l_i, q, k, v, qk_scale, kb, ok, True, DOT_F32)
                    else:
                        acc, m_i, l_i = _chunk_update(acc, m_i, l_i, q, k, v, qk_scale, ok, True, DOT_F32, LAZY)
            elif MODE == 2:
                # flat loop over all chunks of all ranges; chunk j -> (range, chunk in range)
                ri = tl.arange(0, R_P2)
                rmask = ri < R
                rs = tl.load(RS + rbase + ri, mask=rmask, other=0)
                re = tl.load(RE + rbase + ri, mask=rmask, other=0)
                nc = (tl.maximum(re - rs, 0) + BLOCK_N - 1) // BLOCK_N
                cc_end = tl.cumsum(nc, 0)
                n_chunks = tl.sum(nc, 0)
                packed = 1 + nc * 65536
                for j in tl.range(0, n_chunks, num_stages=NUM_STAGES):
                    pk = tl.sum(tl.where(cc_end <= j, packed, 0), 0)
                    r = pk & 65535
                    ccb = pk >> 16
                    s = tl.load(RS + rbase + r)
                    e = tl.load(RE + rbase + r)
                    rows = s + (j - ccb) * BLOCK_N + offs_n
                    ok = rows < e
                    rows = tl.where(ok, rows, 0)
                    k = tl.load(k_base + rows[:, None] * D + offs_d[None, :], mask=ok[:, None], other=0.0)
                    v = tl.load(v_base + rows[:, None] * D + offs_d[None, :], mask=ok[:, None], other=0.0)
                    if HAS_BIAS:
                        kb = tl.load(b_base + rows, mask=ok, other=float("-inf"))
                        acc, m_i, l_i = _chunk_update_bias(acc, m_i, l_i, q, k, v, qk_scale, kb, ok, True, DOT_F32)
                    else:
                        acc, m_i, l_i = _chunk_update(acc, m_i, l_i, q, k, v, qk_scale, ok, True, DOT_F32, LAZY)
            else:
                # loop only up to the last non-empty range (a density budget leaves most of the
                # top_k slots empty; the always-dense range, if any, is the last slot)
                ri = tl.arange(0, R_P2)
                rmask = ri < R
                rs_v = tl.load(RS + rbase + ri, mask=rmask, other=0)
                re_v = tl.load(RE + rbase + ri, mask=rmask, other=0)
                n_r = tl.max(tl.where(rmask & (re_v > rs_v), ri + 1, 0), 0)
                for r in range(0, n_r):
                    s = tl.load(RS + rbase + r)
                    e = tl.load(RE + rbase + r)
                    ln = tl.maximum(e - s, 0)
                    n_full = ln // BLOCK_N
                    for j in tl.range(0, n_full, num_stages=NUM_STAGES):
                        rows = s + j * BLOCK_N + offs_n
                        k = tl.load(k_base + rows[:, None] * D + offs_d[None, :])
                        v = tl.load(v_base + rows[:, None] * D + offs_d[None, :])
                        if HAS_BIAS:
                            kb = tl.load(b_base + rows)
                            acc, m_i, l_i = _chunk_update_bias(acc, m_i, l_i, q, k, v, qk_scale, kb, offs_n, False, DOT_F32)
                        else:
                            acc, m_i, l_i = _chunk_update(acc, m_i, l_i, q, k, v, qk_scale, offs_n, False, DOT_F32, LAZY)
                    if n_full * BLOCK_N < ln:
                        rows = s + n_full * BLOCK_N + offs_n
                        ok = rows < e
                        k = tl.load(k_base + rows[:, None] * D + offs_d[None, :], mask=ok[:, None], other=0.0)
                        v = tl.load(v_base + rows[:, None] * D + offs_d[None, :], mask=ok[:, None], other=0.0)
                        if HAS_BIAS:
                            kb = tl.load(b_base + rows, mask=ok, other=float("-inf"))
                            acc, m_i, l_i = _chunk_update_bias(acc, m_i, l_i, q, k, v, qk_scale, kb, ok, True, DOT_F32)
                        else:
                            acc, m_i, l_i = _chunk_update(acc, m_i, l_i, q, k, v, qk_scale, ok, True, DOT_F32, LAZY)

            l_safe = tl.where(l_i > 0, l_i, 1.0)
            out = acc / l_safe[:, None]
            out = tl.where((l_i > 0)[:, None], out, 0.0)
            o_base = O + g64 * N * D
            if DOT_F32:
                # interpreter + bf16: its fp32->bf16 cast truncates (triton 3.9, any rounding mode);
                # round to nearest even by hand so the result matches the GPU's cvt.rn
                u = out.to(tl.uint32, bitcast=True)
                u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
                o_val = u.to(tl.float32, bitcast=True).to(O.dtype.element_ty)
            else:
                o_val = out.to(O.dtype.element_ty)
            tl.store(o_base + orig[:, None] * D + offs_d[None, :], o_val, mask=mrow[:, None])


# ------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------

# Config: (BLOCK_M, BLOCK_N, num_warps, num_stages, mode, lazy_rescale).
#   mode 0 = loop over ranges (full chunks + masked tail per range), 1 = gather (virtual
#   concatenation of the ranges, [BLOCK_N, R] row lookup per chunk), 2 = flat chunk list
#   (one pipelined loop over every range's chunks, each chunk masked).
# Chosen from the H200 measurements in docs/KERNEL_NOTES.md.
_GPU_DEFAULTS = {
    32: (128, 64, 4, 3, 2, False),
    64: (128, 64, 4, 3, 2, False),
    128: (128, 64, 8, 3, 0, False),
    256: (64, 32, 8, 2, 0, False),
}
_INTERP_CONFIG = (16, 16, 4, 1, 1, False)


def default_config(D: int, device: torch.device) -> tuple:
    if device.type != "cuda" or _interpret():
        return _INTERP_CONFIG
    env = os.environ.get("ADACLUSTER_VARBLOCK_CONFIG")  # "BM,BN,warps,stages,mode,lazy"
    if env:
        bm, bn, w, s, mode, lazy = (int(x) for x in env.split(","))
        return (bm, bn, w, s, mode, bool(lazy))
    return _GPU_DEFAULTS[D]


def _next_p2(x: int) -> int:
    return 1 if x <= 1 else 1 << (int(x) - 1).bit_length()


def varblock_attention_triton(q, k_perm, v_perm, perm_q, q_offsets, range_start, range_end, scale,
                              config: tuple | None = None, key_bias: torch.Tensor | None = None) -> torch.Tensor:
    """Launch the Triton kernel directly (no custom-op wrapper). ``config`` overrides the
    default (BLOCK_M, BLOCK_N, num_warps, num_stages, mode, lazy). ``key_bias``: optional fp32
    [G, Nk] additive logit bias per key row (natural-log units, -inf allowed)."""
    G, N, D = q.shape
    Nk = k_perm.shape[1]
    Cq = q_offsets.shape[1] - 1
    R = range_start.shape[2]
    if D not in (16, 32, 64, 128, 256):
        raise ValueError(f"varblock_attention: unsupported head dim {D}")
    orig_dtype = q.dtype
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"varblock_attention: unsupported dtype {q.dtype}")
    k_perm = k_perm.to(q.dtype)
    v_perm = v_perm.to(q.dtype)
    q = q.contiguous()
    k_perm = k_perm.contiguous()
    v_perm = v_perm.contiguous()
    perm_q = perm_q.to(torch.int32).contiguous()
    q_offsets = q_offsets.to(torch.int32).contiguous()
    range_start = range_start.to(torch.int32).contiguous()
    range_end = range_end.to(torch.int32).contiguous()
    out = torch.empty_like(q)
    if G == 0 or N == 0:
        return out.to(orig_dtype)
    cfg = tuple(config) if config is not None else default_config(D, q.device)
    if len(cfg) == 5:
        cfg = cfg + (False,)
    BM, BN, warps, stages, mode, lazy = cfg
    mode = int(mode)
    if q.dtype == torch.float32 and not _interpret() and D >= 128:
        BM = min(BM, 64)  # fp32 tiles are twice as large
    grid = (triton.cdiv(N, BM) + Cq, G)
    has_bias = key_bias is not None
    # bias in the kernel's log2 domain; without one, pass any pointer (never read)
    kb = (key_bias.to(torch.float32) * LOG2E).contiguous() if has_bias else range_start
    _varblock_fwd[grid](
        q, k_perm, v_perm, out, perm_q, q_offsets, range_start, range_end, kb,
        float(scale) * LOG2E,
        N, Nk, Cq, R,
        D=D, BLOCK_M=BM, BLOCK_N=BN,
        CQ_P2=max(_next_p2(Cq), 2), R_P2=max(_next_p2(R), 2),
        MODE=mode, NUM_STAGES=stages, LAZY=bool(lazy),
        DOT_F32=bool(_interpret() and q.dtype == torch.bfloat16),
        HAS_BIAS=has_bias,
        num_warps=warps, num_stages=stages,
    )
    return out


def _can_launch(t: torch.Tensor) -> bool:
    return HAS_TRITON and (t.is_cuda or _interpret())


# ------------------------------------------------------------------------------------------
# torch custom op
# ------------------------------------------------------------------------------------------

@torch.library.custom_op("adacluster::varblock_attention", mutates_args=())
def _varblock_attention_op(
    q: torch.Tensor,
    k_perm: torch.Tensor,
    v_perm: torch.Tensor,
    perm_q: torch.Tensor,
    q_offsets: torch.Tensor,
    range_start: torch.Tensor,
    range_end: torch.Tensor,
    scale: float,
    key_bias: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    if _can_launch(q):
        return varblock_attention_triton(q, k_perm, v_perm, perm_q, q_offsets, range_start, range_end, scale,
                                         key_bias=key_bias)
    from ..reference import varblock_attention_ref

    return varblock_attention_ref(q, k_perm, v_perm, perm_q, q_offsets, range_start, range_end, scale,
                                  key_bias=key_bias)


@_varblock_attention_op.register_fake
def _(q, k_perm, v_perm, perm_q, q_offsets, range_start, range_end, scale, key_bias=None):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


def varblock_attention(
    q: torch.Tensor,
    k_perm: torch.Tensor,
    v_perm: torch.Tensor,
    perm_q: torch.Tensor,
    q_offsets: torch.Tensor,
    range_start: torch.Tensor,
    range_end: torch.Tensor,
    scale: float,
    key_bias: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Sparse attention over the permuted cluster layout; see the module docstring.

    ``key_bias``: optional fp32 [G, Nk] additive logit bias per key row (added to the scaled
    scores; -inf = never attended), used by the pooled-tail virtual rows.
    Runs the Triton kernel on CUDA (and on CPU under TRITON_INTERPRET=1); on other devices it
    falls back to ``reference.varblock_attention_ref``. No host synchronisation."""
    return _varblock_attention_op(q, k_perm, v_perm, perm_q, q_offsets, range_start, range_end, float(scale),
                                  key_bias)


def flops_computed(q_offsets: torch.Tensor, range_start: torch.Tensor, range_end: torch.Tensor, D: int) -> torch.Tensor:
    """Forward FLOPs on the computed query-key pairs (4·D per pair: QK^T and PV)."""
    from ..layout import pairs_computed

    return pairs_computed(q_offsets, range_start, range_end).sum() * (4 * D)
