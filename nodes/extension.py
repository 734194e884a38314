"""The ComfyExtension listing the pack's four nodes."""
from comfy_api.latest import ComfyExtension, io

from .layer_overrides import AdaClusterLayerOverrides
from .sparse_attention import AdaClusterSparseAttention
from .stats import AdaClusterStats
from .thresholds import AdaClusterThresholds

NODES = [AdaClusterSparseAttention, AdaClusterThresholds, AdaClusterLayerOverrides, AdaClusterStats]


class AdaClusterExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)
