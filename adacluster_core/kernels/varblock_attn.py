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

The public entry point `varblock_attention` calls the torch custom ops
``adacluster::varblock_attention`` / ``adacluster::varblock_attention_into`` (``out=``; opaque to
torch.compile, with fake implementations): Triton on CUDA; on the CPU the interpreter under
TRITON_INTERPRET=1, else the reference `torch_ref.varblock_attention_ref`. Launch configs:
`_common.launch_config("varblock_attn", ...)`.
"""
from __future__ import annotations

from typing import Optional

import torch

try:  # triton is optional at import time (callers import this module only where Triton runs)
    import triton
    import triton.language as tl

    HAS_TRITON = True
except Exception:  # pragma: no cover
    triton = None
    tl = None
    HAS_TRITON = False

from ._common import capability, interpreting, launch_config, launch_override, next_pow2, register_cpu
from .torch_ref import varblock_attention_ref

LOG2E = 1.4426950408889634
HEAD_DIMS = (16, 32, 64, 128, 256)  # the head dims the launch table has rows for


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
        Q, K, V, O, PERM, QOFF, RS, RE, TK, TV, TB, K_DESC, V_DESC, KIDX,
        qk_scale,
        N, NK, CQ, R, CT, CQT, H,
        sq_b, sq_h, sq_n, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, so_b, so_h, so_n,
        D: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        CQ_P2: tl.constexpr,
        R_P2: tl.constexpr,
        NUM_STAGES: tl.constexpr,
        HAS_TAIL: tl.constexpr,
        USE_DESC: tl.constexpr,
        KV_INDEXED: tl.constexpr,
    ):
        tile = tl.program_id(0)
        g = tl.program_id(1)
        g64 = g.to(tl.int64)
        b64 = g64 // H
        h64 = g64 % H

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
            # q and the output through the caller's strides (ComfyUI's [B, L, H*D] or [B, H, L, D] views)
            orig64 = orig.to(tl.int64)
            q = tl.load(Q + b64 * sq_b + h64 * sq_h + orig64[:, None] * sq_n + offs_d[None, :],
                        mask=mrow[:, None], other=0.0)

            k_base = K + b64 * sk_b + h64 * sk_h
            v_base = V + b64 * sv_b + h64 * sv_h
            kidx_base = KIDX + g64 * NK  # KV_INDEXED: permuted key row -> row of the caller's k / v
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
                    elif KV_INDEXED:  # rows gathered through the key permutation (no permuted copies)
                        src = tl.load(kidx_base + s0 + j * BLOCK_N + offs_n).to(tl.int64)
                        k = tl.load(k_base + src[:, None] * sk_n + offs_d[None, :])
                        v = tl.load(v_base + src[:, None] * sv_n + offs_d[None, :])
                    else:
                        rows = s0 + j * BLOCK_N + offs_n
                        k = tl.load(k_base + rows[:, None] * sk_n + offs_d[None, :])
                        v = tl.load(v_base + rows[:, None] * sv_n + offs_d[None, :])
                    acc, m_i, l_i = _attend_chunk(acc, m_i, l_i, q, k, v, qk_scale, no_bias, offs_n, False, False)
                if n_full * BLOCK_N < ln:
                    rows = s0 + n_full * BLOCK_N + offs_n
                    ok = rows < e0
                    if KV_INDEXED:
                        src = tl.load(kidx_base + rows, mask=ok, other=0).to(tl.int64)
                    else:
                        src = rows
                    k = tl.load(k_base + src[:, None] * sk_n + offs_d[None, :], mask=ok[:, None], other=0.0)
                    v = tl.load(v_base + src[:, None] * sv_n + offs_d[None, :], mask=ok[:, None], other=0.0)
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
            tl.store(O + b64 * so_b + h64 * so_h + orig64[:, None] * so_n + offs_d[None, :],
                     out.to(O.dtype.element_ty), mask=mrow[:, None])


# ------------------------------------------------------------------------------------------
# the launcher (the ops' CUDA kernel, and their CPU kernel under the interpreter)
# ------------------------------------------------------------------------------------------

def _tensor_descriptor_class():
    """Triton's host-side tensor descriptor (TMA block loads), or None where this Triton lacks it."""
    try:
        from triton.tools.tensor_descriptor import TensorDescriptor
        return TensorDescriptor
    except Exception:  # pragma: no cover - older triton
        return None


def use_descriptors(device: torch.device) -> bool:
    """K / V chunks through tensor descriptors: on Hopper and newer (TMA), and in the
    interpreter (so the CPU tests run the same code path); plain pointer loads elsewhere.
    `launch_overrides(varblock_descriptors=...)` (bench/, tests) forces either path."""
    forced = launch_override("varblock_descriptors")
    if forced is not None:
        return bool(forced) and _tensor_descriptor_class() is not None
    if _tensor_descriptor_class() is None:
        return False
    cap = capability(device)
    return cap is None or cap[0] >= 9  # None: the interpreter (the launcher runs only there off CUDA)


