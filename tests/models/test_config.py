"""SRULMConfig: defaults, the attention-placement shorthand, serialization, and clear errors."""

from __future__ import annotations

import pytest

from sru_lm import SRULMConfig
from sru_lm.models.configuration_sru_lm import SRU_LAYER


def test_defaults_follow_sru_pp():
    c = SRULMConfig()
    assert c.model_type == "sru_lm"
    assert c.projection_size == c.hidden_size // 4
    assert c.highway_bias == -2.0
    assert c.layer_types == ["hybrid"] * c.num_hidden_layers  # attention on every layer by default
    assert c.position_embedding_type == "none"
    assert c.tie_word_embeddings and c.use_cache and not c.bidirectional


@pytest.mark.parametrize(
    "n, want",
    [
        (1, ["hybrid"] * 5),
        (2, ["hybrid", "linear_attention", "hybrid", "linear_attention", "hybrid"]),
        (3, ["linear_attention", "hybrid", "linear_attention", "linear_attention", "hybrid"]),
        (0, ["linear_attention"] * 5),
    ],
)
def test_attention_every_n_layers_anchors_the_last_layer(n, want):
    c = SRULMConfig(num_hidden_layers=5, attention_every_n_layers=n)
    assert c.layer_types == want
    assert c.num_attention_layers == want.count("hybrid")


def test_round_trip_through_dict():
    c = SRULMConfig(vocab_size=100, hidden_size=64, num_hidden_layers=4, attention_every_n_layers=2,
                    position_embedding_type="rotary", num_attention_heads=2)
    d = c.to_dict()
    c2 = SRULMConfig.from_dict(d)
    assert c2.to_dict() == d
    c3 = SRULMConfig(num_hidden_layers=3, layer_types=["linear_attention", "hybrid", "hybrid"])
    assert SRULMConfig.from_dict(c3.to_dict()).layer_types == c3.layer_types


def test_bidirectional_turns_caching_off():
    assert SRULMConfig(bidirectional=True).use_cache is False


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_hidden_layers=3, layer_types=["hybrid"]), "num_hidden_layers=3"),
        (dict(num_hidden_layers=2, layer_types=["hybrid", "attention"]), "layer_types entries"),
        (dict(num_hidden_layers=4, layer_types=["hybrid"] * 4, attention_every_n_layers=2), "disagrees"),
        (dict(attention_every_n_layers=-1), "attention_every_n_layers"),
        (dict(hidden_size=64, projection_size=16, num_attention_heads=3), "divisible by num_attention_heads"),
        (dict(position_embedding_type="alibi"), "position_embedding_type"),
        (dict(hidden_size=64, projection_size=12, num_attention_heads=4, position_embedding_type="rotary"), "even"),
        (dict(bidirectional=True, hidden_size=63), "even"),
        (dict(hidden_size=0), "hidden_size"),
        (dict(hidden_size="64"), "hidden_size"),
        (dict(hidden_dropout=1.0), "hidden_dropout"),
        (dict(layer_norm_eps=0.0), "layer_norm_eps"),
    ],
)
def test_bad_combinations_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SRULMConfig(**kwargs)


def test_heads_without_attention_need_no_divisibility():
    config = SRULMConfig(hidden_size=64, projection_size=15, num_attention_heads=4, attention_every_n_layers=0)
    assert config.projection_size == 15 and set(config.layer_types) == {SRU_LAYER}
    with pytest.raises(ValueError):  # the same sizes with attention layers are refused
        SRULMConfig(hidden_size=64, projection_size=15, num_attention_heads=4, attention_every_n_layers=2)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(num_attention_heads=3), "divisible by num_attention_heads"),
        (dict(num_hidden_layers=4), "num_hidden_layers=4"),
        (dict(layer_types=["hybrid", "attention", "hybrid"]), "layer_types entries"),
        (dict(hidden_dropout=1.5), "hidden_dropout"),
        (dict(hidden_size="24"), "hidden_size must be an int"),
        (dict(sru_backend=3), "sru_backend"),
    ],
)
def test_a_config_changed_after_creation_is_checked_when_a_model_is_built(change, match):
    """The model's forward would otherwise fail with a raw reshape/index error (or silently run wrong)."""
    from sru_lm import SRULMForCausalLM, SRULMForQuestionAnswering, SRULMForSequenceClassification, SRULMModel

    for cls in (SRULMModel, SRULMForCausalLM, SRULMForSequenceClassification, SRULMForQuestionAnswering):
        config = SRULMConfig(vocab_size=50, hidden_size=24, num_hidden_layers=3, num_attention_heads=2,
                             projection_size=8, attention_every_n_layers=2)
        for name, value in change.items():
            setattr(config, name, value)
        with pytest.raises((ValueError, TypeError), match=match):
            cls(config)


def test_sru_backend_defaults_to_none_and_must_be_a_string():
    assert SRULMConfig().sru_backend is None
    assert SRULMConfig(sru_backend="reference").sru_backend == "reference"
    assert SRULMConfig.from_dict(SRULMConfig(sru_backend="reference").to_dict()).sru_backend == "reference"
    with pytest.raises(TypeError, match="sru_backend must be None .* got int 1"):
        SRULMConfig(sru_backend=1)


def test_layer_types_are_transformers_names():
    """config.json stores these strings; transformers' DynamicCache and validate_layer_type know them."""
    from transformers.configuration_utils import ALLOWED_ATTN_LAYER_TYPES

    from sru_lm.models.configuration_sru_lm import ATTENTION_LAYER

    assert (ATTENTION_LAYER, SRU_LAYER) == ("hybrid", "linear_attention")
    assert {ATTENTION_LAYER, SRU_LAYER} <= set(ALLOWED_ATTN_LAYER_TYPES)
    SRULMConfig(num_hidden_layers=3, attention_every_n_layers=2).validate()  # transformers' own checks pass too
