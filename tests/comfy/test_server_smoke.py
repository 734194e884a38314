"""Smoke tests against a REAL ComfyUI server (0.3.75 or the one ADACLUSTER_COMFYUI selects) (one per session, see tests/conftest.py):
the pack imports cleanly, every tiny model samples end to end, the pack's workflows are served,
and the harness itself reports broken packs and dead servers."""
from __future__ import annotations

import json
import sys
import time

import pytest
import torch

from tests.comfy._helpers import latent_shape
from tests.conftest import COMFY_DIR, PACK_DIR, PACK_NAME, REPO_ROOT, TEST_PACK_DIR, TEST_PACK_NAME
from tests.harness import prompts
from tests.harness.comfy_server import (ComfyServer, ComfyServerError, PromptError, core_import_failures,
                                        core_import_note, find_import_failures)
from tests.harness.make_tiny_dits import FILENAMES

pytestmark = pytest.mark.server

# litegraph/frontend node types that never appear in /object_info
FRONTEND_ONLY_NODES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}


def pack_node_types(object_info: dict) -> list:
    """Node types registered by custom_nodes/<PACK_NAME> (python_module 'custom_nodes.adacluster')."""
    return sorted(k for k, v in object_info.items() if str(v.get("python_module", "")) == f"custom_nodes.{PACK_NAME}")


@pytest.mark.per_version
def test_pack_imports_without_errors(comfy_server):
    failures = comfy_server.import_failures([PACK_NAME, TEST_PACK_NAME])
    assert not failures, ("the pack failed to import in ComfyUI:\n" + "\n---\n".join(failures))
    log = comfy_server.log_text()
    assert f"custom_nodes/{PACK_NAME}" in log, "ComfyUI did not list the pack in its import times"
    info = comfy_server.object_info()
    assert "AdaClusterTestZeroConditioning" in info and "AdaClusterTestSaveLatent" in info
    ours = pack_node_types(info)
    if (PACK_DIR / "nodes" / "__init__.py").is_file():
        assert ours, "nodes/ exists but /object_info lists no node whose python_module is the pack"
        for name in ours:
            assert info[name]["category"], f"{name} has no category"


@pytest.mark.per_version
def test_empty_latent_fits_the_models_vae_ratio_where_comfyui_rescales(comfy_server, test_out_dir, model_facts):
    """Known difference: upstream ComfyUI's sampler rescales an empty latent made for an 8x VAE to
    the model's own VAE ratio (16x for Wan 2.2-5B), 0.3.75 keeps it; either way the pack samples it."""
    facts = model_facts["wan22_5b"]
    comfy_server.run_prompt(prompts.BUILDERS["wan22_5b"](FILENAMES["wan22_5b"], save_name="ratio_5b"), timeout=300)
    lat = torch.load(test_out_dir / "ratio_5b.pt")
    assert lat.shape[-1] == 64 // facts["spatial_ratio"]
    assert facts["spatial_ratio"] in (8, 16) and model_facts["wan21"]["spatial_ratio"] == 8
    assert lat.shape[1] == 48 == facts["channels"]


@pytest.mark.per_version
@pytest.mark.parametrize("family", ["wan21", "wan22_5b", "hunyuan", "hunyuan15"])
def test_tiny_model_samples_end_to_end(comfy_server, test_out_dir, model_facts, family):
    save = f"smoke_{family}"
    t0 = time.time()
    entry = comfy_server.run_prompt(prompts.BUILDERS[family](FILENAMES[family], save_name=save), timeout=300)
    wall = time.time() - t0
    out = entry["outputs"]["6"]
    want = latent_shape(model_facts[family])     # channels / latent size from the loaded model
    assert out["shape"] == want, out
    lat = torch.load(test_out_dir / f"{save}.pt")
    assert list(lat.shape) == want
    assert torch.isfinite(lat).all(), f"{family}: non-finite latent"
    assert lat.abs().max() > 0, f"{family}: all-zero latent (sampler did nothing)"
    assert wall < 120, f"{family}: tiny sampling took {wall:.1f} s"


