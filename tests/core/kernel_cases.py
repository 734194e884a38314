"""The kernels' correctness cases, shared by the CPU tests and the GPU check.

Each `check_*` function builds one case, runs a kernel (through its custom op, or the launcher
`varblock_attention_triton` where a launch config or load path is forced) and compares it with the
fp32 torch reference (`adacluster_core.reference`), raising AssertionError on a mismatch.
`CHECKS` lists every parameter combination; `INTERP` the few each CPU test runs under
TRITON_INTERPRET=1 (tests/core/test_varblock_attn.py, test_cluster_kernels.py,
test_memory_order.py, test_pooled_tail.py). `bench/kernel_check.py` runs all of `CHECKS`, compiled,
on the GPU (`--quick`: the `INTERP` subset).

Tolerances (relative L2 vs the fp32 reference): fp16 3e-3, bf16 2e-2, fp32 1e-4. The interpreter
computes in fp32 (the launcher casts), so on the CPU every dtype meets fp32's accuracy and the bf16 /
fp16 arithmetic is exercised only on the GPU. On the GPU an fp32 `tl.dot` runs on tf32 tensor cores
(Triton's default input precision: a 10-bit mantissa, like fp16's), so fp32 there gets fp16's
tolerance.
"""
from __future__ import annotations

import os

import torch

from adacluster_core import AdaClusterConfig, sparse_attention
from adacluster_core import layout as lay
from adacluster_core import reference as ref
from adacluster_core.cluster_sort import sort_by_cluster
from adacluster_core.kernels._common import launch_overrides
from adacluster_core.layout import selected_key_ranges

from .conftest import clustered

INTERP = os.environ.get("TRITON_INTERPRET") == "1"
DEV = "cuda" if (torch.cuda.is_available() and not INTERP) else "cpu"
F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def tol(dtype) -> float:
    if dtype == F32 and DEV == "cuda":
        return 3e-3  # tf32 dots (module docstring)
    return {F16: 3e-3, BF16: 2e-2, F32: 1e-4}[dtype]


# ---- case builders ----------------------------------------------------------------------------

def make_case(G=2, N=70, Nv=None, D=64, Cq=5, Ck=7, S=3, extra=0, dtype=F16, seed=0, empty_cluster=True, device=DEV):
    """Random clusters (incl. an empty query cluster), random selections incl. -1 slots and
    query clusters with no selection at all, optional `extra` always-attended rows."""
    gen = torch.Generator().manual_seed(seed)
    Nv = N if Nv is None else Nv
    q = torch.randn(G, N, D, generator=gen).to(dtype)
    k = torch.randn(G, Nv + extra, D, generator=gen).to(dtype)
    v = torch.randn(G, Nv + extra, D, generator=gen).to(dtype)
    lab_q = torch.randint(0, Cq, (G, N), generator=gen)
    if empty_cluster and Cq > 2:
        lab_q[lab_q == 1] = 0  # cluster 1 is empty
    perm_q, q_off = sort_by_cluster(lab_q, Cq)
    perm_k, k_off = sort_by_cluster(torch.randint(0, Ck, (G, Nv), generator=gen), Ck)
    idx = perm_k.long().unsqueeze(-1).expand(G, Nv, D)
    k_perm = torch.cat([torch.gather(k[:, :Nv], 1, idx), k[:, Nv:]], 1)
    v_perm = torch.cat([torch.gather(v[:, :Nv], 1, idx), v[:, Nv:]], 1)
    sel = torch.stack([torch.stack([torch.randperm(Ck, generator=gen)[:S] for _ in range(Cq)]) for _ in range(G)])
    drop = torch.rand(G, Cq, S, generator=gen) < 0.25
    sel = torch.where(drop, torch.full_like(sel, -1), sel).to(torch.int32)
    if Cq > 3:
        sel[:, 3] = -1  # a query cluster that attends to nothing (unless extra rows)
    rs, re = selected_key_ranges(sel, k_off, extra=(Nv, Nv + extra) if extra else None)
    t = lambda x: x.to(device)  # noqa: E731
    return dict(q=t(q), k_rows=t(k_perm), v_rows=t(v_perm), perm_q=t(perm_q), q_offsets=t(q_off),
                range_start=t(rs), range_end=t(re), scale=D ** -0.5)


