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

Untrusted text (shared workflows): every text is size-checked (`check_text`) before it is parsed
(MAX_RULES_CHARS for rule text, MAX_SELECTION_CHARS for a selection), digits are ASCII only,
an index has at most MAX_INDEX_DIGITS digits, a number value at most MAX_NUMBER_CHARS characters,
and an error quotes at most a short excerpt (`excerpt`) of the input.
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

# size bounds of the text inputs (checked before any parsing; far above any real rule set: a
# rule line is ~20 characters, a model has <= 100 layers)
MAX_RULES_CHARS = 8192
MAX_SELECTION_CHARS = 1024
MAX_INDEX_DIGITS = 6          # layer / step indices: |i| < 10**6
MAX_NUMBER_CHARS = 32         # a number value (int or float literal)
EXCERPT_CHARS = 40            # errors quote at most this much of the offending input

# ASCII digits only ("\d" would accept every Unicode digit: int("١") == 1)
_INT = re.compile(r"^[+-]?[0-9]+$")
_FLOAT = re.compile(r"^[+-]?([0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)([eE][+-]?[0-9]+)?$")
_SELECTOR_RANGE = re.compile(r"^([+-]?[0-9]+)[ \t]*-[ \t]*([+-]?[0-9]+)?$")
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
        """Resolved rules for layers 0..n_layers-1 (only layers some rule touches): what `resolve`
        gives, built once in O(rules + touched layers) so a run looks a layer up in O(1)."""
        n = int(n_layers)
        modes: dict[int, str | None] = {}
        ovs: dict[int, dict[str, object]] = {}
        for r in self.rules:
            hit: set[int] = set()
            for a, b in r.selectors:
                lo = _resolve_index(a, n, default=0)
                hi = _resolve_index(b, n, default=n - 1)
                hit.update(range(max(lo, 0), min(hi, n - 1) + 1))
            for layer in hit:
                if r.mode is not None:
                    modes[layer] = r.mode
                if r.overrides:
                    ovs.setdefault(layer, {}).update(r.overrides)
        out = {}
        for layer in sorted(set(modes) | set(ovs)):
            mode, ov = modes.get(layer), ovs.get(layer, {})
            if mode is not None or ov:
                out[layer] = (mode, ov)
        return out

    def describe(self) -> str:
        return "\n".join(r.text for r in self.rules)


def excerpt(text, limit: int = EXCERPT_CHARS) -> str:
    """A short quoted excerpt of (possibly huge, untrusted) text for an error message."""
    t = str(text) if not isinstance(text, str) else text
    if len(t) <= limit:
        return repr(t)
    return repr(t[:limit]) + f"... ({len(t)} characters)"


def _show(value, limit: int = EXCERPT_CHARS) -> str:
    """repr(value), cut to a short excerpt."""
    r = repr(value)
    return r if len(r) <= limit else r[:limit] + f"... ({len(r)} characters)"


def check_text(text, what: str | None, limit: int) -> str:
    """`text` as a str ('' for None), after the type and size checks that come before any parsing:
    ValueError (starting with `what: ` when given) for a non-string (e.g. a list from a link) or a
    text over `limit` characters (O(1): the message quotes nothing of it)."""
    pre = f"{what}: " if what else ""
    if text is None:
        return ""
    if not isinstance(text, str):
        raise ValueError(f"{pre}expected text, got a {type(text).__name__}")
    if len(text) > limit:
        raise ValueError(f"{pre}the text has {len(text)} characters, more than the {limit} allowed")
    return text


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
        raise ValueError(f"line {line_no}: bad layer index {excerpt(tok)} (expected an integer, e.g. 3 or -1)")
    if len(tok.lstrip("+-")) > MAX_INDEX_DIGITS:
        raise ValueError(f"line {line_no}: layer index {excerpt(tok)} is too long (at most {MAX_INDEX_DIGITS} digits)")
    return int(tok)


