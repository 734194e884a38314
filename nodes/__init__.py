"""ComfyUI nodes of the AdaCluster pack (V3 API).

Importing this package needs no ComfyUI; `comfy_entrypoint` imports the node modules (which
import ComfyUI; `.core` is their only import of adacluster_core) when ComfyUI calls it.
"""


async def comfy_entrypoint():
    from .extension import AdaClusterExtension
    return AdaClusterExtension()


__all__ = ["comfy_entrypoint"]
