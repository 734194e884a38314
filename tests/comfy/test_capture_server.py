"""Capture -> tune -> profile -> probe, in the REAL ComfyUI server (0.3.75 or ADACLUSTER_COMFYUI's) (tiny Wan 2.1, CPU,
torch backend): the three calibration steps of the README, end to end.

Run 1: AdaCluster Capture on the unpatched model writes Q/K/V of both layers x 3 steps.
Tuner: `adacluster_core.tune` (in-process CLI) with the run's base config -> profile JSON.
Run 2: AdaCluster Sparse Attention (fixed k_clusters, no warmup, no calibration step, probe on)
with Layer Overrides loading the profile: the realised per-layer settings equal the profile's,
and since the probe passes the dense output on (so run 2 sees the same Q/K/V as run 1), the
probe's measured error per layer is the tuner's and within the target.
"""
from __future__ import annotations

import json

import pytest
from safetensors import safe_open

from adacluster_core import tune
from tests.comfy._helpers import TINY, stats_of, text_of
from tests.harness import prompts

pytestmark = pytest.mark.server

N_VID, HEADS, HEAD_DIM, LAYERS, STEPS = 48, 2, 128, 2, 3
# the tiny random-weight model attends almost uniformly (error ~0.6 at density ~0.7): a loose target,
# and a cost model without overhead (--kernel-rate 1 --overhead 0) so such densities still count as cheaper
TARGET = 0.65
RUN_CFG = dict(TINY, k_clusters=8, calibration_dense=False)


def _has_max_density():
    from adacluster_core import AdaClusterConfig
    return "max_density" in AdaClusterConfig.__dataclass_fields__


if _has_max_density():
    RUN_CFG["max_density"] = 1.0


def _capture_prompt(save_name, prefix, max_mb=64.0, max_heads=0, layers="*", steps="*", enabled=True):
    spec = ("AdaClusterCapture", {"enabled": enabled, "layers": layers, "steps": steps, "max_heads": max_heads,
                                  "max_mb": max_mb, "filename_prefix": prefix})
    return prompts.wan21_prompt(patch_nodes=[spec], steps=STEPS, cfg=1.0, save_name=save_name)


def _files(srv, sub):
    d = srv.base_dir / "output" / sub
    return sorted(d.glob("*.safetensors")) if d.is_dir() else []


def test_capture_node_schema(comfy_server):
    info = comfy_server.object_info()["AdaClusterCapture"]
    assert info["display_name"] == "AdaCluster Capture"
    req = info["input"]["required"]
    assert req["enabled"][1]["default"] is False           # never on by default
    assert {"layers", "steps", "max_heads", "max_mb", "filename_prefix"} <= set(req)
    assert info["output"] == ["MODEL", "STRING"]
    lo = comfy_server.object_info()["AdaClusterLayerOverrides"]["input"]
    assert "profile" in lo.get("optional", {})


def test_capture_disabled_writes_nothing(comfy_server):
    comfy_server.run_prompt(_capture_prompt("cap_off", "cap_off/x", enabled=False), timeout=300)
    assert _files(comfy_server, "cap_off") == []


def test_capture_respects_max_mb(comfy_server):
    per_call = 3 * HEADS * N_VID * HEAD_DIM * 4            # fp32 q/k/v of one (layer, step)
    max_mb = 2.5 * per_call / 2**20                         # room for 2 of the 6 calls
    comfy_server.run_prompt(_capture_prompt("cap_small", "cap_small/x", max_mb=max_mb), timeout=300)
    (f,) = _files(comfy_server, "cap_small")
    assert f.stat().st_size <= max_mb * 2**20 + 64 * 1024   # + header/metadata
    with safe_open(str(f), "pt") as h:
        meta = h.metadata()
        assert len(json.loads(meta["calls"])) == 2 and meta["skipped"] == "4"


