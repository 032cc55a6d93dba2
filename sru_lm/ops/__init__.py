"""The SRU recurrence: the spec (in ``models/sru_backend.py``, so it travels with saved models), the C++ CPU
kernel, the scripted PyTorch loops, the Triton GPU kernels, one-step and in-place-step decoding, and the
one backend decision (:func:`select_backend`)."""

from __future__ import annotations

from ..models.sru_backend import sru_recurrence, sru_recurrence_ref, sru_step, sru_step_ref, state_dtype
from .recurrence import BACKENDS, check_recurrence_inputs, check_step_inputs, select_backend
from .step import sru_step_

__all__ = [
    "BACKENDS",
    "check_recurrence_inputs",
    "check_step_inputs",
    "select_backend",
    "sru_recurrence",
    "sru_recurrence_ref",
    "sru_step",
    "sru_step_",
    "sru_step_ref",
    "state_dtype",
]
