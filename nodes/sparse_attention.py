"""AdaCluster Sparse Attention: MODEL -> MODEL whose video self-attention runs AdaCluster."""
from comfy_api.latest import io

from . import patcher
from .config_widgets import PRESETS
from .layer_rules import parse_selection
from .probe import PROBE_MODES, make_probe
from .io_types import CATEGORY, AdaClusterConfigType, AdaClusterLayersType
from .validation import COMFY_CHECKS_V3_COMBOS, choice_error


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
                io.Combo.Input("preset", options=list(PRESETS), default="auto",
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
                io.Combo.Input("probe", options=list(PROBE_MODES), default="off", optional=True,
                               tooltip="Diagnostics. on: for the chosen layers/steps the call ALSO runs dense "
                                       "attention, passes the dense result on (errors do not compound; the run "
                                       "is slower than dense) and records the sparse result's relative L2 error "
                                       "and attention-mass recall; AdaCluster Stats shows them, worst layers first."),
                io.String.Input("probe_layers", default="*", optional=True,
                                tooltip="Layers to probe: '*', '0-3, -1' (layer-rule selector grammar)."),
                io.String.Input("probe_steps", default="*", optional=True,
                                tooltip="Sampling steps to probe (0 = first step): '*', '2-', '0, -1'."),
            ],
            outputs=[io.Model.Output(tooltip="The patched model (a clone; the input is untouched).")],
        )

    # only what ComfyUI does not check itself (validation.py): the selector strings, and the
    # combos where this ComfyUI does not check V3 combos
    @classmethod
    def _validate(cls, preset=None, probe=None, probe_layers="*", probe_steps="*"):
        for name, val, opts in (("preset", preset, PRESETS), ("probe", probe, PROBE_MODES)):
            err = choice_error(name, val, opts)
            if err:
                return f"AdaCluster Sparse Attention: {err}"
        for name, text in (("probe_layers", probe_layers), ("probe_steps", probe_steps)):
            try:
                parse_selection(text or "*", name)
            except ValueError as e:
                return f"AdaCluster Sparse Attention: {e}"
        return True

    if COMFY_CHECKS_V3_COMBOS:
        @classmethod
        def validate_inputs(cls, probe_layers="*", probe_steps="*"):
            return cls._validate(probe_layers=probe_layers, probe_steps=probe_steps)
    else:
        @classmethod
        def validate_inputs(cls, preset=None, probe=None, probe_layers="*", probe_steps="*"):
            return cls._validate(preset, probe, probe_layers, probe_steps)

    @classmethod
    def execute(cls, model, preset="auto", enabled=True, config=None, layer_overrides=None, probe="off",
                probe_layers="*", probe_steps="*") -> io.NodeOutput:
        try:
            spec = make_probe(probe or "off", probe_layers or "*", probe_steps or "*")
        except ValueError as e:
            raise ValueError(f"AdaCluster Sparse Attention: {e}") from None
        return io.NodeOutput(patcher.patch_model(model, config=config, layer_rules=layer_overrides,
                                                 enabled=enabled, preset=preset, probe=spec))
