#!/usr/bin/env python3
"""Check that installing this pack never installs or replaces torch, on every platform users run
ComfyUI on, next to the torch versions they still have (2.4, 2.7, 2.9, current).

The same method as tests/test_requirements_pip.py (tests/harness/pip_plan.py): `pip install
--dry-run --report` against PyPI of requirements.txt (+ install.py's triton-windows on Windows),
in throwaway venvs with fake installed torch / triton distributions on this host, and per platform
tag (linux x86_64, win_amd64, macOS arm64) with the installed torch as a constraint. Needs network
access to PyPI; nothing is installed. Prints each plan; exits 1 when a plan has torch in it or does
not resolve.

    python scripts/check_requirements.py [--python-version 3.12]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness import pip_plan  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--python-version", default="3.12")
    a = ap.parse_args(argv)
    if not pip_plan.pypi_reachable():
        print("PyPI (pypi.org:443) is not reachable: nothing checked")
        return 2
    results = pip_plan.check_all(a.python_version)
    for case, (problem, line) in results.items():
        print(("FAIL " if problem else "ok   ") + line + (f"\n     {problem}" if problem else ""))
    bad = [c for c, (p, _) in results.items() if p]
    print(f"{len(results) - len(bad)}/{len(results)} plans without torch" + (f"; failed: {bad}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
