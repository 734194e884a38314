"""The AdaCluster Layer Overrides grammar (nodes/layer_rules.py: pure Python, no ComfyUI)."""
from __future__ import annotations

import pytest

from tests.comfy._helpers import load_nodes_module

lr = load_nodes_module("layer_rules")


def test_basic_grammar_and_resolution():
    rules = lr.parse_rules("""
        # ends dense
        0-2, -1: dense
        10-19: top_k=64   # mid layers fewer clusters
        5: sparse, tau_scale=1.2
        20-: kmeans_iters_reuse=1
        *: selection=top_p
    """)
    assert len(rules) == 5
    t = rules.table(30)
    assert t[0][0] == "dense" and t[2][0] == "dense" and t[29][0] == "dense"
    assert t[3] == (None, {"selection": "top_p"})
    assert t[12] == (None, {"top_k": 64, "selection": "top_p"})
    assert t[5] == ("sparse", {"tau_scale": 1.2, "selection": "top_p"})
    assert t[25][1]["kmeans_iters_reuse"] == 1 and t[29][1]["kmeans_iters_reuse"] == 1


def test_negative_indices_resolve_when_layer_count_known():
    rules = lr.parse_rules("-3--1: dense\n-1: top_k=8")
    assert rules.resolve(39, None) == (None, {})          # unknown total: negative rules can't match
    assert rules.resolve(37, 40)[0] == "dense" and rules.resolve(36, 40)[0] is None
    assert rules.resolve(39, 40) == ("dense", {"top_k": 8})


def test_later_rules_win_and_chain_keeps_order():
    a = lr.parse_rules("0-9: dense")
    b = lr.parse_rules("3: sparse, top_k=16")
    both = a.chain(b)
    assert both.resolve(3, 10) == ("sparse", {"top_k": 16})
    assert both.resolve(4, 10) == ("dense", {})
    assert b.chain(a).resolve(3, 10) == ("dense", {"top_k": 16})


def test_values_are_typed():
    r = lr.parse_rules("0: k_clusters=none, tau_scale=2, backend=torch")
    assert r.resolve(0, 1)[1] == {"k_clusters": None, "tau_scale": 2.0, "backend": "torch"}


@pytest.mark.parametrize("text,needle", [
    ("0: dense\n\n1: topk=64", "line 3: unknown field 'topk'"),
    ("0 dense", "line 1: expected 'LAYERS: ACTION'"),
    ("a-b: dense", "line 1: bad layer index 'a-b'"),
    ("5-2: dense", "line 1: empty layer range"),
    ("0: fast", "line 1: unknown action 'fast'"),
    ("0: top_k=1.5", "line 1: field 'top_k' expects int"),
    ("0: top_k=", "line 1: missing value for 'top_k'"),
    ("0: dense, sparse", "line 1: both 'dense' and 'sparse'"),
    ("0: warmup=0.1", "line 1: field 'warmup' is run-wide"),
    ("# c\n0:", "line 2: missing action"),
    ("0: top_k", "did you mean 'top_k=...'"),
])
def test_errors_name_the_line(text, needle):
    with pytest.raises(ValueError) as ei:
        lr.parse_rules(text)
    assert needle in str(ei.value)


def test_empty_and_comment_only_text():
    assert len(lr.parse_rules("")) == 0
    assert len(lr.parse_rules("# nothing\n   \n")) == 0
