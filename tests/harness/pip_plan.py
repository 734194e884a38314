"""What `pip install -r requirements.txt` (+ install.py's Triton) would do next to a given torch.

Two ways, both `pip install --dry-run --report` against PyPI (nothing is installed):

* `host_plan`: a throwaway venv (`python -m venv --without-pip`, milliseconds) holding FAKE installed
  `torch` / `triton` distributions (a dist-info folder with METADATA only, carrying the real torch
  wheel's `Requires-Dist: triton==…` line), resolved by this interpreter's pip through
  `pip --python <venv>`: exactly what a user's ComfyUI Python with that torch would plan, on this
  host's platform.
* `platform_plan`: another platform tag (win_amd64, macOS arm64, linux from any host). pip accepts
  --platform only with --target, where it ignores installed packages, so the installed torch is
  given as a constraint (`torch==<version>`): any requirement that pulls torch then shows torch in
  the plan, and one that needs another torch makes the resolution fail. Markers are evaluated for
  that platform first (tests/harness/requirements_markers.py: pip would evaluate them against this
  host).

Used by tests/test_requirements_pip.py and scripts/check_requirements.py.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import venv
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from tests.harness.requirements_markers import PLATFORMS, for_platform, requirement_lines

ROOT = Path(__file__).resolve().parents[2]

# torch versions ComfyUI users still run, each with the Triton its Linux wheel pins (read from
# PyPI's torch metadata): 2.4 (oldest with a triton-windows on PyPI), 2.7, 2.9, and the current one
TORCH_CASES: List[Tuple[str, str]] = [
    ("2.4.1", "3.0.0"),
    ("2.7.1", "3.3.1"),
    ("2.9.1", "3.5.1"),
    ("2.14.1", "3.8.0"),
]
NEVER = {"torch", "torchvision", "torchaudio"}


def pypi_reachable(timeout: float = 5.0) -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _write_dist(site: Path, name: str, version: str, requires: Sequence[str] = ()) -> None:
    d = site / f"{name.replace('-', '_')}-{version}.dist-info"
    d.mkdir(parents=True, exist_ok=True)
    (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                                + "".join(f"Requires-Dist: {r}\n" for r in requires))
    (d / "INSTALLER").write_text("pip\n")
    (d / "RECORD").write_text("")


def fake_torch_venv(where: Path, torch_version: str, triton_version: Optional[str]) -> Path:
    """A venv without pip whose site-packages lists torch (and its pinned triton) as installed.
    Returns its python."""
    venv.EnvBuilder(with_pip=False, symlinks=os.name != "nt").create(where)
    py = where / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = Path(subprocess.check_output([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    requires = [f'triton=={triton_version}; platform_system == "Linux" and platform_machine == "x86_64"'] \
        if triton_version else []
    _write_dist(site, "torch", torch_version, requires)
    if triton_version:
        _write_dist(site, "triton", triton_version)
    return py


class PipFailed(RuntimeError):
    pass


def _run_pip(args: List[str], report: Path) -> List[Tuple[str, str]]:
    cmd = [sys.executable, "-m", "pip", *args, "--dry-run", "--report", str(report), "-q",
           "--disable-pip-version-check", "--no-input"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        err = "\n".join(x for x in r.stderr.splitlines() if "is ignored" not in x)
        raise PipFailed(f"{' '.join(args)}\n{err}")
    return [(i["metadata"]["name"].lower().replace("_", "-"), i["metadata"]["version"])
            for i in json.loads(report.read_text())["install"]]


def host_plan(requirements: List[str], torch_version: str, triton_version: Optional[str],
              extra_args: Sequence[str] = ()) -> List[Tuple[str, str]]:
    """(name, version) pip would install into a Python that has this torch (+ triton) installed."""
    with tempfile.TemporaryDirectory() as tmp:
        py = fake_torch_venv(Path(tmp) / "venv", torch_version, triton_version)
        req = Path(tmp) / "requirements.txt"
        req.write_text("\n".join(requirements) + "\n")
        return _run_pip(["--python", str(py), "install", *extra_args, "-r", str(req)], Path(tmp) / "report.json")


def platform_plan(requirements: List[str], platform: str, torch_version: str, python_version: str = "3.12",
                  triton_version: Optional[str] = None) -> List[Tuple[str, str]]:
    """(name, version) pip would install on `platform` (markers already evaluated) next to this torch
    (on Linux also the `triton` that torch pins, as the installed CUDA torch brings it)."""
    spec = PLATFORMS[platform]
    with tempfile.TemporaryDirectory() as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text("\n".join(requirements) + "\n")
        con = Path(tmp) / "constraints.txt"
        con.write_text(f"torch=={torch_version}\n"
                       + (f"triton=={triton_version}\n" if triton_version and platform.startswith("linux") else ""))
        args = ["install", "--target", str(Path(tmp) / "target"), "--only-binary=:all:",
                "--python-version", python_version, *[x for p in spec["pip_platform"] for x in ("--platform", p)],
                "-c", str(con), "-r", str(req)]
        return _run_pip(args, Path(tmp) / "report.json")


def windows_triton(torch_version: str) -> Optional[str]:
    """install.py's triton-windows requirement for this torch (None: it installs none)."""
    return load_install_py().windows_triton_spec(torch_version)[0]


