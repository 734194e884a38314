"""The kernel and the API on inputs in ComfyUI's memory order (issue 26), against the fp32 reference.

ComfyUI hands Wan's attention [B, L, H*D] tensors (the override views them as [B, H, L, D]: non-contiguous)
and HunyuanVideo / H3-style models [B, H, L, D] views that may not even be dense (q, k, v slices of one
[B, L, 3, H, D] projection). The kernel reads q and writes the output through their strides, and in the
"indexed" mode gathers the K / V rows of the caller's k / v through the key permutation (no permuted copies).
Every variant (indexed / copied, descriptors on / off, out given / not) is checked against
`reference.varblock_attention_ref` on contiguous copies.

Run: TRITON_INTERPRET=1 python -m pytest -q tests/core/test_memory_order.py
"""
from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

triton = pytest.importorskip("triton")

from adacluster_core import AdaClusterConfig, sparse_attention  # noqa: E402
from adacluster_core import layout as lay  # noqa: E402
from adacluster_core.clustering import sort_by_cluster  # noqa: E402
from adacluster_core.kernels.varblock_attn import varblock_attention, varblock_attention_triton  # noqa: E402
from adacluster_core.layout import selected_key_ranges  # noqa: E402
from adacluster_core.reference import dense_attention_ref, varblock_attention_ref  # noqa: E402

INTERP = os.environ.get("TRITON_INTERPRET") == "1"
DEV = "cuda" if (torch.cuda.is_available() and not INTERP) else "cpu"
if DEV == "cpu" and not INTERP:  # pragma: no cover
    pytest.skip("needs TRITON_INTERPRET=1 on CPU", allow_module_level=True)


