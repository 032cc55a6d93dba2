"""Sentence classifiers that differ only in their encoder: SRU, LSTM, or a Kim-style CNN.

The SRU paper's classification setup (Lei et al. 2018, section 4.1): word embeddings, a 2-layer
(bidirectional) encoder, pooling over time, dropout, a linear layer. The LSTM variant swaps the
recurrence and nothing else; the CNN variant is Kim (2014), widths 3/4/5 with 100 maps each.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from .base import TaskModel, tuple_fields
from .encoders import CNNEncoder, RNNEncoder, masked_pool

ENCODERS = ("sru", "lstm", "cnn")


@dataclass
class SentenceClassifierConfig:
    """Args:
        vocab_size, embed_dim: the word embedding table.
        num_labels: output classes.
        encoder: ``"sru"``, ``"lstm"`` or ``"cnn"``.
        hidden_size, num_layers, bidirectional: the recurrent encoder (units per direction).
        pooling: ``"max"`` or ``"mean"`` over time (recurrent encoders; the CNN always max-pools).
        cnn_channels, cnn_kernel_sizes: the CNN encoder.
        dropout: on the embeddings, between recurrent layers, and before the output layer.
        freeze_embeddings: keep the (pretrained) embeddings fixed.
        highway_bias: the SRU reset-gate bias.
        layer_norm: layer normalization on every SRU layer's input.
        rescale: scale the SRU highway term by ``sqrt(1 + 2 exp(highway_bias))`` (the official ``sru``
            package's default; off keeps models saved before the option loading as they were).
    """

    vocab_size: int
    embed_dim: int = 50
    num_labels: int = 2
    encoder: str = "sru"
    hidden_size: int = 128
    num_layers: int = 2
    bidirectional: bool = True
    pooling: str = "max"
    cnn_channels: int = 100
    cnn_kernel_sizes: tuple[int, ...] = (3, 4, 5)
    dropout: float = 0.3
    freeze_embeddings: bool = False
    highway_bias: float = 0.0
    layer_norm: bool = False
    rescale: bool = False

    def __post_init__(self) -> None:
        tuple_fields(self, "cnn_kernel_sizes")
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {self.encoder!r}")
        if self.pooling not in ("max", "mean"):
            raise ValueError(f"pooling must be 'max' or 'mean', got {self.pooling!r}")


class SentenceClassifier(TaskModel):
    """``forward(input_ids (B, L), attention_mask (B, L), labels (B,)) -> SequenceClassifierOutput``
    with ``logits (B, num_labels)`` and, given labels, the cross-entropy ``loss``.

    Example:
        >>> model = SentenceClassifier(SentenceClassifierConfig(vocab_size=100, encoder="sru"))
        >>> ids = torch.randint(2, 100, (4, 9))
        >>> model(ids, torch.ones_like(ids), labels=torch.tensor([0, 1, 1, 0])).logits.shape
        torch.Size([4, 2])
    """

    config_class = SentenceClassifierConfig

    def __init__(self, config: SentenceClassifierConfig, embeddings: torch.Tensor | None = None) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.embed_dim, padding_idx=0)
        if embeddings is not None:
            if embeddings.shape != self.embed.weight.shape:
                raise ValueError(f"embeddings must be {tuple(self.embed.weight.shape)}, got {tuple(embeddings.shape)}")
            self.embed.weight.data.copy_(embeddings)
        self.embed.weight.requires_grad_(not config.freeze_embeddings)
        if config.encoder == "cnn":
            self.encoder = CNNEncoder(config.embed_dim, config.cnn_channels, config.cnn_kernel_sizes)
        else:
            self.encoder = RNNEncoder(
                config.embed_dim, config.hidden_size, config.num_layers, config.encoder, config.bidirectional,
                dropout=config.dropout,
                sru_kwargs={"highway_bias": config.highway_bias, "layer_norm": config.layer_norm,
                            "rescale": config.rescale},
            )
        self.head = nn.Linear(self.encoder.output_size, config.num_labels)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> SequenceClassifierOutput:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (B, L), got {tuple(input_ids.shape)}")
        mask = input_ids.ne(0) if attention_mask is None else attention_mask.bool()
        x = self.embed(input_ids)  # (B, L, E)
        if self.config.encoder == "cnn":
            x = F.dropout(x, self.config.dropout, self.training)
            pooled = self.encoder(x, mask)  # (B, C * widths)
        else:
            # the encoder drops out every layer's input, the embeddings included
            pooled = masked_pool(self.encoder(x, mask), mask, self.config.pooling)  # (B, D*H)
        logits = self.head(F.dropout(pooled, self.config.dropout, self.training))
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)
