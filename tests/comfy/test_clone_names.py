"""The clone's folder name does not matter (issue 11): copies of the tree named `adacluster`,
`adacluster-comfyui`, `ComfyUI-AdaCluster` and `Ada Cluster`, all under a path with a space,
(1) run pytest without pytest importing the root __init__.py as a plain module, and (2) load in ComfyUI through its
own `nodes.load_custom_node`, as a package from custom_nodes/<name>, with every node registered
under python module `custom_nodes.<name>`. Cheap: a copy of the source tree, no second venv."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import COMFY_DIR, REPO_ROOT, comfy_install_problem

NAMES = ["adacluster", "adacluster-comfyui", "ComfyUI-AdaCluster", "Ada Cluster"]
PACK_NODES = {"AdaClusterSparseAttention", "AdaClusterThresholds", "AdaClusterLayerOverrides", "AdaClusterStats",
              "AdaClusterCapture", "AdaClusterCompare"}
_SKIP = shutil.ignore_patterns(".venv", ".venv-*", ".comfyui", ".git", ".cache", "artifacts", "__pycache__",
                               ".pytest_cache", ".hypothesis", "*.safetensors")

PROBE_TEST = '''
import sys
from pathlib import Path
from tests.comfy._helpers import comfy_inprocess

assert comfy_inprocess() is None          # ComfyUI importable: the state that broke issue 11's clones
ROOT_INIT = (Path(__file__).resolve().parents[1] / "__init__.py")


def test_root_init_never_imported_as_a_module():
    # pytest may import the root as a package (clone `adacluster`: the root conftest.py is
    # `adacluster.conftest`), never as a plain top-level module
    bad = [n for n, m in list(sys.modules.items()) if getattr(m, "__file__", None)
           and Path(m.__file__).resolve() == ROOT_INIT and not hasattr(m, "__path__")]
    assert bad == [], bad


def test_second_module_runs_too():
    import comfy_api.latest  # noqa: F401
'''

LOAD_SCRIPT = r'''
import asyncio, json, sys
comfy_dir, custom_nodes, name = sys.argv[1:4]
sys.path.insert(0, comfy_dir)
import os
os.chdir(comfy_dir)
import comfy.cli_args
comfy.cli_args.args.cpu = True
import nodes
ok = asyncio.run(nodes.load_custom_node(os.path.join(custom_nodes, name), module_parent="custom_nodes"))
mods = {k: getattr(v, "RELATIVE_PYTHON_MODULE", None) for k, v in nodes.NODE_CLASS_MAPPINGS.items()
        if k.startswith("AdaCluster")}
print("RESULT " + json.dumps({"ok": ok, "modules": mods}))
'''


@pytest.fixture(scope="module")
def clones(tmp_path_factory):
    base = tmp_path_factory.mktemp("clones") / "with space"
    out = {}
    for name in NAMES:
        dst = base / name
        shutil.copytree(REPO_ROOT, dst, ignore=_SKIP, symlinks=True)
        if COMFY_DIR.is_dir():
            os.symlink(COMFY_DIR, dst / ".comfyui", target_is_directory=True)
        (dst / "tests" / "test_zz_clone_probe.py").write_text(PROBE_TEST)
        out[name] = dst
    return out


@pytest.mark.parametrize("name", NAMES)
def test_pytest_runs_in_a_clone_named(clones, name):
    problem = comfy_install_problem()
    if problem:
        pytest.fail(problem, pytrace=False)
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "tests/test_zz_clone_probe.py", "tests/test_requirements.py::test_marker_evaluation_can_fail"],
                       cwd=clones[name], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "3 passed" in r.stdout, f"pytest in a clone named {name!r}:\n{r.stdout[-4000:]}\n{r.stderr[-2000:]}"


# the registry's clone name (`adacluster-comfyui`) is also loaded by every tested ComfyUI (per_version)
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.per_version) if n == "adacluster-comfyui" else n
                                  for n in NAMES])
def test_comfyui_loads_a_clone_named(clones, tmp_path, name):
    problem = comfy_install_problem()
    if problem:
        pytest.fail(problem, pytrace=False)
    custom_nodes = tmp_path / "custom nodes"
    custom_nodes.mkdir()
    os.symlink(clones[name], custom_nodes / name, target_is_directory=True)
    r = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, str(COMFY_DIR), str(custom_nodes), name],
                       capture_output=True, text=True, timeout=300)
    line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line, f"no result from ComfyUI's load_custom_node:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    res = json.loads(line[len("RESULT "):])
    assert res["ok"] is True, r.stderr[-3000:]
    assert set(res["modules"]) == PACK_NODES, res
    assert set(res["modules"].values()) == {f"custom_nodes.{name}"}, res
    assert "Cannot import" not in r.stderr, r.stderr[-3000:]
