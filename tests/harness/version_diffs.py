"""Known node-definition differences between current ComfyUI (what workflows/ is generated
against) and 0.3.75, which the tests meet. A newer node only ADDS these trailing widgets /
outputs; an older frontend assigns widget values by position and ignores the extras, so the same
workflow file loads on both. Each entry has its own explicit test (tests/comfy/test_workflows.py)."""
from __future__ import annotations

NEWER_WIDGETS = {"CreateVideo": ["bit_depth"]}   # optional INT (8 or 10), after fps
NEWER_OUTPUTS = {"SaveVideo": ["video"]}        # SaveVideo passes its VIDEO on


def expected_widgets_after_load(node_type: str, file_values: list, loaded_values: list) -> list:
    """The widget values a frontend should show for a node loaded from a workflow file: the file's,
    less the trailing NEWER_WIDGETS values when this frontend's node lacks them (it has fewer)."""
    extra = len(file_values) - len(loaded_values)
    if 0 < extra <= len(NEWER_WIDGETS.get(node_type, [])):
        return file_values[:len(loaded_values)]
    return file_values
