"""Compatibility matrix in the real ComfyUI server (session server, tests/conftest.py): AdaCluster
beside what users stack on a Wan model. Every case: it samples, goes sparse (Stats: sparse calls
> 0, density < 1), and with every cluster selected equals the same stack without AdaCluster
(tests/comfy/_compat.py). Results are summarised in README "Works with".

Cases here: LoRA (LoraLoaderModelOnly) before / after AdaCluster, fp8 weights (UNETLoader
fp8_e4m3fn), core step caches (EasyCache, LazyCache) before / after AdaCluster, TorchCompileModel
with a LoRA. GGUF and --lowvram / --novram need their own servers: test_compat_servers.py.
Feature tests, not version pins: a core node missing from /object_info is skipped by name."""
from __future__ import annotations

import pytest

from tests.comfy._compat import (ALL_CLUSTERS, SPARSE, cache_skips, latent, max_err, plain_reference, record,
                                 run_matrix_case, stack_prompt)
from tests.comfy._helpers import stats_of, text_of
from tests.harness import compat

pytestmark = [pytest.mark.server, pytest.mark.per_version]   # README "Works with": every tested ComfyUI


@pytest.fixture(scope="module")
def lora_name(comfy_server, tiny_models, tmp_path_factory):
    path = tmp_path_factory.mktemp("loras") / "tiny_wan_lora.safetensors"
    compat.make_wan_lora(path, tiny_models["wan21"])
    return comfy_server.add_file(path, "loras")


@pytest.fixture(scope="module")
def node_ids(comfy_server):
    return set(comfy_server.object_info())


def _need(node_ids, *names):
    missing = [n for n in names if n not in node_ids]
    if missing:
        pytest.skip(f"this ComfyUI has no {', '.join(missing)} node")


@pytest.fixture(scope="module")
def plain(comfy_server, test_out_dir):
    return plain_reference(comfy_server, test_out_dir)


def _lora(name, strength=1.0):
    return ("LoraLoaderModelOnly", {"lora_name": name, "strength_model": strength})


# ------------------------------------------------------------------------------------------ LoRA
@pytest.mark.parametrize("where", ["before", "after"])
def test_lora(comfy_server, test_out_dir, lora_name, plain, where):
    """LoraLoaderModelOnly before / after the AdaCluster node: the LoRA is applied in both orders
    (the result differs from the bare model) and AdaCluster goes sparse on the LoRA'd weights."""
    log_at = len(comfy_server.log_text())
    side = {"before": [_lora(lora_name)]} if where == "before" else {"after": [_lora(lora_name)]}
    run_matrix_case(comfy_server, test_out_dir, f"lora_{where}", ref_differs_from=plain, **side)
    assert "lora key not loaded" not in comfy_server.log_text()[log_at:], "ComfyUI ignored LoRA keys"


# ------------------------------------------------------------------------------------------ fp8 weights
def test_fp8_e4m3fn_weights(comfy_server, test_out_dir, tiny_models, plain):
    """UNETLoader weight_dtype fp8_e4m3fn: weights stored in fp8 and cast per layer for compute."""
    loader = {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny_wan21_t2v.safetensors",
                                                       "weight_dtype": "fp8_e4m3fn"}}
    run_matrix_case(comfy_server, test_out_dir, "fp8", loader=loader, ref_differs_from=plain)


# ------------------------------------------------------------------------------------------ step caches
CACHE_STEPS = 10
# warmup 0.3 by sigma: the first steps dense, then one calibration step, then sparse
CACHE_CFG = dict(SPARSE, warmup=0.3)


def _cache_node(cls, threshold):
    return (cls, {"reuse_threshold": threshold, "start_percent": 0.0, "end_percent": 1.0, "verbose": False})


def _phase_columns(stats):
    """(warmup + calibration columns, sparse columns) of a run's layer x step grid."""
    grid = stats["density_grid"]
    cols = range(len(stats["sigmas"]))
    called = [c for c in cols if any(row[c] is not None for row in grid)]
    sparse = [c for c in called if any(row[c] is not None and row[c] < 1.0 for row in grid)]
    return [c for c in called if c not in sparse], sparse


