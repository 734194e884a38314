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
