"""AdaCluster nodes + patcher in the REAL ComfyUI server (one per session, tests/conftest.py; 0.3.75 or
the one ADACLUSTER_COMFYUI selects: token counts and text order come from the loaded model).

Tiny random-weight models (2 layers, 2 heads x 128, 9 frames 64x64 -> grid 3x4x4 = 48 video tokens).
Most runs use the torch reference backend (tests/comfy/_helpers.TINY); one runs the Triton kernels
through TRITON_INTERPRET=1 (set by the harness for the server)."""
from __future__ import annotations

import dataclasses
import time

import pytest
import torch

from tests.comfy._helpers import TINY, build, n_video_tokens, stats_of, text_of
from tests.harness import prompts
from tests.harness.comfy_server import PromptError
from tests.harness.make_tiny_dits import FILENAMES

pytestmark = pytest.mark.server

NODE_IDS = {
    "AdaClusterSparseAttention": "AdaCluster Sparse Attention",
    "AdaClusterThresholds": "AdaCluster Thresholds",
    "AdaClusterLayerOverrides": "AdaCluster Layer Overrides",
    "AdaClusterStats": "AdaCluster Stats",
}
N_VID = 48  # Wan 2.1: 9 frames, 64x64 -> latent 3x8x8 -> patch (1,2,2) -> 3x4x4 (every ComfyUI)
# attention layers of the tiny models (tests/harness/make_tiny_dits.py, layers=2): Wan 2 blocks; HunyuanVideo
# 2 double + 2 single blocks (one layer index each); HunyuanVideo 1.5 2 double blocks only
N_LAYERS = {"wan21": 2, "wan22_5b": 2, "hunyuan": 4, "hunyuan15": 2}


def _latent(out_dir, name):
    return torch.load(out_dir / f"{name}.pt")


def _run(srv, prompt, timeout=300):
    return srv.run_prompt(prompt, timeout=timeout)


# ------------------------------------------------------------------------------------------ schema
@pytest.mark.per_version
def test_nodes_registered_with_exact_ids(comfy_server):
    info = comfy_server.object_info()
    for nid, title in NODE_IDS.items():
        assert nid in info, f"{nid} missing from /object_info"
        assert info[nid]["display_name"] == title
    sa = info["AdaClusterSparseAttention"]["input"]
    assert sa["required"]["model"][0] == "MODEL"
    assert sa["required"]["preset"][0] == ["auto", "quality", "balanced", "fast"] or \
        sa["required"]["preset"][1].get("options") == ["auto", "quality", "balanced", "fast"]
    assert sa["required"]["enabled"][0] == "BOOLEAN"
    assert sa["optional"]["config"][0] == "ADACLUSTER_CONFIG"
    assert sa["optional"]["layer_overrides"][0] == "ADACLUSTER_LAYERS"
    assert info["AdaClusterSparseAttention"]["output"] == ["MODEL"]
    assert info["AdaClusterThresholds"]["output"] == ["ADACLUSTER_CONFIG"]
    lo = info["AdaClusterLayerOverrides"]
    assert lo["output"] == ["ADACLUSTER_LAYERS"] and lo["input"]["optional"]["previous"][0] == "ADACLUSTER_LAYERS"
    st = info["AdaClusterStats"]
    assert st["output"] == ["STRING", "IMAGE"] and st["output_node"] is True
    assert st["input"]["required"]["samples"][0] == "LATENT"


def test_thresholds_cover_every_config_field(comfy_server):
    from adacluster_core import AdaClusterConfig
    req = comfy_server.object_info()["AdaClusterThresholds"]["input"]["required"]
    fields = {f.name for f in dataclasses.fields(AdaClusterConfig)}
    assert fields <= set(req), f"Thresholds lacks widgets for {sorted(fields - set(req))}"
    for name, spec in req.items():
        opts = spec[1] if len(spec) > 1 else {}
        assert opts.get("tooltip"), f"widget {name} has no tooltip"


# ------------------------------------------------------------------------------------------ exactness
# (0.3.75's HunyuanVideo cannot batch cond+uncond with an attention mask: its own
# `attn_mask[:, 0, img_len:] = txt_mask` fails, so masked Hunyuan runs use cfg=1.)
@pytest.mark.parametrize("family,kw", [("wan21", dict(steps=3)), ("hunyuan", dict(steps=3)),
                                       ("hunyuan", dict(steps=3, mask_pad=4, cfg=1.0)),
                                       ("hunyuan15", dict(steps=3))], ids=["wan21", "hunyuan", "hunyuan-mask", "hunyuan15"])
