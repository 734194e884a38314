"""CPU tests of the Triton varblock sparse attention kernel (TRITON_INTERPRET=1).

Run: TRITON_INTERPRET=1 python -m pytest -q tests/core/test_varblock_attn.py
(The interpreter must be enabled before triton is imported; this module sets it when unset.)
"""
from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

triton = pytest.importorskip("triton")

from adacluster_core.kernels.varblock_attn import varblock_attention, varblock_attention_triton  # noqa: E402
from adacluster_core.clustering import sort_by_cluster  # noqa: E402
from adacluster_core.layout import selected_key_ranges  # noqa: E402
from adacluster_core.reference import dense_attention_ref, varblock_attention_ref  # noqa: E402

INTERP = os.environ.get("TRITON_INTERPRET") == "1"
DEV = "cuda" if (torch.cuda.is_available() and not INTERP) else "cpu"
if DEV == "cpu" and not INTERP:  # pragma: no cover
    pytest.skip("needs TRITON_INTERPRET=1 on CPU", allow_module_level=True)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def make_case(G=2, N=70, Nv=None, D=64, Cq=5, Ck=7, S=3, extra=0, dtype=torch.float16, seed=0,
              empty_cluster=True, device=DEV):
    """Random clusters (incl. an empty query cluster), random selections incl. -1 slots and
    query clusters with no selection at all, optional `extra` always-attended rows."""
    gen = torch.Generator().manual_seed(seed)
    Nv = N if Nv is None else Nv
    q = torch.randn(G, N, D, generator=gen).to(dtype)
    kv_rows = Nv + extra
    k = torch.randn(G, kv_rows, D, generator=gen).to(dtype)
    v = torch.randn(G, kv_rows, D, generator=gen).to(dtype)
    lab_q = torch.randint(0, Cq, (G, N), generator=gen)
    if empty_cluster and Cq > 2:
        lab_q[lab_q == 1] = 0  # cluster 1 is empty
    lab_k = torch.randint(0, Ck, (G, Nv), generator=gen)
    perm_q, q_off = sort_by_cluster(lab_q, Cq)
    perm_k, k_off = sort_by_cluster(lab_k, Ck)
    k_perm = torch.cat([torch.gather(k[:, :Nv], 1, perm_k.long().unsqueeze(-1).expand(G, Nv, D)), k[:, Nv:]], 1)
    v_perm = torch.cat([torch.gather(v[:, :Nv], 1, perm_k.long().unsqueeze(-1).expand(G, Nv, D)), v[:, Nv:]], 1)
    sel = torch.stack([torch.stack([torch.randperm(Ck, generator=gen)[:S] for _ in range(Cq)]) for _ in range(G)])
    drop = torch.rand(G, Cq, S, generator=gen) < 0.25
    sel = torch.where(drop, torch.full_like(sel, -1), sel).to(torch.int32)
    if Cq > 3:
        sel[:, 3] = -1  # a query cluster that attends to nothing (unless extra rows)
    rs, re = selected_key_ranges(sel, k_off, extra=(Nv, Nv + extra) if extra else None)
    t = lambda x: x.to(device)  # noqa: E731
    return dict(q=t(q), k_rows=t(k_perm), v_rows=t(v_perm), perm_q=t(perm_q), q_offsets=t(q_off),
                range_start=t(rs), range_end=t(re), scale=D ** -0.5)


def _tol(dtype):
    return {torch.float16: 3e-3, torch.bfloat16: 2e-2, torch.float32: 1e-4}[dtype]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("D", [64, 128])
def test_matches_reference(dtype, D):
    case = make_case(D=D, dtype=dtype, seed=D + len(str(dtype)))
    out = varblock_attention(**case)
    ref = varblock_attention_ref(**case)
    assert out.shape == ref.shape and out.dtype == dtype
    assert torch.isfinite(out.float()).all()
    assert _rel(out, ref) < _tol(dtype), _rel(out, ref)
    # rows of the query cluster with no keys are exact zeros
    q_off = case["q_offsets"]
    rows = case["perm_q"][0, q_off[0, 3]:q_off[0, 4]].long()
    assert (out[0, rows] == 0).all()


