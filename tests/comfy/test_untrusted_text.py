"""Untrusted text and profile data (issue 24): every text input is size-bounded before parsing,
validation stays cheap, errors quote only an excerpt, the rule grammar takes ASCII digits only and
refuses ranges that match nothing, a profile is DATA (each value checked as a value of its field,
only the fields a profile may carry), malformed JSON of any depth gives the named error, a list in
a text input fails with a named ValueError, and a run looks its layer rules up in a per-layer table
built once (not per call, not growing with the rule count). ComfyUI imported in-process (CPU)."""
from __future__ import annotations

import json
import time

import pytest

from tests.comfy._helpers import comfy_inprocess, fill_text as _fill, load_nodes_module

lr = load_nodes_module("layer_rules")
cw = load_nodes_module("config_widgets")

_why = comfy_inprocess()
needs_comfy = pytest.mark.skipif(_why is not None, reason=str(_why))
if _why is None:
    LO = load_nodes_module("layer_overrides")
    CAP = load_nodes_module("capture")
    SA = load_nodes_module("sparse_attention")
    HOLDER = load_nodes_module("holder")


# ------------------------------------------------------------------------------------- size bounds
def test_oversized_rules_refused_before_parsing_quickly():
    big = "0: dense\n" * 500_000 + "0: nonsense\n"            # 4.5 MB, a bad LAST line
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=rf"the text has {len(big)} characters, more than the "
                                         rf"{lr.MAX_RULES_CHARS} allowed") as ei:
        cw.parse_layer_rules(big)
    assert time.perf_counter() - t0 < 0.05
    assert "nonsense" not in str(ei.value) and len(str(ei.value)) < 200
    sel = "1," * 1_000_000 + "1"
    with pytest.raises(ValueError, match=r"^probe_layers: the text has \d+ characters, more than the 1024"):
        lr.parse_selection(sel, "probe_layers")


def test_largest_accepted_rules_validate_in_a_few_ms():
    M = lr.MAX_RULES_CHARS
    cases = {
        "field lines": _fill(lambda i: f"{i % 100}:top_k={i % 8000 + 1}\n", M),
        "several fields": _fill(lambda i: f"{i % 50}-: top_k={i + 1}, q_clusters={i % 4000 + 1}, tau_scale=1.{i}\n", M),
        "selectors": "0" + _fill(lambda i: ",1", M - 20) + ": dense",
        "dense lines": _fill(lambda i: "0:dense\n", M),
    }
    for name, text in cases.items():
        assert len(text) <= M
        best = min(_timed(cw.parse_layer_rules, text) for _ in range(3))
        # ~3 ms measured on an idle core; the old per-rule config build took ~16 ms for "field lines"
        assert best < 0.012, (name, best)


def _timed(f, *a):
    t0 = time.perf_counter()
    f(*a)
    return time.perf_counter() - t0


def test_error_quotes_only_an_excerpt():
    long_line = "0: top_k=" + "x" * 5000
    with pytest.raises(ValueError) as ei:
        cw.parse_layer_rules(long_line)
    assert str(ei.value).startswith("line 1: field 'top_k' expects int") and len(str(ei.value)) < 200, str(ei.value)[:300]
    with pytest.raises(ValueError) as ei:
        cw.parse_layer_rules("0: top_k=" + "x+" * 2500)
    assert str(ei.value).startswith("line 1: bad value") and len(str(ei.value)) < 200, str(ei.value)[:300]
    with pytest.raises(ValueError) as ei:
        cw.parse_layer_rules("y" * 6000)
    assert str(ei.value).startswith("line 1: expected 'LAYERS: ACTION'") and len(str(ei.value)) < 200
    with pytest.raises(ValueError) as ei:
        cw.parse_layer_rules("0: " + "a" * 5000 + "=1")
    assert len(str(ei.value)) < 400


# ------------------------------------------------------------------------------------- grammar
@pytest.mark.parametrize("text,needle", [
    ("\u0661: dense", "line 1: bad layer index"),               # Arabic-Indic one
    ("\u0661-\u0663: dense", "line 1: bad layer index"),
    ("0: top_k=\u0661\u0662", "line 1: bad value"),
    ("# c\n\n1: dense", None),
    ("# x\n\n-1-5: dense", "line 3: layer range '-1-5' starts from the end"),
    ("-3-0: dense", "line 1: layer range '-3-0' starts from the end"),
    ("1" * 5000 + ": dense", "line 1: layer index '1111"),
    ("0-" + "9" * 5000 + ": dense", "line 1: layer index '9999"),
    ("0: top_k=" + "9" * 5000, "line 1: value '9999"),
    ("0: tau_scale=1." + "5" * 5000, "line 1: value '1.55"),
])
def test_grammar_ascii_digits_and_ranges(text, needle):
    if needle is None:
        assert cw.parse_layer_rules(text).resolve(1, 4) == ("dense", {})
        return
    with pytest.raises(ValueError) as ei:
        cw.parse_layer_rules(text)
    assert str(ei.value).startswith(needle), str(ei.value)[:300]
    assert len(str(ei.value)) < 300


