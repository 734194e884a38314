"""AdaCluster Sparse Attention: MODEL -> MODEL whose video self-attention runs AdaCluster."""
from comfy_api.latest import io

from . import patcher
from .io_types import CATEGORY, AdaClusterConfigType, AdaClusterLayersType


class AdaClusterSparseAttention(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AdaClusterSparseAttention",
            display_name="AdaCluster Sparse Attention",
            category=CATEGORY,
            description=("Routes the video self-attention of Wan 2.1/2.2, HunyuanVideo 1.0/1.5 and CogVideoX "
                         "through AdaCluster sparse attention (adaptive query/key clustering). Cross-attention, "
                         "text-only attention and anything it cannot place stay dense."),
            inputs=[
                io.Model.Input("model", tooltip="The video model to patch."),
                io.Combo.Input("preset", options=list(patcher.PRESETS), default="auto",
                               tooltip="Per-model defaults. auto: balanced profile of the detected model family "
                                       "(Wan / HunyuanVideo / CogVideoX). quality keeps more key clusters and a "
                                       "longer dense warmup; fast fewer. Ignored when a config is connected."),
                io.Boolean.Input("enabled", default=True,
                                 tooltip="Off: the model passes through unchanged (dense attention, bit-identical "
                                         "results; an earlier AdaCluster patch on the input is removed)."),
                AdaClusterConfigType.Input("config", optional=True,
                                           tooltip="From AdaCluster Thresholds; replaces the preset."),
                AdaClusterLayersType.Input("layer_overrides", optional=True,
                                           tooltip="From AdaCluster Layer Overrides: per-layer dense/sparse/fields."),
            ],
            outputs=[io.Model.Output(tooltip="The patched model (a clone; the input is untouched).")],
        )

    @classmethod
    def execute(cls, model, preset="auto", enabled=True, config=None, layer_overrides=None) -> io.NodeOutput:
        return io.NodeOutput(patcher.patch_model(model, config=config, layer_rules=layer_overrides,
                                                 enabled=enabled, preset=preset))