def load_install_py(root: Path = ROOT):
    import importlib.util
    spec = importlib.util.spec_from_file_location("adacluster_install_py", root / "install.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def platform_requirements(platform: str, torch_version: str, python_version: str = "3.12",
                          root: Path = ROOT) -> List[str]:
    """What a user on `platform` ends up asking pip for: requirements.txt (markers evaluated for
    that platform) plus, on Windows, install.py's triton-windows for this torch."""
    reqs = for_platform(requirement_lines(root / "requirements.txt"), platform, python_version)
    if platform == "win_amd64":
        tw = windows_triton(torch_version)
        if tw:
            reqs.append(tw)
    return reqs


def cases(python_version: str = "3.12") -> List[Tuple[str, str, str, Optional[str]]]:
    """(case id, platform or "host", torch, triton) for every check: the host venv (Linux hosts
    only) and every platform tag, for each torch in TORCH_CASES."""
    out = []
    for torch_version, triton_version in TORCH_CASES:
        if sys.platform.startswith("linux"):
            out.append((f"host-linux-torch{torch_version}", "host", torch_version, triton_version))
        for platform in PLATFORMS:
            out.append((f"{platform}-py{python_version}-torch{torch_version}", platform, torch_version, triton_version))
    return out


def check_case(where: str, torch_version: str, triton_version: Optional[str], python_version: str = "3.12",
               root: Path = ROOT) -> Tuple[Optional[str], str]:
    """(problem or None, one line saying what pip would install) for one case."""
    try:
        if where == "host":
            reqs = requirement_lines(root / "requirements.txt")
            got = host_plan(reqs, torch_version, triton_version)
            line = (f"this host with torch {torch_version} + triton {triton_version} installed: "
                    f"pip install -r requirements.txt would install {_fmt(got)}")
            touched = sorted((NEVER | {"triton"}) & {n for n, _ in got})
            return (f"plan touches {touched}" if touched else None), line
        reqs = platform_requirements(where, torch_version, python_version, root)
        got = platform_plan(reqs, where, torch_version, python_version, triton_version)
        line = f"{where} py{python_version} next to torch {torch_version}: {reqs} -> would install {_fmt(got)}"
        bad = sorted(NEVER & {n for n, _ in got})
        if bad:
            return f"plan has {bad}", line
        if any(r.startswith("triton-windows") for r in reqs) and not any(n == "triton-windows" for n, _ in got):
            return "no triton-windows in the plan", line
        return None, line
    except PipFailed as e:
        return f"pip failed: {e}", f"{where} torch {torch_version}: pip failed"


def check_all(python_version: str = "3.12", root: Path = ROOT, workers: int = 4) -> Dict[str, Tuple[Optional[str], str]]:
    """check_case for every case, a few pip processes at a time (they mostly wait on the network)."""
    from concurrent.futures import ThreadPoolExecutor
    cs = cases(python_version)
    with ThreadPoolExecutor(max_workers=workers) as ex:
        futs = [ex.submit(check_case, w, t, tr, python_version, root) for _, w, t, tr in cs]
        return {cid: f.result() for (cid, *_), f in zip(cs, futs)}


def _fmt(got) -> str:
    return ", ".join(f"{n} {v}" for n, v in got) or "(nothing)"