def _rel(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def _tol(dtype):
    return {torch.float16: 3e-3, torch.bfloat16: 2e-2, torch.float32: 1e-4}[dtype]


def comfy_views(B, H, N, D, order: str, dtype, gen, scale=1.0):
    """q, k, v [B, H, N, D] in a ComfyUI memory order: "wan" = views of [B, N, H*D] tensors,
    "qkv" = non-dense views of one [B, N, 3, H, D] projection (H3 / Hunyuan-style), "contig"."""
    if order == "qkv":
        buf = (torch.randn(B, N, 3, H, D, generator=gen) * scale).to(dtype).to(DEV)
        q, k, v = buf.permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v
    ts = [(torch.randn(B, N, H * D, generator=gen) * scale).to(dtype).to(DEV) for _ in range(3)]
    if order == "wan":
        return tuple(t.view(B, N, H, D).transpose(1, 2) for t in ts)
    return tuple(t.view(B, N, H, D).transpose(1, 2).contiguous() for t in ts)


def kernel_case(B=2, H=2, N=75, D=64, Cq=5, Ck=7, S=3, text=6, order="wan", dtype=torch.float16, seed=0):
    """A random layout over q, k, v in `order`; the always-dense text rows are the first `text` rows (H3's
    prefix). Returns (q, k, v, perm_q, q_off, rs, re, kidx)."""
    gen = torch.Generator().manual_seed(seed)
    G = B * H
    q, k, v = comfy_views(B, H, N, D, order, dtype, gen, scale=2.0)
    Nv = N - text
    lab_q = torch.randint(0, Cq, (G, N), generator=gen)
    lab_q[lab_q == 1] = 0  # an empty query cluster
    lab_k = torch.randint(0, Ck, (G, Nv), generator=gen)
    perm_q, q_off = sort_by_cluster(lab_q, Cq)
    perm_k, k_off = sort_by_cluster(lab_k, Ck)
    kidx = torch.cat([perm_k + text, torch.arange(text).view(1, text).expand(G, text)], 1)  # clustered, then text
    sel = torch.stack([torch.stack([torch.randperm(Ck, generator=gen)[:S] for _ in range(Cq)]) for _ in range(G)])
    sel = torch.where(torch.rand(G, Cq, S, generator=gen) < 0.25, torch.full_like(sel, -1), sel).to(torch.int32)
    rs, re = selected_key_ranges(sel, k_off, extra=(Nv, N) if text else None)
    to = lambda x: x.to(DEV)  # noqa: E731
    return q, k, v, to(perm_q), to(q_off), to(rs), to(re), to(kidx)


def _reference(q, k, v, perm_q, q_off, rs, re, kidx, scale, tail=(None, None, None)):
    B, H, N, D = q.shape
    G = B * H
    flat = lambda x: x.contiguous().reshape(G, x.shape[2], D)  # noqa: E731
    idx = kidx.long().unsqueeze(-1).expand(G, kidx.shape[1], D)
    k_rows, v_rows = torch.gather(flat(k), 1, idx), torch.gather(flat(v), 1, idx)
    return varblock_attention_ref(flat(q), k_rows, v_rows, perm_q, q_off, rs, re, scale, *tail).view(B, H, N, D)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("order", ["wan", "qkv", "contig"])
def test_indexed_kernel_on_comfy_layouts(order, dtype):
    q, k, v, perm_q, q_off, rs, re, kidx = kernel_case(order=order, dtype=dtype, D=64, seed=len(order))
    D = q.shape[-1]
    ref = _reference(q, k, v, perm_q, q_off, rs, re, kidx, D ** -0.5)
    out = varblock_attention(q, k, v, perm_q, q_off, rs, re, D ** -0.5, k_index=kidx)
    assert out.shape == q.shape and out.dtype == dtype and torch.isfinite(out.float()).all()
    assert _rel(out, ref) < _tol(dtype), _rel(out, ref)
    if order == "wan":  # the result keeps q's memory order: ComfyUI's [B, N, H*D] reshape is a view
        assert out.stride() == q.stride()
        B, H, N, _ = q.shape
        assert out.transpose(1, 2).reshape(B, N, H * D).data_ptr() == out.data_ptr()


@pytest.mark.parametrize("descriptors", [True, False])
@pytest.mark.parametrize("order", ["wan", "qkv"])
def test_copied_and_indexed_agree_with_out_buffer(order, descriptors):
    """Both K / V modes, written into a caller's strided buffer (the patcher's [B, N, H*D] output), with a
    pooled tail; descriptors on / off for the copied rows (TMA on sm90, pointer loads elsewhere)."""
    q, k, v, perm_q, q_off, rs, re, kidx = kernel_case(B=1, H=3, N=83, D=32, Cq=6, Ck=9, S=4, text=5,
                                                       order=order, dtype=torch.float16, seed=7)
    B, H, N, D = q.shape
    G, Cq, Ck = B * H, 6, 9
    gen = torch.Generator().manual_seed(1)
    tk = torch.randn(G, Ck, D, generator=gen).to(torch.float16).to(DEV)
    tv = torch.randn(G, Ck, D, generator=gen).to(torch.float16).to(DEV)
    tb = torch.randn(G, Cq, Ck, generator=gen).to(DEV)
    tb[:, :, ::3] = float("-inf")
    ref = _reference(q, k, v, perm_q, q_off, rs, re, kidx, D ** -0.5, (tk, tv, tb))
    for mode in ("indexed", "copied"):
        buf = torch.full((B, N, H * D), float("nan"), dtype=torch.float16, device=DEV)
        out4 = buf.view(B, N, H, D).transpose(1, 2)
        if mode == "indexed":
            args = (k, v)
            kw = dict(k_index=kidx)
        else:
            idx = kidx.long().unsqueeze(-1).expand(G, N, D)
            args = tuple(torch.gather(x.reshape(G, N, D), 1, idx) for x in (k, v))
            kw = {}
        res = varblock_attention_triton(q, *args, perm_q, q_off, rs, re, D ** -0.5, tk, tv, tb, out=out4,
                                        config=(16, 16, 4, 1), descriptors=descriptors, **kw)
        assert res is out4 and torch.isfinite(buf.float()).all(), mode   # every row written, in place
        assert _rel(out4, ref) < 3e-3, (mode, _rel(out4, ref))


def test_custom_op_into_buffer():
    q, k, v, perm_q, q_off, rs, re, kidx = kernel_case(order="wan", dtype=torch.bfloat16, seed=3)
    D = q.shape[-1]
    out = torch.empty_like(q)
    res = varblock_attention(q, k, v, perm_q, q_off, rs, re, D ** -0.5, k_index=kidx, out=out)
    assert res is out
    assert _rel(out, _reference(q, k, v, perm_q, q_off, rs, re, kidx, D ** -0.5)) < 2e-2


def _cfg(**kw):
    base = dict(min_tokens=0, q_clusters=6, k_clusters=10, top_k=10, kmeans_iters_first=2, kmeans_iters_reuse=1,
                backend="triton", max_density=1.0, pooled_tail=True)
    base.update(kw)
    return AdaClusterConfig(**base)


@pytest.mark.parametrize("kv_rows", ["indexed", "copied"])
@pytest.mark.parametrize("order,text", [("wan", None), ("qkv", (0, 12)), ("wan", (130, 150))])
def test_api_on_comfy_layouts(monkeypatch, order, text, kv_rows):
    """sparse_attention on ComfyUI-ordered inputs: same result as on contiguous copies (every mode), the
    all-clusters call within 2x SDPA's error of fp32 dense, and out= written in place."""
    monkeypatch.setattr(lay, "KV_ROWS", kv_rows)
    gen = torch.Generator().manual_seed(5)
    B, H, N, D = 1, 2, 150, 64
    q, k, v = comfy_views(B, H, N, D, order, torch.bfloat16, gen)
    qc, kc, vc = (t.contiguous() for t in (q, k, v))
    o_strided, st = sparse_attention(q, k, v, _cfg(), always_dense_range=text)
    assert not st["dense"] and st["attention"] == "triton", st["reason"]
    o_contig, _ = sparse_attention(qc, kc, vc, _cfg(), always_dense_range=text)
    torch.testing.assert_close(o_strided, o_contig, rtol=0, atol=0)
    ref = dense_attention_ref(qc.float(), kc.float(), vc.float())
    err_sdpa = _rel(torch.nn.functional.scaled_dot_product_attention(qc, kc, vc), ref)
    assert _rel(o_strided, ref) <= 2 * err_sdpa + 1e-4
    # into the patcher's [B, N, H*D] output
    buf = torch.full((B, N, H * D), float("nan"), dtype=torch.bfloat16)
    o4 = buf.view(B, N, H, D).transpose(1, 2)
    res, _ = sparse_attention(q, k, v, _cfg(), always_dense_range=text, out=o4)
    assert res is o4
    torch.testing.assert_close(o4, o_contig, rtol=0, atol=0)
    # a sparse selection (top_k 3 of 10) agrees with the torch reference backend
    o_s, s_s = sparse_attention(q, k, v, _cfg(top_k=3), always_dense_range=text)
    o_r, _ = sparse_attention(qc, kc, vc, _cfg(top_k=3, backend="torch"), always_dense_range=text)
    assert float(s_s["density"]) < 0.95
    assert _rel(o_s, o_r) < 2e-2


def test_dense_fallback_writes_out():
    gen = torch.Generator().manual_seed(6)
    q, k, v = comfy_views(1, 2, 40, 96, "wan", torch.bfloat16, gen)  # head_dim 96: dense
    buf = torch.zeros(1, 40, 2 * 96, dtype=torch.bfloat16)
    o4 = buf.view(1, 40, 2, 96).transpose(1, 2)
    res, st = sparse_attention(q, k, v, _cfg(), out=o4)
    assert st["dense"] and res is o4
    torch.testing.assert_close(o4, torch.nn.functional.scaled_dot_product_attention(q, k, v))
    with pytest.raises(ValueError, match="out"):
        sparse_attention(q, k, v, _cfg(), out=torch.empty(1, 2, 40, 96))