def tail_case(dtype, D, seed=0, G=2, N=70, Cq=5, Ck=7, S=3, Ct=11, device=DEV):
    """make_case plus a pooled tail: Ct virtual keys, the last query cluster sees none, cluster 3
    attends to nothing at all (no ranges, tail all -inf)."""
    case = make_case(G=G, N=N, D=D, Cq=Cq, Ck=Ck, S=S, dtype=dtype, seed=seed, device=device)
    gen = torch.Generator().manual_seed(seed + 1)
    case["tail_keys"] = torch.randn(G, Ct, D, generator=gen).to(dtype).to(device)
    case["tail_values"] = torch.randn(G, Ct, D, generator=gen).to(dtype).to(device)
    bias = torch.randn(G, Cq - 1, Ct, generator=gen) * 2
    bias[:, :, ::4] = float("-inf")  # selected / empty clusters
    bias[:, 3] = float("-inf")
    case["tail_bias"] = bias.to(device)
    return case


def comfy_views(B, H, N, D, order: str, dtype, gen, scale=1.0):
    """q, k, v [B, H, N, D] in a ComfyUI memory order: "wan" = views of [B, N, H*D] tensors,
    "qkv" = non-dense views of one [B, N, 3, H, D] projection (H3 / Hunyuan-style), "contig"."""
    if order == "qkv":
        buf = (torch.randn(B, N, 3, H, D, generator=gen) * scale).to(dtype).to(DEV)
        return tuple(buf.permute(2, 0, 3, 1, 4).unbind(0))
    ts = [(torch.randn(B, N, H * D, generator=gen) * scale).to(dtype).to(DEV) for _ in range(3)]
    if order == "wan":
        return tuple(t.view(B, N, H, D).transpose(1, 2) for t in ts)
    return tuple(t.view(B, N, H, D).transpose(1, 2).contiguous() for t in ts)


def kernel_case(B=2, H=2, N=75, D=64, Cq=5, Ck=7, S=3, text=6, order="wan", dtype=F16, seed=0):
    """A random layout over q, k, v in `order`; the always-dense text rows are the first `text` rows (H3's
    prefix). Returns (q, k, v, perm_q, q_off, rs, re, kidx)."""
    gen = torch.Generator().manual_seed(seed)
    G = B * H
    q, k, v = comfy_views(B, H, N, D, order, dtype, gen, scale=2.0)
    Nv = N - text
    lab_q = torch.randint(0, Cq, (G, N), generator=gen)
    lab_q[lab_q == 1] = 0  # an empty query cluster
    perm_q, q_off = sort_by_cluster(lab_q, Cq)
    perm_k, k_off = sort_by_cluster(torch.randint(0, Ck, (G, Nv), generator=gen), Ck)
    kidx = torch.cat([perm_k + text, torch.arange(text).view(1, text).expand(G, text)], 1)  # clustered, then text
    sel = torch.stack([torch.stack([torch.randperm(Ck, generator=gen)[:S] for _ in range(Cq)]) for _ in range(G)])
    sel = torch.where(torch.rand(G, Cq, S, generator=gen) < 0.25, torch.full_like(sel, -1), sel).to(torch.int32)
    rs, re = selected_key_ranges(sel, k_off, extra=(Nv, N) if text else None)
    to = lambda x: x.to(DEV)  # noqa: E731
    return q, k, v, to(perm_q), to(q_off), to(rs), to(re), to(kidx)


def memory_order_reference(q, k, v, perm_q, q_off, rs, re, kidx, scale, tail=(None, None, None)):
    """The fp32 reference on contiguous copies of a `kernel_case` (rows gathered through kidx)."""
    B, H, N, D = q.shape
    G = B * H
    flat = lambda x: x.contiguous().reshape(G, x.shape[2], D)  # noqa: E731
    idx = kidx.long().unsqueeze(-1).expand(G, kidx.shape[1], D)
    k_rows, v_rows = torch.gather(flat(k), 1, idx), torch.gather(flat(v), 1, idx)
    return ref.varblock_attention_ref(flat(q), k_rows, v_rows, perm_q, q_off, rs, re, scale, *tail).view(B, H, N, D)


def forced(case_or_args, bm, bn, descriptors=None, **kw):
    """varblock_attention_triton at a forced (BLOCK_M, BLOCK_N, 4 warps, 1 stage) and load path."""
    from adacluster_core.kernels.varblock_attn import varblock_attention_triton
    with launch_overrides(varblock_attn=(bm, bn, 4, 1), varblock_descriptors=descriptors):
        if isinstance(case_or_args, dict):
            return varblock_attention_triton(**case_or_args, **kw)
        return varblock_attention_triton(*case_or_args, **kw)


