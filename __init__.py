"""AdaCluster sparse attention for ComfyUI video DiTs (Wan, HunyuanVideo, CogVideoX).

ComfyUI loads this file as a custom node pack. The kernel library `adacluster_core`
and the test suite import without ComfyUI, so the node registration below is guarded.
"""
WEB_DIRECTORY = "./web"

try:  # only inside a running ComfyUI
    import comfy_api.latest  # noqa: F401
    _HAVE_COMFY = True
except Exception:  # pragma: no cover - library / test import without ComfyUI
    _HAVE_COMFY = False

if _HAVE_COMFY:
    from .nodes import comfy_entrypoint  # noqa: F401

    __all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
else:
    __all__ = ["WEB_DIRECTORY"]