@pytest.mark.per_version
def test_all_clusters_selected_reproduces_unpatched(comfy_server, test_out_dir, model_facts, family, kw):
    """top_k >= key clusters: every key is attended, so the sparse kernel must reproduce dense."""
    builder = prompts.BUILDERS[family]
    tag = f"{family}_{kw.get('mask_pad', 0)}"
    _run(comfy_server, builder(FILENAMES[family], save_name=f"ref_{tag}", **kw))
    cfg = dict(TINY, top_k=4096)
    entry = _run(comfy_server, build(builder, save_name=f"allk_{tag}", config=cfg, **kw))
    ref, got = _latent(test_out_dir, f"ref_{tag}"), _latent(test_out_dir, f"allk_{tag}")
    s = stats_of(entry)
    assert s["sparse_calls"] > 0, text_of(entry)
    # density counts computed query-key pairs: padded (masked) text keys are never computed
    n_all = n_video_tokens(model_facts[family]) + 16
    expect = (n_all - kw.get("mask_pad", 0)) / n_all if family.startswith("hunyuan") else 1.0
    assert s["min_density"] == pytest.approx(expect, abs=1e-4), text_of(entry)
    assert s["dense_reasons"].get("calibration", 0) > 0, "the first sparse step should calibrate (dense)"
    err = (got - ref).abs().max().item()
    # fp32 on the CPU, the same attention up to summation order. The reference for "up to summation order"
    # is computed here: the unpatched model with every attention call summing its keys in reversed order
    # (tests/comfy_test_nodes: AdaClusterTestReversedKeys; dense, exact in real arithmetic). Cluster order
    # permutes the keys as much as a reversal does; allow 10x the reversal's effect on the latent (and at
    # least 10 fp32 ulps of the latent's scale, should the reversal happen to round identically).
    _run(comfy_server, builder(FILENAMES[family], patch_nodes=[("AdaClusterTestReversedKeys", {})],
                               save_name=f"rev_{tag}", **kw))
    rev = _latent(test_out_dir, f"rev_{tag}")
    scale = max(1.0, ref.abs().max().item())
    err_order = max((rev - ref).abs().max().item(), torch.finfo(torch.float32).eps * scale)
    assert err <= 10 * err_order, f"{family}: max |patched - unpatched| = {err}, summation order alone: {err_order}"


@pytest.mark.parametrize("family", ["wan21", "hunyuan", "wan22_5b", "hunyuan15"])
def test_sparse_run_reports_density_below_one(comfy_server, test_out_dir, model_facts, family):
    # the same 8x8 latent on every ComfyUI: a 16x-VAE model gets 128 px where its ComfyUI rescales
    size = 64 * model_facts[family]["spatial_ratio"] // 8
    entry = _run(comfy_server, build(prompts.BUILDERS[family], save_name=f"sparse_{family}", config=TINY, steps=3,
                                     size=size))
    s = stats_of(entry)
    lat = _latent(test_out_dir, f"sparse_{family}")
    assert torch.isfinite(lat).all()
    assert s["family"] == {"wan21": "wan", "wan22_5b": "wan"}.get(family, family)
    assert s["sparse_calls"] > 0 and s["mean_density"] < 1.0, text_of(entry)
    assert 0.0 < s["flops_saved_frac"] < 1.0
    assert s["n_layers"] == N_LAYERS[family], text_of(entry)
    text = text_of(entry)
    assert "AdaCluster:" in text and "density" in text and "FLOPs saved" in text
    # heatmap preview was produced and the STRING output exists
    out = entry["outputs"]["q1"]
    assert out.get("images"), "no heatmap preview image"
    grid = s["density_grid"]
    assert len(grid) == s["n_layers"] and all(len(r) == len(s["sigmas"]) for r in grid)
    if family.startswith("wan"):
        assert s["dense_reasons"].get("cross-attn", 0) > 0


