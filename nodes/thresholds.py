"""AdaCluster Thresholds: every AdaClusterConfig knob as a widget -> ADACLUSTER_CONFIG."""
from comfy_api.latest import io

from . import patcher
from .io_types import CATEGORY, AdaClusterConfigType

# widget name -> (kind, kwargs). Names equal AdaClusterConfig field names, so an error from the
# config ("top_k must be >= 1") names the widget too. k_clusters uses 0 for "adaptive" (None).
WIDGETS = {
    "q_clusters": ("int", dict(default=65, min=1, max=4096, tooltip="Query clusters Cq (k-means on L2-normalised queries). Clamped to the token count.")),
    "k_clusters": ("int", dict(default=0, min=0, max=8192, tooltip="Fixed key clusters Ck; 0 = adaptive per layer (multi-stage clustering at the first sparse step).")),
    "k_clusters_init": ("int", dict(default=200, min=1, max=4096, tooltip="Centroids per multi-stage round of the adaptive key clustering.")),
    "tau_scale": ("float", dict(default=1.5, min=0.01, max=10.0, step=0.01, tooltip="tau = tau_scale x mean first-stage key distance: keys closer than tau to their centroid are accepted.")),
    "max_stages": ("int", dict(default=10, min=1, max=100, tooltip="At most this many multi-stage clustering rounds.")),
    "stage_iters": ("int", dict(default=3, min=1, max=100, tooltip="k-means iterations per multi-stage round.")),
    "top_k": ("int", dict(default=128, min=1, max=8192, tooltip="Key clusters each query cluster attends to (tensorquest / centroid selection). >= key clusters = dense-equivalent.")),
    "selection": ("combo", dict(options=["tensorquest", "top_p", "centroid"], default="tensorquest", tooltip="tensorquest: upper-bound score (paper); top_p: SVG2 cluster-size-weighted top-p; centroid: centroid score.")),
    "top_p": ("float", dict(default=0.9, min=0.01, max=1.0, step=0.01, tooltip="Attention mass kept by selection=top_p.")),
    "kmeans_iters_first": ("int", dict(default=10, min=1, max=100, tooltip="k-means iterations at the first sparse step (cold start).")),
    "kmeans_iters_reuse": ("int", dict(default=2, min=1, max=100, tooltip="k-means iterations at later steps (warm-started from the previous step's centroids).")),
    "warmup": ("float", dict(default=0.3, min=0.0, max=1.0, step=0.01, tooltip="Fraction of the denoising schedule (by sigma, so split high/low samplers agree) that runs dense.")),
    "dense_layer_fraction": ("float", dict(default=0.15, min=0.0, max=0.99, step=0.01, tooltip="Fraction of layers with the most key clusters (least compressible) kept dense.")),
    "min_tokens": ("int", dict(default=1024, min=0, max=1 << 24, tooltip="Videos with fewer tokens than this run dense (clustering would cost more than it saves).")),
    "calibration_dense": ("bool", dict(default=True, tooltip="The first sparse step runs dense while the adaptive key-cluster counts are measured (the paper's procedure).")),
    "backend": ("combo", dict(options=["auto", "triton", "torch"], default="auto", tooltip="Kernel backend: auto = Triton on GPU (or TRITON_INTERPRET), torch reference otherwise.")),
}


# fields that may or may not exist in the installed core (added later): used only when they do.
# Defaults are the balanced preset's (AdaClusterConfig.for_model), not the dataclass fields'.
OPTIONAL_WIDGETS = {
    "max_density": ("float", dict(default=0.15, min=0.01, max=1.0, step=0.01, tooltip="Density budget: per query cluster the best key clusters are kept while their keys stay <= max_density x the clustered keys (1.0 = no cap, the paper's selection).")),
    "pooled_tail": ("bool", dict(default=True, tooltip="Pooled tail: every unselected key cluster still enters the softmax as one pooled key (its centroid, weighted by its size, value = its mean value). Much lower error at the same density; off = attend to the selected clusters only (the paper).")),
}


def _auto_widgets() -> dict:
    """Widgets for config fields added to AdaClusterConfig after this table was written (so every
    field always has a widget): kind from the default's type; a None default maps to 0 = none."""
    out = {}
    for name, default in patcher.config_fields().items():
        if name in WIDGETS:
            continue
        if name in OPTIONAL_WIDGETS:
            kind, kw = OPTIONAL_WIDGETS[name]
            out[name] = (kind, dict(kw))  # the balanced preset's value, like every other widget

            continue
        tip = f"AdaClusterConfig.{name} (default {default!r}; see docs/ALGORITHM.md)."
        if isinstance(default, bool):
            out[name] = ("bool", dict(default=default, tooltip=tip))
        elif isinstance(default, int):
            out[name] = ("int", dict(default=default, min=0, max=1 << 24, tooltip=tip))
        elif isinstance(default, float):
            out[name] = ("float", dict(default=default, min=0.0, max=1e6, step=0.01, tooltip=tip))
        elif default is None:
            out[name] = ("float", dict(default=0.0, min=0.0, max=1e6, step=0.01,
                                       tooltip=tip + " 0 = none (off)."))
        else:
            out[name] = ("string", dict(default=str(default), tooltip=tip))
    return out


def all_widgets() -> dict:
    """WIDGETS, then widgets of fields added later, APPENDED (ComfyUI stores widget values by
    position: appending keeps saved workflows loading, the new widget taking its default)."""
    return {**WIDGETS, **_auto_widgets()}


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
    fields = patcher.config_fields()
    for name, v in values.items():
        if name not in fields:
            raise ValueError(f"{name}: not an AdaClusterConfig field")
        if name == "k_clusters":
            v = None if v in (None, 0) else int(v)
        elif fields[name] is None and name not in WIDGETS and v in (0, 0.0, "", "none"):
            v = None
        kw[name] = v
    return patcher.make_config(**kw)


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

    @classmethod
    def validate_inputs(cls, **kwargs):
        names = all_widgets()
        vals = {k: v for k, v in kwargs.items() if k in names and v is not None}
        try:
            build_config(**vals)
        except (ValueError, TypeError) as e:
            return f"AdaCluster Thresholds: {e}"
        return True

    @classmethod
    def execute(cls, **kwargs) -> io.NodeOutput:
        try:
            names = all_widgets()
            cfg = build_config(**{k: v for k, v in kwargs.items() if k in names})
        except (ValueError, TypeError) as e:
            raise ValueError(f"AdaCluster Thresholds: {e}") from None
        return io.NodeOutput(cfg)