@pytest.mark.parametrize("descriptors", [True, False])
@pytest.mark.parametrize("bm,bn", [(16, 16), (32, 16), (16, 32)])
def test_configs_ragged_and_extra(bm, bn, descriptors):
    # both K / V load paths (tensor descriptors on Hopper, pointer loads elsewhere)
    case = make_case(G=2, N=83, D=32, Cq=6, Ck=9, S=4, extra=5, dtype=torch.float16, seed=bm * 7 + bn)
    case["q"] = case["q"] * 4  # peaked rows: the running max must move mid-loop
    out = varblock_attention_triton(**case, config=(bm, bn, 4, 1), descriptors=descriptors)
    ref = varblock_attention_ref(**case)
    assert _rel(out, ref) < 3e-3


def test_output_fully_written():
    # every row must be written, even when the output buffer would hold garbage: compare
    # with the reference on rows we can identify, and check finiteness of all rows
    case = make_case(G=3, N=61, D=64, Cq=4, Ck=5, S=2, dtype=torch.float16, seed=11)
    torch.manual_seed(0)
    orig_empty = torch.empty_like

    def poisoned_empty_like(t, *a, **kw):
        x = orig_empty(t, *a, **kw)
        if x.is_floating_point():
            x.fill_(float("nan"))
        return x

    torch.empty_like = poisoned_empty_like
    try:
        out = varblock_attention_triton(**case)
    finally:
        torch.empty_like = orig_empty
    assert torch.isfinite(out.float()).all()
    assert _rel(out, varblock_attention_ref(**case)) < 3e-3


def test_all_clusters_equals_dense():
    G, N, D = 2, 96, 64
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(G, N, D, generator=gen).to(torch.bfloat16) for _ in range(3))
    Cq, Ck = 5, 6
    perm_q, q_off = sort_by_cluster(torch.randint(0, Cq, (G, N), generator=gen), Cq)
    perm_k, k_off = sort_by_cluster(torch.randint(0, Ck, (G, N), generator=gen), Ck)
    idx = perm_k.long().unsqueeze(-1).expand(G, N, D)
    sel = torch.arange(Ck, dtype=torch.int32).view(1, 1, Ck).expand(G, Cq, Ck).contiguous()
    rs, re = selected_key_ranges(sel, k_off)
    assert (re - rs)[..., 0].eq(N).all() and (re - rs)[..., 1:].eq(0).all()  # merged to one range
    out = varblock_attention(q, torch.gather(k, 1, idx), torch.gather(v, 1, idx), perm_q, q_off, rs, re, D ** -0.5)
    ref32 = dense_attention_ref(q.float(), k.float(), v.float())
    sdpa_bf16 = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    err_sdpa = _rel(sdpa_bf16, ref32)
    assert _rel(out, ref32) <= 2 * err_sdpa + 1e-6, (_rel(out, ref32), err_sdpa)


def test_no_ranges_gives_zeros():
    case = make_case(G=1, N=40, D=64, Cq=3, Ck=4, S=2, seed=5)
    case["range_end"] = case["range_start"].clone()
    out = varblock_attention(**case)
    assert (out == 0).all()


def test_fake_tensor_shape():
    from torch._subclasses.fake_tensor import FakeTensorMode

    case = make_case(G=2, N=50, D=64, seed=2)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fc = {k: (mode.from_tensor(v) if isinstance(v, torch.Tensor) else v) for k, v in case.items()}
        out = torch.ops.adacluster.varblock_attention(**fc)
    assert out.shape == case["q"].shape and out.dtype == case["q"].dtype


def test_opcheck():
    case = make_case(G=1, N=40, D=32, Cq=3, Ck=4, S=2, seed=9)
    args = (case["q"], case["k_rows"], case["v_rows"], case["perm_q"], case["q_offsets"],
            case["range_start"], case["range_end"], case["scale"])
    torch.library.opcheck(torch.ops.adacluster.varblock_attention.default, args,
                          test_utils=("test_schema", "test_faketensor"))
