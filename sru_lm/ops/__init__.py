"""The SRU recurrence: a reference (the spec), a CPU fast path, a Triton GPU kernel, and a one-step path."""

from __future__ import annotations

from .naive import sru_recurrence_ref, sru_step_ref, state_dtype
from .recurrence import BACKENDS, check_recurrence_inputs, select_backend, sru_recurrence
from .step import sru_step

__all__ = [
    "BACKENDS",
    "check_recurrence_inputs",
    "select_backend",
    "sru_recurrence",
    "sru_recurrence_ref",
    "sru_step",
    "sru_step_ref",
    "state_dtype",
]
