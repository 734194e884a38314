"""The README's presets table and the bundled workflows' notes state what the code does
(scripts/doc_facts.py computes the facts; scripts/build_workflows.py prints them into the notes).
Offline: no ComfyUI is imported."""
from __future__ import annotations

import re
import sys

import pytest

from tests.harness.dense_reasons import stats_reasons


@pytest.fixture(scope="module")
def facts(repo_root):
    sys.path.insert(0, str(repo_root / "scripts"))
    import doc_facts
    return doc_facts


@pytest.fixture(scope="module")
def builders(repo_root, facts):
    import build_workflows as bw
    return {"wan21_t2v_1.3b_480p_adacluster": bw.wan21_t2v, "wan22_ti2v_5b_adacluster": bw.wan22_ti2v_5b,
            "hunyuan_video_t2v_720p_adacluster": bw.hunyuan_t2v_720p, "wan21_ab_check_adacluster": bw.wan21_ab_check,
            "minimax_h3_t2va_adacluster": bw.minimax_h3_t2va}


def _readme_presets_rows(text):
    sec = text.split("## Presets and tuning", 1)[1].split("\n## ", 1)[0].strip().split("\n\n", 1)[0]   # the first table
    rows = {}
    for ln in sec.splitlines():
        m = re.match(r"\| `(\w+)`", ln)
        if m:
            rows[m.group(1)] = [c.strip() for c in ln.strip("|").split("|")]
    return rows


def test_readme_presets_table_shows_the_codes_values(repo_root, facts):
    rows = _readme_presets_rows((repo_root / "README.md").read_text(encoding="utf-8"))
    for r in facts.preset_rows():
        cells = rows[r["preset"]]
        assert float(cells[1]) == pytest.approx(r["max_density"]), (r["preset"], cells[1])
        assert cells[2] == ("on" if r["pooled_tail"] else "off"), (r["preset"], cells[2])
        assert re.findall(r"\d+", cells[3].split("(")[-1]) == [str(k) for k in r["top_k"]], (r["preset"], cells[3])
        assert float(cells[4]) == pytest.approx(r["warmup"]) and float(cells[5]) == pytest.approx(r["dense_layer_fraction"])
        assert int(cells[6]) == r["kmeans_iters_reuse"], (r["preset"], cells[6])


def test_note_facts_come_from_the_code(repo_root, facts):
    from adacluster_core import api
    assert facts.NO_TRITON == api.NO_TRITON
    found = stats_reasons(repo_root)
    assert not [r for r in facts.NOTE_REASONS if r not in found]


def test_each_note_says_what_is_in_charge(builders, facts):
    for name, build in builders.items():
        g = build()
        note, P = g["note"], g["prompt"]
        ada = P["ada"]["inputs"]
        if isinstance(ada.get("config"), list):
            assert "In this workflow the Thresholds node" in note and "`preset` widget is ignored" in note, name
        else:
            assert "`preset` widget of" in note and "is in charge" in note, name
        assert facts.presets_table_markdown() in note, name
        # statements the issue found false must not come back
        for wrong in ("off = faster, the `fast` preset", "turn `pooled_tail` off", "torch reference` when Triton is missing",
                      "dense-equivalent."):
            assert wrong not in note, (name, wrong)


def test_the_ab_note_and_the_others_differ_in_who_is_in_charge(builders):
    notes = {n: b()["note"] for n, b in builders.items()}
    assert "`preset` widget of" in notes["wan21_ab_check_adacluster"]
    assert sum("In this workflow the Thresholds node" in n for n in notes.values()) == len(notes) - 1


def test_readme_h3_presets_table_shows_the_codes_values(repo_root):
    from adacluster_core import AdaClusterConfig
    text = (repo_root / "README.md").read_text(encoding="utf-8")
    sec = text.split("| H3 preset |", 1)[1].split("\n\n", 1)[0]
    rows = {m.group(1): [c.strip() for c in ln.strip("|").split("|")]
            for ln in sec.splitlines() for m in [re.match(r"\| `(\w+)`", ln)] if m}
    assert set(rows) == {"quality", "balanced", "fast"}, rows
    for p, cells in rows.items():
        c = AdaClusterConfig.for_model("h3", p)
        assert float(cells[1]) == pytest.approx(c.max_density) and int(cells[2]) == c.top_k, (p, cells)
