"""adacluster_core as the node modules see it: the one place in nodes/ that imports the core.

ComfyUI loads the repo as the package `custom_nodes/<pack>`, so the core is a sibling subpackage;
tests (and a pip-installed core) import it top-level. No ComfyUI imports here.
"""
from __future__ import annotations

try:
    from ..adacluster_core import AdaClusterConfig, ClusterState, sparse_attention
    from ..adacluster_core import api as core_api
    from ..adacluster_core import config as core_config
    from ..adacluster_core import memory as core_memory
    from ..adacluster_core.clustering import plan_layers
    from ..adacluster_core.compile_ahead import CompileAhead
except ImportError:
    from adacluster_core import AdaClusterConfig, ClusterState, sparse_attention
    from adacluster_core import api as core_api
    from adacluster_core import config as core_config
    from adacluster_core import memory as core_memory
    from adacluster_core.clustering import plan_layers
    from adacluster_core.compile_ahead import CompileAhead

# what the sparse kernel handles (the core checks too; checking before the call gives short reasons)
SUPPORTED_DTYPES = tuple(core_api.SPARSE_DTYPES)
SUPPORTED_HEAD_DIMS = tuple(core_api.SPARSE_HEAD_DIMS)
NO_TRITON = core_api.NO_TRITON
NON_FINITE = core_api.NON_FINITE
# core reasons whose call must give exactly dense's result: the patcher reruns it through ComfyUI's attention
DENSE_RESULT_REASONS = tuple(core_api.DENSE_RESULT_REASONS)
MASK_THRESHOLD = core_api.MASK_THRESHOLD   # additive mask values <= this are "masked"

__all__ = ["AdaClusterConfig", "ClusterState", "sparse_attention", "core_api", "core_config", "core_memory",
           "plan_layers",
           "CompileAhead",
           "SUPPORTED_DTYPES", "SUPPORTED_HEAD_DIMS", "NO_TRITON", "NON_FINITE", "DENSE_RESULT_REASONS",
           "MASK_THRESHOLD"]
