"""Variable-block sparse flash-attention forward (Triton) over the permuted cluster layout.

    out = varblock_attention(q, k_rows, v_rows, perm_q, q_offsets, range_start, range_end, scale,
                             tail_keys=None, tail_values=None, tail_bias=None)

* ``q [G, N, D]`` in original token order; ``k_rows, v_rows [G, Nk, D]`` keys/values sorted
  by key cluster (optionally followed by always-attended rows, e.g. text tokens).
* ``perm_q int32 [G, N]``: permuted query row r is original row ``perm_q[g, r]``;
  query cluster c owns permuted rows ``q_offsets[g, c] : q_offsets[g, c+1]``.
* ``range_start / range_end int32 [G, Cq, R]``: half-open key-row ranges attended by each
  query cluster (empty slots have start == end, after the used ones).
* pooled tail (optional, all three or none): ``tail_keys, tail_values [G, Ct, D]`` one virtual
  key per key cluster (centroid, mean value) and ``tail_bias fp32 [G, Cqt, Ct]``: the logit
  bias of virtual key j for query cluster c (log of the cluster size; -inf where the cluster
  is selected or empty). Query clusters c >= Cqt (the always-dense text cluster) see no tail.
  The virtual keys are one small contiguous block, visited once per query tile.

Returns ``[G, N, D]`` in original query order, q's dtype; rows that attend to no key are zeros.

Kernel (docs/KERNEL_NOTES.md): one program per (query tile, group); the tile table is built in
registers from ``q_offsets`` (grid = the static bound ``ceil(N / BLOCK_M) + Cq`` tiles per
group, spare programs exit: no host sync, no padding). Query rows are gathered through
``perm_q`` and the output is scattered back through it. One loop over the ranges (full
``BLOCK_N`` chunks unmasked and pipelined, one masked chunk per ragged range end), then the
tail block; online softmax in fp32 with exp2 (log2(e) folded into the scale).

The public entry point is the torch custom op ``adacluster::varblock_attention`` (opaque to
torch.compile).
"""
from __future__ import annotations

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
    def _attend_chunk(acc, m_i, l_i, q, k, v, qk_scale, bias, col_ok,
                      MASK: tl.constexpr, HAS_BIAS: tl.constexpr):
        # one [BM, BN] block of the online softmax; m_i is kept in the log2 domain (scaled)
        s = tl.dot(q, tl.trans(k))
        if HAS_BIAS:
            # per-key additive bias (log2 units, may be -inf): a row may see only -inf in this
            # chunk, so the exponent offset is guarded against -inf - -inf = NaN
            s = s * qk_scale + bias[None, :]
            if MASK:
                s = tl.where(col_ok[None, :], s, float("-inf"))
            m_ij = tl.maximum(m_i, tl.max(s, 1))
            m_use = tl.where(m_ij == float("-inf"), 0.0, m_ij)
            p = tl.math.exp2(s - m_use[:, None])
            alpha = tl.math.exp2(m_i - m_use)
        else:
            if MASK:
                s = tl.where(col_ok[None, :], s, float("-inf"))
            m_ij = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
            p = tl.math.exp2(s * qk_scale - m_ij[:, None])
            alpha = tl.math.exp2(m_i - m_ij)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc)
        return acc, m_ij, l_i

    # sizes that vary per layer or call are not specialised on (no recompiles per layer)
    @triton.jit(do_not_specialize=["N", "NK", "CQ", "R", "CT", "CQT"])
    def _varblock_fwd(
        Q, K, V, O, PERM, QOFF, RS, RE, TK, TV, TB, K_DESC, V_DESC,
        qk_scale,
        N, NK, CQ, R, CT, CQT,
        D: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        CQ_P2: tl.constexpr,
        R_P2: tl.constexpr,
        NUM_STAGES: tl.constexpr,
        HAS_TAIL: tl.constexpr,
        USE_DESC: tl.constexpr,
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
            # the last query cluster's tiles run first: with always-dense tokens it is the text
            # cluster, whose tiles attend every key (several times a clustered tile's work) and
            # would otherwise start last and run alone at the end of the grid
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
            orig = tl.load(PERM + g64 * N + prow, mask=mrow, other=0)
            q = tl.load(Q + g64 * N * D + orig[:, None] * D + offs_d[None, :], mask=mrow[:, None], other=0.0)

            k_base = K + g64 * NK * D
            v_base = V + g64 * NK * D
            m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
            l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
            acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
            no_bias = tl.zeros([BLOCK_N], dtype=tl.float32)

            # ---- selected ranges: loop only up to the last non-empty one ----
            rbase = (g64 * CQ + c) * R
            ri = tl.arange(0, R_P2)
            rmask = ri < R
            rs_v = tl.load(RS + rbase + ri, mask=rmask, other=0)
            re_v = tl.load(RE + rbase + ri, mask=rmask, other=0)
            n_r = tl.max(tl.where(rmask & (re_v > rs_v), ri + 1, 0), 0)
            g_row = (g * NK).to(tl.int32)  # first row of this group in the [G * NK, D] descriptors
            for r in range(0, n_r):
                s0 = tl.load(RS + rbase + r)
                e0 = tl.load(RE + rbase + r)
                ln = tl.maximum(e0 - s0, 0)
                n_full = ln // BLOCK_N
                for j in tl.range(0, n_full, num_stages=NUM_STAGES):
                    if USE_DESC:  # TMA block copies (Hopper): fewer load instructions per chunk
                        k = K_DESC.load([g_row + s0 + j * BLOCK_N, 0])
                        v = V_DESC.load([g_row + s0 + j * BLOCK_N, 0])
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

            # ---- pooled tail: the virtual keys, one contiguous block per group ----
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


# ------------------------------------------------------------------------------------------
# launch configuration: one table, (BLOCK_M, BLOCK_N, num_warps, num_stages) per head dim,
# chosen by measurement on an H200 (docs/KERNEL_NOTES.md); below SMALL_N tokens, D = 128 uses
# half-height query tiles (more, shorter programs: better balance when heads are short)
# ------------------------------------------------------------------------------------------
LAUNCH_CONFIGS = {
    16: (128, 64, 4, 3),
    32: (128, 64, 4, 3),
    64: (128, 64, 4, 3),
    128: (128, 64, 8, 3),
    256: (64, 32, 8, 2),
}
SMALL_N = 150_000
SMALL_N_CONFIGS = {128: (64, 64, 4, 3)}
# The interpreter runs every op in numpy: small tiles keep the CPU tests fast.
_INTERP_CONFIG = (16, 16, 4, 1)


def launch_config(D: int, dtype: torch.dtype, device: torch.device, n_tokens: int = 0) -> tuple:
    if device.type != "cuda" or _interpret():
        return _INTERP_CONFIG
    bm, bn, w, s = SMALL_N_CONFIGS.get(D, LAUNCH_CONFIGS[D]) if 0 < n_tokens < SMALL_N else LAUNCH_CONFIGS[D]
    if dtype == torch.float32 and D >= 128:
        bm = min(bm, 64)  # fp32 tiles are twice as large
    return bm, bn, w, s


def _tensor_descriptor_class():
    """Triton's host-side tensor descriptor (TMA block loads), or None where this Triton lacks it."""
    try:
        from triton.tools.tensor_descriptor import TensorDescriptor
        return TensorDescriptor
    except Exception:  # pragma: no cover - older triton
        return None


def use_descriptors(device: torch.device) -> bool:
    """K / V chunks through tensor descriptors: on Hopper and newer (TMA), and in the
    interpreter (so the CPU tests run the same code path); plain pointer loads elsewhere."""
    if _tensor_descriptor_class() is None:
        return False
    if _interpret():
        return True
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9


def _next_p2(x: int) -> int:
    return 1 if x <= 1 else 1 << (int(x) - 1).bit_length()


def varblock_attention_triton(q, k_rows, v_rows, perm_q, q_offsets, range_start, range_end, scale,
                              tail_keys=None, tail_values=None, tail_bias=None,
                              config: tuple | None = None, descriptors: bool | None = None) -> torch.Tensor:
    """Launch the Triton kernel directly (no custom-op wrapper). ``config`` overrides the
    table: (BLOCK_M, BLOCK_N, num_warps, num_stages); ``descriptors`` overrides
    `use_descriptors` (tests run both load paths)."""
    G, N, D = q.shape
    Nk = k_rows.shape[1]
    Cq = q_offsets.shape[1] - 1
    R = range_start.shape[2]
    if D not in LAUNCH_CONFIGS:
        raise ValueError(f"varblock_attention: unsupported head dim {D}")
    out_dtype = q.dtype
    if out_dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"varblock_attention: unsupported dtype {q.dtype}")
    # The interpreter's low-precision tl.dot and fp32->bf16 cast are wrong (triton 3.8 / 3.9):
    # run it in fp32 and round once, here, with torch's round-to-nearest-even.
    work_dtype = torch.float32 if _interpret() else out_dtype
    q = q.to(work_dtype).contiguous()
    k_rows = k_rows.to(work_dtype).contiguous()
    v_rows = v_rows.to(work_dtype).contiguous()
    perm_q = perm_q.to(torch.int32).contiguous()
    q_offsets = q_offsets.to(torch.int32).contiguous()
    range_start = range_start.to(torch.int32).contiguous()
    range_end = range_end.to(torch.int32).contiguous()
    out = torch.empty_like(q)
    if G == 0 or N == 0:
        return out.to(out_dtype)
    has_tail = tail_keys is not None and tail_bias is not None and tail_keys.shape[1] > 0
    if has_tail:
        tk = tail_keys.to(work_dtype).contiguous()
        tv = tail_values.to(work_dtype).contiguous()
        tb = (tail_bias.to(torch.float32) * LOG2E).contiguous()  # the kernel's log2 domain
        ct, cqt = tk.shape[1], tb.shape[1]
    else:  # any pointers: never read
        tk, tv, tb, ct, cqt = k_rows, v_rows, range_start, 0, 0
    BM, BN, warps, stages = tuple(config) if config is not None else launch_config(D, work_dtype, q.device, N)
    desc = use_descriptors(q.device) if descriptors is None else bool(descriptors)
    if desc and Nk > 0:
        TD = _tensor_descriptor_class()
        k2, v2 = k_rows.view(G * Nk, D), v_rows.view(G * Nk, D)
        k_desc = TD(k2, [G * Nk, D], [D, 1], [BN, D])
        v_desc = TD(v2, [G * Nk, D], [D, 1], [BN, D])
    else:  # any tensors: never read
        desc, k_desc, v_desc = False, k_rows, v_rows
    grid = (triton.cdiv(N, BM) + Cq, G)
    _varblock_fwd[grid](
        q, k_rows, v_rows, out, perm_q, q_offsets, range_start, range_end, tk, tv, tb, k_desc, v_desc,
        float(scale) * LOG2E,
        N, Nk, Cq, R, ct, cqt,
        D=D, BLOCK_M=BM, BLOCK_N=BN,
        CQ_P2=max(_next_p2(Cq), 2), R_P2=max(_next_p2(R), 2),
        NUM_STAGES=stages, HAS_TAIL=has_tail, USE_DESC=desc,
        num_warps=warps, num_stages=stages,
    )
    return out.to(out_dtype)


