"""The ComfyExtension listing the pack's nodes."""
from comfy_api.latest import ComfyExtension, io

from .capture import AdaClusterCapture
from .compare import AdaClusterCompare
from .layer_overrides import AdaClusterLayerOverrides
from .sparse_attention import AdaClusterSparseAttention
from .stats import AdaClusterStats
from .thresholds import AdaClusterThresholds

NODES = [AdaClusterSparseAttention, AdaClusterThresholds, AdaClusterLayerOverrides, AdaClusterStats,
         AdaClusterCapture, AdaClusterCompare]


class AdaClusterExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)
