"""README tables that restate the code: the Thresholds widget table (names, order, defaults) and the
preset table (values of AdaClusterConfig.for_model)."""
from __future__ import annotations

import re

import pytest

from tests.comfy._helpers import comfy_inprocess, load_nodes_module
from tests.conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")


def _table_after(heading: str) -> list[list[str]]:
    sec = README.split(heading, 1)[1]
    rows = []
    for line in sec.splitlines():
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif rows:
            break
    return rows[2:]   # header and separator dropped


def test_thresholds_table_matches_the_node():
    problem = comfy_inprocess()
    if problem:
        pytest.fail(problem, pytrace=False)
    T = load_nodes_module("thresholds")
    widgets = T.all_widgets()
    rows = _table_after("### AdaCluster Thresholds")
    names = [re.sub(r"`", "", r[0]) for r in rows]
    assert names == list(widgets), "README Thresholds table order differs from the node's widget order"
    for row in rows:
        name = row[0].strip("`")
        default = widgets[name][1].get("default")
        shown = row[1].strip("`")
        want = ("true" if default else "false") if isinstance(default, bool) else str(default)
        assert shown == want, f"{name}: README default {shown!r}, node default {want!r}"


def test_preset_table_matches_config():
    from adacluster_core import AdaClusterConfig
    rows = {r[0].split("`")[1]: r for r in _table_after("## Presets and tuning")}
    assert set(rows) == {"balanced", "quality", "fast"}
    for preset, row in rows.items():
        cfgs = [AdaClusterConfig.for_model(m, preset) for m in ("wan", "hunyuan", "cogvideox")]
        c = cfgs[0]
        assert float(row[1]) == c.max_density, preset
        assert row[2] == ("on" if c.pooled_tail else "off"), preset
        assert re.findall(r"\d+", row[3].split("(")[-1] if "(" in row[3] else row[3]) == \
            [str(x.top_k) for x in cfgs], preset
        assert float(row[4]) == c.warmup and float(row[5]) == c.dense_layer_fraction, preset
        assert int(row[6]) == c.kmeans_iters_reuse, preset
