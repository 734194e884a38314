"""Triton clustering kernels == their torch references (run with TRITON_INTERPRET=1 on CPU)."""
import pytest
import torch

from adacluster_core import reference as ref
from adacluster_core.clustering import sort_by_cluster

from .conftest import clustered, device, needs_triton

pytestmark = needs_triton
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _objective(x, c, lab, normalize):
    """‖x − c_lab‖² per token in fp64, the quantity both implementations minimise."""
    xf = x.reshape(-1, x.shape[-2], x.shape[-1]).double()
    if normalize:
        xf = xf / xf.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    cl = torch.gather(c.double(), 1, lab.long().unsqueeze(-1).expand(-1, -1, c.shape[-1]))
    return ((xf - cl) ** 2).sum(-1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("N,C,D", [(1, 1, 64), (77, 20, 64), (20, 70, 128), (50, 8, 80)])
def test_kmeans_assign_matches_ref(dtype, normalize, N, C, D):
    from adacluster_core.kernels.kmeans_assign import kmeans_assign
    dev = device()
    x = clustered(1, 3, N, D, n_centers=5, seed=N + C, dtype=dtype, dev=dev)
    c = clustered(1, 3, C, D, n_centers=5, seed=N + C, dev=dev).reshape(3, C, D)
    lab, dist = kmeans_assign(x, c, normalize=normalize, return_dist=True)
    lab_r, dist_r = ref.kmeans_assign_ref(x, c, normalize=normalize, return_dist=True)
    assert lab.dtype == torch.int32 and lab.shape == (3, N) and dist.shape == (3, N)
    assert int(lab.min()) >= 0 and int(lab.max()) < C
    if dtype == torch.float32:  # half GEMM operands turn near ties either way
        assert (lab == lab_r).float().mean() > 0.9
    # where labels differ it must be a (near) tie of the objective
    o, o_r = _objective(x, c, lab, normalize), _objective(x, c, lab_r, normalize)
    tol = 2e-2 if dtype != torch.float32 else 1e-4
    assert torch.all(o <= o_r + tol * (1 + o_r))
    torch.testing.assert_close(dist, dist_r, rtol=5e-2 if dtype != torch.float32 else 1e-4, atol=5e-2)
    assert torch.equal(kmeans_assign(x, c, normalize=normalize), lab)


def test_kmeans_assign_strided_input_and_ties():
    from adacluster_core.kernels.kmeans_assign import kmeans_assign
    dev = device()
    x = torch.randn(2, 40, 3, 64, device=dev).transpose(1, 2)  # [B, H, N, D] non-contiguous
    c = torch.randn(6, 9, 64, device=dev)
    c[:, 5] = c[:, 2]  # duplicated centroid: ties must go to the lowest id
    lab = kmeans_assign(x, c)
    lab_r = ref.kmeans_assign_ref(x, c)
    assert not bool((lab == 5).any())
    assert (lab == lab_r).float().mean() > 0.95


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("normalize", [False, True])
def test_centroid_update_matches_ref(dtype, normalize):
    from adacluster_core.kernels.centroid_update import centroid_update
    G, N, C, D = 4, 150, 12, 64
    dev = device()
    x = torch.randn(G, N, D, device=dev).to(dtype)
    lab = torch.randint(0, C, (G, N), dtype=torch.int32, device=dev)
    lab[:, :10] = C  # ignored tokens
    lab[lab == 3] = 4  # cluster 3 empty -> keeps its old centroid
    old = torch.randn(G, C, D, device=dev)
    new, cnt = centroid_update(x, lab, old, normalize=normalize)
    new_r, cnt_r = ref.centroid_update_ref(x, lab, old, normalize=normalize)
    assert torch.equal(cnt, cnt_r) and cnt.dtype == torch.int32
    assert int(cnt[:, 3].sum()) == 0 and torch.equal(new[:, 3], old[:, 3])
    torch.testing.assert_close(new, new_r, rtol=1e-4, atol=1e-5)
    # explicit perm/offsets give the same result
    perm, offs = sort_by_cluster(lab, C + 1)
    new2, cnt2 = centroid_update(x, lab, old, normalize=normalize, perm=perm, offsets=offs)
    torch.testing.assert_close(new2, new)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_bounds_match_ref(dtype):
    """The TensorQuest bounds fused into the last centroid update (bounds=True)."""
    from adacluster_core.kernels.centroid_update import centroid_update
    B, H, N, C, D = 1, 2, 97, 10, 128
    dev = device()
    x = torch.randn(B, N, H, D, device=dev).to(dtype).transpose(1, 2)  # strided
    lab = torch.randint(0, C, (B * H, N), dtype=torch.int32, device=dev)
    lab[lab == 7] = C  # cluster 7 empty, those tokens ignored
    old = torch.randn(B * H, C, D, device=dev)
    _, _, kmax, kmin = centroid_update(x, lab, old, bounds=True)
    kmax_r, kmin_r = ref.cluster_bounds_ref(x, lab, C)
    assert torch.equal(kmax, kmax_r) and torch.equal(kmin, kmin_r)
    assert bool(torch.isneginf(kmax[:, 7]).all()) and bool(torch.isposinf(kmin[:, 7]).all())
    xf = x.reshape(B * H, N, D).float()
    g, j = 1, 2
    members = xf[g][lab[g] == j]
    torch.testing.assert_close(kmax[g, j], members.max(0).values)
    torch.testing.assert_close(kmin[g, j], members.min(0).values)