def test_sampling_is_deterministic(comfy_server, test_out_dir):
    # same seed twice -> bit-identical; a different seed -> a different latent
    for name, seed in (("det_a", 3), ("det_b", 3), ("det_c", 4)):
        comfy_server.run_prompt(prompts.wan21_prompt(seed=seed, save_name=name), timeout=300)
    a, b, c = (torch.load(test_out_dir / f"{n}.pt") for n in ("det_a", "det_b", "det_c"))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.per_version
def test_workflow_templates_lists_pack_workflows(comfy_server):
    templates = comfy_server.get("/workflow_templates")
    shipped = sorted(p.stem for p in (REPO_ROOT / "workflows").glob("*.json"))
    assert shipped, "workflows/ has no .json workflow"
    assert PACK_NAME in templates, f"/workflow_templates has no '{PACK_NAME}' entry: {templates}"
    assert sorted(templates[PACK_NAME]) == shipped
    for name in shipped:
        wf = comfy_server.get(f"/api/workflow_templates/{PACK_NAME}/{name}.json")
        wf = json.loads(wf) if isinstance(wf, (bytes, str)) else wf
        assert wf.get("nodes") and "links" in wf, f"{name}.json is not a UI-format workflow"
        known = comfy_server.object_info()
        missing = sorted({n["type"] for n in wf["nodes"]} - set(known) - FRONTEND_ONLY_NODES)
        needs = _requires_node().get(name)
        if needs and needs not in known:   # a model family this ComfyUI lacks (H3 before 0.33): its own nodes only
            assert needs in missing and not [m for m in missing if m.startswith("AdaCluster")], missing
            continue
        assert not missing, f"{name}.json uses node types this ComfyUI lacks: {missing}"


