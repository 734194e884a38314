"""AdaCluster Layer Overrides: a small per-layer rule grammar (+ tuner profile) -> ADACLUSTER_LAYERS."""
import json
import os

from comfy_api.latest import io

from . import patcher
from .io_types import CATEGORY, AdaClusterLayersType
from .layer_rules import LayerRules, profile_to_rules_text


def resolve_profile_path(path: str) -> str:
    """Absolute path, or relative to ComfyUI's output folder, then its input folder."""
    p = os.path.expanduser(path.strip().strip('"'))
    if os.path.isabs(p):
        return p
    try:
        import folder_paths
        roots = [folder_paths.get_output_directory(), folder_paths.get_input_directory()]
    except Exception:
        roots = [os.getcwd()]
    for r in roots:
        cand = os.path.join(r, p)
        if os.path.isfile(cand):
            return cand
    return os.path.join(roots[0], p)


def load_profile_rules(path: str) -> LayerRules:
    """A tuner profile file (adacluster_core.tune) -> LayerRules (ValueError naming the file)."""
    full = resolve_profile_path(path)
    try:
        with open(full, encoding="utf-8") as f:
            prof = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"profile: no such file {full!r}") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"profile {full!r}: {e}") from None
    try:
        return patcher.parse_layer_rules(profile_to_rules_text(prof))
    except ValueError as e:
        raise ValueError(f"profile {full!r}: {e}") from None

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
                io.String.Input("profile", default="", optional=True,
                                tooltip="Optional tuner profile (python -m adacluster_core.tune ... --out FILE.json): "
                                        "path relative to ComfyUI's output (then input) folder, or absolute. Its "
                                        "per-layer settings apply before the text rules (text rules win)."),
            ],
            outputs=[AdaClusterLayersType.Output(display_name="layer_overrides")],
        )

    @classmethod
    def validate_inputs(cls, rules=None, profile=None, **kwargs):
        try:
            if rules is not None:
                patcher.parse_layer_rules(rules)
            if profile:
                load_profile_rules(profile)
        except ValueError as e:
            return f"AdaCluster Layer Overrides: {e}"
        return True

    @classmethod
    def fingerprint_inputs(cls, rules=None, previous=None, profile=None):
        if not profile:
            return ""
        try:
            return os.path.getmtime(resolve_profile_path(profile))   # re-read a re-written profile
        except OSError:
            return float("nan")

    @classmethod
    def execute(cls, rules, previous=None, profile="") -> io.NodeOutput:
        try:
            parsed = patcher.parse_layer_rules(rules)
            if profile:
                parsed = load_profile_rules(profile).chain(parsed)
        except ValueError as e:
            raise ValueError(f"AdaCluster Layer Overrides: {e}") from None
        if isinstance(previous, LayerRules):
            parsed = previous.chain(parsed)
        return io.NodeOutput(parsed)