@pytest.mark.parametrize("cache", ["EasyCache", "LazyCache"])
@pytest.mark.parametrize("where", ["before", "after"])
def test_step_cache(comfy_server, test_out_dir, node_ids, cache, where):
    """A step cache before / after AdaCluster. Skipped steps keep their column in the Stats grid
    as "no call" (in every layer), the steps the model did run are numbered as in the run without
    the cache, warmup is decided per step as without the cache, calibration happens exactly once
    (on the first step the model ran after the warmup), and with every cluster selected the result
    equals the cached stack without AdaCluster."""
    _need(node_ids, cache)
    node = _cache_node(cache, 0.1)
    side = {"before": [node]} if where == "before" else {"after": [node]}
    tag = f"{cache.lower()}_{where}"
    # the same AdaCluster config without a cache: which columns are warmup / calibration / sparse
    e_nc = comfy_server.run_prompt(stack_prompt(f"{tag}_nocache", ada=CACHE_CFG, steps=CACHE_STEPS))
    s_nc = stats_of(e_nc)
    dense_nc, sparse_nc = _phase_columns(s_nc)
    assert sparse_nc and dense_nc, text_of(e_nc)
    first_sparse = sparse_nc[0]                     # calibration ran in the column before it
    warm_cols = set(range(first_sparse - (0 if s_nc.get("plan_source") == "cache" else 1)))

    log_at = len(comfy_server.log_text())
    comfy_server.run_prompt(stack_prompt(f"{tag}_ref", steps=CACHE_STEPS, **side))
    e_all = comfy_server.run_prompt(stack_prompt(f"{tag}_allk", ada=dict(ALL_CLUSTERS, warmup=0.3),
                                                 steps=CACHE_STEPS, **side))
    e_sp = comfy_server.run_prompt(stack_prompt(f"{tag}_sparse", ada=CACHE_CFG, steps=CACHE_STEPS, **side))
    skips = cache_skips(comfy_server.log_text(), log_at)
    assert len(skips) == 3 and all(n == cache for n, _, _ in skips), skips
    s = stats_of(e_sp)
    text = text_of(e_sp)
    n_skipped, total = skips[2][1], skips[2][2]
    assert total == CACHE_STEPS and 0 < n_skipped < CACHE_STEPS - 2, f"{cache} skipped {n_skipped}/{total}"

    # step counter: one column per sampler step, same sigmas as without the cache
    assert s["sigmas"] == pytest.approx(s_nc["sigmas"], rel=1e-6) and len(s["sigmas"]) == CACHE_STEPS
    no_call = s["steps_without_calls"]
    assert len(no_call) == n_skipped, (no_call, skips, text)
    assert all(row[c] is None for row in s["density_grid"] for c in no_call)
    ran = [c for c in range(CACHE_STEPS) if c not in no_call]
    # warmup by sigma (as without the cache); calibration once, on the first step run after warmup
    # (none when the patched model reuses the plan of an earlier run: plan_source "cache")
    first_after_warmup = min(c for c in ran if c not in warm_cols)
    calibrated = s.get("plan_source", "calibration") != "cache"
    calib = [first_after_warmup] if calibrated else []
    per_step = s["calls"] // len(ran)               # attention calls (all kinds) per model step
    dense_c, sparse_c = _phase_columns(s)
    assert dense_c == [c for c in ran if c in warm_cols] + calib, (dense_c, text)
    assert sparse_c == [c for c in ran if c not in warm_cols and c not in calib], (sparse_c, text)
    n_layers, branches = s["n_layers"], 2
    assert s["dense_reasons"].get("calibration", 0) == n_layers * branches * len(calib), text
    assert s["dense_reasons"].get("warmup", 0) == n_layers * branches * len([c for c in ran if c in warm_cols]), text
    assert s["calls"] == per_step * len(ran)
    assert "no call" in text

    ref, allk = latent(test_out_dir, f"{tag}_ref"), latent(test_out_dir, f"{tag}_allk")
    err, bound = max_err(allk, ref)
    assert skips[0][1] == skips[1][1], f"the cache skipped differently with AdaCluster: {skips}"
    assert err <= bound, f"{tag}: {err} > {bound}"
    assert s["sparse_calls"] > 0 and s["mean_density"] < 1.0, text
    record(tag, max_abs_diff_all_clusters=err, bound=bound, skipped=n_skipped, steps=total, no_call_columns=no_call,
           sparse_calls=s["sparse_calls"], mean_density=s["mean_density"], dense_reasons=s["dense_reasons"])


# ------------------------------------------------------------------------------------------ torch.compile
@pytest.mark.slow  # inductor on CPU (gcc): about a minute per compiled stack
def test_torch_compile_with_lora(comfy_server, test_out_dir, node_ids, lora_name, plain):
    """TorchCompileModel + LoRA + AdaCluster: the attention override stays out of the compiled graph
    (torch.compiler.disable) and the compiled LoRA stack equals itself without AdaCluster."""
    _need(node_ids, "TorchCompileModel")
    run_matrix_case(comfy_server, test_out_dir, "compile_lora", before=[_lora(lora_name)],
                    after=[("TorchCompileModel", {"backend": "inductor"})], steps=2, ref_differs_from=None)
