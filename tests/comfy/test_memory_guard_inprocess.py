"""The memory guard through nodes/patcher.py (ComfyUI imported in-process, CPU): with simulated free memory
below the call's need the call runs dense with the reason `memory` (counted like every dense reason); with
enough it runs sparse and the result comes back in ComfyUI's [B, L, H*D] layout, written in place."""
from __future__ import annotations

import pytest
import torch

from tests.comfy._helpers import comfy_inprocess, load_nodes_module

_why = comfy_inprocess()
pytestmark = pytest.mark.skipif(_why is not None, reason=str(_why))
if _why is None:
    P = load_nodes_module("patcher")
    MG = load_nodes_module("memory_guard")

from tests.comfy.test_patcher_inprocess import FakeHunyuanVideo, _begin, _cfg, _dense_func, _run_for  # noqa: E402


@pytest.mark.parametrize("skip_output_reshape", [False, True])
def test_memory_reason_with_simulated_free_memory(monkeypatch, skip_output_reshape):
    G = MG
    B, H, D, n_txt = 2, 2, 64, 8
    x = torch.zeros(1, 16, 2, 6, 8)   # grid 2x3x4 = 24 video tokens
    L = 24 + n_txt
    run = _run_for(_cfg())
    to = {"sigmas": torch.tensor([0.5]), "cond_or_uncond": [1, 0]}
    _begin(run, FakeHunyuanVideo(True), (x, None, torch.zeros(1, n_txt, 32)), to)
    to["block_type"], to["block_index"] = "double", 0
    q, k, v = (torch.randn(B, H, L, D) for _ in range(3))
    ref = _dense_func(q, k, v, H, skip_reshape=True, skip_output_reshape=skip_output_reshape)

    monkeypatch.setattr(G, "FREE_BYTES", lambda dev: 1 << 20)     # 1 MiB free: less than the need
    out = run.override(_dense_func, q, k, v, H, skip_reshape=True, skip_output_reshape=skip_output_reshape,
                       transformer_options=to)
    assert [r.reason for r in run.run.records[-2:]] == ["memory", "memory"] and not run.run.records[-1].sparse
    torch.testing.assert_close(out, ref)

    monkeypatch.setattr(G, "FREE_BYTES", lambda dev: 1 << 40)     # plenty: sparse
    out = run.override(_dense_func, q, k, v, H, skip_reshape=True, skip_output_reshape=skip_output_reshape,
                       transformer_options=to)
    assert all(r.sparse for r in run.run.records[-2:])
    assert out.shape == ref.shape and out.is_contiguous()          # [B, L, H*D] (or [B, H, L, D]) as ComfyUI's
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)     # top_k >= clusters: exact
