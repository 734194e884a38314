"""adacluster_core as the node modules see it: the one place in nodes/ that imports the core.

ComfyUI loads the repo as the package `custom_nodes/<pack>`, so the core is a sibling subpackage;
tests (and a pip-installed core) import it top-level. No ComfyUI imports here.
"""
from __future__ import annotations

import torch

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

# what the sparse kernel handles (the core checks too; checking before the call gives short reasons);
# the fallbacks serve an older installed core without these names
SUPPORTED_DTYPES = tuple(getattr(core_api, "SPARSE_DTYPES", (torch.float16, torch.bfloat16, torch.float32)))
SUPPORTED_HEAD_DIMS = tuple(getattr(core_api, "SPARSE_HEAD_DIMS", (64, 128)))
NO_TRITON = getattr(core_api, "NO_TRITON", "dense: no triton")
NON_FINITE = getattr(core_api, "NON_FINITE", "non-finite input")
# core reasons whose call must give exactly dense's result: the patcher reruns it through ComfyUI's attention
DENSE_RESULT_REASONS = tuple(getattr(core_api, "DENSE_RESULT_REASONS", (NON_FINITE,)))
MASK_THRESHOLD = getattr(core_api, "MASK_THRESHOLD", -1e4)   # additive mask values <= this are "masked"

__all__ = ["AdaClusterConfig", "ClusterState", "sparse_attention", "core_api", "core_config", "core_memory",
           "plan_layers",
           "CompileAhead",
           "SUPPORTED_DTYPES", "SUPPORTED_HEAD_DIMS", "NO_TRITON", "NON_FINITE", "DENSE_RESULT_REASONS",
           "MASK_THRESHOLD"]
