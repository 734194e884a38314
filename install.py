#!/usr/bin/env python3
"""Install the Triton that matches the torch ComfyUI already has (never torch itself).

ComfyUI-Manager runs this file after `requirements.txt` (`python install.py` with ComfyUI's
Python, in the pack's folder); by hand:

    python ComfyUI/custom_nodes/<this folder>/install.py             # with ComfyUI's own Python
    python install.py --dry-run                                      # only print what it would do

Triton has to match torch's version (a newer Triton breaks torch's own compiled kernels), and pip
cannot know which torch you have when it reads a requirements file, so:

* Windows: `triton-windows` for your torch, from the table below (the Triton minor version that
  torch's Linux wheels pin; triton-windows' README lists the same pairs). Installed, or replaced
  when the installed one does not match. A torch newer than the table: nothing is installed, the
  message says how to pick it by hand.
* Linux: torch's CUDA wheels already depend on the `triton` they need (requirements.txt's
  unpinned `triton` then changes nothing); if that exact Triton is missing it is installed. ROCm
  and nightly torch builds bring their own (`pytorch-triton-rocm`, `pytorch-triton`): left alone.
* macOS: no Triton exists; nothing to do (the pack runs dense there and the Stats node says so).

Every pip call carries a constraint `torch==<installed version>`, so it can never replace torch.
"""
from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import List, Optional, Tuple

# torch major.minor -> the triton-windows major.minor built for it (triton-windows 3.1 covers
# torch 2.4 and 2.5; from 2.6 on each Triton minor pairs with the torch whose Linux wheel pins it)
WINDOWS_TRITON = {
    (2, 4): (3, 1), (2, 5): (3, 1), (2, 6): (3, 2), (2, 7): (3, 3), (2, 8): (3, 4), (2, 9): (3, 5),
    (2, 10): (3, 6), (2, 11): (3, 6), (2, 12): (3, 7), (2, 13): (3, 7), (2, 14): (3, 8),
}
# Triton builds that torch builds bring instead of PyPI's `triton` (never put `triton` over them)
OWN_TRITON_DISTS = ("pytorch-triton", "pytorch-triton-rocm", "pytorch-triton-xpu")


def _major_minor(version: str) -> Optional[Tuple[int, int]]:
    m = re.match(r"(\d+)\.(\d+)", version or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def windows_triton_spec(torch_version: str) -> Tuple[Optional[str], str]:
    """(requirement or None, why) for triton-windows on Windows with this torch."""
    mm = _major_minor(torch_version)
    if mm is None:
        return None, f"cannot read the torch version {torch_version!r}"
    if mm in WINDOWS_TRITON:
        a, b = WINDOWS_TRITON[mm]
        return f"triton-windows>={a}.{b},<{a}.{b + 1}", f"torch {torch_version} pairs with Triton {a}.{b}"
    newest = max(WINDOWS_TRITON)
    if mm > newest:
        return None, (f"torch {torch_version} is newer than this installer's table (up to torch "
                      f"{newest[0]}.{newest[1]}): install the triton-windows whose version starts with the Triton "
                      "version that torch pins on Linux (triton-windows' README lists the pairs), e.g. "
                      '`pip install "triton-windows>=3.8,<3.9"` for torch 2.14')
    return None, (f"torch {torch_version} is older than any triton-windows on PyPI (torch >= 2.4 needed): "
                  "the pack runs ComfyUI's dense attention (Stats: `dense: no triton`)")


def _requirement(text: str):
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pragma: no cover - pip vendors it
        from pip._vendor.packaging.requirements import Requirement  # type: ignore
    return Requirement(text)


def linux_triton_spec(torch_requires: List[str], installed: dict) -> Tuple[Optional[str], str]:
    """(requirement or None, why) for Linux: the `triton` torch's own metadata pins (markers ignored:
    the pin is what this torch was built with), unless that torch brings its own Triton build."""
    reqs = [_requirement(r) for r in torch_requires or []]
    own = sorted({r.name.lower() for r in reqs} & set(OWN_TRITON_DISTS)) or \
        [d for d in OWN_TRITON_DISTS if d in installed]
    if own:
        return None, f"this torch build brings its own Triton ({own[0]}): nothing to install"
    pins = [r for r in reqs if r.name.lower() == "triton"]
    if not pins or not str(pins[0].specifier):
        return None, ("this torch does not depend on `triton` (a CPU build): the sparse kernels need a CUDA torch, "
                      "nothing to install")
    return f"triton{pins[0].specifier}", "the Triton this torch was built with (from its own requirements)"


def plan(platform: str, torch_version: Optional[str], torch_requires: List[str], installed: dict
         ) -> Tuple[Optional[str], str]:
    """(requirement to install or None, message). `installed`: dist name (lower case) -> version."""
    if torch_version is None:
        return None, "torch is not installed in this Python: run this with ComfyUI's Python"
    if platform == "win32":
        spec, why = windows_triton_spec(torch_version)
    elif platform.startswith("linux"):
        spec, why = linux_triton_spec(torch_requires, installed)
    else:
        return None, "no Triton exists for this platform: the pack runs ComfyUI's dense attention here"
    if spec is None:
        return None, why
    req = _requirement(spec)
    have = installed.get(req.name.lower())
    if have is not None and req.specifier.contains(have, prereleases=True):
        return None, f"{req.name} {have} already matches torch {torch_version} ({spec})"
    return spec, why + (f"; installed {req.name} {have} does not match" if have else "")


def _installed() -> dict:
    out = {}
    for d in metadata.distributions():
        name = (d.metadata["Name"] or "").lower()
        if name:
            out[name] = d.version
    return out


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    dry = "--dry-run" in args
    installed = _installed()
    torch_version = installed.get("torch")
    torch_requires = (metadata.requires("torch") or []) if torch_version else []
    spec, why = plan(sys.platform, torch_version, torch_requires, installed)
    if spec is None:
        print(f"[AdaCluster install] {why}")
        return 0
    print(f"[AdaCluster install] {why}: pip install \"{spec}\" (torch {torch_version} stays as it is)"
          + (" [dry run]" if dry else ""))
    with tempfile.TemporaryDirectory() as tmp:
        constraints = Path(tmp) / "keep_torch.txt"
        constraints.write_text(f"torch=={torch_version}\n")
        cmd = [sys.executable, "-m", "pip", "install", spec, "-c", str(constraints)] + (["--dry-run"] if dry else [])
        rc = subprocess.call(cmd)
    if rc != 0:
        print(f"[AdaCluster install] pip failed ({rc}); the pack still loads and runs ComfyUI's dense attention "
              "until a matching Triton is installed (Stats: `dense: no triton`)")
    return rc


if __name__ == "__main__":
    sys.exit(main())
