"""AdaCluster: training-free sparse attention for video diffusion transformers.

Pure PyTorch + Triton; never imports ComfyUI.

    from adacluster_core import AdaClusterConfig, ClusterState, sparse_attention
    out, stats = sparse_attention(q, k, v, config=AdaClusterConfig(), state=None)
"""
from .config import AdaClusterConfig
from .state import ClusterState
from .api import sparse_attention

__all__ = ["AdaClusterConfig", "ClusterState", "sparse_attention"]
__version__ = "0.1.0"