# ---- varblock_attention ----------------------------------------------------------------------

def check_varblock_reference(dtype, D):
    """The op vs the reference; the query cluster without keys gives exact zeros."""
    from adacluster_core.kernels.varblock_attn import varblock_attention
    case = make_case(D=D, dtype=dtype, seed=D + len(str(dtype)))
    out = varblock_attention(**case)
    want = ref.varblock_attention_ref(**case)
    assert out.shape == want.shape and out.dtype == dtype
    assert torch.isfinite(out.float()).all()
    assert rel(out, want) < tol(dtype), rel(out, want)
    q_off = case["q_offsets"]
    rows = case["perm_q"][0, q_off[0, 3]:q_off[0, 4]].long()
    assert (out[0, rows] == 0).all()


def check_varblock_configs(bm, bn, descriptors):
    """Forced tile sizes, ragged ranges, always-attended rows, both K / V load paths (tensor
    descriptors on Hopper, pointer loads elsewhere); peaked rows move the running max mid-loop."""
    case = make_case(G=2, N=83, D=32, Cq=6, Ck=9, S=4, extra=5, dtype=F16, seed=bm * 7 + bn)
    case["q"] = case["q"] * 4
    out = forced(case, bm, bn, descriptors)
    assert rel(out, ref.varblock_attention_ref(**case)) < tol(F16)


def check_tail_reference(dtype, D):
    """The pooled tail vs the reference; no range and an all -inf tail give exact zeros."""
    from adacluster_core.kernels.varblock_attn import varblock_attention
    case = tail_case(dtype, D, seed=D)
    out = varblock_attention(**case)
    assert torch.isfinite(out.float()).all()
    assert rel(out, ref.varblock_attention_ref(**case)) < tol(dtype)
    rows = case["perm_q"][0, case["q_offsets"][0, 3]:case["q_offsets"][0, 4]].long()
    assert (out[0, rows] == 0).all()


def check_tail_tiles_and_all_inf(bm, bn):
    """A ragged tail block at forced tiles; an all -inf tail changes nothing (== no tail)."""
    case = tail_case(F16, 64, seed=3 + bm + bn, N=90, Ct=37)
    out = forced(case, bm, bn)
    assert torch.isfinite(out.float()).all()
    assert rel(out, ref.varblock_attention_ref(**case)) < tol(F16)
    out2 = forced(dict(case, tail_bias=torch.full_like(case["tail_bias"], float("-inf"))), bm, bn)
    out3 = forced({k: v for k, v in case.items() if not k.startswith("tail_")}, bm, bn)
    assert torch.isfinite(out2.float()).all() and torch.equal(out2, out3)


def check_indexed_comfy_layout(order, dtype):
    """Indexed K / V (rows gathered in the kernel) on a ComfyUI memory order, text prefix; the
    result keeps q's memory order."""
    from adacluster_core.kernels.varblock_attn import varblock_attention
    q, k, v, perm_q, q_off, rs, re, kidx = kernel_case(order=order, dtype=dtype, D=64, seed=len(order))
    D = q.shape[-1]
    want = memory_order_reference(q, k, v, perm_q, q_off, rs, re, kidx, D ** -0.5)
    out = varblock_attention(q, k, v, perm_q, q_off, rs, re, D ** -0.5, k_index=kidx)
    assert out.shape == q.shape and out.dtype == dtype and torch.isfinite(out.float()).all()
    assert rel(out, want) < tol(dtype), rel(out, want)
    if order == "wan":  # ComfyUI's [B, N, H*D] reshape of the result is a view
        B, H, N, _ = q.shape
        assert out.stride() == q.stride()
        assert out.transpose(1, 2).reshape(B, N, H * D).data_ptr() == out.data_ptr()


