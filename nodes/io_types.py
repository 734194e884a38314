"""Custom socket types of the pack (V3 API)."""
from comfy_api.latest import io

AdaClusterConfigType = io.Custom("ADACLUSTER_CONFIG")
AdaClusterLayersType = io.Custom("ADACLUSTER_LAYERS")
CATEGORY = "model_patches/AdaCluster"
