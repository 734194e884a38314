"""Experimental variants of the variable-block attention kernel (GPU timing only; not shipped).

Same contract as `adacluster_core.kernels.varblock_attn.varblock_attention_triton`; switches:
  desc     K / V full chunks loaded through host tensor descriptors (TMA on Hopper)
  ws       warp_specialize on the chunk loop
  flatten  one flattened range x chunk loop (every chunk masked at its range end) instead of
           full chunks + one masked chunk per range
`bench/kernel_sweep.py` times them against the production kernel on real layouts. A variant that
wins moves into the production kernel; the outcome is recorded in docs/KERNEL_NOTES.md.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from adacluster_core.kernels.varblock_attn import LOG2E, _attend_chunk, _next_p2


@triton.jit
def _varblock_fwd_exp(
    Q, K, V, O, PERM, QOFF, RS, RE, TK, TV, TB, KD, VD,
    qk_scale,
    N, NK, CQ, R, CT, CQT,
    D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CQ_P2: tl.constexpr, R_P2: tl.constexpr,
    NUM_STAGES: tl.constexpr, HAS_TAIL: tl.constexpr,
    USE_DESC: tl.constexpr, WS: tl.constexpr, FLATTEN: tl.constexpr,
):
    tile = tl.program_id(0)
    g = tl.program_id(1)
    g64 = g.to(tl.int64)
    ci = tl.arange(0, CQ_P2)
    cmask = ci < CQ
    qoff = QOFF + g64 * (CQ + 1)
    lo = tl.load(qoff + ci, mask=cmask, other=0)
    hi = tl.load(qoff + ci + 1, mask=cmask, other=0)
    nt = (hi - lo + BLOCK_M - 1) // BLOCK_M
    nt = tl.where(cmask, nt, 0)
    cum = tl.cumsum(nt, 0)
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
        q = tl.load(Q + g64 * N * D + orig[:, None] * D + offs_d[None, :], mask=mrow[:, None], other=0.0)
        k_base = K + g64 * NK * D
        v_base = V + g64 * NK * D
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
        no_bias = tl.zeros([BLOCK_N], dtype=tl.float32)
        rbase = (g64 * CQ + c) * R
        ri = tl.arange(0, R_P2)
        rmask = ri < R
        rs_v = tl.load(RS + rbase + ri, mask=rmask, other=0)
        re_v = tl.load(RE + rbase + ri, mask=rmask, other=0)
        n_r = tl.max(tl.where(rmask & (re_v > rs_v), ri + 1, 0), 0)
        grow = (g * NK).to(tl.int32)
        if FLATTEN:
            for r in tl.range(0, n_r, flatten=True):
                s0 = tl.load(RS + rbase + r)
                e0 = tl.load(RE + rbase + r)
                n_ch = (tl.maximum(e0 - s0, 0) + BLOCK_N - 1) // BLOCK_N
                for j in tl.range(0, n_ch, num_stages=NUM_STAGES):
                    rows = s0 + j * BLOCK_N + offs_n
                    ok = rows < e0
                    if USE_DESC:
                        k = KD.load([grow + s0 + j * BLOCK_N, 0])
                        v = VD.load([grow + s0 + j * BLOCK_N, 0])
                    else:
                        k = tl.load(k_base + rows[:, None] * D + offs_d[None, :], mask=ok[:, None], other=0.0)
                        v = tl.load(v_base + rows[:, None] * D + offs_d[None, :], mask=ok[:, None], other=0.0)
                    acc, m_i, l_i = _attend_chunk(acc, m_i, l_i, q, k, v, qk_scale, no_bias, ok, True, False)
        else:
            for r in range(0, n_r):
                s0 = tl.load(RS + rbase + r)
                e0 = tl.load(RE + rbase + r)
                ln = tl.maximum(e0 - s0, 0)
                n_full = ln // BLOCK_N
                for j in tl.range(0, n_full, num_stages=NUM_STAGES, warp_specialize=WS):
                    if USE_DESC:
                        k = KD.load([grow + s0 + j * BLOCK_N, 0])
                        v = VD.load([grow + s0 + j * BLOCK_N, 0])
                    else:
                        rows = s0 + j * BLOCK_N + offs_n
                        k = tl.load(k_base + rows[:, None] * D + offs_d[None, :])
                        v = tl.load(v_base + rows[:, None] * D + offs_d[None, :])
                    acc, m_i, l_i = _attend_chunk(acc, m_i, l_i, q, k, v, qk_scale, no_bias, offs_n, False, False)
                if n_full * BLOCK_N < ln:
                    rows = s0 + n_full * BLOCK_N + offs_n
                    ok = rows < e0
                    k = tl.load(k_base + rows[:, None] * D + offs_d[None, :], mask=ok[:, None], other=0.0)
                    v = tl.load(v_base + rows[:, None] * D + offs_d[None, :], mask=ok[:, None], other=0.0)
                    acc, m_i, l_i = _attend_chunk(acc, m_i, l_i, q, k, v, qk_scale, no_bias, ok, True, False)
        if HAS_TAIL:
            if c < CQT:
                tk_base = TK + g64 * CT * D
                tv_base = TV + g64 * CT * D
                tb_base = TB + (g64 * CQT + c) * CT
                for j0 in range(0, CT, BLOCK_N):
                    rows = j0 + offs_n
                    ok = rows < CT
                    k = tl.load(tk_base + rows[:, None] * D + offs_d[None, :], mask=ok[:, None], other=0.0)
                    v = tl.load(tv_base + rows[:, None] * D + offs_d[None, :], mask=ok[:, None], other=0.0)
                    kb = tl.load(tb_base + rows, mask=ok, other=float("-inf"))
                    acc, m_i, l_i = _attend_chunk(acc, m_i, l_i, q, k, v, qk_scale, kb, ok, True, True)
        l_safe = tl.where(l_i > 0, l_i, 1.0)
        out = acc / l_safe[:, None]
        out = tl.where((l_i > 0)[:, None], out, 0.0)
        tl.store(O + g64 * N * D + orig[:, None] * D + offs_d[None, :], out.to(O.dtype.element_ty),
                 mask=mrow[:, None])


def varblock_attention_exp(q, k_rows, v_rows, perm_q, q_offsets, range_start, range_end, scale,
                           tail_keys=None, tail_values=None, tail_bias=None, *,
                           config=(128, 64, 8, 3), desc=False, ws=False, flatten=False):
    from triton.tools.tensor_descriptor import TensorDescriptor

    G, N, D = q.shape
    Nk = k_rows.shape[1]
    Cq = q_offsets.shape[1] - 1
    R = range_start.shape[2]
    out = torch.empty_like(q)
    has_tail = tail_keys is not None and tail_bias is not None and tail_keys.shape[1] > 0
    if has_tail:
        tk, tv = tail_keys.contiguous(), tail_values.contiguous()
        tb = (tail_bias.float() * LOG2E).contiguous()
        ct, cqt = tk.shape[1], tb.shape[1]
    else:
        tk, tv, tb, ct, cqt = k_rows, v_rows, range_start, 0, 0
    BM, BN, warps, stages = config
    k2 = k_rows.reshape(G * Nk, D)
    v2 = v_rows.reshape(G * Nk, D)
    kd = TensorDescriptor(k2, list(k2.shape), list(k2.stride()), [BN, D])
    vd = TensorDescriptor(v2, list(v2.shape), list(v2.stride()), [BN, D])
    grid = (triton.cdiv(N, BM) + Cq, G)
    _varblock_fwd_exp[grid](
        q, k_rows, v_rows, out, perm_q, q_offsets, range_start, range_end, tk, tv, tb, kd, vd,
        float(scale) * LOG2E, N, Nk, Cq, R, ct, cqt,
        D=D, BLOCK_M=BM, BLOCK_N=BN, CQ_P2=max(_next_p2(Cq), 2), R_P2=max(_next_p2(R), 2),
        NUM_STAGES=stages, HAS_TAIL=has_tail, USE_DESC=desc, WS=ws, FLATTEN=flatten,
        num_warps=warps, num_stages=stages,
    )
    return out
