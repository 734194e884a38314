"""Which errors on the sparse path fall back to dense and which must reach the user.

A kernel or probe problem must not kill the user's run (the call runs dense, the log says why
once), except ComfyUI's interrupt (the user pressed cancel) and ADACLUSTER_STRICT=1 (tests and
debugging: re-raise instead of falling back).
"""
from __future__ import annotations

import os

import comfy.model_management

STRICT_ENV = "ADACLUSTER_STRICT"
# ComfyUI's interrupt: raises InterruptProcessingException once /interrupt was posted. The core
# calls it between k-means iterations and multi-stage rounds (feature-tested: >= 0.3.60 has it).
INTERRUPT_CHECK = getattr(comfy.model_management, "throw_exception_if_processing_interrupted", None)
_INTERRUPT_EXC = getattr(comfy.model_management, "InterruptProcessingException", None)


def is_interrupt(e: BaseException) -> bool:
    return _INTERRUPT_EXC is not None and isinstance(e, _INTERRUPT_EXC)


def must_raise(e: BaseException) -> bool:
    """True when `e` must propagate instead of the call falling back to dense."""
    return is_interrupt(e) or os.environ.get(STRICT_ENV) == "1"