def _can_launch(t: torch.Tensor) -> bool:
    return HAS_TRITON and (t.is_cuda or _interpret())


# ------------------------------------------------------------------------------------------
# torch custom op
# ------------------------------------------------------------------------------------------

@torch.library.custom_op("adacluster::varblock_attention", mutates_args=())
def _varblock_attention_op(
    q: torch.Tensor,
    k_rows: torch.Tensor,
    v_rows: torch.Tensor,
    perm_q: torch.Tensor,
    q_offsets: torch.Tensor,
    range_start: torch.Tensor,
    range_end: torch.Tensor,
    scale: float,
    tail_keys: Optional[torch.Tensor] = None,
    tail_values: Optional[torch.Tensor] = None,
    tail_bias: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    if _can_launch(q):
        return varblock_attention_triton(q, k_rows, v_rows, perm_q, q_offsets, range_start, range_end, scale,
                                         tail_keys, tail_values, tail_bias)
    from ..reference import varblock_attention_ref

    return varblock_attention_ref(q, k_rows, v_rows, perm_q, q_offsets, range_start, range_end, scale,
                                  tail_keys, tail_values, tail_bias)


@_varblock_attention_op.register_fake
def _(q, k_rows, v_rows, perm_q, q_offsets, range_start, range_end, scale,
      tail_keys=None, tail_values=None, tail_bias=None):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


def varblock_attention(
    q: torch.Tensor,
    k_rows: torch.Tensor,
    v_rows: torch.Tensor,
    perm_q: torch.Tensor,
    q_offsets: torch.Tensor,
    range_start: torch.Tensor,
    range_end: torch.Tensor,
    scale: float,
    tail_keys: Optional[torch.Tensor] = None,
    tail_values: Optional[torch.Tensor] = None,
    tail_bias: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Sparse attention over the permuted cluster layout; shapes in the module docstring.

    Runs the Triton kernel on CUDA (and on CPU under TRITON_INTERPRET=1); elsewhere
    ``reference.varblock_attention_ref``. No host synchronisation."""
    return _varblock_attention_op(q, k_rows, v_rows, perm_q, q_offsets, range_start, range_end, float(scale),
                                  tail_keys, tail_values, tail_bias)
