#!/usr/bin/env python3
"""Check that requirements.txt resolves to binary wheels on every platform users run ComfyUI on.

For each platform (linux_x86_64, win_amd64, macos_arm64) the markers are evaluated offline
(pip itself evaluates them against the machine it runs on, even with --platform), then
`pip install --dry-run --report` resolves that platform's list with --platform/--python-version
and --only-binary=:all:. Needs network access to PyPI; nothing is installed.

    python scripts/check_requirements.py [--python-version 3.12] [--out artifacts/requirements]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness.requirements_markers import PLATFORMS, for_platform, requirement_lines  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--python-version", default="3.12")
    ap.add_argument("--out", default=str(ROOT / "artifacts" / "requirements"))
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = requirement_lines(ROOT / "requirements.txt")
    rc = 0
    for plat, spec in PLATFORMS.items():
        reqs = for_platform(lines, plat, a.python_version)
        with tempfile.TemporaryDirectory() as tmp:
            req_file = Path(tmp) / "requirements.txt"
            req_file.write_text("\n".join(reqs) + "\n")
            report = out / f"dry_run_{plat}_py{a.python_version}.json"
            cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--report", str(report),
                   "--ignore-installed", "--only-binary=:all:", "--python-version", a.python_version,
                   "--target", str(Path(tmp) / "target"), "-q", "--disable-pip-version-check",
                   *[x for p in spec["pip_platform"] for x in ("--platform", p)], "-r", str(req_file)]
            r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            rc = 1
            err = "\n".join(x for x in r.stderr.splitlines() if "is ignored" not in x)
            print(f"{plat}: FAILED to resolve {reqs}\n{err}")
            continue
        got = [(i["metadata"]["name"], i["metadata"]["version"], i["download_info"]["url"].rsplit("/", 1)[-1])
               for i in json.loads(report.read_text())["install"]]
        print(f"{plat} (py{a.python_version}): requirements {reqs or '(none)'} -> would install "
              + ", ".join(f"{n} {v} ({w})" for n, v, w in got))
    return rc


if __name__ == "__main__":
    sys.exit(main())