def test_selection_ascii_and_empty_ranges():
    for bad in ("\u0661", "-1-5", "2-\u0663"):
        with pytest.raises(ValueError, match=r"^probe_steps: "):
            lr.parse_selection(bad, "probe_steps")
    assert lr.parse_selection("5--1", "x").matches(7, 10)       # fixed start to the end: fine
    assert lr.parse_selection("-3--1", "x").matches(8, 10)


@pytest.mark.parametrize("value", [["0-2"], ("0",), {"a": 1}, 3])
def test_non_text_is_a_named_error(value):
    with pytest.raises(ValueError, match=r"^probe_layers: expected text, got a"):
        lr.parse_selection(value, "probe_layers")
    with pytest.raises(ValueError, match=r"^expected text, got a"):
        cw.parse_layer_rules(value)


@needs_comfy
def test_list_in_a_text_input_fails_on_its_node_with_a_named_error(tmp_path):
    with pytest.raises(ValueError, match=r"^AdaCluster Layer Overrides: rules: expected text, got a list"):
        LO.AdaClusterLayerOverrides.execute(rules=["0: dense"])
    with pytest.raises(ValueError, match=r"^AdaCluster Layer Overrides: profile: expected text, got a list"):
        LO.AdaClusterLayerOverrides.execute(rules="", profile=["p.json"])
    assert "probe_layers: expected text, got a list" in str(
        SA.AdaClusterSparseAttention._validate(probe_layers=["0"]))
    with pytest.raises(ValueError, match=r"^AdaCluster Sparse Attention: probe_steps: expected text, got a list"):
        SA.AdaClusterSparseAttention.execute(model=None, probe="on", probe_steps=["0"])
    for kw, what in ((dict(layers=["0"]), "layers"), (dict(steps=["0"]), "steps")):
        with pytest.raises(ValueError, match=rf"^AdaCluster Capture: {what}: expected text, got a list"):
            CAP.AdaClusterCapture.execute(model=None, enabled=True, **kw)
    r = CAP.AdaClusterCapture.validate_inputs(filename_prefix=["a"])
    assert r == "AdaCluster Capture: filename_prefix: expected text, got a list"


@needs_comfy
def test_validate_inputs_oversized_text_named_and_fast():
    big = "0: dense\n" * 200_000
    t0 = time.perf_counter()
    r = LO.AdaClusterLayerOverrides.validate_inputs(rules=big)
    assert time.perf_counter() - t0 < 0.05
    assert r.startswith("AdaCluster Layer Overrides: rules: the text has 1800000 characters"), r[:200]
    r = SA.AdaClusterSparseAttention._validate(probe_steps="0," * 100_000)
    assert r.startswith("AdaCluster Sparse Attention: probe_steps: the text has 200000 characters"), r[:200]
    r = CAP.AdaClusterCapture.validate_inputs(layers="1," * 100_000)
    assert r.startswith("AdaCluster Capture: layers: the text has 200000 characters"), r[:200]
    r = LO.AdaClusterLayerOverrides.validate_inputs(rules="", profile="p" * 10**6)
    assert r == "AdaCluster Layer Overrides: profile: the name is longer than 1024 characters"


# ------------------------------------------------------------------------------------- profiles
def _prof(layers, **top):
    return dict({"format": "adacluster-profile/1", "target_error": 0.05, "layers": layers}, **top)