def _as4(x: torch.Tensor, H: int) -> torch.Tensor:
    """[G, n, D] -> [G // H, H, n, D] (a view when the strides allow; a copy otherwise) or a
    [B, H, n, D] tensor as it is."""
    if x.dim() == 4:
        return x
    G, n, D = x.shape
    try:
        return x.view(G // H, H, n, D)
    except RuntimeError:
        return x.reshape(G // H, H, n, D)


def _rows_ok(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x in the kernel's dtype with unit stride along D (rows of D contiguous elements), its
    other strides kept; a copy only where either does not hold."""
    if x.dtype != dtype:
        x = x.to(dtype)  # preserve_format: a dense permuted view keeps its memory order
    if x.shape[-1] > 1 and x.stride(-1) != 1:
        x = x.contiguous()
    return x


def _check_args(q: torch.Tensor, out: Optional[torch.Tensor]) -> None:
    D = q.shape[-1]
    if D not in HEAD_DIMS:
        raise ValueError(f"varblock_attention: unsupported head dim {D}")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"varblock_attention: unsupported dtype {q.dtype}")
    if out is not None and (tuple(out.shape) != tuple(q.shape) or out.dtype != q.dtype):
        raise ValueError(f"varblock_attention: out {tuple(out.shape)} {out.dtype} does not match q "
                         f"{tuple(q.shape)} {q.dtype}")


def _tail_args(tail_keys, tail_values, tail_bias, work_dtype, k4, v4, range_start):
    """(has_tail, keys, values, bias in the kernel's log2 domain, Ct, Cqt); without a tail any
    pointers (never read)."""
    if tail_keys is None or tail_bias is None or tail_keys.shape[1] == 0:
        return False, k4, v4, range_start, 0, 0
    tk = tail_keys.to(work_dtype).contiguous()
    tv = tail_values.to(work_dtype).contiguous()
    tb = (tail_bias.to(torch.float32) * LOG2E).contiguous()
    return True, tk, tv, tb, tk.shape[1], tb.shape[1]


def _kv_descriptors(k4, v4, G: int, Nk: int, D: int, BN: int, device, indexed: bool):
    """(use them, K descriptor, V descriptor): TMA descriptors over the permuted copies viewed as
    one [G * Nk, D] matrix (contiguous copies only); otherwise any tensors (never read)."""
    desc = use_descriptors(device) and not indexed and Nk > 0 and k4.is_contiguous() and v4.is_contiguous()
    if not desc:
        return False, k4, v4
    TD = _tensor_descriptor_class()
    return (True, TD(k4.view(G * Nk, D), [G * Nk, D], [D, 1], [BN, D]),
            TD(v4.view(G * Nk, D), [G * Nk, D], [D, 1], [BN, D]))


def varblock_attention_triton(q, k_rows, v_rows, perm_q, q_offsets, range_start, range_end, scale,
                              tail_keys=None, tail_values=None, tail_bias=None, k_index=None,
                              out=None) -> torch.Tensor:
    """Launch the Triton kernel directly (the ops' implementation; no dispatch). The launch
    config comes from `_common.launch_config` (bench/ and the tests override it, and the K / V
    load path, with `_common.launch_overrides`).

    Memory order (docs/KERNEL_NOTES.md, "Memory"): q is ``[G, N, D]`` or ``[B, H, N, D]`` with any
    strides (unit stride along D), read where it lies. Without ``k_index``, ``k_rows / v_rows
    [G|B,H, Nk, D]`` are the permuted copies (tensor descriptors where contiguous on sm90). With
    ``k_index`` (int32 / int64 ``[G, Nk]``), ``k_rows / v_rows`` are the caller's k / v (any
    strides, ``[B, H, Nsrc, D]`` or ``[G, Nsrc, D]``) and permuted row r of group g is source row
    ``k_index[g, r]``: rows are gathered inside the kernel, no permuted copy exists. ``out``
    (q's shape, any strides) receives the result, written through the inverse query
    permutation; without it a tensor like q (same memory order) is returned."""
    _check_args(q, out)
    H = q.shape[1] if q.dim() == 4 else 1
    B, _, N, D = _as4(q, H).shape
    G = B * H
    indexed = k_index is not None
    # The interpreter's low-precision tl.dot and fp32->bf16 cast are wrong (triton 3.8 / 3.9):
    # run it in fp32 and round once, here, with torch's round-to-nearest-even.
    work_dtype = torch.float32 if interpreting() else q.dtype
    q4, k4, v4 = (_rows_ok(_as4(x, H), work_dtype) for x in (q, k_rows, v_rows))
    Nk = k_index.shape[1] if indexed else k4.shape[2]
    perm_q, q_offsets, range_start, range_end = (x.to(torch.int32).contiguous()
                                                 for x in (perm_q, q_offsets, range_start, range_end))
    if indexed and (k_index.dtype not in (torch.int32, torch.int64) or not k_index.is_contiguous()):
        k_index = k_index.to(torch.int32).contiguous()   # int64 (torch.sort's) is read as is
    # the output: the caller's buffer, or one like q (same memory order: ComfyUI's reshape of it is a view)
    if out is None:
        out = torch.empty_like(q)
    o4 = _as4(out, H)
    direct = o4.dtype == work_dtype and o4.stride(-1) == 1   # (o4 is a view of out: q's shape, H = 1 if 3-D)
    ko = o4 if direct else torch.empty(B, H, N, D, dtype=work_dtype, device=q.device)
    if G == 0 or N == 0:
        return out
    has_tail, tk, tv, tb, ct, cqt = _tail_args(tail_keys, tail_values, tail_bias, work_dtype, k4, v4, range_start)
    BM, BN, warps, stages = launch_config("varblock_attn", D, work_dtype, capability(q.device), n_tokens=N)
    desc, k_desc, v_desc = _kv_descriptors(k4, v4, G, Nk, D, BN, q.device, indexed)
    Cq, R = q_offsets.shape[1] - 1, range_start.shape[2]
    _varblock_fwd[(triton.cdiv(N, BM) + Cq, G)](
        q4, k4, v4, ko, perm_q, q_offsets, range_start, range_end, tk, tv, tb, k_desc, v_desc,
        k_index if indexed else perm_q,
        float(scale) * LOG2E,
        N, Nk, Cq, R, ct, cqt, H,
        q4.stride(0), q4.stride(1), q4.stride(2), k4.stride(0), k4.stride(1), k4.stride(2),
        v4.stride(0), v4.stride(1), v4.stride(2), ko.stride(0), ko.stride(1), ko.stride(2),
        D=D, BLOCK_M=BM, BLOCK_N=BN,
        CQ_P2=max(next_pow2(Cq), 2), R_P2=max(next_pow2(R), 2),
        NUM_STAGES=stages, HAS_TAIL=has_tail, USE_DESC=desc, KV_INDEXED=indexed,
        num_warps=warps, num_stages=stages,
    )
    if not direct:
        o4.copy_(ko)  # the interpreter's fp32 result (rounded by torch), or an output without unit D stride
    return out


# ------------------------------------------------------------------------------------------
# torch custom ops (opaque to torch.compile): one returns a new tensor (like q), one writes
# into the caller's buffer. CUDA: the launcher; CPU: `_common.register_cpu` (the launcher under
# the interpreter, else the fp32 reference).
# ------------------------------------------------------------------------------------------

@torch.library.custom_op("adacluster::varblock_attention", mutates_args=(), device_types="cuda")
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
    k_index: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    return varblock_attention_triton(q, k_rows, v_rows, perm_q, q_offsets, range_start, range_end, scale,
                                     tail_keys, tail_values, tail_bias, k_index)


@_varblock_attention_op.register_fake
def _(q, k_rows, v_rows, perm_q, q_offsets, range_start, range_end, scale,
      tail_keys=None, tail_values=None, tail_bias=None, k_index=None):
    return torch.empty_like(q)


def _reference_new(q, *args):
    """The reference's result in q's memory order (like the kernel's and the fake's)."""
    return torch.empty_like(q).copy_(varblock_attention_ref(q, *args))


register_cpu(_varblock_attention_op, varblock_attention_triton, _reference_new)


@torch.library.custom_op("adacluster::varblock_attention_into", mutates_args=("out",), device_types="cuda")
def _varblock_attention_into_op(
    out: torch.Tensor,
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
    k_index: Optional[torch.Tensor] = None,
) -> None:
    _triton_into(out, q, k_rows, v_rows, perm_q, q_offsets, range_start, range_end, scale, tail_keys,
                 tail_values, tail_bias, k_index)


@_varblock_attention_into_op.register_fake
def _(out, q, k_rows, v_rows, perm_q, q_offsets, range_start, range_end, scale,
      tail_keys=None, tail_values=None, tail_bias=None, k_index=None):
    return None


def _triton_into(out, *args) -> None:
    varblock_attention_triton(*args, out=out)


def _reference_into(out, *args) -> None:
    out.copy_(varblock_attention_ref(*args))


register_cpu(_varblock_attention_into_op, _triton_into, _reference_into)


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
    k_index: Optional[torch.Tensor] = None,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Sparse attention over the permuted cluster layout; shapes in the module docstring
    (q / out may also be [B, H, N, D] views with any strides; with ``k_index`` the K / V rows are
    gathered from the caller's k / v inside the kernel: see `varblock_attention_triton`).

    The custom ops dispatch on the device: Triton on CUDA; on the CPU the Triton kernel through the
    interpreter under TRITON_INTERPRET=1, else ``torch_ref.varblock_attention_ref``. No host
    synchronisation. Returns ``out`` when given."""
    if out is not None:
        _varblock_attention_into_op(out, q, k_rows, v_rows, perm_q, q_offsets, range_start, range_end,
                                    float(scale), tail_keys, tail_values, tail_bias, k_index)
        return out
    return _varblock_attention_op(q, k_rows, v_rows, perm_q, q_offsets, range_start, range_end, float(scale),
                                  tail_keys, tail_values, tail_bias, k_index)
