"""The launch table (kernels/_common.py): the values measured on Hopper, the defaults elsewhere, the
interpreter rows, and overrides only through `launch_overrides` (no environment reads)."""
import pytest
import torch

from adacluster_core.kernels._common import launch_config, launch_override, launch_overrides

BF16, F32 = torch.bfloat16, torch.float32
HOPPER, ADA, AMPERE = (9, 0), (8, 9), (8, 0)


def test_varblock_rows_as_measured():
    cfg = lambda D, dt=BF16, n=200_000, cap=HOPPER: launch_config("varblock_attn", D, dt, cap, n_tokens=n)  # noqa: E731
    for D in (16, 32, 64):
        assert cfg(D) == (128, 64, 4, 3) == cfg(D, n=32_760)
    assert cfg(128) == (128, 64, 8, 3) == cfg(128, n=0)
    assert cfg(128, n=32_760) == (64, 64, 4, 3) == cfg(128, F32, n=149_999)   # half-height tiles below 150K
    assert cfg(128, F32) == (64, 64, 8, 3)                                  # fp32: BLOCK_M 64 at D >= 128
    assert cfg(256) == (64, 32, 8, 2) == cfg(256, F32)
    for cap in (ADA, AMPERE, (10, 0)):  # other GPUs: the same rows, as before the table was keyed
        assert cfg(128, cap=cap) == (128, 64, 8, 3) and cfg(128, n=32_760, cap=cap) == (64, 64, 4, 3)
    assert cfg(128, cap=None) == (16, 16, 4, 1)  # the interpreter
    with pytest.raises(ValueError, match="head dim 96"):
        cfg(96)


def test_clustering_and_gather_rows():
    assert launch_config("kmeans_assign", 128, BF16, HOPPER) == (128, 128, 4, 2)
    assert launch_config("kmeans_assign", 64, F32, HOPPER) == (128, 128, 4, 2)
    assert launch_config("kmeans_assign", 256, BF16, HOPPER) == (64, 64, 4, 1)
    assert launch_config("kmeans_assign", 128, BF16, ADA) == (64, 64, 4, 1)    # the small default off Hopper
    assert launch_config("kmeans_assign", 128, BF16, None) == (64, 64, 4, 1)
    for cap in (HOPPER, AMPERE):   # by tokens per cluster: query clusters (~1160 rows), key clusters (~190)
        assert launch_config("centroid_update", 128, BF16, cap, n_tokens=75_600, n_clusters=65) == (128, 4)
        assert launch_config("centroid_update", 128, BF16, cap, n_tokens=75_600, n_clusters=400) == (64, 2)
        assert launch_config("gather_kv", 128, BF16, cap) == (32, 4)
    assert launch_config("centroid_update", 128, BF16, None, n_tokens=75_600, n_clusters=65) == (64, 4)
    assert launch_config("gather_kv", 128, BF16, None) == (16, 4)


def test_overrides_only_through_the_context_manager(monkeypatch):
    monkeypatch.setenv("ADACLUSTER_ASSIGN_CONFIG", "32,32,2,1")   # the former variables are not read
    monkeypatch.setenv("ADACLUSTER_UPDATE_CONFIG", "16,1")
    assert launch_config("kmeans_assign", 128, BF16, HOPPER) == (128, 128, 4, 2)
    assert launch_config("centroid_update", 64, BF16, HOPPER, n_tokens=100, n_clusters=10) == (64, 2)
    with launch_overrides(kmeans_assign=(64, 128, 4, 2), varblock_descriptors=False):
        assert launch_config("kmeans_assign", 128, BF16, HOPPER) == (64, 128, 4, 2)
        assert launch_override("varblock_descriptors") is False
        with launch_overrides(kmeans_assign=None, varblock_attn=(64, 64, 4, 3)):  # None: keep the outer one
            assert launch_config("kmeans_assign", 128, BF16, HOPPER) == (64, 128, 4, 2)
            assert launch_config("varblock_attn", 128, BF16, HOPPER) == (64, 64, 4, 3)
        assert launch_config("varblock_attn", 128, BF16, HOPPER) == (128, 64, 8, 3)
    assert launch_config("kmeans_assign", 128, BF16, HOPPER) == (128, 128, 4, 2)
    assert launch_override("varblock_descriptors") is None
    with pytest.raises(ValueError, match="unknown"):
        with launch_overrides(kmeans=(1, 2, 3, 4)):
            pass
