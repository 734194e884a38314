"""install.py: which Triton it installs next to which torch (offline; the pip side is in
tests/test_requirements_pip.py)."""
from __future__ import annotations

import pytest

from tests.harness.pip_plan import load_install_py

inst = load_install_py()
CUDA_TORCH_REQS = ['filelock', 'triton==3.5.1; platform_system == "Linux" and platform_machine == "x86_64"',
                   'sympy>=1.13.3']


@pytest.mark.parametrize("torch_version, spec", [
    ("2.4.1", "triton-windows>=3.1,<3.2"), ("2.5.1+cu124", "triton-windows>=3.1,<3.2"),
    ("2.6.0", "triton-windows>=3.2,<3.3"), ("2.7.1+cu128", "triton-windows>=3.3,<3.4"),
    ("2.8.0", "triton-windows>=3.4,<3.5"), ("2.9.1+cu130", "triton-windows>=3.5,<3.6"),
    ("2.10.0", "triton-windows>=3.6,<3.7"), ("2.11.0", "triton-windows>=3.6,<3.7"),
    ("2.13.0", "triton-windows>=3.7,<3.8"), ("2.14.1", "triton-windows>=3.8,<3.9"),
])
def test_windows_table(torch_version, spec):
    got, why = inst.plan("win32", torch_version, [], {"torch": torch_version})
    assert got == spec, why


def test_windows_keeps_a_matching_triton_and_replaces_a_wrong_one():
    assert inst.plan("win32", "2.9.1", [], {"triton-windows": "3.5.1.post24"})[0] is None
    spec, why = inst.plan("win32", "2.9.1", [], {"triton-windows": "3.8.0.post29"})
    assert spec == "triton-windows>=3.5,<3.6" and "does not match" in why


@pytest.mark.parametrize("torch_version, words", [("2.3.1", "older"), ("2.99.0", "newer"), ("nightly", "cannot read")])
def test_windows_outside_the_table_installs_nothing_and_says_why(torch_version, words):
    spec, why = inst.plan("win32", torch_version, [], {})
    assert spec is None and words in why


def test_linux_installs_only_the_triton_torch_pins():
    assert inst.plan("linux", "2.9.1", CUDA_TORCH_REQS, {"triton": "3.5.1"})[0] is None
    assert inst.plan("linux", "2.9.1", CUDA_TORCH_REQS, {})[0] == "triton==3.5.1"
    assert inst.plan("linux", "2.9.1", CUDA_TORCH_REQS, {"triton": "3.8.0"})[0] == "triton==3.5.1"
    cpu, why = inst.plan("linux", "2.9.1+cpu", ["filelock"], {})
    assert cpu is None and "CPU" in why
    rocm, why = inst.plan("linux", "2.9.1+rocm6.4", ["pytorch-triton-rocm==3.5.1"], {})
    assert rocm is None and "pytorch-triton-rocm" in why


def test_macos_and_no_torch_install_nothing():
    assert inst.plan("darwin", "2.9.1", [], {})[0] is None
    spec, why = inst.plan("win32", None, [], {})
    assert spec is None and "ComfyUI's Python" in why
