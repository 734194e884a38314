"""`pip install -r requirements.txt` (+ install.py's Triton on Windows) never puts torch in the plan.

pip's own dry run (`--dry-run --report`, against PyPI, nothing installed) next to torch 2.4, 2.7,
2.9 and the current one: on this host in throwaway venvs with fake installed torch / triton
distributions, and per platform tag (linux x86_64, win_amd64, macOS arm64) with the installed torch
as a constraint (tests/harness/pip_plan.py says why). Skipped when PyPI cannot be reached.
scripts/check_requirements.py prints the same plans.
"""
from __future__ import annotations

import pytest

from tests.harness import pip_plan

CASES = pip_plan.cases()


@pytest.fixture(scope="module")
def plans():
    if not pip_plan.pypi_reachable():
        pytest.skip("PyPI (pypi.org:443) is not reachable: the dry runs need its index")
    return pip_plan.check_all()


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_torch_is_never_in_the_plan(plans, case):
    problem, line = plans[case]
    assert problem is None, f"{case}: {problem}\n{line}"


def test_windows_gets_the_triton_windows_of_its_torch(plans):
    for cid, where, torch_version, _ in CASES:
        if where == "win_amd64":
            spec = pip_plan.windows_triton(torch_version)
            lo = spec.split(">=")[1].split(",")[0]   # "3.5" of "triton-windows>=3.5,<3.6"
            assert f"triton-windows {lo}." in plans[cid][1], plans[cid][1]


def test_the_host_check_sees_torch_being_replaced():
    """The method can fail: a requirement that needs a newer torch than the installed (fake) one
    shows torch in the plan; one the installed torch satisfies does not."""
    if not pip_plan.pypi_reachable():
        pytest.skip("PyPI (pypi.org:443) is not reachable")
    got = pip_plan.host_plan(["torch>=2.5.1"], "2.4.1", "3.0.0", extra_args=["--no-deps"])
    assert [n for n, _ in got] == ["torch"]
    assert pip_plan.host_plan(["torch>=2.4", "triton"], "2.4.1", "3.0.0", extra_args=["--no-deps"]) == []