def _requires_node() -> dict:
    """scripts/build_workflows.py's REQUIRES_NODE: workflow -> the core node of a newer model family."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("adacluster_build_workflows", REPO_ROOT / "scripts" / "build_workflows.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.REQUIRES_NODE


def test_bad_prompt_reports_node_errors(comfy_server):
    bad = prompts.wan21_prompt(model_name="does_not_exist.safetensors")
    with pytest.raises(PromptError, match="does_not_exist|unet_name|Value not in list"):
        comfy_server.run_prompt(bad, timeout=60)


# ----------------------------------------------------------------- harness self-tests
def test_checker_detects_a_broken_pack(comfy_install, tmp_path):
    """A pack whose __init__ raises ImportError is reported by the same checker the pack test uses."""
    broken = tmp_path / "broken_pack_src"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise ImportError('adacluster harness self-test: deliberately broken')\n")
    srv = ComfyServer(sys.executable, COMFY_DIR, tmp_path / "base",
                      custom_nodes={"broken_pack": broken, TEST_PACK_NAME: TEST_PACK_DIR},
                      extra_args=["--disable-all-custom-nodes", "--whitelist-custom-nodes", "broken_pack", TEST_PACK_NAME])
    with srv:
        failures = srv.import_failures(["broken_pack"])
        clean = srv.import_failures([TEST_PACK_NAME])
        assert "AdaClusterTestSaveLatent" in srv.object_info()
    assert failures and any("IMPORT FAILED" in f for f in failures), srv.log_tail()
    assert any("deliberately broken" in f for f in failures)
    assert clean == []


def test_checker_on_canned_logs():
    log = ("Traceback (most recent call last):\n"
           '  File "/x/custom_nodes/adacluster/nodes/__init__.py", line 3, in <module>\n'
           "    from .sparse import Node\n"
           "ModuleNotFoundError: No module named 'einops'\n"
           "Cannot import /x/custom_nodes/adacluster module for custom nodes: No module named 'einops'\n"
           "   0.0 seconds (IMPORT FAILED): /x/custom_nodes/adacluster\n"
           "   0.0 seconds (IMPORT FAILED): /x/custom_nodes/adacluster_other\n")
    found = find_import_failures(log, ["adacluster"])
    assert len(found) == 2
    assert found[0].startswith("Traceback") and "einops" in found[0]   # ComfyUI's traceback comes along
    assert find_import_failures(log, ["somethingelse"]) == []
    assert len(find_import_failures(log, ["adacluster_other"])) == 1
    assert find_import_failures("   0.0 seconds: /x/custom_nodes/adacluster\n", ["adacluster"]) == []
    # a node's runtime error while a prompt executes is the queuing test's business, not an import failure
    runtime = ("Traceback (most recent call last):\n"
               '  File "/c/execution.py", line 510, in execute\n'
               "    output_data = await get_output_data(...)\n"
               '  File "/x/custom_nodes/adacluster/nodes/compare.py", line 57, in execute\n'
               '    raise ValueError("AdaCluster Compare: frame counts differ")\n'
               "ValueError: AdaCluster Compare: frame counts differ\n")
    assert find_import_failures(runtime, ["adacluster"]) == []
    assert len(find_import_failures(log + runtime, ["adacluster"])) == 2


def test_checker_blames_only_what_comfyui_names():
    """A clone named `adacluster` holds .comfyui/: ComfyUI core's nodes_audio traceback then has
    `adacluster` in every path, and is still ComfyUI's, not the pack's (issue 11)."""
    core = ("Traceback (most recent call last):\n"
            '  File "/home/u/adacluster/.comfyui/nodes.py", line 2131, in load_custom_node\n'
            '  File "/home/u/adacluster/.comfyui/comfy_extras/nodes_audio.py", line 4, in <module>\n'
            "    import torchaudio\n"
            "ModuleNotFoundError: No module named 'torchaudio'\n"
            "Cannot import /home/u/adacluster/.comfyui/comfy_extras/nodes_audio.py module for custom nodes: "
            "No module named 'torchaudio'\n"
            "WARNING: some comfy_extras/ nodes did not import correctly.\n"
            "IMPORT FAILED: nodes_audio.py\n"
            "   0.1 seconds: /tmp/base/custom_nodes/adacluster\n")
    for name in ("adacluster", "adacluster-comfyui", "ComfyUI-AdaCluster", "My Packs"):
        assert find_import_failures(core.replace("/adacluster", "/" + name), [name]) == []
    assert core_import_failures(core) == ["nodes_audio.py"]
    note = core_import_note(core)
    assert "nodes_audio.py" in note and "torchaudio" in note and "not the AdaCluster pack" in note
    assert core_import_note("   0.1 seconds: /tmp/base/custom_nodes/adacluster\n") == ""
    # the pack itself failing under a folder name with a space / dash is still found
    for name in ("adacluster-comfyui", "ComfyUI AdaCluster"):
        bad = f"   0.0 seconds (IMPORT FAILED): /b/custom_nodes/{name}\n"
        assert len(find_import_failures(bad, [name])) == 1, name
        assert find_import_failures(bad, ["adacluster"]) == []


def test_server_with_bad_flag_is_never_ready(comfy_install, tmp_path):
    srv = ComfyServer(sys.executable, COMFY_DIR, tmp_path / "base", extra_args=["--no-such-flag"], ready_timeout=30)
    t0 = time.time()
    with pytest.raises(ComfyServerError, match="never became ready") as ei:
        srv.start()
    assert time.time() - t0 < 30
    assert "unrecognized arguments" in str(ei.value)
    assert not srv.alive()


def test_server_on_a_busy_port_is_never_ready(comfy_install, tmp_path):
    import socket
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))  # bound, not listening: ComfyUI cannot bind, our poll is refused
    try:
        srv = ComfyServer(sys.executable, COMFY_DIR, tmp_path / "base", port=s.getsockname()[1],
                          extra_args=["--disable-all-custom-nodes"], ready_timeout=20)
        with pytest.raises(ComfyServerError, match="never became ready"):
            srv.start()
        assert not srv.alive()
    finally:
        s.close()