def check_copied_and_indexed_into_out(order, descriptors):
    """Both K / V modes written into the patcher's strided [B, N, H*D] buffer, with a pooled tail;
    descriptors on / off for the copied rows."""
    q, k, v, perm_q, q_off, rs, re, kidx = kernel_case(B=1, H=3, N=83, D=32, Cq=6, Ck=9, S=4, text=5,
                                                       order=order, dtype=F16, seed=7)
    B, H, N, D = q.shape
    G, Cq, Ck = B * H, 6, 9
    gen = torch.Generator().manual_seed(1)
    tk, tv = (torch.randn(G, Ck, D, generator=gen).to(F16).to(DEV) for _ in range(2))
    tb = torch.randn(G, Cq, Ck, generator=gen).to(DEV)
    tb[:, :, ::3] = float("-inf")
    want = memory_order_reference(q, k, v, perm_q, q_off, rs, re, kidx, D ** -0.5, (tk, tv, tb))
    for mode in ("indexed", "copied"):
        buf = torch.full((B, N, H * D), float("nan"), dtype=F16, device=DEV)
        out4 = buf.view(B, N, H, D).transpose(1, 2)
        if mode == "indexed":
            args, kw = (k, v), dict(k_index=kidx)
        else:
            idx = kidx.long().unsqueeze(-1).expand(G, N, D)
            args, kw = tuple(torch.gather(x.reshape(G, N, D), 1, idx) for x in (k, v)), {}
        res = forced((q, *args, perm_q, q_off, rs, re, D ** -0.5, tk, tv, tb), 16, 16, descriptors, out=out4, **kw)
        assert res is out4 and torch.isfinite(buf.float()).all(), mode   # every row written, in place
        assert rel(out4, want) < tol(F16), (mode, rel(out4, want))


def api_cfg(**kw):
    base = dict(min_tokens=0, q_clusters=6, k_clusters=10, top_k=10, kmeans_iters_first=2, kmeans_iters_reuse=1,
                backend="triton", max_density=1.0, pooled_tail=True)
    base.update(kw)
    return AdaClusterConfig(**base)


def check_api_comfy_layout(order, text, kv_rows):
    """sparse_attention on ComfyUI-ordered inputs (every kernel through the API): the same result
    as on contiguous copies, the all-clusters call within 2x SDPA's error of fp32 dense, out= written
    in place, a sparse selection within bf16's tolerance of the torch reference backend."""
    saved, lay.KV_ROWS = lay.KV_ROWS, kv_rows
    try:
        gen = torch.Generator().manual_seed(5)
        B, H, N, D = 1, 2, 150, 64
        q, k, v = comfy_views(B, H, N, D, order, BF16, gen)
        qc, kc, vc = (t.contiguous() for t in (q, k, v))
        o_strided, st = sparse_attention(q, k, v, api_cfg(), always_dense_range=text)
        assert not st["dense"] and st["attention"] == "triton", st["reason"]
        o_contig, _ = sparse_attention(qc, kc, vc, api_cfg(), always_dense_range=text)
        torch.testing.assert_close(o_strided, o_contig, rtol=0, atol=0)
        want = ref.dense_attention_ref(qc.float(), kc.float(), vc.float())
        err_sdpa = rel(torch.nn.functional.scaled_dot_product_attention(qc, kc, vc), want)
        assert rel(o_strided, want) <= 2 * err_sdpa + 1e-4
        buf = torch.full((B, N, H * D), float("nan"), dtype=BF16, device=DEV)
        o4 = buf.view(B, N, H, D).transpose(1, 2)
        res, _ = sparse_attention(q, k, v, api_cfg(), always_dense_range=text, out=o4)
        assert res is o4
        torch.testing.assert_close(o4, o_contig, rtol=0, atol=0)
        o_s, s_s = sparse_attention(q, k, v, api_cfg(top_k=3), always_dense_range=text)
        o_r, _ = sparse_attention(qc, kc, vc, api_cfg(top_k=3, backend="torch"), always_dense_range=text)
        assert float(s_s["density"]) < 0.95
        assert rel(o_s, o_r) < tol(BF16)
    finally:
        lay.KV_ROWS = saved


# ---- clustering kernels and the K / V gather ---------------------------------------------------

def _objective(x, c, lab, normalize):
    """‖x − c_lab‖² per token in fp64, the quantity both implementations minimise."""
    xf = x.reshape(-1, x.shape[-2], x.shape[-1]).double()
    if normalize:
        xf = xf / xf.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    cl = torch.gather(c.double(), 1, lab.long().unsqueeze(-1).expand(-1, -1, c.shape[-1]))
    return ((xf - cl) ** 2).sum(-1)


