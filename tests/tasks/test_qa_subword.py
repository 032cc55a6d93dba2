"""The hybrid model's QA path: question/context windows with offsets, gold spans, training, decoding."""

from __future__ import annotations

import pytest
import torch

from sru_lm.data.squad import span_text
from sru_lm.data.tokenizer import train_tokenizer
from sru_lm.models import SRULMConfig, SRULMForQuestionAnswering
from sru_lm.tasks.qa_subword import encode_subword, predict_subword, subword_collate

CTX = "Die  Zürcher Straßenbahn fährt seit 1882 — naïvely “fast”, über 170 km.  Ende."
EXAMPLES = [
    {"id": "a", "context": CTX, "question": "Seit wann fährt sie?",
     "answers": {"text": ["1882"], "answer_start": [CTX.index("1882")]}},
    {"id": "b", "context": CTX, "question": "Wie lang?",
     "answers": {"text": ["170 km"], "answer_start": [CTX.index("170 km")]}},
    {"id": "c", "context": CTX, "question": "Was fährt?",
     "answers": {"text": ["Zürcher Straßenbahn"], "answer_start": [CTX.index("Zürcher")]}},
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([CTX * 3, "Seit wann fährt sie? Wie lang? Was fährt?"], vocab_size=300,
                           min_frequency=1, show_progress=False)


def test_gold_spans_map_back_to_the_answer_text(tokenizer):
    feats = encode_subword(tokenizer, EXAMPLES, max_length=64)
    for f, ex in zip(feats, EXAMPLES, strict=True):
        assert f.start is not None
        assert span_text(f.context, f.offsets, f.start, f.end).strip() == ex["answers"]["text"][0]
        assert f.offsets[0] is None  # question tokens carry no context offsets


def test_an_answer_past_the_window_is_no_target(tokenizer):
    (f,) = encode_subword(tokenizer, EXAMPLES[1:2], max_length=12)
    assert f.start is None and len(f.input_ids) == 12


def test_hybrid_reader_learns_and_predicts_context_substrings(tokenizer):
    torch.manual_seed(0)
    config = SRULMConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, attention_every_n_layers=2,
                         bidirectional=True, use_cache=False, pad_token_id=tokenizer.pad_token_id)
    model = SRULMForQuestionAnswering(config)
    feats = encode_subword(tokenizer, EXAMPLES, max_length=64)
    batch = subword_collate(feats)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    preds = predict_subword(model, feats, max_len=8)
    assert set(preds) == {"a", "b", "c"} and all(p in CTX for p in preds.values())
    assert any(preds[ex["id"]].strip() == ex["answers"]["text"][0] for ex in EXAMPLES)
