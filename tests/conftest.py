"""Shared pytest fixtures. Run the suite with `bash scripts/test.sh` (it builds .venv/.comfyui).

Fixtures:
  repo_root      the clone (also put on sys.path so `tests.harness` and `adacluster_core` import)
  tiny_models    {"wan21"|"wan22_5b"|"hunyuan"|"hunyuan15": path}: tiny random DiTs, once per session
  model_facts    {family: {"txt_first", "spatial_ratio", "channels", "patch"}}: what the ComfyUI
                 under test makes of each tiny model (expectations come from it, not a version)
  test_out_dir   where the test-only AdaClusterTestSaveLatent node writes latents (session)
  ab_models      for the A/B (Compare) tests, added to the running comfy_server: {"vae": VAELoader name of
                 a tiny Wan 2.1 VAE, "wan21_sharp": UNETLoader name of a tiny Wan 2.1 whose attention matters}
  comfy_server   ONE real ComfyUI server per session (0.3.75, or the one ADACLUSTER_COMFYUI selects,
                 see tests/harness/comfy_select.py) with this pack (as custom_nodes/adacluster)
                 and tests/comfy_test_nodes loaded, the tiny models in models/diffusion_models.
                 ADACLUSTER_SKIP_SERVER=1 skips the tests that need it; a missing .venv/.comfyui
                 is an error (run scripts/setup_env.sh), never a silent skip.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.harness.comfy_select import comfy_dir, comfy_version  # noqa: E402
from tests.harness.comfy_server import ComfyServer, ComfyServerError  # noqa: E402
from tests.harness.make_tiny_dits import make_all  # noqa: E402
from tests.harness.make_ab_models import make_sharp_wan21, make_tiny_vae  # noqa: E402

COMFY_DIR = comfy_dir()                        # .comfyui unless ADACLUSTER_COMFYUI says otherwise
PACK_NAME = "adacluster"                       # custom_nodes/<PACK_NAME> -> repo root
TEST_PACK_NAME = "adacluster_test_nodes"       # custom_nodes/<TEST_PACK_NAME> -> tests/comfy_test_nodes
TEST_PACK_DIR = REPO_ROOT / "tests" / "comfy_test_nodes"
# Developer override: load another folder as custom_nodes/adacluster (e.g. a scratch copy while
# nodes/ is being rewritten). Unset in CI.
PACK_DIR = Path(os.environ.get("ADACLUSTER_PACK_DIR") or REPO_ROOT)


def pytest_report_header(config):
    v = comfy_version(COMFY_DIR)
    return f"ComfyUI under test: {COMFY_DIR} (version {'.'.join(map(str, v)) if v else 'unknown'})"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    return make_all(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session")
def model_facts(tiny_models) -> dict:
    """family -> what the ComfyUI under test makes of that tiny model (tests/comfy/_helpers.py
    model_facts: text order, latent size, channels, patch), read from the model it loads."""
    from tests.comfy._helpers import model_facts as facts_of
    try:
        return {fam: facts_of(path) for fam, path in tiny_models.items()}
    except RuntimeError as e:
        pytest.fail(f"cannot load the tiny models in-process: {e}", pytrace=False)


@pytest.fixture(scope="session")
def test_out_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("comfy_out")
    os.environ["ADACLUSTER_TEST_OUT"] = str(d)  # inherited by servers started after this
    return d


def comfy_install_problem() -> str | None:
    """None when ComfyUI can be started from this interpreter, else a message saying what to run."""
    if not (COMFY_DIR / "main.py").is_file():
        return f"no ComfyUI at {COMFY_DIR}: run `bash scripts/setup_env.sh` (or `bash scripts/test.sh`)"
    try:
        import aiohttp  # noqa: F401
        import comfyui_frontend_package  # noqa: F401
    except ImportError as e:
        return (f"this Python ({sys.executable}) lacks ComfyUI's requirements ({e}): run the tests with "
                "`bash scripts/test.sh` (it uses the selected environment's python)")
    pinned = _pinned_frontend(COMFY_DIR)
    if pinned:
        from importlib.metadata import version
        have = version("comfyui-frontend-package")
        if have != pinned:
            return (f"this Python ({sys.executable}) has comfyui-frontend-package {have}, the ComfyUI at "
                    f"{COMFY_DIR} pins {pinned}: wrong environment for it; run "
                    "`ADACLUSTER_COMFYUI=... bash scripts/test.sh` (it picks the matching venv)")
    return None


def _pinned_frontend(d: Path) -> str | None:
    import re
    try:
        m = re.search(r"^comfyui-frontend-package==([\w.]+)", (d / "requirements.txt").read_text(), re.M)
    except OSError:
        return None
    return m.group(1) if m else None


@pytest.fixture(scope="session")
def comfy_install() -> Path:
    """The ComfyUI directory, for tests that start their own server: skip on
    ADACLUSTER_SKIP_SERVER=1, FAIL (never skip) when the install is missing."""
    if os.environ.get("ADACLUSTER_SKIP_SERVER") == "1":
        pytest.skip("ADACLUSTER_SKIP_SERVER=1: real-ComfyUI server tests skipped")
    problem = comfy_install_problem()
    if problem:
        pytest.fail(problem, pytrace=False)
    return COMFY_DIR


@pytest.fixture(scope="session")
def comfy_server(comfy_install, tiny_models, test_out_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy_base")
    srv = ComfyServer(sys.executable, COMFY_DIR, base,
                      custom_nodes={PACK_NAME: PACK_DIR, TEST_PACK_NAME: TEST_PACK_DIR},
                      env={"ADACLUSTER_TEST_OUT": str(test_out_dir), "TRITON_INTERPRET": "1"})
    srv.prepare_base()
    for path in tiny_models.values():
        srv.add_model(path)
    try:
        srv.start()
    except ComfyServerError as e:
        pytest.fail(str(e), pytrace=False)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def ab_models(comfy_server, tmp_path_factory) -> dict:
    """The A/B test models (tests/harness/make_ab_models.py), linked into the running server's model
    folders (ComfyUI re-lists a folder whose mtime changed): {"vae": name, "wan21_sharp": name}."""
    d = tmp_path_factory.mktemp("ab_models")
    vae = make_tiny_vae(d, COMFY_DIR, sys.executable)
    vae_dir = comfy_server.base_dir / "models" / "vae"
    vae_dir.mkdir(parents=True, exist_ok=True)
    if not (vae_dir / os.path.basename(vae)).exists():
        os.symlink(vae, vae_dir / os.path.basename(vae))
    return {"vae": os.path.basename(vae), "wan21_sharp": comfy_server.add_model(make_sharp_wan21(d))}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the ComfyUI log tail to failing tests that used the server."""
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and "comfy_server" in getattr(item, "fixturenames", ()):
        srv = item.funcargs.get("comfy_server") if hasattr(item, "funcargs") else None
        if isinstance(srv, ComfyServer):
            rep.sections.append(("ComfyUI log tail " + str(srv.log_path), srv.log_tail(80)))
