"""AdaCluster Thresholds: every AdaClusterConfig knob as a widget -> ADACLUSTER_CONFIG."""
from comfy_api.latest import io

from . import config_widgets
from .core import AdaClusterConfig
from .io_types import CATEGORY, AdaClusterConfigType
from .validation import COMFY_CHECKS_V3_COMBOS, choice_error

# widget name -> tooltip, in widget order (ComfyUI stores widget values by position: new fields are
# APPENDED, so saved workflows keep loading and the new widget takes its default). Names equal
# AdaClusterConfig field names, so an error from the config ("top_k must be in [1, 8192]") names
# the widget too. Kinds, min/max/options come from the core's one bounds table
# (adacluster_core.config.FIELD_SPECS, which the config enforces), defaults from the balanced
# preset (config.widget_defaults). k_clusters uses 0 for "adaptive" (None).
TOOLTIPS = {
    "q_clusters": "Query clusters Cq (k-means on L2-normalised queries). Clamped to the token count.",
    "k_clusters": "Fixed key clusters Ck; 0 = adaptive per layer (multi-stage clustering at the first sparse step).",
    "k_clusters_init": "Centroids per multi-stage round of the adaptive key clustering.",
    "tau_scale": "tau = tau_scale x mean first-stage key distance: keys closer than tau to their centroid are accepted.",
    "max_stages": "At most this many multi-stage clustering rounds.",
    "stage_iters": "k-means iterations per multi-stage round.",
    "top_k": "Key clusters each query cluster attends to (tensorquest / centroid selection), within the max_density "
             "budget: >= the key clusters selects every cluster (dense-equivalent) only with max_density = 1.0.",
    "selection": "tensorquest: upper-bound score (paper); top_p: SVG2 cluster-size-weighted top-p; centroid: centroid score.",
    "top_p": "Attention mass kept by selection=top_p.",
    "kmeans_iters_first": "k-means iterations at the first sparse step (cold start).",
    "kmeans_iters_reuse": "k-means iterations at later steps (warm-started from the previous step's centroids).",
    "warmup": "Fraction of the denoising schedule (by sigma, so split high/low samplers agree) that runs dense.",
    "dense_layer_fraction": "Fraction of layers with the most key clusters (least compressible) kept dense.",
    "min_tokens": "Videos with fewer tokens than this run dense (clustering would cost more than it saves).",
    "calibration_dense": "The first sparse step runs dense while the adaptive key-cluster counts are measured (the paper's procedure).",
    "backend": "Kernel backend: auto = the Triton kernel where Triton runs (GPU, or TRITON_INTERPRET=1), otherwise "
               "dense through ComfyUI's attention; triton = the same (dense where Triton cannot run); torch = the "
               "slow torch reference (tests / debugging).",
    # added after the first release (appended)
    "max_density": "Density budget: per query cluster the best key clusters are kept while their keys stay <= "
                   "max_density x the clustered keys (1.0 = no cap, the paper's selection).",
    "pooled_tail": "Pooled tail: every unselected key cluster still enters the softmax as one pooled key (its centroid, "
                   "weighted by its size, value = its mean value). Much lower error at the same density; off = attend "
                   "to the selected clusters only (the paper).",
}


def all_widgets() -> dict:
    """widget name -> (kind, kwargs for the io input): TOOLTIPS order, then any config field added
    later (appended, generic tooltip). Ranges and options from the core's bounds table."""
    specs = config_widgets.config_specs()
    defaults = config_widgets.config_widget_defaults()
    names = [n for n in TOOLTIPS if n in specs] + [n for n in specs if n not in TOOLTIPS]
    out = {}
    for name in names:
        sp, d = specs[name], defaults[name]
        tip = TOOLTIPS.get(name) or f"AdaClusterConfig.{name} (see docs/ALGORITHM.md)."
        if sp.kind == "bool":
            out[name] = ("bool", dict(default=bool(d), tooltip=tip))
        elif sp.kind == "choice":
            out[name] = ("combo", dict(options=list(sp.choices), default=d, tooltip=tip))
        elif sp.kind == "int":
            lo = 0 if sp.optional else int(sp.lo)     # 0 = None
            out[name] = ("int", dict(default=0 if d is None else int(d), min=lo, max=int(sp.hi), tooltip=tip))
        else:
            lo = 0.0 if sp.optional else float(sp.lo)
            out[name] = ("float", dict(default=0.0 if d is None else float(d), min=lo, max=float(sp.hi),
                                       step=sp.step, tooltip=tip))
    return out


def _inputs():
    out = []
    for name, (kind, kw) in all_widgets().items():
        if kind == "int":
            out.append(io.Int.Input(name, **kw))
        elif kind == "float":
            out.append(io.Float.Input(name, **kw))
        elif kind == "bool":
            out.append(io.Boolean.Input(name, **kw))
        elif kind == "string":
            out.append(io.String.Input(name, **kw))
        else:
            out.append(io.Combo.Input(name, **kw))
    return out


def build_config(**values):
    """Widget values -> AdaClusterConfig (ValueError naming the field)."""
    kw = {}
    specs = config_widgets.config_specs()
    for name, v in values.items():
        if name not in specs:
            raise ValueError(f"{name}: not an AdaClusterConfig field")
        if specs[name].optional and v in (None, 0, 0.0):
            v = None
        kw[name] = v
    return AdaClusterConfig(**kw)


class AdaClusterThresholds(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AdaClusterThresholds",
            display_name="AdaCluster Thresholds",
            category=CATEGORY,
            description="Every AdaCluster setting as a widget. Connect to AdaCluster Sparse Attention's config input "
                        "(it then replaces the preset).",
            inputs=_inputs(),
            outputs=[AdaClusterConfigType.Output(display_name="config")],
        )

    # ComfyUI's own validation checks min / max (from the bounds table) of the numeric widgets,
    # naming the widget; a validate_inputs with **kwargs would switch that off for every input.
    # Only the two combos are checked here, and only where ComfyUI does not (validation.py).
    # Values arriving through links are checked by the config in execute (ValueError naming it).
    if not COMFY_CHECKS_V3_COMBOS:
        @classmethod
        def validate_inputs(cls, selection=None, backend=None):
            specs = config_widgets.config_specs()
            for name, val in (("selection", selection), ("backend", backend)):
                err = choice_error(name, val, specs[name].choices)
                if err:
                    return f"AdaCluster Thresholds: {err}"
            return True

    @classmethod
    def execute(cls, **kwargs) -> io.NodeOutput:
        try:
            names = all_widgets()
            cfg = build_config(**{k: v for k, v in kwargs.items() if k in names})
        except (ValueError, TypeError) as e:
            raise ValueError(f"AdaCluster Thresholds: {e}") from None
        return io.NodeOutput(cfg)
