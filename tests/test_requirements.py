"""What each platform installs from requirements.txt / pyproject.toml (markers parsed offline).
scripts/check_requirements.py resolves the same lists against PyPI with pip's --dry-run."""
from __future__ import annotations

import ast

import pytest

from tests.harness.requirements_markers import (PLATFORMS, for_platform, names, pyproject_dependencies,
                                                requirement_lines)

# Windows' triton-windows comes from install.py (it must match the installed torch, which pip
# cannot know when it reads requirements.txt): tests/test_install_py.py
EXPECTED = {
    "linux_x86_64": ["safetensors", "triton"],
    "win_amd64": ["safetensors"],
    "macos_arm64": ["safetensors"],
}


@pytest.fixture(scope="module")
def req_lines(repo_root):
    return requirement_lines(repo_root / "requirements.txt")


@pytest.mark.parametrize("platform", sorted(PLATFORMS))
@pytest.mark.parametrize("source", ["requirements.txt", "pyproject.toml"])
def test_each_platform_gets_its_triton(repo_root, req_lines, platform, source):
    lines = req_lines if source == "requirements.txt" else pyproject_dependencies(repo_root / "pyproject.toml")
    for py in ("3.10", "3.12", "3.13"):
        assert names(for_platform(lines, platform, py)) == EXPECTED[platform], (source, platform, py)


def test_requirements_and_pyproject_agree(repo_root, req_lines):
    deps = pyproject_dependencies(repo_root / "pyproject.toml")
    for platform in PLATFORMS:
        assert sorted(for_platform(req_lines, platform)) == sorted(for_platform(deps, platform)), platform


def test_torch_is_never_listed_or_pinned(repo_root, req_lines):
    # ComfyUI owns torch (CUDA / ROCm / nightly builds): listing it could replace the user's build
    all_names = set(names(req_lines)) | set(names(pyproject_dependencies(repo_root / "pyproject.toml")))
    assert not {"torch", "torchvision", "torchaudio", "pytorch-triton", "pytorch-triton-rocm"} & all_names
    # nor anything that depends on torch (kornia >= 0.9 needs torch >= 2.5.1: pip would replace an older torch)
    assert not {"kornia", "torchmetrics", "accelerate", "xformers"} & all_names


def test_every_listed_package_is_imported(repo_root, req_lines):
    """Nothing is listed that the shipped pack does not import (module name = dist name, '-' -> '_',
    triton-windows provides `triton`)."""
    imported = set()
    for path in [repo_root / "__init__.py", *(repo_root / "nodes").glob("*.py"),
                 *(repo_root / "adacluster_core").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module.split(".")[0])
    module_of = {"triton-windows": "triton"}
    for name in names(req_lines):
        mod = module_of.get(name, name.replace("-", "_"))
        assert mod in imported, f"requirements.txt lists {name}, but the pack never imports {mod}"


def test_marker_evaluation_can_fail():
    # the helper really evaluates markers: a Windows-only line is absent on Linux and macOS
    lines = ["a", "b; sys_platform == 'win32'"]
    assert names(for_platform(lines, "linux_x86_64")) == ["a"]
    assert names(for_platform(lines, "win_amd64")) == ["a", "b"]
    assert names(for_platform(lines, "macos_arm64")) == ["a"]
