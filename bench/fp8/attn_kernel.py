"""8-bit variant of the variable-block sparse attention (Triton, GPUs with fp8 tensor cores): the issue-27
experiment, stopped by its own rule (docs/KERNEL_NOTES.md, "fp8"): slower than the bf16 kernel on H100 and
over the error budget with P·V in fp8. Kept in bench/ so the measurements can be rerun
(bench/fp8_steps.py); the pack never imports it.

    out = varblock_attention_fp8(q, kq, k_scale, vq, v_scale, perm_q, q_offsets, range_start,
                                 range_end, scale, tail_keys=None, tail_values=None, tail_bias=None)

Same layout and result as `varblock_attn.varblock_attention` (shapes in its docstring), with K and
V given already quantised by the gather step (`gather_quant.gather_quant_kv` / `torch_ref.quantize_kv`):

* ``kq [G, Nk, D]`` e4m3 (or int8) keys in cluster order, shifted by their per-group mean (a
  constant per query row in the logits, so the softmax is unchanged) and divided by
  ``k_scale fp32 [G, Nk]`` (one scale per key row);
* ``vq`` e4m3 values divided by ``v_scale fp32 [G]``, stored transposed ``[G, D, Nkp]`` (Nkp = Nk
  rounded up to 16) so that P·V reads them K-major, as fp8 MMA requires; or bf16 ``[G, Nk, D]`` rows
  (``v_scale`` ones) when P·V runs in bf16;
* query rows are quantised in the kernel, one scale per row; P is cast with ``p_scale`` (P <= 1 maps
  to <= 448, so small probabilities stay representable);
* the pooled tail (virtual keys, a small block) stays in q's dtype: ``tail_keys`` shifted by the
  same mean, ``tail_values`` divided by ``v_scale``.

The torch emulation of this arithmetic is `torch_ref.varblock_attention_fp8_ref`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from adacluster_core.kernels._common import interpreting, next_pow2

from ._e4m3 import to_e4m3

LOG2E = 1.4426950408889634


@triton.jit
def _attend8(acc, m_i, l_i, q8, k8, v8, row_scale, ks, col_ok,
             MASK: tl.constexpr, PV_FP8: tl.constexpr, QK_INT8: tl.constexpr, P_MUL: tl.constexpr,
             ROUND_FIRST: tl.constexpr):
    # logits in the log2 domain: int / fp8 dot, then one scale per query row and per key row
    if QK_INT8:
        s = tl.dot(q8, tl.trans(k8), out_dtype=tl.int32).to(tl.float32)
    else:
        s = tl.dot(q8, tl.trans(k8))
    s = s * row_scale[:, None] * ks[None, :]
    if MASK:
        s = tl.where(col_ok[None, :], s, float("-inf"))
    m_ij = tl.maximum(m_i, tl.max(s, 1))
    p = tl.math.exp2(s - m_ij[:, None])
    alpha = tl.math.exp2(m_i - m_ij)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    if PV_FP8:
        acc = tl.dot(to_e4m3(p * P_MUL, ROUND_FIRST), tl.trans(v8), acc)
    else:
        acc = tl.dot(p.to(v8.dtype), v8, acc)
    return acc, m_ij, l_i


@triton.jit
def _masked_chunk(acc, m_i, l_i, q8, row_scale, k_base, v_base, ks_base, c0, lo, hi, offs_n, offs_d, NKP,
                  D: tl.constexpr, PV_FP8: tl.constexpr, QK_INT8: tl.constexpr, P_MUL: tl.constexpr,
                  ROUND_FIRST: tl.constexpr):
    # the chunk of key rows c0 + [0, BLOCK_N), of which only lo <= row < hi are attended
    rows = c0 + offs_n
    ok = (rows >= lo) & (rows < hi)
    k = tl.load(k_base + rows[:, None] * D + offs_d[None, :], mask=ok[:, None], other=0.0)
    if PV_FP8:
        v = tl.load(v_base + offs_d[:, None] * NKP + rows[None, :], mask=ok[None, :], other=0.0)
    else:
        v = tl.load(v_base + rows[:, None] * D + offs_d[None, :], mask=ok[:, None], other=0.0)
    ks = tl.load(ks_base + rows, mask=ok, other=0.0)
    return _attend8(acc, m_i, l_i, q8, k, v, row_scale, ks, ok, True, PV_FP8, QK_INT8, P_MUL, ROUND_FIRST)


@triton.jit
def _attend_tail(acc, m_i, l_i, q, k, v, qk_scale, bias, col_ok, P_MUL: tl.constexpr):
    # the pooled tail in q's dtype; bias may be -inf for a whole row of the block
    s = tl.dot(q, tl.trans(k)) * qk_scale + bias[None, :]
    s = tl.where(col_ok[None, :], s, float("-inf"))
    m_ij = tl.maximum(m_i, tl.max(s, 1))
    m_use = tl.where(m_ij == float("-inf"), 0.0, m_ij)
    p = tl.math.exp2(s - m_use[:, None])
    alpha = tl.math.exp2(m_i - m_use)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    acc = tl.dot((p * P_MUL).to(v.dtype), v, acc)
    return acc, m_ij, l_i


@triton.jit
def _quantise_rows(x, QK_INT8: tl.constexpr, ROUND_FIRST: tl.constexpr):
    # one scale per row: (x / scale in the 8-bit type, scale)
    amax = tl.max(tl.abs(x), 1)
    if QK_INT8:
        sc = tl.where(amax > 0, amax / 127.0, 1.0)
        y = x / sc[:, None]
        y = tl.where(y >= 0, y + 0.5, y - 0.5).to(tl.int8)
    else:
        sc = tl.where(amax > 0, amax / 448.0, 1.0)
        y = to_e4m3(x / sc[:, None], ROUND_FIRST)
    return y, sc


@triton.jit(do_not_specialize=["N", "NK", "NKP", "CQ", "R", "CT", "CQT"])
def _varblock_fp8_fwd(
    Q, K, KS, V, VS, O, PERM, QOFF, RS, RE, TK, TV, TB, K_DESC, V_DESC,
    qk_scale,
    N, NK, NKP, CQ, R, CT, CQT, H,
    sq_b, sq_h, sq_n, so_b, so_h, so_n,
    D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CQ_P2: tl.constexpr,
    R_P2: tl.constexpr, NUM_STAGES: tl.constexpr, HAS_TAIL: tl.constexpr, USE_DESC: tl.constexpr,
    PV_FP8: tl.constexpr, QK_INT8: tl.constexpr, P_MUL: tl.constexpr, ROUND_FIRST: tl.constexpr, ALIGN: tl.constexpr,
):
    tile = tl.program_id(0)
    g = tl.program_id(1)
    g64 = g.to(tl.int64)
    b64 = g64 // H
    h64 = g64 % H
    # tile table from q_offsets, text cluster's tiles first (as in varblock_attn._varblock_fwd)
    ci = tl.arange(0, CQ_P2)
    cmask = ci < CQ
    qoff = QOFF + g64 * (CQ + 1)
    lo = tl.load(qoff + ci, mask=cmask, other=0)
    hi = tl.load(qoff + ci + 1, mask=cmask, other=0)
    nt = tl.where(cmask, (hi - lo + BLOCK_M - 1) // BLOCK_M, 0)
    cum = tl.cumsum(nt, 0)
    total_tiles = tl.sum(nt, 0)
    if tile < total_tiles:
        n_last = tl.sum(tl.where(ci == CQ - 1, nt, 0), 0)
        t = tile - n_last
        t = tl.where(t < 0, t + total_tiles, t)
        c = tl.sum((cum <= t).to(tl.int32), 0)
        sel = ci == c
        t0 = tl.sum(tl.where(sel, cum - nt, 0), 0)
        q_lo = tl.sum(tl.where(sel, lo, 0), 0)
        q_hi = tl.sum(tl.where(sel, hi, 0), 0)
        row0 = q_lo + (t - t0) * BLOCK_M

        offs_m = tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, D)
        offs_n = tl.arange(0, BLOCK_N)
        prow = row0 + offs_m
        mrow = prow < q_hi
        orig64 = tl.load(PERM + g64 * N + prow, mask=mrow, other=0).to(tl.int64)
        q_ptrs = Q + b64 * sq_b + h64 * sq_h + orig64[:, None] * sq_n + offs_d[None, :]
        q8, q_sc = _quantise_rows(tl.load(q_ptrs, mask=mrow[:, None], other=0.0).to(tl.float32), QK_INT8, ROUND_FIRST)
        row_scale = q_sc * qk_scale

        k_base = K + g64 * NK * D
        ks_base = KS + g64 * NK
        if PV_FP8:
            v_base = V + g64 * D * NKP  # transposed [D, Nkp]
        else:
            v_base = V + g64 * NK * D
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)

        rbase = (g64 * CQ + c) * R
        ri = tl.arange(0, R_P2)
        rmask = ri < R
        rs_v = tl.load(RS + rbase + ri, mask=rmask, other=0)
        re_v = tl.load(RE + rbase + ri, mask=rmask, other=0)
        n_r = tl.max(tl.where(rmask & (re_v > rs_v), ri + 1, 0), 0)
        g_row = (g * NK).to(tl.int32)
        g_vrow = (g * D).to(tl.int32)
        for r in range(0, n_r):
            s0 = tl.load(RS + rbase + r)
            e0 = tl.load(RE + rbase + r)
            # chunks start at multiples of 16 rows: the transposed 8-bit V is read along the key rows,
            # and TMA / vector loads need 16-byte aligned starts; the rows before s0 are masked
            if ALIGN:
                a0 = tl.multiple_of((s0 // 16) * 16, 16)
            else:
                a0 = s0
            start = a0
            if a0 < s0:
                acc, m_i, l_i = _masked_chunk(acc, m_i, l_i, q8, row_scale, k_base, v_base, ks_base, a0, s0, e0,
                                              offs_n, offs_d, NKP, D, PV_FP8, QK_INT8, P_MUL, ROUND_FIRST)
                start = a0 + BLOCK_N
            if ALIGN:
                start = tl.multiple_of(start, 16)
            n_full = tl.maximum(e0 - start, 0) // BLOCK_N
            for j in tl.range(0, n_full, num_stages=NUM_STAGES):
                c0 = start + j * BLOCK_N
                if ALIGN:
                    c0 = tl.multiple_of(c0, 16)
                rows = c0 + offs_n
                if USE_DESC:
                    k = K_DESC.load([g_row + c0, 0])
                    if PV_FP8:
                        v = V_DESC.load([g_vrow, c0])
                    else:
                        v = V_DESC.load([g_row + c0, 0])
                else:
                    k = tl.load(k_base + rows[:, None] * D + offs_d[None, :])
                    if PV_FP8:
                        v = tl.load(v_base + offs_d[:, None] * NKP + rows[None, :])
                    else:
                        v = tl.load(v_base + rows[:, None] * D + offs_d[None, :])
                ks = tl.load(ks_base + rows)
                acc, m_i, l_i = _attend8(acc, m_i, l_i, q8, k, v, row_scale, ks, offs_n,
                                         False, PV_FP8, QK_INT8, P_MUL, ROUND_FIRST)
            c0 = start + n_full * BLOCK_N
            if c0 < e0:
                acc, m_i, l_i = _masked_chunk(acc, m_i, l_i, q8, row_scale, k_base, v_base, ks_base, c0, c0, e0,
                                              offs_n, offs_d, NKP, D, PV_FP8, QK_INT8, P_MUL, ROUND_FIRST)

        if HAS_TAIL:
            if c < CQT:
                q = tl.load(q_ptrs, mask=mrow[:, None], other=0.0)  # q's dtype (reloaded: not kept live)
                tk_base = TK + g64 * CT * D
                tv_base = TV + g64 * CT * D
                tb_base = TB + (g64 * CQT + c) * CT
                for j0 in range(0, CT, BLOCK_N):
                    rows = j0 + offs_n
                    ok = rows < CT
                    k = tl.load(tk_base + rows[:, None] * D + offs_d[None, :], mask=ok[:, None], other=0.0)
                    v = tl.load(tv_base + rows[:, None] * D + offs_d[None, :], mask=ok[:, None], other=0.0)
                    kb = tl.load(tb_base + rows, mask=ok, other=float("-inf"))
                    acc, m_i, l_i = _attend_tail(acc, m_i, l_i, q, k, v, qk_scale, kb, ok, P_MUL)

        vs = tl.load(VS + g64)
        l_safe = tl.where(l_i > 0, l_i, 1.0)
        out = acc * (vs / P_MUL) / l_safe[:, None]
        out = tl.where((l_i > 0)[:, None], out, 0.0)
        tl.store(O + b64 * so_b + h64 * so_h + orig64[:, None] * so_n + offs_d[None, :],
                 out.to(O.dtype.element_ty), mask=mrow[:, None])


def _descriptor(x2: torch.Tensor, block: list[int]):
    try:
        from triton.tools.tensor_descriptor import TensorDescriptor
    except Exception:  # pragma: no cover - older triton
        return None
    return TensorDescriptor(x2, list(x2.shape), [x2.stride(0), 1], block)


# (BLOCK_M, BLOCK_N, num_warps, num_stages) per head dim, the bf16 kernel's Hopper rows (the alternatives
# measured in docs/KERNEL_NOTES.md, "fp8"); the interpreter runs small tiles
LAUNCH_CONFIGS = {64: (128, 64, 4, 3), 128: (128, 64, 8, 3)}
INTERP_CONFIG = (16, 16, 4, 1)


def _use_descriptors(device: torch.device, forced) -> bool:
    """TMA loads on Hopper and newer; the interpreter runs the same path; `forced` True / False wins."""
    if forced is not None:
        return bool(forced)
    return interpreting() or (device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9)


def _kv_descriptors(kq, vq, G, Nk, Nkp, D, BN, pv_fp8, device, forced):
    if not _use_descriptors(device, forced):
        return False, kq, kq
    k_desc = _descriptor(kq.view(G * Nk, D), [BN, D])
    v_desc = _descriptor(vq.view(G * D, Nkp), [D, BN]) if pv_fp8 else _descriptor(vq.view(G * Nk, D), [BN, D])
    if k_desc is None or v_desc is None:
        return False, kq, kq
    return True, k_desc, v_desc


def _tail_args(q4, tail_keys, tail_values, tail_bias, dtype, range_start):
    if tail_keys is None or tail_bias is None or tail_keys.shape[1] == 0:
        return False, q4, q4, range_start, 0, 0  # any pointers: never read
    tk, tv = tail_keys.to(dtype).contiguous(), tail_values.to(dtype).contiguous()
    tb = (tail_bias.to(torch.float32) * LOG2E).contiguous()
    return True, tk, tv, tb, tk.shape[1], tb.shape[1]


def _launch(out, q, kq, k_scale, vq, v_scale, perm_q, q_offsets, range_start, range_end, scale, p_scale,
            tail_keys=None, tail_values=None, tail_bias=None, *, config=None, descriptors=None, align=None) -> None:
    """Launch the 8-bit kernel into ``out`` (q's shape and dtype, any strides with unit stride along D)."""
    H = q.shape[1] if q.dim() == 4 else 1
    q4 = q if q.dim() == 4 else q.unsqueeze(1)
    o4 = out if out.dim() == 4 else out.unsqueeze(1)
    B, _, N, D = q4.shape
    G, Nk = B * H, kq.shape[1]
    if G == 0 or N == 0:
        return
    pv_fp8 = vq.dtype == torch.float8_e4m3fn
    Nkp = vq.shape[2] if pv_fp8 else Nk
    Cq, R = q_offsets.shape[1] - 1, range_start.shape[2]
    i32 = lambda x: x.to(torch.int32).contiguous()  # noqa: E731
    has_tail, tk, tv, tb, ct, cqt = _tail_args(q4, tail_keys, tail_values, tail_bias, q.dtype, range_start)
    if config is None:
        config = INTERP_CONFIG if interpreting() else LAUNCH_CONFIGS[D]
    BM, BN, warps, stages = config
    use_desc, k_desc, v_desc = _kv_descriptors(kq, vq, G, Nk, Nkp, D, BN, pv_fp8, q.device, descriptors)
    _varblock_fp8_fwd[(triton.cdiv(N, BM) + Cq, G)](
        q4, kq, k_scale, vq, v_scale, o4, i32(perm_q), i32(q_offsets), i32(range_start), i32(range_end),
        tk, tv, tb, k_desc, v_desc, float(scale) * LOG2E,
        N, Nk, Nkp, Cq, R, ct, cqt, H,
        q4.stride(0), q4.stride(1), q4.stride(2), o4.stride(0), o4.stride(1), o4.stride(2),
        D=D, BLOCK_M=BM, BLOCK_N=BN, CQ_P2=max(next_pow2(Cq), 2), R_P2=max(next_pow2(R), 2),
        NUM_STAGES=stages, HAS_TAIL=has_tail, USE_DESC=use_desc, PV_FP8=pv_fp8,
        QK_INT8=kq.dtype == torch.int8, P_MUL=float(p_scale) if pv_fp8 else 1.0, ROUND_FIRST=interpreting(),
        ALIGN=pv_fp8 if align is None else bool(align),
        num_warps=warps, num_stages=stages,
    )


def varblock_attention_fp8(q, kq, k_scale, vq, v_scale, perm_q, q_offsets, range_start, range_end, scale,
                           tail_keys=None, tail_values=None, tail_bias=None, out=None, *, p_scale: float,
                           config: tuple | None = None, descriptors: bool | None = None,
                           align: bool | None = None) -> torch.Tensor:
    """Sparse attention over the permuted cluster layout with 8-bit Q·K and P·V (shapes in the module
    docstring; q / out may be [B, H, N, D] views with any strides, unit stride along D). kq / k_scale /
    vq / v_scale as made by `gather_quant.gather_quant_kv` / `torch_ref.quantize_kv` (P·V in fp8 when vq
    is e4m3 ``[G, D, Nkp]``, in q's dtype when it is ``[G, Nk, D]`` rows of q's dtype; Q·K in int8 when
    kq is int8); P is cast as P x p_scale (`torch_ref.P_SCALE`). config (BLOCK_M, BLOCK_N, warps,
    stages), descriptors (TMA loads) and align (16-row aligned chunk starts; default: with 8-bit V)
    override the defaults. Returns ``out`` (a tensor like q when not given). No host sync."""
    if out is None:
        out = torch.empty_like(q)
    _launch(out, q, kq, k_scale, vq, v_scale, perm_q, q_offsets, range_start, range_end, float(scale),
            float(p_scale), tail_keys, tail_values, tail_bias, config=config, descriptors=descriptors, align=align)
    return out