def _parse_selector(sel: str, line_no: int) -> tuple[int | None, int | None]:
    s = sel.strip()
    if not s:
        raise ValueError(f"line {line_no}: empty layer selector")
    if s in ("*", "all"):
        return (0, None)
    m = _SELECTOR_RANGE.match(s)
    if m:
        a = _parse_index(m.group(1), line_no)
        if m.group(2) is None:
            return (a, None)
        b = _parse_index(m.group(2), line_no)
        if (a >= 0) == (b >= 0) and b < a:
            raise ValueError(f"line {line_no}: empty layer range {excerpt(s)} ({a} > {b})")
        if a < 0 <= b:   # from the end to a fixed index: empty on any model with more than b - a layers
            raise ValueError(f"line {line_no}: layer range {excerpt(s)} starts from the end and stops at a fixed "
                             f"index, so it matches nothing on most models (write '{b}-' or '0-{b}', or "
                             f"'{a}-' for the last {-a} layers)")
        return (a, b)
    a = _parse_index(s, line_no)
    return (a, a)


def _parse_value(raw: str, line_no: int, name: str):
    v = raw.strip()
    if not v:
        raise ValueError(f"line {line_no}: missing value for '{name}'")
    if len(v) > MAX_NUMBER_CHARS and v[:1] in "+-.0123456789":
        raise ValueError(f"line {line_no}: value {excerpt(v)} for '{name}' is too long (a number has at most "
                         f"{MAX_NUMBER_CHARS} characters)")
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
    raise ValueError(f"line {line_no}: bad value {excerpt(v)} for '{name}'")


def _check_type(name: str, value, types: tuple, line_no: int):
    if value is None and type(None) in types:
        return value
    if isinstance(value, bool) and bool not in types:
        raise ValueError(f"line {line_no}: field '{name}' expects {_type_names(types)}, got {_show(value)}")
    if isinstance(value, int) and float in types and int not in types:
        return float(value)
    if not isinstance(value, tuple(t for t in types if t is not type(None))):
        raise ValueError(f"line {line_no}: field '{name}' expects {_type_names(types)}, got {_show(value)}")
    return value


def _type_names(types: tuple) -> str:
    return " or ".join("none" if t is type(None) else t.__name__ for t in types)


def parse_rules(text: str, fields: Mapping[str, tuple] | None = None, first_line: int = 1,
                max_chars: int = MAX_RULES_CHARS) -> LayerRules:
    """Parse the override text. `fields`: overridable field name -> accepted python types.
    A text over `max_chars` characters (or not a str) is refused before any parsing."""
    fields = DEFAULT_FIELDS if fields is None else fields
    text = check_text(text, None, max_chars)
    rules: list[Rule] = []
    for offset, raw in enumerate(text.splitlines()):
        line_no = first_line + offset
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if ":" not in line:
            raise ValueError(f"line {line_no}: expected 'LAYERS: ACTION' (e.g. '0-2, -1: dense'), got {excerpt(line)}")
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
                    raise ValueError(f"line {line_no}: bad field name {excerpt(name)}")
                if name in RUN_WIDE_FIELDS:
                    raise ValueError(f"line {line_no}: field '{name}' is run-wide and cannot be set per layer "
                                     "(use AdaCluster Thresholds)")
                if name not in fields:
                    raise ValueError(f"line {line_no}: unknown field {excerpt(name)} (known: "
                                     f"{', '.join(sorted(fields))})")
                overrides[name] = _check_type(name, _parse_value(val, line_no, name), fields[name], line_no)
            else:
                word = act.lower()
                if word not in ("dense", "sparse"):
                    hint = f" (did you mean '{act}=...'?)" if act in fields else ""
                    raise ValueError(f"line {line_no}: unknown action {excerpt(act)}{hint}; use dense, sparse or "
                                     "field=value")
                if mode is not None and mode != word:
                    raise ValueError(f"line {line_no}: both 'dense' and 'sparse' given")
                mode = word
        rules.append(Rule(line=line_no, selectors=selectors, mode=mode,
                          overrides=tuple(overrides.items()), text=raw.strip()))
    return LayerRules(tuple(rules), text)


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


def parse_selection(text: str, what: str = "layers", max_chars: int = MAX_SELECTION_CHARS) -> Selection:
    """'0-2, -1' / '*' / '' (= all) -> Selection. ValueError names `what` (also for a non-string
    or a text over `max_chars` characters, refused before any parsing)."""
    t = check_text(text, what, max_chars).strip()
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