def test_default_preset_runs_and_explains_dense(comfy_server, test_out_dir):
    """The default profile (min_tokens 1024, warmup 0.3) on a 48-token video: runs, stays dense, says why."""
    entry = _run(comfy_server, build(prompts.wan21_prompt, save_name="default_wan", steps=3))
    s = stats_of(entry)
    assert s["calls"] > 0 and s["sparse_calls"] == 0
    assert set(s["dense_reasons"]) <= {"warmup", "few-tokens", "cross-attn"}, s["dense_reasons"]
    assert s["dense_reasons"].get("warmup", 0) > 0 and s["dense_reasons"].get("few-tokens", 0) > 0
    assert s["config"]["top_k"] == 128  # auto -> Wan balanced profile


def test_triton_backend_runs_in_server(comfy_server, test_out_dir):
    """The Triton kernels (TRITON_INTERPRET=1 on CPU) through the real server: 2 steps, 1 sparse step."""
    entry = _run(comfy_server, build(prompts.wan21_prompt, save_name="triton_wan", steps=2, cfg=1.0,
                                     config=dict(TINY, backend="auto")), timeout=600)
    s = stats_of(entry)
    assert s["sparse_calls"] > 0 and s["mean_density"] < 1.0, text_of(entry)


# ------------------------------------------------------------------------------------------ Hunyuan text slice
@pytest.mark.per_version
@pytest.mark.parametrize("family,n_txt", [("hunyuan", 16), ("hunyuan15", 16)])
def test_hunyuan_text_slice_and_mask_placement(comfy_server, model_facts, family, n_txt):
    """The text slice follows the loaded model's joint order (0.3.75 concatenates [img, txt]: text
    at [n_vid, n_vid + n_txt); upstream [txt, img]: text at [0, n_txt)), and the padded text keys
    of the model's own mask (independent of the patcher's layout) all fall inside that slice."""
    entry = _run(comfy_server, build(prompts.BUILDERS[family], save_name=f"mask_{family}", config=TINY,
                                     steps=2, tokens=n_txt, mask_pad=5, cfg=1.0))
    s = stats_of(entry)
    lays = s["layouts"]
    assert len(lays) == 1, lays
    lay = lays[0]
    facts = model_facts[family]
    n_vid = n_video_tokens(facts)
    assert lay["txt_first"] is facts["txt_first"] and lay["n_vid"] == n_vid and lay["n_txt"] == n_txt
    assert lay["text_slice"] == ([0, n_txt] if facts["txt_first"] else [n_vid, n_vid + n_txt])
    if lay["masked_keys"] is not None:  # HunyuanVideo builds the joint mask from attention_mask
        assert lay["masked_keys"] == 5 and lay["masked_keys_in_text"] == 5, lay
    else:
        assert family == "hunyuan15", "HunyuanVideo 1.0 should pass the padded-text mask"
    assert s["sparse_calls"] > 0
    assert "text-only (refiner)" in s["dense_reasons"], s["dense_reasons"]


@pytest.mark.per_version
def test_hunyuan_joint_text_order_of_this_comfyui(comfy_server, model_facts):
    """Known difference: ComfyUI 0.3.75's HunyuanVideo puts the text after the video ([img, txt],
    `flipped_img_txt=True` blocks), current ComfyUI before it ([txt, img]). The layout the patcher
    used in the real server is the loaded model's, and its padded-text mask lands in that slice."""
    import inspect

    import comfy.ldm.hunyuan_video.model as hv
    flipped_in_source = "flipped_img_txt=True" in inspect.getsource(hv.HunyuanVideo.__init__)
    assert model_facts["hunyuan"]["txt_first"] is (not flipped_in_source)
    entry = _run(comfy_server, build(prompts.BUILDERS["hunyuan"], save_name="order_hunyuan", config=TINY,
                                     steps=2, tokens=16, mask_pad=3, cfg=1.0))
    lay = stats_of(entry)["layouts"][0]
    assert lay["txt_first"] is model_facts["hunyuan"]["txt_first"]
    assert lay["text_slice"][0] == (0 if lay["txt_first"] else lay["n_vid"])
    assert lay["masked_keys"] == 3 and lay["masked_keys_in_text"] == 3, lay


