"""pyproject.toml must satisfy the Comfy Registry rules (checked offline)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.harness.registry_metadata import validate_pyproject

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore


@pytest.fixture(scope="module")
def pyproject(repo_root):
    return repo_root / "pyproject.toml"


def test_pyproject_follows_registry_rules(pyproject):
    assert validate_pyproject(pyproject) == []


def test_pyproject_values(pyproject):
    d = tomllib.loads(pyproject.read_text())
    assert d["project"]["name"] == "adacluster"
    assert d["tool"]["comfy"]["requires-comfyui"] == ">=0.3.60"
    assert d["project"]["urls"]["Repository"] == "https://github.com/adacluster/adacluster-comfyui"
    assert d["tool"]["comfy"]["PublisherId"] == "adacluster"


def test_requirements_match_pyproject(repo_root, pyproject):
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    req = [ln.strip() for ln in (repo_root / "requirements.txt").read_text().splitlines()
           if ln.strip() and not ln.startswith("#")]
    norm = lambda xs: sorted(re.split(r"[<>=!~ \[]", x)[0].lower() for x in xs)  # noqa: E731
    assert norm(req) == norm(deps)
    assert not {"flashinfer", "ninja", "cmake"} & set(norm(req))


@pytest.mark.parametrize("edit, needle", [
    (('name = "adacluster"', 'name = "ComfyUI-AdaCluster"'), "ComfyUI"),
    (('version = "0.1.0"', 'version = "0.1"'), "semantic"),
    (('version = "0.1.0"', 'version = "one"'), "semantic"),
    (('PublisherId = "adacluster"', ''), "PublisherId"),
    (('DisplayName = "AdaCluster Sparse Attention"', ''), "DisplayName"),
    (('Icon = ""', ''), "Icon"),
    (('requires-comfyui = ">=0.3.60"', 'requires-comfyui = ">=0.2.0"'), "requires-comfyui"),
    (('Repository = "https://github.com/adacluster/adacluster-comfyui"', ''), "Repository"),
    (('license = { file = "LICENSE" }', 'license = { file = "NOPE" }'), "license"),
])
def test_broken_copies_fail(pyproject, tmp_path, edit, needle):
    text = pyproject.read_text()
    assert edit[0] in text, f"test out of date: {edit[0]!r} not in pyproject.toml"
    (tmp_path / "LICENSE").write_text("MIT")
    broken = tmp_path / "pyproject.toml"
    broken.write_text(text.replace(edit[0], edit[1], 1))
    errs = validate_pyproject(broken)
    assert errs and any(needle in e for e in errs), errs


def test_description_section_missing_fails(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\nversion = "1.0.0"\n')
    errs = validate_pyproject(tmp_path / "pyproject.toml")
    assert any("description" in e for e in errs) and any("tool.comfy" in e for e in errs)


def test_comfy_cli_node_validate(repo_root, tmp_path):
    """`comfy node validate` (comfy-cli, offline) accepts the pack."""
    pytest.importorskip("comfy_cli", reason="comfy-cli not installed (it is in requirements-test.txt)")
    env = dict(os.environ, HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / ".config"))
    exe = shutil.which("comfy", path=os.path.dirname(sys.executable)) or "comfy"
    r = subprocess.run([exe, "--skip-prompt", "--no-enable-telemetry", "node", "validate"], cwd=repo_root,
                       env=env, capture_output=True, text=True, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "validation checks passed" in out or "Security warnings" in out, out


def test_comfyui_parses_pyproject(repo_root):
    """ComfyUI's own parser (comfy_config, used at pack load time) reads the name and metadata."""
    from tests.conftest import COMFY_DIR as comfy_dir   # the ComfyUI under test
    if not (comfy_dir / "comfy_config").is_dir():
        pytest.skip(f"no ComfyUI at {comfy_dir} (run scripts/setup_env.sh)")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from comfy_config import config_parser as c; "
            "p = c.extract_node_configuration(sys.argv[2]); "
            "print(p.project.name, p.project.version, p.tool_comfy.publisher_id, p.tool_comfy.display_name)")
    r = subprocess.run([sys.executable, "-c", code, str(comfy_dir), str(repo_root)], capture_output=True, text=True,
                       timeout=120)
    if r.returncode != 0 and "No module named" in r.stderr:
        pytest.skip(f"ComfyUI's requirements are not in this Python: {r.stderr.strip().splitlines()[-1]}")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[:3] == ["adacluster", "0.1.0", "adacluster"], r.stdout
