"""Per-layer override rules for AdaCluster (the `ADACLUSTER_LAYERS` type).

Pure Python: no ComfyUI and no adacluster_core import, so tests import it directly.

Grammar, one rule per line; `#` starts a comment; blank lines are ignored:

    0-2, -1: dense          # layers 0, 1, 2 and the last layer run dense attention
    10-19: top_k=64         # config field overrides for layers 10..19 (inclusive)
    5: sparse               # force sparse (overrides the planned dense-layer choice)
    20-: top_k=32, tau_scale=1.2   # open range: layer 20 to the last layer
    *: kmeans_iters_reuse=1 # every layer

Selectors are comma separated: `N`, `A-B` (inclusive), `A-` (to the end), `*`. Negative
indices count from the end (`-1` = last layer) and are resolved once the model's layer
count is known (`resolve`). Actions are comma separated: `dense`, `sparse` or `field=value`
(value: int, float, true/false, none, or a bare word such as `top_p`). Later lines win.
Errors are ValueError whose message starts with the line number: "line 3: unknown field 'topk'".
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# Fields that may be overridden per layer, with the python types their values must have.
# (warmup / dense_layer_fraction are run-wide and not per layer.) The patcher passes the
# authoritative list derived from AdaClusterConfig; this is the default for direct use.
DEFAULT_FIELDS: dict[str, tuple] = {
    "q_clusters": (int,),
    "k_clusters": (int, type(None)),
    "k_clusters_init": (int,),
    "tau_scale": (float, int),
    "max_stages": (int,),
    "stage_iters": (int,),
    "top_k": (int,),
    "selection": (str,),
    "top_p": (float, int),
    "kmeans_iters_first": (int,),
    "kmeans_iters_reuse": (int,),
    "backend": (str,),
    "min_tokens": (int,),
    "max_density": (float, int),
    "pooled_tail": (bool,),
}
RUN_WIDE_FIELDS = ("warmup", "dense_layer_fraction", "calibration_dense")

_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_WORD = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class Rule:
    line: int                                   # 1-based line number in its source text
    selectors: tuple[tuple[int | None, int | None], ...]  # (start, stop) inclusive; None = open / all
    mode: str | None = None                  # "dense" | "sparse" | None
    overrides: tuple[tuple[str, object], ...] = ()
    text: str = ""

    def matches(self, layer: int, n_layers: int | None) -> bool:
        for a, b in self.selectors:
            lo = _resolve_index(a, n_layers, default=0)
            hi = _resolve_index(b, n_layers, default=None)
            if lo is None:
                continue  # negative index with unknown layer count: cannot match yet
            if layer < lo:
                continue
            if hi is None:
                if b is None:       # open range "A-" or "*"
                    return True
                continue
            if layer <= hi:
                return True
        return False


@dataclass(frozen=True)
class LayerRules:
    """An ordered list of rules (the value carried by the ADACLUSTER_LAYERS type)."""
    rules: tuple[Rule, ...] = ()
    source: str = ""

    def chain(self, later: LayerRules) -> LayerRules:
        """`self` first, then `later` (later rules win)."""
        return LayerRules(self.rules + later.rules, (self.source + "\n" + later.source).strip("\n"))

    def __len__(self) -> int:
        return len(self.rules)

    def resolve(self, layer: int, n_layers: int | None) -> tuple[str | None, dict[str, object]]:
        """(mode, overrides) for one layer: mode "dense"/"sparse"/None; overrides merged in order."""
        mode: str | None = None
        ov: dict[str, object] = {}
        for r in self.rules:
            if r.matches(layer, n_layers):
                if r.mode is not None:
                    mode = r.mode
                ov.update(r.overrides)
        return mode, ov

    def table(self, n_layers: int) -> dict[int, tuple[str | None, dict[str, object]]]:
        """Resolved rules for layers 0..n_layers-1 (only layers some rule touches)."""
        out = {}
        for layer in range(n_layers):
            mode, ov = self.resolve(layer, n_layers)
            if mode is not None or ov:
                out[layer] = (mode, ov)
        return out

    def describe(self) -> str:
        return "\n".join(r.text for r in self.rules)


def _resolve_index(i: int | None, n_layers: int | None, default):
    if i is None:
        return default
    if i < 0:
        if n_layers is None:
            return None
        return n_layers + i
    return i


def _parse_index(tok: str, line_no: int) -> int:
    if not _INT.match(tok):
        raise ValueError(f"line {line_no}: bad layer index '{tok}' (expected an integer, e.g. 3 or -1)")
    return int(tok)


def _parse_selector(sel: str, line_no: int) -> tuple[int | None, int | None]:
    s = sel.strip()
    if not s:
        raise ValueError(f"line {line_no}: empty layer selector")
    if s in ("*", "all"):
        return (0, None)
    m = re.match(r"^([+-]?\d+)\s*-\s*([+-]?\d+)?$", s)
    if m:
        a = _parse_index(m.group(1), line_no)
        if m.group(2) is None:
            return (a, None)
        b = _parse_index(m.group(2), line_no)
        if (a >= 0) == (b >= 0) and b < a:
            raise ValueError(f"line {line_no}: empty layer range '{s}' ({a} > {b})")
        return (a, b)
    a = _parse_index(s, line_no)
    return (a, a)


def _parse_value(raw: str, line_no: int, name: str):
    v = raw.strip()
    if not v:
        raise ValueError(f"line {line_no}: missing value for '{name}'")
    low = v.lower()
    if low in ("none", "null", "adaptive"):
        return None
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if _INT.match(v):
        return int(v)
    if _FLOAT.match(v):
        return float(v)
    if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"":
        return v[1:-1]
    if _WORD.match(v):
        return v
    raise ValueError(f"line {line_no}: bad value '{v}' for '{name}'")


def _check_type(name: str, value, types: tuple, line_no: int):
    if value is None and type(None) in types:
        return value
    if isinstance(value, bool) and bool not in types:
        raise ValueError(f"line {line_no}: field '{name}' expects {_type_names(types)}, got {value!r}")
    if isinstance(value, int) and float in types and int not in types:
        return float(value)
    if not isinstance(value, tuple(t for t in types if t is not type(None))):
        raise ValueError(f"line {line_no}: field '{name}' expects {_type_names(types)}, got {value!r}")
    return value


def _type_names(types: tuple) -> str:
    return " or ".join("none" if t is type(None) else t.__name__ for t in types)


def parse_rules(text: str, fields: Mapping[str, tuple] | None = None, first_line: int = 1) -> LayerRules:
    """Parse the override text. `fields`: overridable field name -> accepted python types."""
    fields = DEFAULT_FIELDS if fields is None else fields
    rules: list[Rule] = []
    for offset, raw in enumerate((text or "").splitlines()):
        line_no = first_line + offset
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if ":" not in line:
            raise ValueError(f"line {line_no}: expected 'LAYERS: ACTION' (e.g. '0-2, -1: dense'), got '{line}'")
        lhs, rhs = line.split(":", 1)
        selectors = tuple(_parse_selector(s, line_no) for s in lhs.split(","))
        mode: str | None = None
        overrides: dict[str, object] = {}
        actions = [a.strip() for a in rhs.split(",")]
        if not any(actions):
            raise ValueError(f"line {line_no}: missing action after ':' (dense, sparse or field=value)")
        for act in actions:
            if not act:
                raise ValueError(f"line {line_no}: empty action (stray ',')")
            if "=" in act:
                name, val = act.split("=", 1)
                name = name.strip()
                if not _NAME.match(name):
                    raise ValueError(f"line {line_no}: bad field name '{name}'")
                if name in RUN_WIDE_FIELDS:
                    raise ValueError(f"line {line_no}: field '{name}' is run-wide and cannot be set per layer "
                                     "(use AdaCluster Thresholds)")
                if name not in fields:
                    raise ValueError(f"line {line_no}: unknown field '{name}' (known: {', '.join(sorted(fields))})")
                overrides[name] = _check_type(name, _parse_value(val, line_no, name), fields[name], line_no)
            else:
                word = act.lower()
                if word not in ("dense", "sparse"):
                    hint = f" (did you mean '{act}=...'?)" if act in fields else ""
                    raise ValueError(f"line {line_no}: unknown action '{act}'{hint}; use dense, sparse or field=value")
                if mode is not None and mode != word:
                    raise ValueError(f"line {line_no}: both 'dense' and 'sparse' given")
                mode = word
        rules.append(Rule(line=line_no, selectors=selectors, mode=mode,
                          overrides=tuple(overrides.items()), text=raw.strip()))
    return LayerRules(tuple(rules), text or "")


def max_positive_index(rules: LayerRules) -> int:
    """Largest explicit non-negative layer index named (-1 if none); to warn about out-of-range rules."""
    m = -1
    for r in rules.rules:
        for a, b in r.selectors:
            for i in (a, b):
                if i is not None and i >= 0:
                    m = max(m, i)
    return m


def iter_rule_overrides(rules: LayerRules) -> Iterable[tuple[int, dict[str, object]]]:
    for r in rules.rules:
        if r.overrides:
            yield r.line, dict(r.overrides)


# ------------------------------------------------------------------------------------------------
# index selections ("0-2, -1", "*") for probe layers / steps and the capture node
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Selection:
    """A set of layer (or step) indices in the selector grammar of the rules: `N`, `A-B`, `A-`,
    `*`, negative = from the end (needs the count; unknown count -> a negative index never matches)."""
    selectors: tuple[tuple[int | None, int | None], ...] = ((0, None),)
    text: str = "*"

    def matches(self, i: int, n: int | None = None) -> bool:
        return Rule(line=0, selectors=self.selectors).matches(i, n)


def parse_selection(text: str, what: str = "layers") -> Selection:
    """'0-2, -1' / '*' / '' (= all) -> Selection. ValueError names `what`."""
    t = (text or "").strip()
    if not t:
        return Selection()
    try:
        sels = tuple(_parse_selector(s, 1) for s in t.split(","))
    except ValueError as e:
        raise ValueError(f"{what}: {str(e).replace('line 1: ', '')}") from None
    return Selection(sels, t)


# ------------------------------------------------------------------------------------------------
# tuner profiles (adacluster_core.tune writes them) -> rules text
# ------------------------------------------------------------------------------------------------
PROFILE_FORMAT = "adacluster-profile/1"
PROFILE_LAYER_FIELDS = ("q_clusters", "k_clusters", "top_k", "selection", "top_p", "max_density", "pooled_tail")


def _fmt_value(v) -> str:
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def profile_to_rules_text(profile: Mapping) -> str:
    """The per-layer rules of a tuner profile as override text (one line per layer).
    Layer entries: {"mode": "dense"} or {"mode": "sparse", "top_k": .., "selection": .., ...}."""
    if not isinstance(profile, Mapping) or profile.get("format") != PROFILE_FORMAT:
        raise ValueError(f"not an AdaCluster profile (expected format '{PROFILE_FORMAT}')")
    layers = profile.get("layers")
    if not isinstance(layers, Mapping):
        raise ValueError("profile has no 'layers' object")
    lines = [f"# profile: target error {profile.get('target_error')} ({profile.get('source', '')})"]
    for key in sorted(layers, key=lambda x: int(x)):
        ent = layers[key]
        layer = int(key)
        if not isinstance(ent, Mapping):
            raise ValueError(f"profile layer {key}: expected an object")
        mode = ent.get("mode", "sparse")
        if mode == "dense":
            lines.append(f"{layer}: dense")
            continue
        if mode != "sparse":
            raise ValueError(f"profile layer {key}: mode must be dense or sparse, got {mode!r}")
        acts = ["sparse"] + [f"{f}={_fmt_value(ent[f])}" for f in PROFILE_LAYER_FIELDS if f in ent]
        lines.append(f"{layer}: " + ", ".join(acts))
    return "\n".join(lines) + "\n"


__all__ = [
    "DEFAULT_FIELDS",
    "PROFILE_FORMAT",
    "RUN_WIDE_FIELDS",
    "LayerRules",
    "Rule",
    "Selection",
    "iter_rule_overrides",
    "max_positive_index",
    "parse_rules",
    "parse_selection",
    "profile_to_rules_text",
]
