"""Which ComfyUI the tests run against (the Python side of scripts/comfy_select.sh).

`bash scripts/test.sh` exports ADACLUSTER_COMFY_DIR (and runs pytest with that environment's
python); pytest started by hand resolves ADACLUSTER_COMFYUI the same way:
  unset / "0.3.75"   <repo>/.comfyui          (0.3.75 from the registry)
  "upstream"         <repo>/.comfyui-upstream (built from ../shared/comfyui-upstream/ by
                     ADACLUSTER_COMFYUI=upstream bash scripts/setup_env.sh)
  a path             that ComfyUI checkout
"""
from __future__ import annotations

import os
import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def comfy_kind() -> str:
    sel = os.environ.get("ADACLUSTER_COMFYUI", "")
    if sel in ("", "default", "0.3.75"):
        return "default"
    return "upstream" if sel == "upstream" else "path"


def comfy_dir() -> Path:
    explicit = os.environ.get("ADACLUSTER_COMFY_DIR")
    if explicit:
        return Path(explicit)
    kind = comfy_kind()
    if kind == "default":
        return REPO_ROOT / ".comfyui"
    if kind == "upstream":
        return REPO_ROOT / ".comfyui-upstream"
    return Path(os.environ["ADACLUSTER_COMFYUI"]).resolve()


def comfy_version(d: Path | None = None) -> tuple[int, ...] | None:
    """ComfyUI's own version (comfyui_version.py), e.g. (0, 3, 75); None when unknown. For the
    log and test ids only: tests decide expectations from what the running ComfyUI does."""
    d = d or comfy_dir()
    try:
        m = re.search(r"__version__\s*=\s*['\"]([0-9.]+)", (d / "comfyui_version.py").read_text())
        return tuple(int(p) for p in m.group(1).split(".")) if m else None
    except OSError:
        return None