def test_wan_context_latents_go_sparse_and_match_unpatched(comfy_server, test_out_dir):
    """Upstream Wan's in-context reference latents (conditioning `context_latents`): the model
    appends their tokens after the video; AdaCluster keeps them as an always-dense range, so the
    self-attention goes sparse, and with every cluster selected equals the unpatched run."""
    from tests.conftest import COMFY_DIR
    if "context_latents" not in (COMFY_DIR / "comfy" / "model_base.py").read_text():
        pytest.skip("this ComfyUI's Wan has no context_latents conditioning (upstream feature)")

    def with_refs(p):
        p["cl"] = {"class_type": "AdaClusterTestContextLatents",
                   "inputs": {"conditioning": ["3", 0], "channels": 16, "frames": 1, "height": 8, "width": 8,
                              "seed": 3}}
        p["5"]["inputs"]["positive"] = ["cl", 0]
        p["5"]["inputs"]["negative"] = ["cl", 0]
        return p

    _run(comfy_server, with_refs(prompts.wan21_prompt(save_name="ctxlat_ref", steps=3)))
    entry = _run(comfy_server, with_refs(build(prompts.wan21_prompt, save_name="ctxlat_allk",
                                               config=dict(TINY, top_k=4096), steps=3)))
    s = stats_of(entry)
    assert "token-count-mismatch" not in s["dense_reasons"] and s["sparse_calls"] > 0, text_of(entry)
    lay = s["layouts"][0]
    assert lay["n_vid"] == N_VID and lay["extra_tokens"] == 16 and lay["text_slice"] == [N_VID, N_VID + 16], lay
    ref, got = _latent(test_out_dir, "ctxlat_ref"), _latent(test_out_dir, "ctxlat_allk")
    err = (got - ref).abs().max().item()
    assert err < 2e-3 * max(1.0, ref.abs().max().item()), f"max |patched - unpatched| = {err}"
    entry = _run(comfy_server, with_refs(build(prompts.wan21_prompt, save_name="ctxlat_sparse", config=TINY, steps=3)))
    assert stats_of(entry)["mean_density"] < 1.0, text_of(entry)


# ------------------------------------------------------------------------------------------ bypass / state
def test_enabled_false_is_bit_identical(comfy_server, test_out_dir):
    _run(comfy_server, prompts.wan21_prompt(save_name="plain_wan_bit", steps=2))
    _run(comfy_server, build(prompts.wan21_prompt, save_name="off_wan_bit", enabled=False, config=TINY, steps=2,
                             stats=False))
    a, b = _latent(test_out_dir, "plain_wan_bit"), _latent(test_out_dir, "off_wan_bit")
    assert torch.equal(a, b), "enabled=false must not change a single bit"


@pytest.mark.per_version
def test_two_patched_clones_sampled_alternately_do_not_share_state(comfy_server, test_out_dir):
    """Two AdaCluster nodes (different configs) on one loader, two samplers in one prompt, run
    twice: each model's stats only ever show its own config, and each result equals a solo run.
    (No calibration step: a second run of a patched model reuses its calibrated counts from the
    plan cache, so with one a run's result would depend on whether it is the model's first.)"""
    tiny = dict(TINY, calibration_dense=False)
    solo = build(prompts.wan21_prompt, save_name="solo_a", config=dict(tiny, q_clusters=8), steps=3)
    _run(comfy_server, solo)
    p = build(prompts.wan21_prompt, save_name="alt_a", config=dict(tiny, q_clusters=8), steps=3)
    # second patched clone of the same loader output + its own sampler/saver/stats
    p["cfgB"] = {"class_type": "AdaClusterThresholds", "inputs": dict(tiny, q_clusters=5, top_k=3)}
    p["pB"] = {"class_type": "AdaClusterSparseAttention",
               "inputs": {"model": ["1", 0], "preset": "auto", "enabled": True, "config": ["cfgB", 0]}}
    p["5B"] = dict(p["5"], inputs=dict(p["5"]["inputs"], model=["pB", 0]))
    p["6B"] = {"class_type": "AdaClusterTestSaveLatent", "inputs": {"samples": ["5B", 0], "name": "alt_b"}}
    p["qB"] = {"class_type": "AdaClusterStats", "inputs": {"model": ["pB", 0], "samples": ["5B", 0]}}
    for seed in (1, 2, 1):  # the second pass re-samples both models (seed changes)
        p["5"]["inputs"]["seed"] = seed
        p["5B"]["inputs"]["seed"] = seed
        entry = _run(comfy_server, p)
    sa, sb = stats_of(entry, "q1"), stats_of(entry, "qB")
    assert sa["config"]["q_clusters"] == 8 and sb["config"]["q_clusters"] == 5
    qa = {v["q_clusters"] for v in sa["per_layer"].values() if v["q_clusters"] is not None}
    qb = {v["q_clusters"] for v in sb["per_layer"].values() if v["q_clusters"] is not None}
    assert qa == {8} and qb == {5}, (qa, qb)
    assert sa["runs_completed"] == 3 and sb["runs_completed"] == 3
    a, ref = _latent(test_out_dir, "alt_a"), _latent(test_out_dir, "solo_a")
    assert torch.allclose(a, ref, atol=1e-5), (a - ref).abs().max()


