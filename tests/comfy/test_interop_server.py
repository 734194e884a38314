"""AdaCluster next to other attention-override nodes, in a REAL ComfyUI server (the one under test:
0.3.75 by default, 0.33 with ADACLUSTER_COMFYUI=upstream; tiny random-weight Wan 2.1, CPU).

Order never matters: a node that REPLACES the override (core's ModelAttentionBackend on 0.33, a
Sage-patch-style node) before or after AdaCluster Sparse Attention ends up as AdaCluster's dense path
(it runs exactly the calls AdaCluster leaves dense; both orders give the same latent); a second sparse
attention that keeps itself on top (core's Model Sparse Attention style) takes its calls and the Stats
node reports them; and with every call forced dense AdaCluster is bit-identical to the unpatched model.
"""
from __future__ import annotations

import json

import pytest
import torch

from tests.comfy._helpers import TINY, build, stats_of, text_of
from tests.harness import prompts

pytestmark = pytest.mark.server

RUN_CFG = dict(TINY, k_clusters=8, calibration_dense=False)


def _counter(test_out_dir, name):
    return json.loads((test_out_dir / f"counter_{name}.json").read_text())


def _with(p, order, nodes):
    """Put `nodes` [(class, inputs)] after AdaCluster (p1) or between the loader and it; the sampler
    takes the last model. Node ids x0, x1, ..."""
    ids = [f"x{i}" for i in range(len(nodes))]
    if order == "after":
        src = ["p1", 0]
    else:
        src = ["1", 0]
    for nid, (cls, inputs) in zip(ids, nodes):
        p[nid] = {"class_type": cls, "inputs": dict(inputs, model=src)}
        src = [nid, 0]
    if order == "after":
        p["5"]["inputs"]["model"] = src
    else:
        p["p1"]["inputs"]["model"] = src
    return p


def _run_order(comfy_server, order, nodes, save, **kw):
    p = _with(build(prompts.wan21_prompt, save_name=save, config=RUN_CFG, steps=3, cfg=1.0, **kw), order, nodes)
    entry = comfy_server.run_prompt(p, timeout=300)
    return entry, stats_of(entry)


def test_replacing_override_is_the_dense_path_in_either_order(comfy_server, test_out_dir):
    """A Sage-patch-style node that replaces the override: after AdaCluster it would switch AdaCluster
    off (0 calls); now AdaCluster re-installs itself on top and runs the node for its dense calls."""
    res = {}
    for order in ("after", "before"):
        entry, s = _run_order(comfy_server, order, [("AdaClusterTestReplacingOverride", {"name": f"rep_{order}"})],
                              f"rep_{order}")
        c = _counter(test_out_dir, f"rep_{order}")
        assert s["sparse_calls"] > 0, (order, text_of(entry))
        # cfg 1: one branch, so one record per call: the node ran exactly AdaCluster's dense calls
        assert c["calls"] == s["dense_calls"] > 0, (order, c, text_of(entry))
        others = s["other_overrides"]
        assert [o["position"] for o in others] == ["below"] and not others[0]["sparse"], others
        assert others[0]["name"] == "adacluster_test_nodes: replacing_override", others
        assert "dense path" in text_of(entry)
        res[order] = torch.load(test_out_dir / f"rep_{order}.pt")
    assert torch.equal(res["after"], res["before"])


def test_model_attention_backend_in_either_order(comfy_server, test_out_dir):
    """Core's ModelAttentionBackend (ComfyUI 0.33): set_model_optimized_attention replaces the
    override. Either order: AdaCluster sparse where it applies, the chosen backend for every call it
    leaves dense (counted by wrapping the registered "pytorch" attention), the same latent."""
    if "ModelAttentionBackend" not in comfy_server.object_info():
        pytest.skip("this ComfyUI has no ModelAttentionBackend node (0.33 feature)")
    res = {}
    for order in ("after", "before"):
        nodes = [("AdaClusterTestCountBackend", {"name": f"mab_{order}"}),
                 ("ModelAttentionBackend", {"attention": "pytorch attention"})]
        # (the counter executes before ModelAttentionBackend looks the function up in either order)
        entry, s = _run_order(comfy_server, order, nodes, f"mab_{order}")
        c = _counter(test_out_dir, f"mab_{order}")
        assert s["sparse_calls"] > 0, (order, text_of(entry))
        assert c["calls"] == s["dense_calls"] > 0, (order, c, text_of(entry))
        names = [o["name"] for o in s["other_overrides"]]
        assert names == ["set_model_optimized_attention (attention_pytorch)"], names
        res[order] = torch.load(test_out_dir / f"mab_{order}.pt")
    assert torch.equal(res["after"], res["before"])


