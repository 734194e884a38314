import pytest
import torch

from adacluster_core import clustering, reference as ref
from adacluster_core.selection import (apply_density_budget, centroid_scores, select_centroid, select_clusters,
                                       select_tensorquest, select_top_p, tensorquest_scores)

from .conftest import BACKENDS, clustered


def _setup(G=2, N=120, Cq=6, Ck=10, D=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(G, N, D, generator=g)
    qn = torch.nn.functional.normalize(torch.randn(G, N, D, generator=g), dim=-1)
    lab_k = torch.randint(0, Ck, (G, N), generator=g, dtype=torch.int32)
    lab_k[lab_k == 4] = 5  # cluster 4 empty
    lab_q = torch.randint(0, Cq, (G, N), generator=g, dtype=torch.int32)
    cq, _ = ref.centroid_update_ref(qn, lab_q, torch.zeros(G, Cq, D))
    ck, nk = ref.centroid_update_ref(k, lab_k, torch.zeros(G, Ck, D))
    kmax, kmin = ref.cluster_bounds_ref(k, lab_k, Ck)
    return k, cq, ck, nk, kmax, kmin, lab_k


def test_tensorquest_is_an_upper_bound():
    k, cq, ck, nk, kmax, kmin, lab_k = _setup()
    S = tensorquest_scores(cq, kmax, kmin, nk)
    assert torch.isneginf(S[:, :, 4]).all() and not torch.isnan(S).any()
    dots = cq @ k.transpose(1, 2)  # [G, Cq, N]
    G, Cq, N = dots.shape
    for j in range(kmax.shape[1]):
        m = (lab_k == j).unsqueeze(1).expand(G, Cq, N)
        if m.any():
            best = dots.masked_fill(~m, float("-inf")).max(-1).values
            assert torch.all(best <= S[:, :, j] + 1e-4)
    # without counts, empty clusters are found from the infinite bounds
    assert torch.equal(tensorquest_scores(cq, kmax, kmin), S)


def test_topk_selection_shapes_and_empty():
    k, cq, ck, nk, kmax, kmin, _ = _setup()
    sel = select_tensorquest(cq, kmax, kmin, 3, nk)
    assert sel.shape == (2, 6, 3) and sel.dtype == torch.int32
    assert not (sel == 4).any()
    full = select_tensorquest(cq, kmax, kmin, 1000, nk)  # clamped to Ck, empty -> -1
    assert full.shape == (2, 6, 10)
    assert ((full == -1).sum(-1) == 1).all()
    sc = select_centroid(cq, ck, 3, nk)
    ref_ids = torch.topk(centroid_scores(cq, ck, nk), 3, -1).indices
    assert torch.equal(sc.long(), ref_ids)


def test_top_p_mass():
    k, cq, ck, nk, kmax, kmin, _ = _setup()
    sel = select_top_p(cq, ck, nk, 0.5, 0.125)
    assert sel.shape == (2, 6, 10)
    n = (sel >= 0).sum(-1)
    assert (n >= 1).all() and not (sel == 4).any()
    sel1 = select_top_p(cq, ck, nk, 1.0, 0.125)
    assert ((sel1 >= 0).sum(-1) >= n).all()
    # kept ids come first
    valid = sel >= 0
    assert torch.all(valid[..., :-1] | ~valid[..., 1:])


@pytest.mark.parametrize("method", ["tensorquest", "centroid", "top_p"])
@pytest.mark.parametrize("budget", [0.05, 0.2, 0.5, 1.0])
def test_density_budget_selection(method, budget):
    k, cq, ck, nk, kmax, kmin, _ = _setup(N=300)
    kw = dict(cq=cq, ck=ck, kmax=kmax, kmin=kmin, k_counts=nk, top_k=8, top_p=0.95, scale=0.125)
    full = select_clusters(method, **kw)
    sel = select_clusters(method, max_density=budget, **kw)
    assert sel.shape == full.shape and sel.dtype == torch.int32
    valid = sel >= 0
    # a prefix of the unbudgeted selection (same order, -1 after)
    assert torch.equal(torch.where(valid, full, -1), sel)
    assert torch.all(valid[..., :-1] | ~valid[..., 1:])
    assert valid[..., 0].all()  # always >= 1 cluster
    sizes = torch.gather(nk.long().unsqueeze(1).expand(-1, sel.shape[1], -1), 2, sel.clamp_min(0).long())
    keys = torch.where(valid, sizes, 0).sum(-1)              # [G, Cq]
    budget_keys = torch.floor(nk.long().sum(-1).double() * budget).long().view(-1, 1)
    single = valid.sum(-1) == 1
    assert torch.all((keys <= budget_keys) | single)
    # greedy: the next candidate would exceed the budget
    nxt = torch.gather(torch.where(full >= 0, torch.gather(nk.long().unsqueeze(1).expand(-1, sel.shape[1], -1), 2,
                                                           full.clamp_min(0).long()), 0), 2,
                       valid.sum(-1, keepdim=True).clamp(max=full.shape[-1] - 1)).squeeze(-1)
    more = (full >= 0).sum(-1) > valid.sum(-1)
    assert torch.all(~more | (keys + nxt > budget_keys))
    if budget == 1.0:
        assert torch.equal(sel, full)


def test_density_budget_no_counts_and_empty():
    sel = torch.tensor([[[2, 0, -1], [1, -1, -1]]], dtype=torch.int32)
    cnt = torch.tensor([[5, 5, 5]], dtype=torch.int32)
    out = apply_density_budget(sel, cnt, 0.4)  # 6 keys: one cluster of 5 fits, two don't
    assert out.tolist() == [[[2, -1, -1], [1, -1, -1]]]
    assert apply_density_budget(sel, cnt, 0.1).tolist() == [[[2, -1, -1], [1, -1, -1]]]
    assert torch.equal(apply_density_budget(sel, cnt, 1.0), sel)


@pytest.mark.parametrize("backend", BACKENDS)
def test_kmeans_backends_agree_and_decrease(backend):
    x = clustered(1, 2, 200, 64, n_centers=6, seed=3)
    init = clustering.init_centroids(x, 6)
    r1 = clustering.kmeans(x, init, 1, backend=backend)
    r5 = clustering.kmeans(x, init, 5, backend=backend)
    rt = clustering.kmeans(x, init, 5, backend="torch")
    assert torch.equal(r5.labels, rt.labels)
    torch.testing.assert_close(r5.centroids, rt.centroids, rtol=1e-4, atol=1e-4)
    assert torch.equal(r5.counts.sum(1), torch.full((2,), 200, dtype=torch.int32))

    def inertia(r):
        _, d = ref.kmeans_assign_ref(x, r.centroids, return_dist=True)
        return float((d ** 2).sum())
    assert inertia(r5) <= inertia(r1) + 1e-3
    # perm/offsets are the layout of the labels
    lab = r5.labels.long()
    assert torch.equal(torch.gather(lab, 1, r5.perm.long()), torch.sort(lab, 1).values)


def test_kmeans_ignore_tokens():
    x = clustered(1, 2, 100, 64, seed=4)
    ign = torch.zeros(2, 100, dtype=torch.bool)
    ign[:, 90:] = True
    r = clustering.kmeans(x, clustering.init_centroids(x, 5), 3, ignore=ign)
    assert (r.labels[:, 90:] == 5).all() and (r.labels[:, :90] < 5).all()
    assert int(r.counts.sum()) == 180 and (r.offsets[:, 5] == 90).all()


def test_init_is_deterministic():
    x = torch.randn(2, 50, 64)
    assert torch.equal(clustering.init_centroids(x, 7), clustering.init_centroids(x, 7))
    assert clustering.init_centroids(x, 7, normalize=True).norm(dim=-1).sub(1).abs().max() < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_multi_stage_finds_cluster_count(backend):
    # 12 tight, well separated clusters: a few stages of <= 24 centroids cover them
    k = clustered(1, 2, 600, 64, n_centers=12, spread=3.0, noise=0.05, seed=5)
    res = clustering.multi_stage_key_clustering(k, init_clusters=24, max_stages=4, stage_iters=3, backend=backend)
    assert not res.dense and res.k_clusters % 8 == 0
    assert 8 <= res.k_clusters <= 4 * 24
    assert res.centroids.shape == (2, res.k_clusters, 64)
    # every token is close to some centroid afterwards
    _, d = ref.kmeans_assign_ref(k, res.centroids, return_dist=True)
    assert float(d.max()) < 1.0


def test_multi_stage_hard_to_compress_and_mask():
    k = torch.randn(1, 2, 300, 64)
    res = clustering.multi_stage_key_clustering(k, init_clusters=64, max_stages=10, n_max=40)
    assert res.dense and "hard to compress" in res.reason
    ign = torch.zeros(2, 300, dtype=torch.bool)
    ign[0, :100] = True
    res = clustering.multi_stage_key_clustering(k, init_clusters=16, max_stages=2, n_max=200, ignore=ign)
    assert not res.dense and res.k_clusters <= 200


def test_plan_layers():
    counts = {i: 8 * (i + 1) for i in range(20)}  # 8 .. 160
    dense, cap = clustering.plan_layers(counts, 0.15, n_tokens=3000)
    assert dense == {17, 18, 19}
    assert 136 <= cap < 144
    dense, cap = clustering.plan_layers(counts, 0.15, n_tokens=300)  # N/3 = 100 caps harder
    assert cap == 100 and dense == {l for l, c in counts.items() if c > 100}
    dense, cap = clustering.plan_layers({0: None, 1: 16, 2: 24}, 0.0, n_tokens=0)
    assert dense == {0} and cap == 24
    assert clustering.plan_layers({}, 0.15, 90) == (set(), 30)
