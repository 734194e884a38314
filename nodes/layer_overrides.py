"""AdaCluster Layer Overrides: a small per-layer rule grammar -> ADACLUSTER_LAYERS."""
from comfy_api.latest import io

from . import patcher
from .io_types import CATEGORY, AdaClusterLayersType
from .layer_rules import LayerRules

EXAMPLE = """# one rule per line: LAYERS: ACTION[, ACTION...]
# LAYERS: 3 | 0-2 | -1 (last) | 20- (to the end) | *     ACTION: dense | sparse | field=value
0-1, -1: dense
"""


class AdaClusterLayerOverrides(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AdaClusterLayerOverrides",
            display_name="AdaCluster Layer Overrides",
            category=CATEGORY,
            description="Per-layer rules: keep layers dense, force them sparse, or change config fields "
                        "(e.g. '10-19: top_k=64'). Negative indices count from the last layer. Later rules win; "
                        "a connected previous overrides input comes first.",
            inputs=[
                io.String.Input("rules", multiline=True, default=EXAMPLE,
                                tooltip="One rule per line, '#' comments. Examples: '0-2, -1: dense', "
                                        "'10-19: top_k=64', '5: sparse', '*: kmeans_iters_reuse=1'."),
                AdaClusterLayersType.Input("previous", optional=True,
                                           tooltip="Rules from another Layer Overrides node (applied first)."),
            ],
            outputs=[AdaClusterLayersType.Output(display_name="layer_overrides")],
        )

    @classmethod
    def validate_inputs(cls, rules=None, **kwargs):
        if rules is None:
            return True
        try:
            patcher.parse_layer_rules(rules)
        except ValueError as e:
            return f"AdaCluster Layer Overrides: {e}"
        return True

    @classmethod
    def execute(cls, rules, previous=None) -> io.NodeOutput:
        try:
            parsed = patcher.parse_layer_rules(rules)
        except ValueError as e:
            raise ValueError(f"AdaCluster Layer Overrides: {e}") from None
        if isinstance(previous, LayerRules):
            parsed = previous.chain(parsed)
        return io.NodeOutput(parsed)
