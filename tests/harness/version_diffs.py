"""Known node-definition differences between current ComfyUI (what workflows/ is generated
against) and 0.3.75, which the tests meet. A newer node only ADDS trailing widget values /
outputs; an older frontend assigns widget values by position and ignores the extras, so the same
workflow file loads on both. Each entry has its own explicit test (tests/comfy/test_workflows.py)."""
from __future__ import annotations

NEWER_WIDGETS = {
    "CreateVideo": ["bit_depth"],   # optional INT (8 or 10), after fps
    # 0.33: `format` is a V3 DynamicCombo; the `codec` of the chosen format ("format.codec") follows it,
    # in the place of 0.3.75's `codec` (which so reads it), and the old top-level `codec` stays, hidden, last
    "SaveVideo": ["codec"],
}
NEWER_OUTPUTS = {"SaveVideo": ["video"]}        # SaveVideo passes its VIDEO on


def newer_trailing_widgets(node_type: str, file_values: list, live_count: int) -> list:
    """The NEWER_WIDGETS a node with `live_count` widget values lacks when a workflow file carries
    `file_values` for it (the file's extra trailing values are those), else []."""
    known = NEWER_WIDGETS.get(node_type, [])
    extra = len(file_values) - live_count
    return known[len(known) - extra:] if 0 < extra <= len(known) else []


def expected_widgets_after_load(node_type: str, file_values: list, loaded_values: list) -> list:
    """The widget values a frontend should show for a node loaded from a workflow file: the file's,
    less the trailing NEWER_WIDGETS values when this frontend's node lacks them (it has fewer)."""
    extra = len(newer_trailing_widgets(node_type, file_values, len(loaded_values)))
    return file_values[:len(file_values) - extra] if extra else file_values
