import dataclasses

import pytest
import torch

from adacluster_core import AdaClusterConfig, ClusterState


def test_defaults_match_spec():
    c = AdaClusterConfig()
    assert (c.q_clusters, c.k_clusters, c.k_clusters_init, c.tau_scale, c.max_stages) == (65, None, 200, 1.5, 10)
    assert (c.top_k, c.selection, c.top_p, c.kmeans_iters_first, c.kmeans_iters_reuse) == (128, "tensorquest", 0.9, 10, 2)
    assert (c.backend, c.warmup, c.dense_layer_fraction) == ("auto", 0.3, 0.15)
    assert c.max_density == 1.0  # no cap unless a preset (for_model) sets one


@pytest.mark.parametrize("field,value", [
    ("q_clusters", 0), ("k_clusters", 0), ("k_clusters_init", 0), ("tau_scale", 0.0), ("tau_scale", float("nan")),
    ("max_stages", 0), ("stage_iters", 0), ("top_k", 0), ("top_k", 2.5), ("top_k", True), ("selection", "topk"),
    ("top_p", 0.0), ("top_p", 1.5), ("kmeans_iters_first", 0), ("kmeans_iters_reuse", 0),
    ("backend", "cuda"), ("min_tokens", -1), ("warmup", -0.1), ("warmup", 1.1),
    ("dense_layer_fraction", 1.0), ("dense_layer_fraction", -0.5), ("calibration_dense", "yes"),
    ("max_density", 0.0), ("max_density", -0.1), ("max_density", 1.01), ("max_density", float("nan")),
    ("max_density", "0.3"),
])
def test_invalid_field_raises_naming_it(field, value):
    with pytest.raises(ValueError, match=field):
        AdaClusterConfig(**{field: value})
    with pytest.raises(ValueError, match=field):
        AdaClusterConfig().replace(**{field: value})


def test_frozen_replace_roundtrip():
    c = AdaClusterConfig(top_k=7, min_tokens=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.top_k = 3  # type: ignore[misc]
    d = c.to_dict()
    assert AdaClusterConfig.from_dict(d) == c
    assert c.replace(top_k=9).top_k == 9 and c.top_k == 7
    with pytest.raises(ValueError, match="bogus"):
        AdaClusterConfig.from_dict({**d, "bogus": 1})


def test_presets():
    assert AdaClusterConfig.for_model("wan").top_k == 128
    assert AdaClusterConfig.for_model("hunyuan").top_k == 94
    assert AdaClusterConfig.for_model("cogvideox").top_k == 64
    assert AdaClusterConfig.for_model("wan") == AdaClusterConfig(max_density=0.15, pooled_tail=True, kmeans_iters_reuse=1)
    assert AdaClusterConfig.for_model("wan", pooled_tail=False).pooled_tail is False
    for m in ("wan", "hunyuan", "cogvideox"):
        q, b, f = (AdaClusterConfig.for_model(m, p) for p in ("quality", "balanced", "fast"))
        assert q.top_k > b.top_k > f.top_k
        assert q.warmup >= b.warmup >= f.warmup
        assert (q.max_density, b.max_density, f.max_density) == (0.25, 0.15, 0.10)
        assert (q.kmeans_iters_reuse, b.kmeans_iters_reuse, f.kmeans_iters_reuse) == (3, 1, 1)
        assert q.pooled_tail and b.pooled_tail and f.pooled_tail
    assert AdaClusterConfig.for_model("wan", max_density=1.0).max_density == 1.0
    assert AdaClusterConfig(max_density=1).max_density == 1
    assert AdaClusterConfig.for_model("Wan2.1", "fast", backend="torch").backend == "torch"
    with pytest.raises(ValueError, match="model"):
        AdaClusterConfig.for_model("sd15")
    with pytest.raises(ValueError, match="preset"):
        AdaClusterConfig.for_model("wan", "ultra")


def test_one_family_map():
    """config.FAMILY_MODEL is the one family -> model map: every family's model has presets, and
    every core model is some family's (the nodes and the tuner read this map, not copies)."""
    from adacluster_core import config as C
    for fam, model in C.FAMILY_MODEL.items():
        for p in C.PRESETS:
            assert AdaClusterConfig.for_model(model, p) is not None, (fam, p)
    assert set(C.FAMILY_MODEL.values()) == set(C.MODELS)


def test_state_reset_nbytes_and_mismatch():
    s = ClusterState()
    assert s.nbytes() == 0
    s.q_centroids = torch.zeros(1, 2, 4, 8)
    s.k_centroids = torch.zeros(1, 2, 8, 8)
    s.k_clusters, s.dense, s.calls = 8, True, 3
    assert s.nbytes() == (64 + 128) * 4
    assert ClusterState._match(s.q_centroids, (1, 2, 5, 8), "cpu") is None
    assert ClusterState._match(s.q_centroids, (1, 2, 4, 8), "cpu") is not None
    s.reset()
    assert s.q_centroids is None and s.k_centroids is None and s.k_clusters is None
    assert not s.dense and s.calls == 0 and s.nbytes() == 0
