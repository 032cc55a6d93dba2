"""Glue between the task models and the shared training loop (:mod:`sru_lm.training`): batch sources,
step functions, evaluation callbacks that keep the best weights, prediction, the results tables (with the
machine description) and the ``--mixed-precision`` flag the task scripts share.

The loop itself is :class:`sru_lm.training.Trainer`; nothing here runs an optimizer.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from ..eval.metrics import accuracy, squad_scores
from ..training import EpochBatches, StepOutput
from ..training.cli import command_line, machine_description
from .qa_data import QACollator, QAFeature, bucketed_batches
from .spans import decode_spans


def add_precision_arg(p: argparse.ArgumentParser) -> None:
    """``--mixed-precision``, shared by the task scripts (passed on to ``TrainConfig.mixed_precision``)."""
    p.add_argument("--mixed-precision", choices=["no", "bf16", "fp16", "auto"], default="no",
                   help="autocast for training and evaluation (accelerate): bf16 runs the matmuls on a CPU's "
                        "AMX / AVX512-BF16 units or a GPU's tensor cores; fp16 needs CUDA; auto: bf16/fp16 on a "
                        "GPU, fp32 on a CPU")


def epoch_batches(
    lengths: Sequence[int], batch_size: int, collate: Callable[[list[int]], dict], seed: int = 0
) -> EpochBatches:
    """Endless, resumable, length-bucketed training batches: epoch ``e`` is shuffled with ``seed + e``."""
    return EpochBatches(lambda e: (collate(idx) for idx in bucketed_batches(lengths, batch_size, True, seed + e)))


# --------------------------------------------------------------------------------------------------
# Classification


def pad_ids(seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, L)`` ids padded with 0 and the ``(B, L)`` bool mask of real tokens."""
    L = max(max((len(s) for s in seqs), default=1), 1)
    ids = torch.zeros(len(seqs), L, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    lengths = torch.tensor([len(s) for s in seqs])
    return ids, torch.arange(L) < lengths.unsqueeze(1)


def classification_collate(ids: Sequence[Sequence[int]], labels: Sequence[int]) -> Callable[[list[int]], dict]:
    def collate(idx: list[int]) -> dict:
        input_ids, mask = pad_ids([ids[i] for i in idx])
        return {"input_ids": input_ids, "attention_mask": mask, "labels": torch.tensor([labels[i] for i in idx])}

    return collate


def classification_step(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> StepOutput:
    out = model(**batch)
    return StepOutput(out.loss, int(batch["attention_mask"].sum()))


def to_model_device(model: nn.Module, batch: Mapping[str, object]) -> dict[str, object]:
    """``batch`` with its tensors on the device of ``model``'s parameters (evaluation runs outside the loop)."""
    device = next(model.parameters()).device
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@torch.no_grad()
def predict_labels(model: nn.Module, ids: Sequence[Sequence[int]], batch_size: int = 256) -> list[int]:
    was_training = model.training
    model.eval()
    collate = classification_collate(ids, [0] * len(ids))
    preds = [0] * len(ids)
    for idx in bucketed_batches([len(s) for s in ids], batch_size, shuffle=False):
        batch = collate(idx)
        del batch["labels"]
        for i, p in zip(idx, model(**to_model_device(model, batch)).logits.argmax(-1).tolist(), strict=True):
            preds[i] = p
    model.train(was_training)
    return preds


def classification_accuracy(model: nn.Module, ids: Sequence[Sequence[int]], labels: Sequence[int]) -> float:
    return accuracy(predict_labels(model, ids), list(labels))


# --------------------------------------------------------------------------------------------------
# Question answering


def qa_step(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> StepOutput:
    out = model(**batch)
    return StepOutput(out.loss, int(batch["context_mask"].sum() + batch["question_mask"].sum()))


@torch.no_grad()
def predict_answers(
    model: nn.Module, features: Sequence[QAFeature], collator: QACollator, batch_size: int = 64, max_len: int = 15
) -> dict[str, str]:
    """Question id -> the exact context text of the best span of at most ``max_len`` tokens."""
    was_training = model.training
    model.eval()
    preds = {}
    plain = copy.copy(collator)
    plain.with_answers = False
    for idx in bucketed_batches([len(f.context_tokens) for f in features], batch_size, shuffle=False):
        batch = [features[i] for i in idx]
        out = model(**to_model_device(model, plain(batch)))
        starts, ends, _ = decode_spans(out.start_logits.float().cpu(), out.end_logits.float().cpu(), None, max_len)
        for f, s, e in zip(batch, starts.tolist(), ends.tolist(), strict=True):
            preds[f.id] = f.context[f.offsets[s][0] : f.offsets[e][1]]
    model.train(was_training)
    return preds


def squad_eval(
    model: nn.Module, features: Sequence[QAFeature], collator: QACollator, batch_size: int = 64, max_len: int = 15
) -> dict[str, float]:
    preds = predict_answers(model, features, collator, batch_size, max_len)
    return squad_scores(preds, {f.id: f.answers for f in features})


# --------------------------------------------------------------------------------------------------
# Model selection and reporting


class KeepBest:
    """An ``eval_fn`` for :class:`sru_lm.training.Trainer` that also keeps a copy of the weights with the best
    ``metric`` so far (higher is better); :meth:`restore` loads them back at the end."""

    def __init__(self, evaluate: Callable[[nn.Module], dict[str, float]], metric: str) -> None:
        self.evaluate = evaluate
        self.metric = metric
        self.best: float | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.evals = 0

    def __call__(self, model: nn.Module) -> dict[str, float]:
        scores = self.evaluate(model)
        self.evals += 1
        if self.best is None or scores[self.metric] > self.best:
            self.best = scores[self.metric]
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return {**scores, f"best_{self.metric}": self.best}

    def restore(self, model: nn.Module) -> nn.Module:
        if self.best_state is not None:
            model.load_state_dict(self.best_state)
        return model


def append_results(
    path: str | os.PathLike, title: str, columns: Sequence[str], rows: Sequence[Sequence[object]], notes: str = ""
) -> Path:
    """Append a dated section with a markdown table to ``path`` (created with a header if new)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    lines = [f"## {title} ({stamp})", "", f"Machine: {machine_description()}", "",
             f"Command: `{command_line()}`", ""]
    lines += ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_fmt(v) for v in r) + " |" for r in rows]
    if notes:
        lines += ["", notes]
    new = not path.exists()
    with path.open("a", encoding="utf-8") as f:
        if new:
            f.write(f"# {path.stem.replace('_', ' ')}: results\n\nEach section is one run, appended by its script.\n")
        f.write("\n" + "\n".join(lines) + "\n")
    return path


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.1f}" if abs(v) >= 10 else f"{v:.3g}"
    return str(v)

