"""The SRU++ model family for transformers; importing it registers every class with the Auto classes.

``configuration_sru_lm.py``, ``modeling_sru_lm.py``, ``cache.py``, ``sru_backend.py`` and ``sru_init.py`` import
only torch, transformers and each other, so ``save_pretrained`` can ship them for ``trust_remote_code=True``
loading.
"""

from __future__ import annotations

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
)

from .cache import SRULMCache, SRULMLayerCache
from .configuration_sru_lm import SRULMConfig
from .modeling_sru_lm import (
    SRULMAttention,
    SRULMForCausalLM,
    SRULMForQuestionAnswering,
    SRULMForSequenceClassification,
    SRULMLayer,
    SRULMModel,
    SRULMPreTrainedModel,
    causal_to_bidirectional_state_dict,
)

AutoConfig.register(SRULMConfig.model_type, SRULMConfig, exist_ok=True)
AutoModel.register(SRULMConfig, SRULMModel, exist_ok=True)
AutoModelForCausalLM.register(SRULMConfig, SRULMForCausalLM, exist_ok=True)
AutoModelForSequenceClassification.register(SRULMConfig, SRULMForSequenceClassification, exist_ok=True)
AutoModelForQuestionAnswering.register(SRULMConfig, SRULMForQuestionAnswering, exist_ok=True)

__all__ = [
    "SRULMAttention",
    "SRULMCache",
    "SRULMConfig",
    "SRULMForCausalLM",
    "SRULMForQuestionAnswering",
    "SRULMForSequenceClassification",
    "SRULMLayer",
    "SRULMLayerCache",
    "SRULMModel",
    "SRULMPreTrainedModel",
    "causal_to_bidirectional_state_dict",
]
