"""SQuAD examples for a subword model (``SRULMForQuestionAnswering``): ``question <sep> context`` windows with
character offsets, so a predicted token span is returned as the exact context text.

The question and the context are tokenized separately (no pair template is assumed of the LM's
tokenizer), joined by one separator token, and the context is cut to fit ``max_length``; an answer that
falls past the cut is not a training target, and at evaluation the model only sees the first window
(stated in the results). Offsets are None for question and separator tokens, the convention of
:func:`sru_lm.data.squad.char_to_token_span`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

from ..data.squad import Offsets, char_to_token_span, span_text
from ..eval.metrics import squad_scores
from ..training import StepOutput
from .spans import decode_spans
from .training import pad_ids, to_model_device


@dataclass
class SubwordQAFeature:
    id: str
    context: str
    input_ids: list[int]
    offsets: Offsets  # per input token: (start, end) in the context, None for question/separator
    answers: list[str]
    start: int | None = None
    end: int | None = None


def encode_subword(
    tokenizer, examples: Iterable[Mapping], max_length: int = 320, max_question: int = 48
) -> list[SubwordQAFeature]:
    """One window per example: ``question[:max_question] + [sep] + context`` cut to ``max_length`` tokens."""
    sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    if sep is None:
        raise ValueError("the tokenizer needs a sep or eos token to join question and context")
    feats = []
    for ex in examples:
        q = tokenizer(ex["question"], add_special_tokens=False)["input_ids"][:max_question]
        c = tokenizer(ex["context"], add_special_tokens=False, return_offsets_mapping=True)
        room = max_length - len(q) - 1
        ids = [*q, sep, *c["input_ids"][:room]]
        offsets: list[tuple[int, int] | None] = [None] * (len(q) + 1) + [tuple(o) for o in c["offset_mapping"][:room]]
        answers = ex.get("answers") or {"text": [], "answer_start": []}
        f = SubwordQAFeature(str(ex["id"]), ex["context"], ids, offsets, list(answers["text"]))
        for text, start in zip(answers["text"], answers["answer_start"], strict=True):
            span = char_to_token_span(offsets, start, start + len(text)) if start >= 0 and text else None
            if span is not None:
                f.start, f.end = span
                break
        feats.append(f)
    return feats


def subword_collate(features: Sequence[SubwordQAFeature], with_answers: bool = True) -> dict:
    input_ids, mask = pad_ids([f.input_ids for f in features])
    batch = {"input_ids": input_ids, "attention_mask": mask.long()}
    if with_answers:
        batch["start_positions"] = torch.tensor([f.start for f in features])
        batch["end_positions"] = torch.tensor([f.end for f in features])
    return batch


@torch.no_grad()
def predict_subword(model, features: Sequence[SubwordQAFeature], batch_size: int = 32,
                    max_len: int = 30) -> dict[str, str]:
    """Question id -> exact context text of the best span over context tokens (at most ``max_len`` tokens)."""
    was_training = model.training
    model.eval()
    preds = {}
    for s in range(0, len(features), batch_size):
        chunk = features[s : s + batch_size]
        batch = subword_collate(chunk, with_answers=False)
        out = model(**to_model_device(model, batch))
        L = batch["input_ids"].shape[1]
        context = torch.tensor([[i < len(f.offsets) and f.offsets[i] is not None for i in range(L)] for f in chunk])
        starts, ends, _ = decode_spans(out.start_logits.float().cpu(), out.end_logits.float().cpu(), context, max_len)
        for f, a, b in zip(chunk, starts.tolist(), ends.tolist(), strict=True):
            preds[f.id] = span_text(f.context, f.offsets, a, b)
    model.train(was_training)
    return preds


def subword_step(model, batch: Mapping[str, torch.Tensor]) -> StepOutput:
    out = model(**batch)
    return StepOutput(out.loss, int(batch["attention_mask"].sum()))


def subword_squad_eval(model, features: Sequence[SubwordQAFeature], max_len: int = 30) -> dict[str, float]:
    preds = predict_subword(model, features, max_len=max_len)
    return squad_scores(preds, {f.id: f.answers for f in features})
