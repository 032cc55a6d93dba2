"""Tiny SRU++ models for the model-family tests: small enough that the whole folder runs in seconds."""

from __future__ import annotations

import pytest
import torch

from sru_lm import SRULMConfig

VOCAB = 61


def tiny_config(**overrides) -> SRULMConfig:
    kw = dict(
        vocab_size=VOCAB, hidden_size=24, num_hidden_layers=3, num_attention_heads=2, projection_size=8,
        attention_every_n_layers=2, pad_token_id=0,
    )
    kw.update(overrides)
    return SRULMConfig(**kw)


def left_pad(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists of different lengths -> left-padded ``input_ids`` (pad 0) and ``attention_mask``, (B, L)."""
    L = max(map(len, prompts))
    ids = torch.zeros(len(prompts), L, dtype=torch.long)
    mask = torch.zeros(len(prompts), L, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, L - len(p):] = torch.tensor(p)
        mask[i, L - len(p):] = 1
    return ids, mask


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Move every parameter away from its init (alpha = 0 would switch attention off, biases start at 0,
    LayerNorms at identity), so a test fails when any of them is ignored or misused."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("alpha"):
                p.copy_(1.0 + 0.5 * noise)
            else:
                p.add_(0.1 * noise * max(p.detach().abs().mean().item(), 0.1))
    return model.eval()


@pytest.fixture
def make_config():
    return tiny_config


@pytest.fixture
def perturb():
    return randomize