def check_kmeans_assign(dtype, normalize, N, C, D):
    """Labels in range, equal to the reference's up to near ties of the objective; distances."""
    from adacluster_core.kernels.kmeans_assign import kmeans_assign
    x = clustered(1, 3, N, D, n_centers=5, seed=N + C, dtype=dtype, dev=DEV)
    c = clustered(1, 3, C, D, n_centers=5, seed=N + C, dev=DEV).reshape(3, C, D)
    lab, dist = kmeans_assign(x, c, normalize=normalize, return_dist=True)
    lab_r, dist_r = ref.kmeans_assign_ref(x, c, normalize=normalize, return_dist=True)
    assert lab.dtype == torch.int32 and lab.shape == (3, N) and dist.shape == (3, N)
    assert int(lab.min()) >= 0 and int(lab.max()) < C
    exact = tol(dtype) < 1e-3  # fp32 GEMM operands (not tf32 / half): labels mostly identical
    if exact:
        assert (lab == lab_r).float().mean() > 0.9
    o, o_r = _objective(x, c, lab, normalize), _objective(x, c, lab_r, normalize)
    t = 1e-4 if exact else 2e-2
    assert torch.all(o <= o_r + t * (1 + o_r))
    torch.testing.assert_close(dist, dist_r, rtol=1e-4 if exact else 5e-2, atol=5e-2)
    assert torch.equal(kmeans_assign(x, c, normalize=normalize), lab)


def check_kmeans_assign_strided_and_ties():
    from adacluster_core.kernels.kmeans_assign import kmeans_assign
    x = torch.randn(2, 40, 3, 64, device=DEV).transpose(1, 2)  # [B, H, N, D] non-contiguous
    c = torch.randn(6, 9, 64, device=DEV)
    c[:, 5] = c[:, 2]  # duplicated centroid: ties must go to the lowest id
    lab = kmeans_assign(x, c)
    assert not bool((lab == 5).any())
    assert (lab == ref.kmeans_assign_ref(x, c)).float().mean() > 0.95


def check_centroid_update(dtype, normalize):
    """Means and counts vs the reference; ignored tokens (label C); an empty cluster keeps its old
    centroid; an explicit perm / offsets gives the same result."""
    from adacluster_core.kernels.centroid_update import centroid_update
    G, N, C, D = 4, 150, 12, 64
    x = torch.randn(G, N, D, device=DEV).to(dtype)
    lab = torch.randint(0, C, (G, N), dtype=torch.int32, device=DEV)
    lab[:, :10] = C
    lab[lab == 3] = 4
    old = torch.randn(G, C, D, device=DEV)
    new, cnt = centroid_update(x, lab, old, normalize=normalize)
    new_r, cnt_r = ref.centroid_update_ref(x, lab, old, normalize=normalize)
    assert torch.equal(cnt, cnt_r) and cnt.dtype == torch.int32
    assert int(cnt[:, 3].sum()) == 0 and torch.equal(new[:, 3], old[:, 3])
    torch.testing.assert_close(new, new_r, rtol=1e-4, atol=1e-5)
    perm, offs = sort_by_cluster(lab, C + 1)
    new2, _ = centroid_update(x, lab, old, normalize=normalize, perm=perm, offsets=offs)
    torch.testing.assert_close(new2, new)


def check_fused_bounds(dtype):
    """The TensorQuest bounds fused into the last centroid update (bounds=True), strided input."""
    from adacluster_core.kernels.centroid_update import centroid_update
    B, H, N, C, D = 1, 2, 97, 10, 128
    x = torch.randn(B, N, H, D, device=DEV).to(dtype).transpose(1, 2)
    lab = torch.randint(0, C, (B * H, N), dtype=torch.int32, device=DEV)
    lab[lab == 7] = C  # cluster 7 empty, those tokens ignored
    _, _, kmax, kmin = centroid_update(x, lab, torch.randn(B * H, C, D, device=DEV), bounds=True)
    kmax_r, kmin_r = ref.cluster_bounds_ref(x, lab, C)
    assert torch.equal(kmax, kmax_r) and torch.equal(kmin, kmin_r)
    assert bool(torch.isneginf(kmax[:, 7]).all()) and bool(torch.isposinf(kmin[:, 7]).all())
    members = x.reshape(B * H, N, D).float()[1][lab[1] == 2]
    torch.testing.assert_close(kmax[1, 2], members.max(0).values)
    torch.testing.assert_close(kmin[1, 2], members.min(0).values)


