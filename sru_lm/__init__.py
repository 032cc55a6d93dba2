"""sru_lm: hybrid SRU-Transformer language models."""

from __future__ import annotations

from .layers import SRU, SRUCell
from .models import (
    SRULMCache,
    SRULMConfig,
    SRULMForCausalLM,
    SRULMForQuestionAnswering,
    SRULMForSequenceClassification,
    SRULMModel,
    SRULMPreTrainedModel,
)
from .ops import sru_recurrence, sru_step

__version__ = "0.1.0"
__all__ = [
    "SRU",
    "SRUCell",
    "SRULMCache",
    "SRULMConfig",
    "SRULMForCausalLM",
    "SRULMForQuestionAnswering",
    "SRULMForSequenceClassification",
    "SRULMModel",
    "SRULMPreTrainedModel",
    "sru_recurrence",
    "sru_step",
]
