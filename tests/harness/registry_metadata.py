"""Comfy Registry rules for pyproject.toml, checked offline with tomllib.

`comfy node validate` (comfy-cli 1.23) only checks that project.version is set and runs a
ruff security scan, so the registry's publishing rules are re-implemented here:
https://docs.comfy.org/registry/specifications
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import List

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore

SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
                    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
                    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$")
NAME = re.compile(r"^[a-z][a-z0-9_.-]*$")  # registry ids: lowercase, start with a letter
PUBLISHER = re.compile(r"^[a-z][a-z0-9-]*$")
REQUIRED_COMFY = ">=0.3.60"


def validate_pyproject(path) -> List[str]:
    """Return a list of human-readable problems (empty = valid)."""
    path = Path(path)
    errs: List[str] = []
    try:
        data = tomllib.loads(path.read_text())
    except Exception as e:  # noqa: BLE001
        return [f"pyproject.toml does not parse: {e}"]
    proj = data.get("project") or {}
    comfy = (data.get("tool") or {}).get("comfy") or {}

    name = proj.get("name")
    if not isinstance(name, str) or not name:
        errs.append("[project] name is missing")
    else:
        if "comfyui" in name.lower():
            errs.append(f"[project] name {name!r} must not contain 'ComfyUI'")
        if not NAME.match(name) or len(name) > 100:
            errs.append(f"[project] name {name!r}: lowercase letters, digits, '-', '_', '.', starting with a letter")
    version = proj.get("version")
    if not isinstance(version, str) or not SEMVER.match(version):
        errs.append(f"[project] version {version!r} is not semantic versioning (X.Y.Z)")
    desc = proj.get("description")
    if not isinstance(desc, str) or not desc.strip():
        errs.append("[project] description is missing")
    lic = proj.get("license")
    if isinstance(lic, dict):
        if "file" in lic:
            if not (path.parent / lic["file"]).is_file():
                errs.append(f"[project] license file {lic['file']!r} does not exist")
        elif not lic.get("text"):
            errs.append("[project] license table needs 'file' or 'text'")
    elif not (isinstance(lic, str) and lic.strip()):
        errs.append("[project] license is missing")
    deps = proj.get("dependencies", [])
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        errs.append("[project] dependencies must be a list of strings")
    urls = proj.get("urls") or {}
    repo = urls.get("Repository")
    if not isinstance(repo, str) or not re.match(r"^https://", repo):
        errs.append("[project.urls] Repository must be an https URL")

    if not comfy:
        errs.append("[tool.comfy] section is missing")
    pub = comfy.get("PublisherId")
    if not isinstance(pub, str) or not PUBLISHER.match(pub):
        errs.append(f"[tool.comfy] PublisherId {pub!r} is missing or invalid")
    dn = comfy.get("DisplayName")
    if not isinstance(dn, str) or not dn.strip():
        errs.append("[tool.comfy] DisplayName is missing")
    if "Icon" not in comfy:
        errs.append("[tool.comfy] Icon key is missing (may be an empty string)")
    elif not isinstance(comfy["Icon"], str) or (comfy["Icon"] and not comfy["Icon"].startswith("https://")):
        errs.append("[tool.comfy] Icon must be '' or an https URL")
    rc = comfy.get("requires-comfyui")
    if rc != REQUIRED_COMFY:
        errs.append(f"[tool.comfy] requires-comfyui must be {REQUIRED_COMFY!r} (found {rc!r})")
    inc = comfy.get("includes", [])
    if not isinstance(inc, list):
        errs.append("[tool.comfy] includes must be a list")
    return errs
