"""The kernel and the API on inputs in ComfyUI's memory order (issue 26), against the fp32 reference.

ComfyUI hands Wan's attention [B, L, H*D] tensors (the override views them as [B, H, L, D]: non-contiguous)
and HunyuanVideo / H3-style models [B, H, L, D] views that may not even be dense (q, k, v slices of one
[B, L, 3, H, D] projection). The kernel reads q and writes the output through their strides, and in the
"indexed" mode gathers the K / V rows of the caller's k / v through the key permutation (no permuted copies).
Every variant (indexed / copied, descriptors on / off, out given / not) is checked against
`reference.varblock_attention_ref` on contiguous copies. The parametrised cases are a subset
(`kernel_cases.INTERP`); bench/kernel_check.py runs all of them compiled on the GPU.

Run: TRITON_INTERPRET=1 python -m pytest -q tests/core/test_memory_order.py
"""
from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

triton = pytest.importorskip("triton")

from adacluster_core import sparse_attention  # noqa: E402
from adacluster_core.kernels.varblock_attn import varblock_attention  # noqa: E402

from . import kernel_cases as kc  # noqa: E402
from .kernel_cases import comfy_views, kernel_case  # noqa: E402

INTERP = os.environ.get("TRITON_INTERPRET") == "1"
DEV = "cuda" if (torch.cuda.is_available() and not INTERP) else "cpu"
if DEV == "cpu" and not INTERP:  # pragma: no cover
    pytest.skip("needs TRITON_INTERPRET=1 on CPU", allow_module_level=True)


@pytest.mark.parametrize("order,dtype", kc.INTERP["indexed_comfy_layout"])
def test_indexed_kernel_on_comfy_layouts(order, dtype):
    kc.check_indexed_comfy_layout(order, dtype)


@pytest.mark.parametrize("order,descriptors", kc.INTERP["copied_and_indexed_into_out"])
def test_copied_and_indexed_agree_with_out_buffer(order, descriptors):
    kc.check_copied_and_indexed_into_out(order, descriptors)


def test_custom_op_into_buffer():
    q, k, v, perm_q, q_off, rs, re, kidx = kernel_case(order="wan", dtype=torch.bfloat16, seed=3)
    D = q.shape[-1]
    out = torch.empty_like(q)
    res = varblock_attention(q, k, v, perm_q, q_off, rs, re, D ** -0.5, k_index=kidx, out=out)
    assert res is out
    assert kc.rel(out, kc.memory_order_reference(q, k, v, perm_q, q_off, rs, re, kidx, D ** -0.5)) < 2e-2


@pytest.mark.parametrize("order,text,kv_rows", kc.INTERP["api_comfy_layout"])
def test_api_on_comfy_layouts(order, text, kv_rows):
    kc.check_api_comfy_layout(order, text, kv_rows)


def test_dense_fallback_writes_out():
    gen = torch.Generator().manual_seed(6)
    q, k, v = comfy_views(1, 2, 40, 96, "wan", torch.bfloat16, gen)  # head_dim 96: dense
    buf = torch.zeros(1, 40, 2 * 96, dtype=torch.bfloat16)
    o4 = buf.view(1, 40, 2, 96).transpose(1, 2)
    res, st = sparse_attention(q, k, v, kc.api_cfg(), out=o4)
    assert st["dense"] and res is o4
    torch.testing.assert_close(o4, torch.nn.functional.scaled_dot_product_attention(q, k, v))
    with pytest.raises(ValueError, match="out"):
        sparse_attention(q, k, v, kc.api_cfg(), out=torch.empty(1, 2, 40, 96))
