"""What ComfyUI's own prompt validation checks, so the nodes check only the rest.

ComfyUI skips its min / max / choice checks for every input named in a node's `validate_inputs`
(for ALL inputs when it takes **kwargs), and reports a failed `validate_inputs` against every
input it names. So the nodes name only the inputs ComfyUI cannot check itself.

ComfyUI 0.3.75 checks the choices of V1 list combos only, not of V3 `io.Combo` inputs ("COMBO"
type with an options list); later versions check both. Feature test: the validation code mentions
the V3 combo type. Where it does not, the nodes check their combos in `validate_inputs`.
"""
from __future__ import annotations

import inspect


def _comfy_checks_v3_combos() -> bool:
    try:
        import execution
        src = inspect.getsource(execution.validate_inputs)
    except Exception:   # pragma: no cover - no source: assume the old behaviour (check ourselves)
        return False
    return "Combo.io_type" in src or '"COMBO"' in src


COMFY_CHECKS_V3_COMBOS = _comfy_checks_v3_combos()


def choice_error(name: str, value, options) -> str | None:
    """A message naming the widget when `value` is not one of `options` (None = fine). A value
    that is None (linked input, not known at validation time) is checked when the node runs."""
    if value is None or value in list(options):
        return None
    return f"{name}: {value!r} is not one of {list(options)}"