@pytest.mark.parametrize("entry,needle", [
    ({"mode": "sparse", "top_k": "64, kmeans_iters_first=100\n*: dense"}, "field 'top_k' expects int"),
    ({"mode": "sparse", "selection": "top_p\n*: dense"}, "selection must be one of"),
    ({"mode": "sparse", "selection": "top_p, kmeans_iters_first=100"}, "selection must be one of"),
    ({"mode": "sparse", "kmeans_iters_first": 100}, "'kmeans_iters_first' is not a field a profile may set"),
    ({"mode": "sparse", "backend": "torch"}, "'backend' is not a field a profile may set"),
    ({"mode": "sparse", "warmup": 0.0}, "'warmup' is not a field a profile may set"),
    ({"mode": "sparse", "top_k": 10**6}, "top_k must be in [1, 8192]"),
    ({"mode": "sparse", "top_k": True}, "field 'top_k' expects int"),
    ({"mode": "sparse", "top_k": 16.0}, "field 'top_k' expects int"),
    ({"mode": "sparse", "top_p": float("nan")}, "NaN"),
    ({"mode": "sparse", "max_density": float("inf")}, "max_density must be a finite number"),
    ({"mode": "sparse", "pooled_tail": "yes"}, "field 'pooled_tail' expects bool"),
    ({"mode": "sparse", "q_clusters": [1, 2]}, "field 'q_clusters' expects int"),
    ({"mode": "fast"}, "mode must be dense or sparse"),
    ("dense", "expected an object"),
])
def test_profile_values_are_checked_as_values(entry, needle):
    with pytest.raises(ValueError) as ei:
        cw.parse_profile(_prof({"3": entry}))
    msg = str(ei.value)
    assert msg.startswith("profile layer '3': ") and needle in msg, msg


@pytest.mark.parametrize("key", ["-1", "\u0661", "1e3", " 1", "9" * 5000, "0x1"])
def test_profile_layer_keys_are_ascii_indices(key):
    with pytest.raises(ValueError, match=r"^profile layer .*: the key must be a layer index"):
        cw.parse_profile(_prof({key: {"mode": "dense"}}))


def test_profile_is_data_not_rule_text():
    rules = cw.parse_profile(_prof({
        "0": {"mode": "dense", "error": None, "density": 1.0, "reason": "x\n*: dense"},
        "2": {"mode": "sparse", "selection": "top_p", "top_p": 0.9, "q_clusters": 8, "k_clusters": None,
              "max_density": 0.2, "pooled_tail": True, "density": 0.2, "error": 0.04, "calls": 3,
              "predicted_cost": 0.4},
        "10": {"mode": "sparse", "top_k": 16, "max_density": 1},
    }))
    assert rules.resolve(0, 20) == ("dense", {})
    assert rules.resolve(1, 20) == (None, {})
    assert rules.resolve(2, 20) == ("sparse", {"selection": "top_p", "top_p": 0.9, "q_clusters": 8,
                                               "k_clusters": None, "max_density": 0.2, "pooled_tail": True})
    assert rules.resolve(10, 20) == ("sparse", {"top_k": 16, "max_density": 1.0})
    assert rules.table(20) == {0: ("dense", {}), 2: rules.resolve(2, 20), 10: rules.resolve(10, 20)}


@needs_comfy
@pytest.mark.parametrize("text,needle", [
    ("[" * 100_000 + "]" * 100_000, "not valid JSON (nested too deeply)"),
    ('{"a":' * 50_000 + "1" + "}" * 50_000, "not valid JSON (nested too deeply)"),
    ("{" * 300_000, "not valid JSON"),
    ("[1,", "not valid JSON"),
    ('{"format": "adacluster-profile/1", "layers": {"0": {"mode": "sparse", "top_k": ' + "9" * 5000 + "}}}",
     "not valid JSON"),
    (json.dumps(_prof({"1": {"mode": "sparse", "top_k": "8\n*: dense"}})), "profile layer '1': field 'top_k'"),
])
def test_malformed_profile_json_any_depth_named(tmp_path, text, needle):
    (tmp_path / "p.json").write_text(text)
    with pytest.raises(ValueError) as ei:
        LO.load_profile_rules("p.json", roots=[str(tmp_path)])
    msg = str(ei.value)
    assert msg.startswith("profile 'p.json': ") and needle in msg and len(msg) < 400, msg[:500]


# ------------------------------------------------------------------------------------- per-run table
@needs_comfy
def test_run_resolves_rules_to_a_table_once():
    text = "".join(f"{i % 40}: top_k={i % 500 + 1}\n" for i in range(700))[:lr.MAX_RULES_CHARS]
    rules = cw.parse_layer_rules(text)
    run = HOLDER.PatchHolder(cw.make_config(), rules, "auto").run
    run.config = cw.make_config()
    calls = []
    orig = type(rules).resolve

    def counting(self, layer, n_layers):
        calls.append(layer)
        return orig(self, layer, n_layers)

    type(rules).resolve = counting
    try:
        for _ in range(50):
            for layer in range(40):
                mode, cfg = run.cfg_for_layer(layer, 4096, 40)
                assert (mode, {f: getattr(cfg, f) for f in orig(rules, layer, 40)[1]}) == orig(rules, layer, 40)
    finally:
        type(rules).resolve = orig
    assert calls == []                     # no per-call walk over the rules: one table per run
    t0 = time.perf_counter()
    for _ in range(10_000):
        run.rule_for(7, 40)
    assert (time.perf_counter() - t0) / 10_000 < 50e-6
