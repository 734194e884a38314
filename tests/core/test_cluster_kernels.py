"""Triton clustering kernels and the K / V gather == their torch references (TRITON_INTERPRET=1 on
CPU), their custom ops (schema, fake tensors) and the ops' CPU dispatch.

The parametrised cases are a subset (`kernel_cases.INTERP`); bench/kernel_check.py runs all of them
(`kernel_cases.CHECKS`) compiled on the GPU."""
import pytest
import torch

from adacluster_core import reference as ref

from . import kernel_cases as kc
from .conftest import device, needs_triton

pytestmark = needs_triton


@pytest.mark.parametrize("dtype,normalize,N,C,D", kc.INTERP["kmeans_assign"])
def test_kmeans_assign_matches_ref(dtype, normalize, N, C, D):
    kc.check_kmeans_assign(dtype, normalize, N, C, D)


def test_kmeans_assign_strided_input_and_ties():
    kc.check_kmeans_assign_strided_and_ties()


@pytest.mark.parametrize("dtype,normalize", kc.INTERP["centroid_update"])
def test_centroid_update_matches_ref(dtype, normalize):
    kc.check_centroid_update(dtype, normalize)


@pytest.mark.parametrize("dtype", [p[0] for p in kc.INTERP["fused_bounds"]])
def test_fused_bounds_match_ref(dtype):
    kc.check_fused_bounds(dtype)


@pytest.mark.parametrize("dtype,layout", kc.INTERP["gather_kv"])
def test_gather_kv_matches_ref(dtype, layout):
    kc.check_gather_kv(dtype, layout)


def _op_cases():
    from adacluster_core.kernels import centroid_update as cu, gather_rows as gr, kmeans_assign as ka
    dev = device()
    x = torch.randn(2, 3, 33, 64, device=dev)
    c = torch.randn(6, 5, 64, device=dev)
    lab = torch.randint(0, 6, (6, 33), dtype=torch.int32, device=dev)  # label 5 = ignored
    idx = torch.randint(0, 33, (6, 20), device=dev)
    return [
        (ka._kmeans_assign_op, (x, c, True, True, 16)),
        (ka._kmeans_assign_op, (x, c, False, False, 32)),
        (cu._centroid_update_op, (x, lab, c, False, None, None, True, 5, "float32")),
        (cu._centroid_update_op, (x, lab, None, True, None, None, False, 5, "bfloat16")),
        (gr._gather_kv_op, (x, x, idx)),
    ]


def test_custom_ops_schema_and_fake():
    """Each kernel is a torch custom op with a fake implementation (torch.compile safe)."""
    for op, args in _op_cases():
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))


def test_cpu_dispatch_without_the_interpreter(monkeypatch):
    """Off CUDA the ops' CPU kernel runs the interpreter only under TRITON_INTERPRET=1; otherwise the
    fp32 reference (checked per call, so no second fallback anywhere above the op)."""
    from adacluster_core.kernels.centroid_update import centroid_update
    from adacluster_core.kernels.gather_rows import gather_kv
    from adacluster_core.kernels.kmeans_assign import kmeans_assign
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x = torch.randn(2, 40, 64)
    c = torch.randn(2, 5, 64)
    lab, dist = kmeans_assign(x, c, return_dist=True, labels_dtype=torch.int16)
    lab_r, dist_r = ref.kmeans_assign_ref(x, c, return_dist=True)
    assert lab.dtype == torch.int16 and torch.equal(lab.int(), lab_r) and torch.equal(dist, dist_r)
    new, cnt, kmax, kmin = centroid_update(x, lab, c, bounds=True)
    assert torch.equal(new, ref.centroid_update_ref(x, lab, c)[0])
    assert torch.equal(kmax, ref.cluster_bounds_ref(x, lab, 5)[0])
    idx = torch.randint(0, 40, (2, 9))
    assert all(torch.equal(a, b) for a, b in zip(gather_kv(x, x, idx), ref.gather_kv_ref(x, x, idx)))
