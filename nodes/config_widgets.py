"""AdaClusterConfig as the nodes see it: field defaults and bounds for the Thresholds widgets,
validated configs, per-family presets, and layer-rule text checked against the real config.
The node modules use these and never import adacluster_core themselves. No ComfyUI imports."""
from __future__ import annotations

import dataclasses
from typing import Any

from .core import AdaClusterConfig, core_config
from .layer_rules import LayerRules, parse_rules, profile_rules

FAMILIES = tuple(core_config.FAMILY_MODEL)
PRESETS = ("auto",) + tuple(core_config.PRESETS)   # "auto": the detected family's balanced preset


def config_fields() -> dict[str, Any]:
    """AdaClusterConfig field name -> default."""
    return {f.name: f.default for f in dataclasses.fields(AdaClusterConfig)}


def config_specs() -> dict:
    """AdaClusterConfig field name -> FieldSpec (kind, lo, hi, choices, optional, step): the one
    bounds table, read by the Thresholds widgets and enforced by the config."""
    return dict(core_config.FIELD_SPECS)


def config_widget_defaults() -> dict:
    """AdaClusterConfig field name -> the Thresholds widget default (the balanced preset)."""
    return core_config.widget_defaults()


def make_config(**kw) -> AdaClusterConfig:
    """Validated config (ValueError naming the field)."""
    return AdaClusterConfig(**kw)


def preset_config(family: str, preset: str) -> AdaClusterConfig:
    return AdaClusterConfig.for_model(core_config.FAMILY_MODEL.get(family, "wan"), preset)


def _layer_field_types() -> dict[str, tuple]:
    """Field -> accepted value types in a layer rule (run-level fields cannot be set per layer)."""
    out = {}
    for f in dataclasses.fields(AdaClusterConfig):
        if f.name in ("warmup", "dense_layer_fraction", "calibration_dense"):
            continue
        d = f.default
        if f.name == "k_clusters":
            out[f.name] = (int, type(None))
        elif isinstance(d, bool):
            out[f.name] = (bool,)
        elif isinstance(d, int):
            out[f.name] = (int,)
        elif isinstance(d, float):
            out[f.name] = (float, int)
        elif isinstance(d, str):
            out[f.name] = (str,)
        else:
            out[f.name] = (object,)
    return out


def parse_layer_rules(text: str) -> LayerRules:
    """Parse + validate override text against the real AdaClusterConfig (messages name the line).
    Cheap enough for the server's event loop: the text is size-bounded before parsing
    (layer_rules.MAX_RULES_CHARS) and each distinct (field, value) is checked once against the
    config's bounds table (FIELD_SPECS, which is all AdaClusterConfig's own validation checks)."""
    rules = parse_rules(text, fields=_layer_field_types())
    seen: set = set()
    for r in rules.rules:
        for name, value in r.overrides:
            key = (name, type(value), value)
            if key in seen:
                continue
            try:
                _check_field(name, value)
            except (ValueError, TypeError) as e:
                raise ValueError(f"line {r.line}: {e}") from None
            seen.add(key)
    return rules


def _check_field(name: str, value) -> None:
    """ValueError when `value` is outside field `name`'s type / bounds (the core's bounds table)."""
    spec = core_config.FIELD_SPECS.get(name)
    if spec is None:
        raise ValueError(f"{name}: not an AdaClusterConfig field")
    spec.check(name, value)


def parse_profile(profile) -> LayerRules:
    """A parsed tuner profile -> LayerRules: every value checked as a value of its field (type and
    bounds), only the fields a profile may carry (layer_rules.profile_rules)."""
    return profile_rules(profile, fields=_layer_field_types(), check=_check_field)
