"""MiniMax-H3 in a REAL ComfyUI server (>= 0.33; skipped on a ComfyUI without EmptyMiniMaxH3LatentAV):
a tiny random-weight H3 checkpoint (tests/harness/make_tiny_dits.py) sampled through KSampler for the
three tasks (t2va, fl2va keyframes, ref2va references) with AdaCluster Sparse Attention:
sparse calls counted, the layout named per task, and every cluster selected == the unpatched
latent (video and audio). One run goes through the Triton kernels (TRITON_INTERPRET=1)."""
from __future__ import annotations

import pytest
import torch

from tests.comfy._helpers import TINY, build, stats_of, text_of
from tests.harness import prompts
from tests.harness.make_tiny_dits import FILENAMES, make_all

pytestmark = pytest.mark.server

N_VID = 12 * 4 * 8      # 39 frames -> 12 latent frames; 128x256 -> 8x16 latent -> 4x8 grid


@pytest.fixture(scope="module")
def h3_model(comfy_server, tmp_path_factory):
    if "EmptyMiniMaxH3LatentAV" not in comfy_server.object_info():
        pytest.skip("this ComfyUI has no MiniMax-H3 (ComfyUI >= 0.33)")
    path = make_all(tmp_path_factory.mktemp("h3_model"), only=["h3"])["h3"]
    return comfy_server.add_model(path)


def _latent(out_dir, name):
    return torch.load(out_dir / f"{name}.pt")


@pytest.mark.parametrize("task", ["t2va", "fl2va", "ref2va"])
def test_h3_every_cluster_selected_reproduces_unpatched(comfy_server, test_out_dir, h3_model, task):
    """top_k >= key clusters on the video rows, every other row exact: the sampled H3 latent (video
    and audio streams) equals the unpatched one; the Stats node names the task's packed layout."""
    comfy_server.run_prompt(prompts.h3_prompt(h3_model, task=task, save_name=f"h3_ref_{task}"), timeout=600)
    entry = comfy_server.run_prompt(build(prompts.h3_prompt, model_name=h3_model, task=task,
                                          save_name=f"h3_allk_{task}", config=dict(TINY, top_k=4096)), timeout=600)
    s = stats_of(entry)
    assert s["family"] == "h3" and s["sparse_calls"] > 0, text_of(entry)
    assert s["min_density"] == pytest.approx(1.0, abs=1e-4), text_of(entry)
    lay = s["layouts"][0]
    assert lay["n_vid"] == N_VID and lay["description"].startswith(f"H3 {task}: text 16"), lay
    assert f"H3 {task}" in text_of(entry)
    ref, got = _latent(test_out_dir, f"h3_ref_{task}"), _latent(test_out_dir, f"h3_allk_{task}")
    assert torch.isfinite(got).all()
    err = (got - ref).abs().max().item()
    # fp32 on the CPU, the same attention up to summation order (as the other families' all-k test)
    assert err < 2e-5 * max(1.0, ref.abs().max().item()), f"{task}: max |patched - unpatched| = {err}"


def test_h3_sparse_run_through_triton_interpreter(comfy_server, test_out_dir, h3_model):
    """The balanced-style sparse path with the Triton kernels (interpreter on the CPU): finite latent,
    sparse calls with density < 1, no call left dense for an unexpected reason."""
    cfg = dict(TINY, backend="triton", top_k=3, max_density=0.3)
    entry = comfy_server.run_prompt(build(prompts.h3_prompt, model_name=h3_model, task="t2va", steps=3,
                                          save_name="h3_sparse", config=cfg), timeout=900)
    s = stats_of(entry)
    assert torch.isfinite(_latent(test_out_dir, "h3_sparse")).all()
    assert s["sparse_calls"] > 0 and s["mean_density"] < 1.0, text_of(entry)
    assert set(s["dense_reasons"]) <= {"calibration", "text-only (refiner)"}, s["dense_reasons"]
    assert s["kernels"], text_of(entry)