def test_twenty_runs_do_not_grow_memory(comfy_server):
    p = build(prompts.wan21_prompt, save_name="mem_wan", config=TINY, steps=2)
    rss, states = [], []
    t0 = time.time()
    for seed in range(20):
        p["5"]["inputs"]["seed"] = 100 + seed
        s = stats_of(_run(comfy_server, p))
        assert s["retained_states"] == 0 and s["retained_state_bytes"] == 0, "caches survived the run"
        states.append((s["n_states"], s["state_bytes_peak"], s["calls"]))
        rss.append(s["rss_mb"])
    assert len(set(states)) == 1, f"per-run state size changes between runs: {states}"
    assert s["runs_completed"] >= 20
    if rss[0] is not None:
        growth = rss[-1] - rss[4]
        assert growth < 64, f"RSS grew {growth:.1f} MB over 15 runs: {rss}"
    assert time.time() - t0 < 300


# ------------------------------------------------------------------------------------------ validation
def test_bad_widget_value_rejected_naming_the_field(comfy_server):
    p = build(prompts.wan21_prompt, save_name="bad_w", config=dict(TINY, top_k=0), steps=2)
    with pytest.raises(PromptError) as ei:
        comfy_server.queue_prompt(p)
    assert "top_k" in str(ei.value)
    p = build(prompts.wan21_prompt, save_name="bad_w2", config=dict(TINY, selection="nearest"), steps=2)
    with pytest.raises(PromptError) as ei:
        comfy_server.queue_prompt(p)
    assert "selection" in str(ei.value)


def test_bad_override_line_rejected_naming_the_line(comfy_server):
    rules = "# keep the ends dense\n0, -1: dense\n1: topk=64\n"
    p = build(prompts.wan21_prompt, save_name="bad_rule", config=TINY, rules=rules, steps=2)
    with pytest.raises(PromptError) as ei:
        comfy_server.queue_prompt(p)
    msg = str(ei.value)
    assert "line 3" in msg and "topk" in msg, msg
    p = build(prompts.wan21_prompt, save_name="bad_rule2", config=TINY, rules="0-1: top_k=0", steps=2)
    with pytest.raises(PromptError) as ei:
        comfy_server.queue_prompt(p)
    assert "line 1" in str(ei.value) and "top_k" in str(ei.value)


def test_layer_overrides_apply_per_layer(comfy_server):
    rules = "-1: dense\n0: top_k=2, q_clusters=4\n"
    entry = _run(comfy_server, build(prompts.wan21_prompt, save_name="rules_wan", config=TINY, rules=rules, steps=3))
    s = stats_of(entry)
    pl = s["per_layer"]
    assert pl["1"]["sparse"] == 0 and pl["1"]["dense_reasons"].get("layer-rule", 0) > 0, pl["1"]
    assert pl["0"]["sparse"] > 0 and pl["0"]["q_clusters"] == 4, pl["0"]


# ------------------------------------------------------------------------------------------ torch.compile
@pytest.mark.slow  # inductor on CPU (gcc): ~50 s
def test_torch_compile_model_still_samples(comfy_server, test_out_dir):
    """TorchCompileModel (inductor, CPU needs gcc) after the patch: the override is excluded from
    the graph by torch.compiler.disable; the compiled model samples and AdaCluster still runs."""
    if " " in torch.__file__:
        # torch's inductor passes its include paths to g++ unquoted: with torch installed under a
        # path with a space (a clone in "My Projects/"), compiling fails and can take the server down
        pytest.skip(f"torch inductor cannot compile from a path with a space ({torch.__file__})")
    compile_node = ("TorchCompileModel", {"backend": "inductor"})
    entry = _run(comfy_server, build(prompts.wan21_prompt, save_name="compiled_wan", config=TINY, steps=2,
                                     extra_patch=[compile_node]), timeout=600)
    s = stats_of(entry)
    lat = _latent(test_out_dir, "compiled_wan")
    assert torch.isfinite(lat).all()
    assert s["sparse_calls"] > 0, text_of(entry)
