"""The memory guard (issue 26): the pure need of a sparse call and the dense-on-`memory` decision,
with simulated free memory (CPU; no GPU, no ComfyUI)."""
from __future__ import annotations

import types

import pytest
import torch

from adacluster_core import AdaClusterConfig
from adacluster_core import memory as M

MiB = 1 << 20


def test_need_is_pure_and_ordered():
    B, H, N, D, e = 1, 40, 75600, 128, 2
    one = B * H * N * D * e  # one of q / k / v / out
    idx = M.sparse_call_bytes(B, H, N, D, e, k_clusters=400)
    cop = M.sparse_call_bytes(B, H, N, D, e, k_clusters=400, kv_rows="copied")
    assert idx == M.sparse_call_bytes(B, H, N, D, e, k_clusters=400)   # pure
    assert cop - idx == one                                              # the permuted K / V copies (net)
    assert 2 * one < idx < 2.5 * one                                     # output + one more + per-token state
    cal = M.sparse_call_bytes(B, H, N, D, e, k_clusters=400, calibrating=True)
    assert cal > idx + 2 * one                                           # fp32 keys of the multi-stage step
    assert M.sparse_call_bytes(B, H, N, D, e, k_clusters=400, top_p=True) == idx + B * H * N * D * 4
    # scales with the batch (CFG branches) and the element size
    assert M.sparse_call_bytes(2, H, N, D, e, k_clusters=400) > 1.9 * idx
    assert M.sparse_call_bytes(B, H, N, D, 4, k_clusters=400) > idx + 0.9 * one


def test_config_need_uses_fields_and_kv_mode(monkeypatch):
    cfg = AdaClusterConfig(q_clusters=65, k_clusters=256, selection="tensorquest")
    from adacluster_core import layout
    monkeypatch.setattr(layout, "KV_ROWS", "copied")
    a = M.config_call_bytes(1, 12, 32760, 128, 2, cfg)
    assert a == M.sparse_call_bytes(1, 12, 32760, 128, 2, q_clusters=65, k_clusters=256, kv_rows="copied")
    assert M.config_call_bytes(1, 12, 32760, 128, 2, cfg, kv_rows="indexed") < a


# peaks one balanced call added, measured on an H100 (bench/memory.py, docs/logs/2026-12-05_h100_memory.md):
# (H, N, D, kv mode, calibration peak MiB, reuse peak MiB, Ck); the guard's need must never be below them
MEASURED_H100 = [
    (12, 32760, 128, "indexed", 384, 194, 256), (12, 32760, 128, "copied", 384, 308, 256),
    (40, 75600, 128, "indexed", 2954, 1486, 400), (40, 75600, 128, "copied", 2954, 2337, 400),
    (24, 119056, 128, "indexed", 2787, 1401, 392), (24, 119056, 128, "copied", 2788, 2206, 392),
    (56, 33156, 128, "indexed", 1777, 919, 368), (56, 33156, 128, "copied", 1777, 1470, 368),
    (56, 92628, 128, "indexed", 5029, 2546, 400), (56, 92628, 128, "copied", 5029, 4014, 400),
]


@pytest.mark.parametrize("H,N,D,kv,cal_mib,reuse_mib,ck", MEASURED_H100)
def test_need_covers_the_measured_peaks(H, N, D, kv, cal_mib, reuse_mib, ck):
    need = M.sparse_call_bytes(1, H, N, D, 2, k_clusters=ck, kv_rows=kv)
    need_cal = M.sparse_call_bytes(1, H, N, D, 2, k_clusters=None, kv_rows=kv, calibrating=True)
    assert need >= reuse_mib * MiB and need_cal >= cal_mib * MiB
    assert need <= 1.5 * reuse_mib * MiB          # and not so far above them that the guard refuses needlessly


def test_fits():
    assert M.fits(10 * MiB, None)                       # unknown free memory (CPU): fits
    assert M.fits(100 * MiB, 100 * MiB + M.SLACK_BYTES)
    assert not M.fits(100 * MiB, 100 * MiB + M.SLACK_BYTES - 1)
    assert M.free_bytes(torch.device("cpu")) is None


def _call(B, H, L, D, dtype=torch.bfloat16):
    q = torch.empty(B, L, H * D, dtype=dtype)
    return types.SimpleNamespace(q=q)


@pytest.mark.parametrize("phase", ["sparse", "calibration"])
def test_guard_decision_with_simulated_free_memory(monkeypatch, phase):
    from nodes import memory_guard as G

    B, H, L, D = 1, 56, 92000, 128   # H3 15 s
    cfg = AdaClusterConfig(k_clusters=None)
    run = types.SimpleNamespace(counts={7: 512})
    fc = types.SimpleNamespace(phase=phase)
    call = _call(B, H, L, D)
    layout = (B, H, L, D, 900, (0, 900))
    need = G.call_need_bytes(run, fc, call, 7, layout, cfg, "copied")
    need_idx = G.call_need_bytes(run, fc, call, 7, layout, cfg, "indexed")
    assert need == M.config_call_bytes(B, H, L, D, 2, cfg, calibrating=phase == "calibration", k_clusters=512,
                                       kv_rows="copied")
    # the calibration step's output is dense attention: no kernel, the K / V mode does not matter
    assert need_idx < need if phase == "sparse" else need_idx == need
    # the faster copied K / V while they fit, the copy-free kernel below that, dense (memory) below both
    monkeypatch.setattr(G, "FREE_BYTES", lambda dev: need + M.SLACK_BYTES)
    assert G.kv_rows_that_fit(run, fc, call, 7, layout, cfg) == "copied"
    assert G.memory_short(run, fc, call, 7, layout, cfg) is False
    monkeypatch.setattr(G, "FREE_BYTES", lambda dev: need + M.SLACK_BYTES - 1)
    assert G.kv_rows_that_fit(run, fc, call, 7, layout, cfg) == ("indexed" if phase == "sparse" else None)
    monkeypatch.setattr(G, "FREE_BYTES", lambda dev: need_idx + M.SLACK_BYTES)
    assert G.kv_rows_that_fit(run, fc, call, 7, layout, cfg) == ("indexed" if phase == "sparse" else "copied")
    monkeypatch.setattr(G, "FREE_BYTES", lambda dev: need_idx + M.SLACK_BYTES - 1)
    assert G.kv_rows_that_fit(run, fc, call, 7, layout, cfg) is None
    assert G.memory_short(run, fc, call, 7, layout, cfg) is True
    monkeypatch.setattr(G, "FREE_BYTES", lambda dev: None)   # CPU / unknown
    assert G.memory_short(run, fc, call, 7, layout, cfg) is False
    # the default reads the call's device: a CPU call is never short
    monkeypatch.setattr(G, "FREE_BYTES", M.free_bytes)
    assert G.memory_short(run, fc, call, 7, layout, cfg) is False