PROFILE_INFO_KEYS = ("error", "density", "reason", "calls", "predicted_cost", "k_clusters_found",
                     "candidates_tried")   # written by the tuner for people; never applied
MAX_PROFILE_LAYERS = 4096


def _fmt_value(v) -> str:
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def profile_rules(profile, fields: Mapping[str, tuple] | None = None, check=None) -> LayerRules:
    """The per-layer rules of a tuner profile (parsed JSON), built as DATA: one Rule per layer whose
    values are checked as values of their field's type (`fields`) and, through `check(name, value)`
    (raises ValueError), its bounds; never pasted into rule text. A layer entry carries `mode`
    ("dense" | "sparse"), the fields of PROFILE_LAYER_FIELDS and the tuner's information keys
    (PROFILE_INFO_KEYS, ignored); anything else is refused. Layer keys are ASCII decimal indices."""
    fields = DEFAULT_FIELDS if fields is None else fields
    if not isinstance(profile, Mapping) or profile.get("format") != PROFILE_FORMAT:
        raise ValueError(f"not an AdaCluster profile (expected format '{PROFILE_FORMAT}')")
    layers = profile.get("layers")
    if not isinstance(layers, Mapping):
        raise ValueError("profile has no 'layers' object")
    if len(layers) > MAX_PROFILE_LAYERS:
        raise ValueError(f"profile has {len(layers)} layers, more than the {MAX_PROFILE_LAYERS} allowed")
    parsed: list[tuple[int, str, str, tuple]] = []
    for key, ent in layers.items():
        where = f"profile layer {excerpt(key)}"
        if not isinstance(key, str) or not re.fullmatch(r"[0-9]{1,%d}" % MAX_INDEX_DIGITS, key):
            raise ValueError(f"{where}: the key must be a layer index (at most {MAX_INDEX_DIGITS} ASCII digits)")
        layer = int(key)
        if not isinstance(ent, Mapping):
            raise ValueError(f"{where}: expected an object, got {type(ent).__name__}")
        mode = ent.get("mode", "sparse")
        if mode not in ("dense", "sparse"):
            raise ValueError(f"{where}: mode must be dense or sparse, got {_show(mode)}")
        ov: dict[str, object] = {}
        for name, value in ent.items():
            if name == "mode" or name in PROFILE_INFO_KEYS:
                continue
            if name not in PROFILE_LAYER_FIELDS:
                raise ValueError(f"{where}: {excerpt(name)} is not a field a profile may set (allowed: mode, "
                                 f"{', '.join(PROFILE_LAYER_FIELDS)})")
            if mode == "dense":
                continue   # a dense layer's settings do not apply
            if name not in fields:
                raise ValueError(f"{where}: field '{name}' cannot be set per layer here")
            if isinstance(value, float) and value != value:
                raise ValueError(f"{where}: field '{name}' is NaN")
            try:
                v = _check_type(name, value, fields[name], 0)
                if check is not None:
                    check(name, v)
                if isinstance(v, str) and not _WORD.match(v):
                    raise ValueError(f"field '{name}': bad value {excerpt(v)}")
            except ValueError as e:
                raise ValueError(f"{where}: {str(e).replace('line 0: ', '')}") from None
            ov[name] = v
        parsed.append((layer, key, mode, tuple(ov.items())))
    rules = []
    for layer, key, mode, ov in sorted(parsed):
        text = f"{layer}: " + ", ".join([mode] + [f"{f}={_fmt_value(v)}" for f, v in ov])
        rules.append(Rule(line=0, selectors=((layer, layer),), mode=mode, overrides=ov, text=text))
    head = f"# profile: {len(rules)} layer(s)"
    return LayerRules(tuple(rules), "\n".join([head] + [r.text for r in rules]))


def profile_to_rules_text(profile: Mapping, fields: Mapping[str, tuple] | None = None) -> str:
    """The per-layer rules of a tuner profile as override text (one line per layer), for reading:
    built from the checked values of `profile_rules` (a value is never pasted in as given)."""
    return profile_rules(profile, fields).source + "\n"


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
    "check_text",
    "excerpt",
    "parse_selection",
    "profile_rules",
    "profile_to_rules_text",
]
