"""AdaClusterConfig: every knob of the algorithm (docs/ALGORITHM.md) plus the few the ComfyUI
patcher reads. Frozen and validated against FIELD_SPECS (type and [min, max] of every field, the
ranges the ComfyUI widgets show): a bad field raises ValueError naming the field."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Optional

SELECTIONS = ("tensorquest", "top_p", "centroid")
BACKENDS = ("auto", "triton", "torch")
MODELS = ("wan", "hunyuan", "cogvideox", "h3")
PRESETS = ("quality", "balanced", "fast")
# the pack's model family (nodes/families.py detection, capture metadata) -> the core model whose
# preset it runs: the one family map, read by the nodes (config_widgets.py) and the tuner (tune.py)
FAMILY_MODEL = {"wan": "wan", "hunyuan": "hunyuan", "hunyuan15": "hunyuan", "cogvideox": "cogvideox", "h3": "h3"}

# balanced == the spec's defaults table
_MODEL_TOP_K = {"wan": 128, "hunyuan": 94, "cogvideox": 64, "h3": 64}
# per-model density budgets where the shared ones (quality 0.25 / balanced 0.15 / fast 0.10) do not fit:
# MiniMax-H3's long packed sequences keep the error in budget at lower densities (docs/BENCHMARKS.md, H3)
_MODEL_MAX_DENSITY = {"h3": {"quality": 0.15, "balanced": 0.10, "fast": 0.07}}
_MODEL_ALIASES = {
    "wan": "wan", "wan2.1": "wan", "wan2.2": "wan", "wan21": "wan", "wan22": "wan",
    "hunyuan": "hunyuan", "hunyuanvideo": "hunyuan", "hunyuan_video": "hunyuan",
    "cogvideox": "cogvideox", "cogvideo": "cogvideox", "cog": "cogvideox",
    "h3": "h3", "minimaxh3": "h3", "minimax": "h3",
}


@dataclass(frozen=True)
class FieldSpec:
    """Type and closed range [lo, hi] of one AdaClusterConfig field: the one table that the core
    enforces and the ComfyUI widgets read (min / max / step / options). Every numeric knob has an
    upper bound: shared workflows are untrusted input, and a huge iteration or cluster count would
    otherwise hang the server."""
    kind: str                      # "int" | "float" | "bool" | "choice"
    lo: float = 0
    hi: float = 0
    choices: tuple = ()
    optional: bool = False         # None allowed (k_clusters: None = adaptive; widget 0)
    step: float = 0.01             # widget step of float fields

    def check(self, name: str, v: Any) -> None:
        """ValueError naming the field when `v` is not a valid value."""
        if v is None and self.optional:
            return
        if self.kind == "bool":
            if not isinstance(v, bool):
                raise ValueError(f"{name} must be a bool, got {v!r}")
            return
        if self.kind == "choice":
            if v not in self.choices:
                raise ValueError(f"{name} must be one of {self.choices}, got {v!r}")
            return
        if self.kind == "int":
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"{name} must be an int, got {v!r}")
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            raise ValueError(f"{name} must be a finite number, got {v!r}")
        if not (self.lo <= v <= self.hi):
            raise ValueError(f"{name} must be in [{self.lo:g}, {self.hi:g}], got {v!r}")


# field -> FieldSpec, in AdaClusterConfig's field order. The bounds are the ComfyUI widget ranges.
FIELD_SPECS: dict[str, FieldSpec] = {
    "q_clusters": FieldSpec("int", 1, 4096),
    "k_clusters": FieldSpec("int", 1, 8192, optional=True),
    "k_clusters_init": FieldSpec("int", 1, 4096),
    "tau_scale": FieldSpec("float", 0.01, 10.0),
    "max_stages": FieldSpec("int", 1, 100),
    "stage_iters": FieldSpec("int", 1, 100),
    "top_k": FieldSpec("int", 1, 8192),
    "selection": FieldSpec("choice", choices=SELECTIONS),
    "top_p": FieldSpec("float", 0.01, 1.0),
    "max_density": FieldSpec("float", 0.01, 1.0),
    "kmeans_iters_first": FieldSpec("int", 1, 100),
    "kmeans_iters_reuse": FieldSpec("int", 1, 100),
    "backend": FieldSpec("choice", choices=BACKENDS),
    "min_tokens": FieldSpec("int", 0, 1 << 24),
    "calibration_dense": FieldSpec("bool"),
    "warmup": FieldSpec("float", 0.0, 1.0),
    "dense_layer_fraction": FieldSpec("float", 0.0, 0.99),
    "pooled_tail": FieldSpec("bool"),
}


@dataclass(frozen=True)
class AdaClusterConfig:
    """Configuration of AdaCluster sparse attention.

    Algorithm (docs/ALGORITHM.md):
      q_clusters        Cq, k-means clusters of L2-normalised queries (65).
      k_clusters        Ck; None = adaptive multi-stage count per layer (threshold-wise).
      k_clusters_init   centroids per multi-stage round (200).
      tau_scale         tau = tau_scale * mean first-stage distance (1.5).
      max_stages        at most this many multi-stage rounds (10).
      stage_iters       k-means iterations per multi-stage round (3) [choice: the spec's pseudo-code].
      top_k             key clusters attended per query cluster (tensorquest / centroid).
      selection         "tensorquest" (upper bound) | "top_p" (SVG2) | "centroid".
      top_p             mass kept by selection="top_p" (0.9).
      max_density       density budget in (0, 1]: per query cluster, the selected key clusters
                        (best score first, within top_k / top_p) are kept while their cumulative
                        key count stays <= max_density x the clustered keys (at least one cluster
                        is always kept). Field default 1.0 = no cap (the paper's selection, so an
                        explicit config with top_k >= Ck is exact); the presets of `for_model`
                        (what the ComfyUI node uses) set 0.25 (quality) / 0.15 (balanced) / 0.10 (fast).
                        [choice] the TensorQuest bound ranks the largest clusters highest, so
                        top_k alone lands at 0.5-0.7 density on video DiTs (no speedup).
      kmeans_iters_first / kmeans_iters_reuse   Lloyd iterations cold / warm-started (10 / 2).
      backend           "auto" | "triton" | "torch".
      pooled_tail       [choice] keep the unselected attention mass approximately: per query
                        cluster, every unselected non-empty key cluster j adds one virtual key
                        (its centroid, logit bias log|j|, value = mean of its values), so the
                        softmax still sees Σ_{k∈j} exp(q·k) ≈ |j|·exp(q·c_j). Field default
                        False (exact-attention semantics over the selected clusters).
    Call-level:
      min_tokens        sequences shorter than this run dense (default 1024 [choice]: below
                        that the clustering overhead exceeds the attention it saves; tests use 0).
      calibration_dense with a ClusterState and an adaptive layer whose count is not known yet,
                        the call that runs the multi-stage procedure returns dense attention
                        (the spec: "that step itself runs dense"). Without a state the call
                        always continues sparse.
    Patcher-level (read by the ComfyUI side only):
      warmup                fraction of denoising steps (by sigma) that run dense (0.3).
      dense_layer_fraction  fraction of layers (largest Ck) kept dense (0.15).
    """

    q_clusters: int = 65
    k_clusters: Optional[int] = None
    k_clusters_init: int = 200
    tau_scale: float = 1.5
    max_stages: int = 10
    stage_iters: int = 3
    top_k: int = 128
    selection: str = "tensorquest"
    top_p: float = 0.9
    max_density: float = 1.0
    kmeans_iters_first: int = 10
    kmeans_iters_reuse: int = 2
    backend: str = "auto"
    min_tokens: int = 1024
    calibration_dense: bool = True
    warmup: float = 0.3
    dense_layer_fraction: float = 0.15
    pooled_tail: bool = False

    def __post_init__(self) -> None:
        for name, spec in FIELD_SPECS.items():
            spec.check(name, getattr(self, name))

    # ---- conveniences -------------------------------------------------------------------------
    def replace(self, **kw: Any) -> "AdaClusterConfig":
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **kw)

    def clamped(self, n_tokens: int) -> "AdaClusterConfig":
        """Cluster counts limited to the clustered token count (self if nothing changes)."""
        kw = {}
        if self.q_clusters > n_tokens:
            kw["q_clusters"] = max(1, n_tokens)
        if self.k_clusters is not None and self.k_clusters > n_tokens:
            kw["k_clusters"] = max(1, n_tokens)
        if self.k_clusters_init > n_tokens:
            kw["k_clusters_init"] = max(1, n_tokens)
        return self.replace(**kw) if kw else self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "AdaClusterConfig":
        """Build from a dict; unknown keys raise ValueError naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown AdaClusterConfig field(s): {', '.join(unknown)}")
        return cls(**d)

    @classmethod
    def for_model(cls, model: str, preset: str = "balanced", **overrides: Any) -> "AdaClusterConfig":
        """Per-model profile (top_k from the spec's defaults table: Wan 128, Hunyuan 94, CogVideoX 64;
        MiniMax-H3 64 with its own density budgets, chosen on measured error: _MODEL_MAX_DENSITY).

        [choice; measurements in docs/BENCHMARKS.md]:
          balanced  pooled tail, max_density 0.15, one warm-started k-means iteration per step
                    (the assignment barely moves between steps: same error as two).
          quality   pooled tail, max_density 0.25, top_k x1.5, longer warmup, more dense layers,
                    three k-means iterations per step.
          fast      pooled tail (it costs a few % of the call and cuts the error ~10x), max_density
                    0.10, top_k x0.6, one k-means iteration, shorter warmup, fewer dense layers.
        pooled_tail=False, max_density=1.0 gives the paper's plain top_k selection."""
        m = _MODEL_ALIASES.get(str(model).lower().replace("-", "").replace(" ", ""))
        if m is None:
            raise ValueError(f"model must be one of {MODELS}, got {model!r}")
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
        base = _MODEL_TOP_K[m]
        if preset == "balanced":
            kw = dict(top_k=base, max_density=0.15, pooled_tail=True, kmeans_iters_reuse=1)
        elif preset == "quality":
            kw = dict(top_k=int(round(base * 1.5)), max_density=0.25, pooled_tail=True, warmup=0.4,
                      dense_layer_fraction=0.2, kmeans_iters_reuse=3)
        else:  # fast
            kw = dict(top_k=max(8, int(round(base * 0.6))), max_density=0.10, pooled_tail=True, warmup=0.2,
                      dense_layer_fraction=0.1, kmeans_iters_reuse=1)
        if m in _MODEL_MAX_DENSITY:
            kw["max_density"] = _MODEL_MAX_DENSITY[m][preset]
        kw.update(overrides)
        return cls(**kw)


if [f.name for f in dataclasses.fields(AdaClusterConfig)] != list(FIELD_SPECS):  # pragma: no cover
    raise RuntimeError("FIELD_SPECS must list every AdaClusterConfig field, in field order")


def widget_defaults() -> dict:
    """Default values of the AdaCluster Thresholds widgets: the balanced preset (Wan top_k), so
    the node's defaults equal what the Sparse Attention node runs without a config."""
    return AdaClusterConfig.for_model("wan", "balanced").to_dict()
