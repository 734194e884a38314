"""Skipped steps (a step cache such as core's EasyCache / LazyCache returns a cached result without
running the model) through nodes/patcher.py, in-process with ComfyUI 0.3.75 imported (CPU): steps
are numbered by the sampler's schedule, and calibration happens on the first step that actually
reaches attention. The server matrix (test_compat_matrix.py::test_step_cache) runs the real nodes."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.comfy._helpers import TINY, comfy_inprocess, load_nodes_module

_why = comfy_inprocess()
pytestmark = pytest.mark.skipif(_why is not None, reason=str(_why))
if _why is None:
    P = load_nodes_module("patcher")
    CW = load_nodes_module("config_widgets")
    REP = load_nodes_module("report")

SCHEDULE = torch.tensor([1.0, 0.9, 0.8, 0.7, 0.6, 0.0])   # 5 sampler steps


def _dense(q, k, v, heads, **kw):
    B, L, HD = q.shape
    Q, K, V = (t.view(B, -1, heads, HD // heads).transpose(1, 2) for t in (q, k, v))
    return F.scaled_dot_product_attention(Q, K, V).transpose(1, 2).reshape(B, L, HD)


def _model():
    dm = type("WanModel", (torch.nn.Module,), {})()
    dm.patch_size, dm.text_embedding, dm.blocks = (1, 2, 2), object(), [object(), object()]
    return dm


def _run_steps(run, ran_steps, sigmas=SCHEDULE):
    """Forward at every schedule step; attention calls (2 layers) only on `ran_steps` (the others
    are begun but skipped, as with a cache inside AdaCluster's wrapper) -- or not begun at all."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 48, 256) for _ in range(3))
    x, ctx = torch.zeros(1, 16, 3, 8, 8), torch.zeros(1, 16, 4096)
    for i, sig in enumerate(sigmas[:-1].tolist()):
        to = {"sigmas": torch.tensor([sig]), "sample_sigmas": sigmas, "cond_or_uncond": [0]}
        if i not in ran_steps and i % 2:   # odd skipped steps never reach the wrapper (cache outside it)
            continue
        P._begin_forward(run, _model(), (x, None, ctx), {"transformer_options": to})
        if i not in ran_steps:
            continue
        for layer in range(2):
            to["block_index"] = layer
            out = run.override(_dense, q, k, v, 2, transformer_options=to)
            assert torch.isfinite(out).all()


def _new_run():
    # dense_layer_fraction 0.5: the plan made after calibration keeps one of the 2 layers dense
    run = P.PatchHolder(CW.make_config(**{**TINY, "k_clusters": None, "dense_layer_fraction": 0.5}), None, "auto")
    run.override = P.make_override(run)
    run.begin(None)
    return run


def _columns(stats, kind):
    """Columns where every called layer ran dense ("dense") / some layer ran sparse ("sparse")."""
    grid = stats["density_grid"]
    out = []
    for c in range(len(stats["sigmas"])):
        cells = [row[c] for row in grid if row[c] is not None]
        if cells and (all(v >= 1.0 for v in cells) if kind == "dense" else any(v < 1.0 for v in cells)):
            out.append(c)
    return out


@pytest.mark.parametrize("ran", [(0, 1, 2, 3, 4), (0, 2, 4), (1, 3, 4), (2, 4)],
                         ids=["no-skip", "skip-1-3", "skip-0-2", "skip-0-1-3"])
def test_skipped_steps_keep_numbers_and_calibration_moves_to_first_called_step(ran):
    run = _new_run()
    _run_steps(run, set(ran))
    s = P.run_summary.summarize(run.run, run)
    assert s["sigmas"] == pytest.approx(SCHEDULE[:-1].tolist())
    assert s["steps_without_calls"] == [c for c in range(5) if c not in ran]
    # calibration (dense, counted once per layer) on the first step that ran; sparse afterwards
    assert _columns(s, "dense") == [ran[0]], s["density_grid"]
    assert _columns(s, "sparse") == list(ran[1:]), s["density_grid"]
    assert s["dense_reasons"].get("calibration") == 2
    # the plan ran after the calibration step that had calls (not after a skipped one)
    assert len(s["planned_dense_layers"]) == 1 and s["cap"], (s["planned_dense_layers"], s["cap"])
    assert s["dense_reasons"].get("planned-dense-layer") == len(ran) - 1, s["dense_reasons"]
    text = REP.format_stats(s)
    if s["steps_without_calls"]:
        assert "steps with no call" in text


def test_between_schedule_sigmas_belong_to_the_step_they_start_from():
    clock = _new_run().run.clock   # the step clock of a run (Capture numbers steps with one too)
    clock.note_schedule(SCHEDULE)
    assert [clock.step_of(v) for v in (1.0, 0.95, 0.9, 0.85, 0.6, 0.3, 1.2)] == [0, 0, 1, 1, 4, 4, 0]


def test_without_a_schedule_steps_count_distinct_sigmas():
    clock = _new_run().run.clock
    assert [clock.step_of(v) for v in (0.9, 0.5, 0.9, 0.2)] == [0, 1, 0, 2]