def check_gather_kv(dtype, layout):
    """Row copies == torch.gather, bit for bit: [G, N, D] or strided [B, H, N, D] (Wan's view),
    int64 (torch.sort's) or int32 indices, an odd row count."""
    from adacluster_core.kernels.gather_rows import gather_kv
    gen = torch.Generator().manual_seed(4)
    B, H, N, D, M = 2, 3, 45, 64, 37
    if layout == "bhnd":
        k, v = ((torch.randn(B, N, H * D, generator=gen).to(dtype).to(DEV)).view(B, N, H, D).transpose(1, 2)
                for _ in range(2))
    else:
        k, v = (torch.randn(B * H, N, D, generator=gen).to(dtype).to(DEV) for _ in range(2))
    idx = torch.randint(0, N, (B * H, M), generator=gen).to(DEV)
    idx = idx if layout == "bhnd" else idx.to(torch.int32)
    ko, vo = gather_kv(k, v, idx)
    kr, vr = ref.gather_kv_ref(k, v, idx)
    assert ko.shape == (B * H, M, D) and ko.dtype == dtype and ko.is_contiguous()
    assert torch.equal(ko, kr) and torch.equal(vo, vr)


# ---- the grids: CHECKS (all, the GPU check) and INTERP (the CPU tests) -----------------------------

_ATTN_DT = [F16, BF16, F32]
CHECKS = {
    "varblock_reference": (check_varblock_reference, [(dt, D) for dt in _ATTN_DT for D in (64, 128)]),
    "varblock_configs": (check_varblock_configs,
                         [(bm, bn, d) for bm, bn in ((16, 16), (32, 16), (16, 32)) for d in (True, False)]),
    "tail_reference": (check_tail_reference, [(dt, D) for dt in _ATTN_DT for D in (64, 128)]),
    "tail_tiles_and_all_inf": (check_tail_tiles_and_all_inf, [(16, 16), (32, 16), (16, 32)]),
    "indexed_comfy_layout": (check_indexed_comfy_layout,
                             [(o, dt) for o in ("wan", "qkv", "contig") for dt in _ATTN_DT]),
    "copied_and_indexed_into_out": (check_copied_and_indexed_into_out,
                                    [(o, d) for o in ("wan", "qkv") for d in (True, False)]),
    "api_comfy_layout": (check_api_comfy_layout,
                         [(o, t, kv) for o, t in (("wan", None), ("qkv", (0, 12)), ("wan", (130, 150)))
                          for kv in ("indexed", "copied")]),
    "kmeans_assign": (check_kmeans_assign,
                      [(dt, nz, *s) for dt in _ATTN_DT for nz in (False, True)
                       for s in ((1, 1, 64), (77, 20, 64), (20, 70, 128), (50, 8, 80))]),
    "kmeans_assign_strided_and_ties": (check_kmeans_assign_strided_and_ties, [()]),
    "centroid_update": (check_centroid_update, [(dt, nz) for dt in _ATTN_DT for nz in (False, True)]),
    "fused_bounds": (check_fused_bounds, [(dt,) for dt in _ATTN_DT]),
    "gather_kv": (check_gather_kv, [(dt, lo) for dt in _ATTN_DT for lo in ("gnd", "bhnd")]),
}
# The CPU tests' subset: one or two cases per check (odd N, a text range, a pooled tail, both
# K / V load paths and modes, a strided input); every other case runs in bench/kernel_check.py.
INTERP = {
    "varblock_reference": [(BF16, 64), (F32, 128)],
    "varblock_configs": [(16, 32, True), (32, 16, False)],
    "tail_reference": [(BF16, 128)],
    "tail_tiles_and_all_inf": [(16, 32)],
    "indexed_comfy_layout": [("wan", BF16), ("qkv", F16)],
    "copied_and_indexed_into_out": [("wan", True), ("qkv", False)],
    "api_comfy_layout": [("qkv", (0, 12), "indexed"), ("wan", (130, 150), "copied")],
    "kmeans_assign": [(F32, True, 77, 20, 64), (BF16, False, 50, 8, 80), (F16, False, 1, 1, 64)],
    "kmeans_assign_strided_and_ties": [()],
    "centroid_update": [(BF16, True), (F32, False)],
    "fused_bounds": [(BF16,)],
    "gather_kv": [(BF16, "bhnd"), (F32, "gnd")],
}
assert all(set(INTERP[n]) <= set(CHECKS[n][1]) for n in CHECKS) and set(INTERP) == set(CHECKS)


def case_id(params) -> str:
    return "-".join(str(p).replace("torch.", "") for p in params) or "default"
