"""The README's troubleshooting table lists every dense reason the Stats node can print."""
from __future__ import annotations

from tests.harness.dense_reasons import (MAPPED_CORE_REASONS, missing_from_readme, readme_troubleshooting_codes,
                                         stats_reasons)


def test_every_dense_reason_is_in_the_readme(repo_root):
    missing = missing_from_readme(repo_root, (repo_root / "README.md").read_text(encoding="utf-8"))
    assert not missing, ("reasons the Stats node can print but README.md's Troubleshooting table does not "
                         f"list (add them, `…` for a value): {missing}")


def test_collector_finds_the_known_reasons(repo_root):
    # the collector really reads the patcher: the reasons the issue named, and the f-string ones
    found = stats_reasons(repo_root)
    for r in ("warmup", "layer-rule", "few-tokens", "head_dim …", "error …", "planned-dense-layer",
              "calibration", "cross-attn", "mask-on-video-keys", "unsupported-model (…)"):
        assert r in found, r
    for _core, ours, _snippet in MAPPED_CORE_REASONS:
        assert ours in found


def test_checker_fails_on_a_missing_reason(repo_root):
    text = (repo_root / "README.md").read_text(encoding="utf-8").replace("`few-tokens`", "few tokens")
    assert missing_from_readme(repo_root, text) == ["few-tokens"]
    assert "few-tokens" not in readme_troubleshooting_codes(text)


# ---- the core's ValueError texts the Troubleshooting section quotes -------------------------

def _value_error_templates(path):
    """Messages of every `raise ValueError(...)` in a file, "…" for each placeholder."""
    import ast
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) \
                and getattr(node.exc.func, "id", "") == "ValueError" and node.exc.args:
            a = node.exc.args[0]
            if isinstance(a, ast.Constant) and isinstance(a.value, str):
                out.add(a.value)
            elif isinstance(a, ast.JoinedStr):
                out.add("".join(v.value if isinstance(v, ast.Constant) else "…" for v in a.values))
    return out


def _matches(quote, template):
    import re
    pattern = "".join(".+" if part == "…" else re.escape(part) for part in re.split("(…)", template))
    return re.fullmatch(pattern, quote) is not None


def _value_error_row(text):
    sec = text.split("## Troubleshooting", 1)[-1].split("\n## ", 1)[0]
    rows = [ln for ln in sec.splitlines() if ln.startswith("| `error ValueError`")]
    assert len(rows) == 1, "README's Troubleshooting table needs one `error ValueError` row"
    import re
    return [q for q in re.findall(r"`([^`]+)`", rows[0].split("|")[2]) if "ValueError: …" not in q]


def test_troubleshooting_quotes_the_cores_real_value_errors(repo_root):
    """Every message the `error ValueError` row quotes is one adacluster_core/guards.py raises
    (the patcher reports a ValueError from the core as `error ValueError` and logs its text)."""
    templates = _value_error_templates(repo_root / "adacluster_core" / "guards.py")
    assert len(templates) >= 10, templates   # the collector really reads guards.py
    quotes = _value_error_row((repo_root / "README.md").read_text(encoding="utf-8"))
    assert len(quotes) >= 4, quotes
    for q in quotes:
        assert any(_matches(q, t) for t in templates), (
            f"README quotes `{q}`, which adacluster_core/guards.py never raises; its messages: {sorted(templates)}")
    assert "error …" in stats_reasons(repo_root)   # how the ValueError reaches the Stats node


def test_troubleshooting_has_no_messages_the_code_never_prints(repo_root):
    text = (repo_root / "README.md").read_text(encoding="utf-8")
    for gone in ("q/k/v dtypes differ", "q/k/v shapes differ", "q must be [B, H, N, D], got …`"):
        assert gone not in text, gone


def test_value_error_checker_fails_on_a_made_up_message(repo_root):
    templates = _value_error_templates(repo_root / "adacluster_core" / "guards.py")
    assert any(_matches("q must be [B, H, N, D], got shape (2, 3)", t) for t in templates)
    assert not any(_matches("q/k/v dtypes differ", t) for t in templates)
