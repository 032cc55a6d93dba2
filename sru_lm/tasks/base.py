"""Saving and loading the task models: a folder with ``config.json``, ``model.safetensors`` and ``vocab.txt``.

The word-level task models are not Hugging Face ``PreTrainedModel``s (they have no LM backbone), but
they follow the same folder layout and ``save_pretrained`` / ``from_pretrained`` names.

Also here, shared by the task models: :class:`PartlyTunedEmbedding`, a word-vector table of which only
the first rows train (DrQA's fine-tuning of the frequent question words).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .text import Vocab


class TaskModel(nn.Module):
    """Base of the task models: ``self.config`` is a dataclass; the vocabulary travels with the weights."""

    config_class: ClassVar[type]
    # config fields added after models were saved: the value that reproduces those models when absent
    legacy_defaults: ClassVar[dict[str, Any]] = {}

    def save_pretrained(self, path: str | os.PathLike, vocab: Vocab | None = None, **extra: Any) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta = {"model_class": type(self).__name__, "config": dataclasses.asdict(self.config), **extra}
        (path / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(path / "model.safetensors"))
        if vocab is not None:
            (path / "vocab.txt").write_text("\n".join(vocab.to_list()) + "\n", encoding="utf-8")
        return path

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> tuple[TaskModel, Vocab | None]:
        """Returns the model (in eval mode) and its vocabulary (None if none was saved)."""
        path = Path(path)
        meta = json.loads((path / "config.json").read_text())
        if meta["model_class"] != cls.__name__:
            raise ValueError(f"{path} holds a {meta['model_class']}, not a {cls.__name__}")
        config = cls.config_class(**{**cls.legacy_defaults, **meta["config"]})
        model = cls(config)
        model.load_state_dict(load_file(str(path / "model.safetensors")))
        vocab_file = path / "vocab.txt"
        vocab = None
        if vocab_file.is_file():
            vocab = Vocab.from_list(vocab_file.read_text(encoding="utf-8").rstrip("\n").split("\n"))
        return model.eval(), vocab

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


def tuple_fields(config: Any, *names: str) -> None:
    """JSON turns tuples into lists; turn them back (for dataclass configs loaded from disk)."""
    for n in names:
        setattr(config, n, tuple(getattr(config, n)))


class PartlyTunedEmbedding(nn.Module):
    """An embedding whose first ``n_tuned`` rows train and whose other rows are a fixed buffer.

    DrQA fine-tunes only the most frequent question words and keeps the other pretrained vectors fixed.
    Keeping the fixed rows out of the parameters (rather than zeroing their gradient) spares the optimizer a
    dense update of the whole table every step: 1,002 x 50 trainable values instead of ~100k x 50.
    ``forward(ids (...)) -> (..., dim)``; ``weight`` is the full table (for saving and inspection).
    """

    def __init__(self, num_embeddings: int, dim: int, n_tuned: int, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.num_embeddings, self.dim = num_embeddings, dim
        self.n_tuned = n_tuned = min(n_tuned, num_embeddings)
        full = torch.randn(num_embeddings, dim) if weight is None else weight.detach().float()
        if full.shape != (num_embeddings, dim):
            raise ValueError(f"weight must be ({num_embeddings}, {dim}), got {tuple(full.shape)}")
        self.tuned = nn.Parameter(full[:n_tuned].clone())
        self.register_buffer("fixed", full[n_tuned:].clone())

    @property
    def weight(self) -> torch.Tensor:
        return torch.cat([self.tuned, self.fixed])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        n = self.n_tuned
        tuned = F.embedding(ids.clamp(max=n - 1), self.tuned)
        if self.fixed.shape[0] == 0:
            return tuned
        fixed = F.embedding((ids - n).clamp(min=0), self.fixed)
        return torch.where((ids < n).unsqueeze(-1), tuned, fixed)
