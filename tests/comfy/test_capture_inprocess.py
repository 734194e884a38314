"""AdaCluster Capture helpers in-process (CPU): head subsampling, size estimate, file naming
inside the output folder, the writer's format."""
from __future__ import annotations

import json

import pytest
import torch

from tests.comfy._helpers import comfy_inprocess, load_nodes_module

_why = comfy_inprocess()
pytestmark = pytest.mark.skipif(_why is not None, reason=str(_why))
if _why is None:
    C = load_nodes_module("capture")
    P = load_nodes_module("patcher")


def test_kept_heads_and_expected_bytes():
    assert C._kept_heads(12, 0) == list(range(12))
    assert C._kept_heads(12, 4) == [0, 4, 7, 11]
    assert C._kept_heads(12, 1) == [0]
    assert C._kept_heads(2, 8) == [0, 1]
    # Wan 14B, 75,600 tokens, 4 heads x 128, bf16: ~221 MiB per (layer, step) (README / tooltip)
    assert C.expected_bytes(1, 1, 4, 75600, 128, 2) / 2**20 == pytest.approx(221.5, rel=0.05)


def _fc(step=0):
    fc = P.ForwardContext(run=None, family="wan", grid=(1, 2, 4), n_vid=8, n_txt=0, n_layers=2, sigma=0.5, step=step)
    return fc


def test_writer_stays_in_output_folder_and_writes_format(tmp_path):
    from safetensors import safe_open
    out = tmp_path / "output"
    cap = C.CaptureRun("*", "*", 1, 1.0, "../../escape/cap", str(out))
    B, H, L, D = 1, 2, 8, 64
    q, k, v = (torch.randn(B, L, H * D) for _ in range(3))
    cap.add(_fc(), 0, (B, H, L, D, 0, None), q, k, v, None, False)
    cap.add(_fc(), 0, (B, H, L, D, 0, None), q, k, v, None, False)      # same (layer, step): kept once
    path = cap.write("WanModel")
    assert path and str(out.resolve()) in str(tmp_path.joinpath(path).resolve())
    with safe_open(path, "pt") as h:
        meta = h.metadata()
        assert set(h.keys()) == {"L0.S0.q", "L0.S0.k", "L0.S0.v"}
        torch.testing.assert_close(h.get_tensor("L0.S0.q"), q[0].view(L, H, D).transpose(0, 1)[:1])
    assert meta["format"] == C.CAPTURE_FORMAT and json.loads(meta["heads"]) == [0]
    assert len(json.loads(meta["calls"])) == 1
    # second file gets the next number
    cap.add(_fc(1), 1, (B, H, L, D, 0, None), q, k, v, None, False)
    p2 = cap.write("WanModel")
    assert p2 != path and p2.endswith("_00002.safetensors")


def test_nothing_captured_writes_nothing(tmp_path):
    cap = C.CaptureRun("*", "*", 1, 1.0, "x/cap", str(tmp_path))
    assert cap.write() is None and "nothing captured" in cap.last_info
