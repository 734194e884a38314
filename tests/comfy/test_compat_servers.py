"""Compatibility matrix cases that need a ComfyUI server of their own (one per configuration):
city96's ComfyUI-GGUF (UnetLoaderGGUF, a Q8_0 GGUF of the tiny Wan made at test time with the
pack's tools/convert.py), and ComfyUI started with --lowvram / --novram.

--lowvram / --novram cannot run on a CPU-only machine: ComfyUI's argument parser rejects them
together with --cpu ("not allowed with argument --cpu"), and without --cpu ComfyUI needs a CUDA
device at import. Those cases run where CUDA exists and are skipped (with that reason) elsewhere;
on the CPU, tests/comfy/test_lowvram_inprocess.py drives the code path these flags select (every
layer's weights cast per call, LoRA patched on the fly) inside real ComfyUI sampling.
The GGUF pack comes from <shared>/third-party (../shared next to the repo, or
ADACLUSTER_SHARED_DIR): skipped with the reason when it is absent."""
from __future__ import annotations

import re
import sys
import time

import pytest

from tests.comfy._compat import plain_reference, record, run_matrix_case
from tests.conftest import PACK_DIR, PACK_NAME, TEST_PACK_DIR, TEST_PACK_NAME
from tests.harness import compat
from tests.harness.comfy_server import ComfyServer, ComfyServerError

pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.per_version]   # README "Works with": every tested ComfyUI


def _server(comfy_dir, tmp_path_factory, tiny_models, test_out_dir, name, extra_args=(), packs=None, cpu=True):
    base = tmp_path_factory.mktemp(f"comfy_{name}")
    nodes = {PACK_NAME: PACK_DIR, TEST_PACK_NAME: TEST_PACK_DIR, **(packs or {})}
    srv = ComfyServer(sys.executable, comfy_dir, base, custom_nodes=nodes, extra_args=list(extra_args),
                      env={"ADACLUSTER_TEST_OUT": str(test_out_dir), "TRITON_INTERPRET": "1"}, cpu=cpu)
    srv.prepare_base()
    srv.add_model(tiny_models["wan21"])
    try:
        srv.start()
    except ComfyServerError as e:
        pytest.fail(str(e), pytrace=False)
    return srv


def _vram_state(srv) -> str:
    m = re.findall(r"Set vram state to: (\w+)", srv.log_text())
    return m[-1] if m else "unknown"


def _lora(srv, tiny_models, tmp_path_factory):
    path = tmp_path_factory.mktemp("loras") / "tiny_wan_lora.safetensors"
    compat.make_wan_lora(path, tiny_models["wan21"])
    return ("LoraLoaderModelOnly", {"lora_name": srv.add_file(path, "loras"), "strength_model": 1.0})


# ------------------------------------------------------------------------------------------ --lowvram / --novram
@pytest.mark.parametrize("flag", ["--lowvram", "--novram"])
def test_vram_flag_server(comfy_install, tiny_models, test_out_dir, tmp_path_factory, flag):
    """A server started with the flag: a LoRA'd Wan with AdaCluster samples, goes sparse and equals
    the same stack without AdaCluster with every cluster selected."""
    import torch
    if not torch.cuda.is_available():
        pytest.skip(f"{flag} needs a CUDA device: ComfyUI rejects it with --cpu and cannot start without --cpu "
                    "on a CPU-only machine (the CPU run of the same path: test_lowvram_inprocess.py)")
    t0 = time.time()
    srv = _server(comfy_install, tmp_path_factory, tiny_models, test_out_dir, flag.strip("-"), extra_args=[flag],
                  cpu=False)
    try:
        lora = _lora(srv, tiny_models, tmp_path_factory)
        plain = plain_reference(srv, test_out_dir, name=f"plain_{flag.strip('-')}")
        tag = f"vram_{flag.strip('-')}"
        r = run_matrix_case(srv, test_out_dir, tag, before=[lora], ref_differs_from=plain)
        record(tag + "_server", vram_state=_vram_state(srv), server_start_s=srv.started_in_s,
               total_s=time.time() - t0, max_abs_diff_all_clusters=r["err"],
               sparse_calls=r["sparse_stats"]["sparse_calls"], mean_density=r["sparse_stats"]["mean_density"])
    finally:
        srv.stop()


# ------------------------------------------------------------------------------------------ GGUF
@pytest.fixture(scope="module")
def gguf_pack(tmp_path_factory):
    tarball, why = compat.gguf_pack_tarball()
    if tarball is None:
        pytest.skip(f"GGUF case skipped: {why}")
    try:
        import gguf  # noqa: F401
    except ImportError:
        pytest.fail("the `gguf` package is missing (requirements-test.txt; run scripts/setup_env.sh)", pytrace=False)
    return compat.install_gguf_pack(tarball, tmp_path_factory.mktemp("gguf_pack"))


def test_gguf_q8_0(comfy_install, tiny_models, test_out_dir, tmp_path_factory, gguf_pack):
    """UnetLoaderGGUF on a Q8_0 GGUF of the tiny Wan: GGUF's ops dequantize each weight per call;
    AdaCluster goes sparse and, with every cluster selected, equals the GGUF model without it."""
    t0 = time.time()
    out = tmp_path_factory.mktemp("gguf_models")
    path = compat.make_gguf(tiny_models["wan21"], out / "tiny_wan21_t2v_Q8_0.gguf", gguf_pack, "Q8_0")
    t_convert = time.time() - t0
    srv = _server(comfy_install, tmp_path_factory, tiny_models, test_out_dir, "gguf",
                  packs={"ComfyUI-GGUF": gguf_pack})
    try:
        assert not srv.import_failures(["ComfyUI-GGUF"]), srv.import_failures(["ComfyUI-GGUF"])
        name = srv.add_model(path)
        loader = {"class_type": "UnetLoaderGGUF", "inputs": {"unet_name": name}}
        plain = plain_reference(srv, test_out_dir, name="plain_gguf_server")   # fp32 safetensors
        r = run_matrix_case(srv, test_out_dir, "gguf_q8_0", loader=loader, ref_differs_from=plain)
        record("gguf_q8_0_server", convert_s=t_convert, server_start_s=srv.started_in_s, total_s=time.time() - t0,
               max_abs_diff_all_clusters=r["err"], sparse_calls=r["sparse_stats"]["sparse_calls"],
               mean_density=r["sparse_stats"]["mean_density"])
    finally:
        srv.stop()
