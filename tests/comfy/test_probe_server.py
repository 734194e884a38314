"""Probe mode and override chaining in the REAL ComfyUI 0.3.75 server (tiny models, CPU)."""
from __future__ import annotations

import json

import pytest
import torch

from tests.comfy._helpers import TINY, build, stats_of, text_of
from tests.harness import prompts

pytestmark = pytest.mark.server

RUN_CFG = dict(TINY, k_clusters=8, calibration_dense=False)
try:
    from adacluster_core import AdaClusterConfig
    if "max_density" in AdaClusterConfig.__dataclass_fields__:
        RUN_CFG["max_density"] = 1.0
except ImportError:  # pragma: no cover
    pass


def _probe_prompt(builder, save_name, probe="on", layers="*", steps="*", cfg=RUN_CFG, **kw):
    p = build(builder, save_name=save_name, config=cfg, steps=3, **kw)
    p["p1"]["inputs"].update({"probe": probe, "probe_layers": layers, "probe_steps": steps})
    return p


@pytest.mark.parametrize("family", ["wan21", "hunyuan"])
def test_probe_reports_error_recall_and_passes_dense_on(comfy_server, test_out_dir, family):
    builder = prompts.BUILDERS[family]
    comfy_server.run_prompt(builder(save_name=f"probe_ref_{family}", steps=3), timeout=300)
    entry = comfy_server.run_prompt(_probe_prompt(builder, f"probe_on_{family}"), timeout=300)
    s = stats_of(entry)
    pr = s["probe"]
    assert s["sparse_calls"] > 0 and pr["calls"] > 0, text_of(entry)
    # every sparse call was probed (one record per CFG branch)
    assert pr["calls"] == s["sparse_calls"]
    errs = [w["error_max"] for w in pr["worst_layers"]]
    assert errs == sorted(errs, reverse=True)                 # worst layers first
    for w in pr["worst_layers"]:
        assert 0 < w["error_max"] and 0 < w["recall_min"] <= w["recall_mean"] <= 1.0
        assert 0 < w["density_mean"] < 1.0
    text = text_of(entry)
    assert "probe (layers *, steps *)" in text and "worst layers first" in text
    # the dense output was passed on: the latent equals the unpatched run's
    ref = torch.load(test_out_dir / f"probe_ref_{family}.pt")
    got = torch.load(test_out_dir / f"probe_on_{family}.pt")
    assert (got - ref).abs().max().item() < 1e-4 * max(1.0, ref.abs().max().item())


def test_probe_selection_limits_layers_and_steps(comfy_server):
    entry = comfy_server.run_prompt(_probe_prompt(prompts.wan21_prompt, "probe_sel", layers="-1", steps="1-"),
                                    timeout=300)
    pr = stats_of(entry)["probe"]
    assert {w["layer"] for w in pr["worst_layers"]} == {1}
    grid = pr["error_grid"]
    assert grid[0] == [None, None, None] and grid[1][0] is None and grid[1][1] is not None and grid[1][2] is not None


def test_probe_off_by_default(comfy_server):
    info = comfy_server.object_info()["AdaClusterSparseAttention"]["input"]
    assert info["optional"]["probe"][1]["default"] == "off"
    entry = comfy_server.run_prompt(build(prompts.wan21_prompt, save_name="probe_off", config=RUN_CFG, steps=2),
                                    timeout=300)
    assert stats_of(entry)["probe"] is None


def _counter(test_out_dir, name):
    return json.loads((test_out_dir / f"counter_{name}.json").read_text())


def test_counting_override_before_adacluster_sees_the_dense_calls(comfy_server, test_out_dir):
    """[counting override -> AdaCluster]: AdaCluster chains it as its dense path: it sees exactly
    the calls AdaCluster ran dense (cfg 1: one branch, so calls == records), not the sparse ones."""
    extra = ("AdaClusterTestCountingOverride", {"name": "before"})
    p = build(prompts.wan21_prompt, save_name="count_before", config=RUN_CFG, steps=3, cfg=1.0)
    # insert the counter between the loader and the AdaCluster patch
    p["c0"] = {"class_type": extra[0], "inputs": dict(extra[1], model=["1", 0])}
    p["p1"]["inputs"]["model"] = ["c0", 0]
    entry = comfy_server.run_prompt(p, timeout=300)
    s = stats_of(entry)
    c = _counter(test_out_dir, "before")
    assert s["sparse_calls"] > 0 and s["dense_calls"] > 0, text_of(entry)
    assert c["calls"] == s["dense_calls"] == s["calls"] - s["sparse_calls"]
    assert c["chained"] is False


def test_counting_override_after_adacluster_chains_it(comfy_server, test_out_dir):
    """[AdaCluster -> counting override]: the counter is outermost and chains AdaCluster's
    override: it sees every call, and AdaCluster still runs sparse."""
    p = build(prompts.wan21_prompt, save_name="count_after", config=RUN_CFG, steps=3, cfg=1.0,
              extra_patch=[("AdaClusterTestCountingOverride", {"name": "after"})])
    p["q1"]["inputs"]["model"] = ["p2", 0]
    entry = comfy_server.run_prompt(p, timeout=300)
    s = stats_of(entry)
    c = _counter(test_out_dir, "after")
    assert s["sparse_calls"] > 0, text_of(entry)
    assert c["chained"] is True and c["calls"] == s["calls"]