def test_second_sparse_override_one_reported_winner(comfy_server, test_out_dir):
    """A sparse override that keeps itself on top at every step (core's Model Sparse Attention style):
    in either order it runs first and takes its calls (the first step's self-attention), AdaCluster
    gets the rest; the Stats node names it and counts what it took; the hook does not grow per step."""
    for order in ("after", "before"):
        name = f"sp_{order}"
        entry, s = _run_order(comfy_server, order, [("AdaClusterTestSparseOverride", {"name": name})], name)
        c = _counter(test_out_dir, name)
        others = s["other_overrides"]
        assert len(others) == 1, others
        o = others[0]
        assert o["sparse"] and o["name"] == f"TEST sparse ({name})", o
        assert s["sparse_calls"] > 0, (order, text_of(entry))   # AdaCluster ran its calls sparse
        assert c["chain"] <= 2, c                                 # re-installed at most once: no ping-pong
        text = text_of(entry)
        assert f"TEST sparse ({name})" in text, text
        if o["position"] == "above":    # it ran first: what it took is counted
            assert c["taken"] > 0 and o["calls"] == c["taken"], (order, o, c)
            assert "runs before AdaCluster" in text, text
        else:   # 0.3.75 hands ON_PREPARE_STATE no step options: its re-install never reaches a forward,
            # so AdaCluster stays on top and it is the dense path (it sees exactly AdaCluster's dense calls)
            assert order == "before" and not comfy_server_passes_step_options(comfy_server), o
            assert c["taken"] == 0 and o["calls"] == c["passed"] == s["dense_calls"], (o, c)
            assert "AdaCluster's dense path" in text, text


def comfy_server_passes_step_options(comfy_server) -> bool:
    """ComfyUI 0.33's ModelPatcher.prepare_state(timestep, model_options) (0.3.75: no options)."""
    import inspect

    from tests.comfy._helpers import comfy_inprocess
    assert comfy_inprocess() is None
    import comfy.model_patcher
    return "model_options" in inspect.signature(comfy.model_patcher.ModelPatcher.prepare_state).parameters


def test_dense_forced_is_bit_identical_to_unpatched(comfy_server, test_out_dir):
    """Every call forced dense (a `*: dense` rule): the latent equals the unpatched model's bit for
    bit; on 0.33 also under ModelAttentionBackend (AdaCluster's dense path = the chosen backend)."""
    comfy_server.run_prompt(prompts.wan21_prompt(save_name="dref", steps=2), timeout=300)
    entry = comfy_server.run_prompt(build(prompts.wan21_prompt, save_name="dforced", config=RUN_CFG, steps=2,
                                          rules="*: dense"), timeout=300)
    s = stats_of(entry)
    assert s["sparse_calls"] == 0 and s["dense_calls"] > 0, text_of(entry)
    assert torch.equal(torch.load(test_out_dir / "dforced.pt"), torch.load(test_out_dir / "dref.pt"))
    if "ModelAttentionBackend" not in comfy_server.object_info():
        return
    mab = ("ModelAttentionBackend", {"attention": "pytorch attention"})
    ref = prompts.wan21_prompt(save_name="dref_mab", steps=2, patch_nodes=[mab])
    comfy_server.run_prompt(ref, timeout=300)
    for order in ("after", "before"):
        p = _with(build(prompts.wan21_prompt, save_name=f"dforced_mab_{order}", config=RUN_CFG, steps=2,
                        rules="*: dense"), order, [mab])
        comfy_server.run_prompt(p, timeout=300)
        assert torch.equal(torch.load(test_out_dir / f"dforced_mab_{order}.pt"),
                           torch.load(test_out_dir / "dref_mab.pt")), order