def test_capture_tune_profile_probe_roundtrip(comfy_server, tmp_path):
    srv = comfy_server
    # ---- 1. capture (unpatched model: dense trajectory)
    srv.run_prompt(_capture_prompt("cap_full", "cap_full/wan"), timeout=300)
    (f,) = _files(srv, "cap_full")
    expect = 3 * LAYERS * STEPS * HEADS * N_VID * HEAD_DIM * 4
    with safe_open(str(f), "pt") as h:
        meta = h.metadata()
        keys = set(h.keys())
        assert h.get_tensor("L0.S0.q").shape == (HEADS, N_VID, HEAD_DIM)
    assert keys == {f"L{layer}.S{s}.{t}" for layer in range(LAYERS) for s in range(STEPS) for t in "qkv"}
    assert meta["format"] == "adacluster-capture/1" and meta["family"] == "wan"
    assert meta["complete"] == "true"       # the sampler finished (SAMPLER_SAMPLE wrapper)
    assert json.loads(meta["grid"]) == [3, 4, 4] and json.loads(meta["n_vid"]) == N_VID
    assert json.loads(meta["text_range"]) is None and json.loads(meta["heads"]) == [0, 1]
    assert json.loads(meta["n_layers"]) == LAYERS and meta["model"] == "WanModel"
    calls = json.loads(meta["calls"])
    assert [(c["layer"], c["step"]) for c in calls] == [(layer, s) for s in range(STEPS) for layer in range(LAYERS)]
    assert all(c["sigma"] > 0 for c in calls)
    assert expect <= f.stat().st_size <= expect + 64 * 1024

    # ---- 2. tune (the CLI, torch backend on CPU) with the base config run 2 will use
    prof_path = srv.base_dir / "output" / "cap_full" / "profile.json"
    sets = ["--set", "q_clusters=8", "--set", "k_clusters=8"]
    rc = tune.main([str(f), "--target-error", str(TARGET), "--out", str(prof_path), "--backend", "torch",
                    "--device", "cpu", "--kernel-rate", "1", "--overhead", "0", "--pooled-overhead", "0", *sets])
    assert rc == 0
    prof = json.loads(prof_path.read_text())
    assert set(prof["layers"]) == {"0", "1"}
    modes = {k: e["mode"] for k, e in prof["layers"].items()}
    assert "sparse" in modes.values(), prof

    # ---- 3. sample with the profile (+ probe): realised settings == profile, probe error <= target
    extra = {"cfg": {"class_type": "AdaClusterThresholds", "inputs": dict(RUN_CFG)},
             "rules": {"class_type": "AdaClusterLayerOverrides",
                       "inputs": {"rules": "# text rules (none)\n", "profile": "cap_full/profile.json"}}}
    spec = ("AdaClusterSparseAttention", {"preset": "auto", "enabled": True, "config": ["cfg", 0],
                                          "layer_overrides": ["rules", 0], "probe": "on", "probe_layers": "*",
                                          "probe_steps": "*"})
    p = prompts.wan21_prompt(patch_nodes=[spec], steps=STEPS, cfg=1.0, save_name="prof_run",
                             post_nodes=[("AdaClusterStats", {"model": ["p1", 0]})])
    p.update(extra)
    entry = srv.run_prompt(p, timeout=300)
    s = stats_of(entry)
    pr = s["probe"]
    for key, e in prof["layers"].items():
        pl = s["per_layer"][key]
        if e["mode"] == "dense":
            assert pl["sparse"] == 0 and pl["dense_reasons"].get("layer-rule") == STEPS, text_of(entry)
            continue
        st = pl["settings"]
        assert st["mode"] == "sparse"
        for fld in ("top_k", "selection", "top_p", "q_clusters", "k_clusters", "max_density"):
            if fld in e:
                assert st.get(fld, e[fld]) == e[fld], (fld, st, e)
        assert pl["sparse"] == STEPS
        w = next(x for x in pr["worst_layers"] if x["layer"] == int(key))
        assert w["calls"] == STEPS
        assert w["error_max"] <= TARGET + 1e-4, text_of(entry)
        assert w["error_max"] == pytest.approx(e["error"], rel=1e-3, abs=1e-5)
        assert 0 < w["recall_min"] <= 1.0
    assert pr["max_error"] <= TARGET + 1e-4
    assert "probe (" in text_of(entry)


@pytest.mark.per_version
def test_capture_after_adacluster_patch_hunyuan(comfy_server, model_facts):
    """[AdaCluster -> Capture] on HunyuanVideo (joint text tokens): the capture chains AdaCluster's
    override (sampling still goes sparse), records the text range and the patch's config, and the
    tuner runs on it."""
    srv = comfy_server
    cap = ("AdaClusterCapture", {"enabled": True, "layers": "0, -1", "steps": "1-", "max_heads": 1, "max_mb": 64.0,
                                 "filename_prefix": "cap_hy/hy"})
    p = prompts.hunyuan_prompt(patch_nodes=[("AdaClusterSparseAttention", {"preset": "auto", "enabled": True,
                                                                           "config": ["cfg", 0]}), cap],
                               steps=STEPS, save_name="cap_hy", post_nodes=[("AdaClusterStats", {"model": ["p2", 0]})])
    p["cfg"] = {"class_type": "AdaClusterThresholds", "inputs": dict(RUN_CFG)}
    entry = srv.run_prompt(p, timeout=300)
    s = stats_of(entry)
    assert s["sparse_calls"] > 0, text_of(entry)
    (f,) = _files(srv, "cap_hy")
    with safe_open(str(f), "pt") as h:
        meta = h.metadata()
        assert h.get_tensor("L0.S1.q").shape[0] == 1          # max_heads=1
    n_layers = json.loads(meta["n_layers"])
    calls = json.loads(meta["calls"])
    assert {(c["layer"], c["step"]) for c in calls} == {(layer, st) for layer in (0, n_layers - 1) for st in (1, 2)}
    # text after the video in 0.3.75 ([img, txt]), before it upstream ([txt, img]): the loaded model's order
    want = [0, 16] if model_facts["hunyuan"]["txt_first"] else [N_VID, N_VID + 16]
    assert meta["family"] == "hunyuan" and json.loads(meta["text_range"]) == want
    assert json.loads(meta["config"])["k_clusters"] == 8
    c = tune.load_capture(str(f))
    prof = tune.tune(c, 0.5, backend="torch", kernel_rate=1.0, overhead=0.0, pooled_overhead=0.0)
    assert set(prof["layers"]) == {"0", str(n_layers - 1)}
    assert prof["base_config"]["k_clusters"] == 8    # from the capture's recorded config
