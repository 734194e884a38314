"""Which of the pack's requirements each platform gets (PEP 508 markers evaluated offline).

pip evaluates environment markers against the interpreter it runs in, even with --platform, so
scripts/check_requirements.py resolves the markers here first and hands pip each platform's list.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

try:
    from packaging.requirements import Requirement
except ImportError:  # pragma: no cover - pip always vendors it
    from pip._vendor.packaging.requirements import Requirement  # type: ignore

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore

# marker environments of the three platforms users run ComfyUI on (PEP 508 names)
PLATFORMS: Dict[str, dict] = {
    "linux_x86_64": {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
                     "os_name": "posix", "pip_platform": ["manylinux_2_28_x86_64", "manylinux2014_x86_64"]},
    "win_amd64": {"sys_platform": "win32", "platform_system": "Windows", "platform_machine": "AMD64",
                  "os_name": "nt", "pip_platform": ["win_amd64"]},
    "macos_arm64": {"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "arm64",
                    "os_name": "posix", "pip_platform": ["macosx_14_0_arm64", "macosx_11_0_arm64"]},
}


def requirement_lines(path) -> List[str]:
    """Requirement strings of a requirements.txt (comments and blank lines dropped)."""
    out = []
    for ln in Path(path).read_text().splitlines():
        ln = ln.split(" #", 1)[0].strip()
        if ln and not ln.startswith("#"):
            out.append(ln)
    return out


def pyproject_dependencies(path) -> List[str]:
    return list(tomllib.loads(Path(path).read_text())["project"]["dependencies"])


def for_platform(lines: List[str], platform: str, python_version: str = "3.12") -> List[str]:
    """The requirements (marker-free strings) that `platform` installs."""
    env = {k: v for k, v in PLATFORMS[platform].items() if k != "pip_platform"}
    env.update(python_version=python_version, python_full_version=python_version + ".0",
               implementation_name="cpython", platform_python_implementation="CPython")
    out = []
    for line in lines:
        r = Requirement(line)
        if r.marker is None or r.marker.evaluate(env):
            out.append(f"{r.name}{r.specifier}")
    return out


def names(lines: List[str]) -> List[str]:
    return sorted(Requirement(x).name.lower() for x in lines)
