"""The peers the hybrid LM is compared with, sized to a parameter budget.

- :class:`LSTMLanguageModel`: embedding -> ``nn.LSTM`` -> LayerNorm -> tied output layer, the
  standard recurrent LM (it carries ``(h, c)`` across segments like the hybrid carries SRU state).
- :func:`gpt2_config`: a ``transformers`` ``GPT2Config`` (SDPA attention, tied embeddings).
- :func:`match_width`: the width that brings a family closest to a target parameter count.

Dropout is off by default everywhere: the comparison runs see each training token about once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel


class LSTMLanguageModel(nn.Module):
    """A word-level-style LSTM LM over token ids.

    Args:
        vocab_size: tokens. d_model: embedding and hidden size (tied input/output embeddings).
        num_layers: stacked LSTM layers. dropout: between layers and before the output layer.

    Shapes: ``forward(input_ids (B, T), state=((L, B, d), (L, B, d)) or None) ->
    (logits (B, T, vocab), state)``.

    Example::

        >>> lm = LSTMLanguageModel(8192, 256, 2)
        >>> logits, state = lm(torch.randint(0, 8192, (4, 64)))
    """

    def __init__(self, vocab_size: int, d_model: int, num_layers: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        self.vocab_size, self.d_model, self.num_layers = vocab_size, d_model, num_layers
        self.embed = nn.Embedding(vocab_size, d_model)
        self.lstm = nn.LSTM(d_model, d_model, num_layers, batch_first=True, dropout=dropout if num_layers > 1 else 0.0)
        self.norm = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.head.weight = self.embed.weight
        nn.init.normal_(self.embed.weight, std=d_model**-0.5)

    def forward(
        self, input_ids: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        h, state = self.lstm(self.embed(input_ids), state)  # (B, T, d)
        return self.head(self.drop(self.norm(h))), state


def gpt2_config(vocab_size: int, d_model: int, num_layers: int, num_heads: int, context: int) -> GPT2Config:
    """A GPT-2 of the given size: SDPA attention, tied embeddings, no dropout."""
    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=context,
        n_embd=d_model,
        n_layer=num_layers,
        n_head=num_heads,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation="sdpa",
    )


def build_gpt2(config: GPT2Config) -> GPT2LMHeadModel:
    return GPT2LMHeadModel._from_config(config, attn_implementation="sdpa")


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters, tied ones counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def match_width(target: int, build: Callable[[int], nn.Module], widths: Sequence[int]) -> tuple[int, int]:
    """The width in ``widths`` (ascending) whose model ``build(width)`` has a parameter count closest to ``target``.

    Returns ``(width, parameter count)``. The count grows with the width, so this bisects; models are
    built on the meta device, so it costs no memory.
    """
    widths = list(widths)
    if not widths:
        raise ValueError("widths is empty")
    counts: dict[int, int] = {}

    def count(i: int) -> int:
        if i not in counts:
            with torch.device("meta"):
                counts[i] = count_parameters(build(widths[i]))
        return counts[i]

    lo, hi = 0, len(widths) - 1
    while lo < hi:  # first index whose count reaches the target
        mid = (lo + hi) // 2
        if count(mid) < target:
            lo = mid + 1
        else:
            hi = mid
    best = min((i for i in (lo - 1, lo) if 0 <= i < len(widths)), key=lambda i: abs(count(i) - target))
    return widths[best], count(best)
