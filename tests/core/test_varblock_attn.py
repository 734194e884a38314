"""CPU tests of the Triton varblock sparse attention kernel (TRITON_INTERPRET=1).

Run: TRITON_INTERPRET=1 python -m pytest -q tests/core/test_varblock_attn.py
(The interpreter must be enabled before triton is imported; this module sets it when unset.)
The parametrised cases are a subset (`kernel_cases.INTERP`); bench/kernel_check.py runs all of them
(`kernel_cases.CHECKS`) compiled on the GPU, where the bf16 / fp16 arithmetic is exercised.
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

from . import kernel_cases as kc  # noqa: E402
from .kernel_cases import make_case, rel as _rel  # noqa: E402

INTERP = os.environ.get("TRITON_INTERPRET") == "1"
DEV = "cuda" if (torch.cuda.is_available() and not INTERP) else "cpu"
if DEV == "cpu" and not INTERP:  # pragma: no cover
    pytest.skip("needs TRITON_INTERPRET=1 on CPU", allow_module_level=True)


@pytest.mark.parametrize("dtype,D", kc.INTERP["varblock_reference"])
def test_matches_reference(dtype, D):
    kc.check_varblock_reference(dtype, D)


@pytest.mark.parametrize("bm,bn,descriptors", kc.INTERP["varblock_configs"])
def test_configs_ragged_and_extra(bm, bn, descriptors):
    kc.check_varblock_configs(bm, bn, descriptors)


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


def test_cpu_dispatch_without_the_interpreter(monkeypatch):
    """Off CUDA without TRITON_INTERPRET=1 the ops' CPU kernel is the fp32 reference (both ops)."""
    case = make_case(G=2, N=50, D=64, seed=4)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    out = varblock_attention(**case)
    assert torch.equal(out, varblock_attention_ref(**case))
    buf = torch.empty_like(case["q"])
    assert varblock_attention(**case, out=buf) is buf and torch.equal(buf, out)
