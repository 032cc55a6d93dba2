"""Tokenizer offsets, answer alignment and span decoding."""

from __future__ import annotations

import itertools

import pytest
import torch

from sru_lm.data.squad import char_to_token_span, span_text
from sru_lm.tasks.qa_data import QACollator, featurize
from sru_lm.tasks.spans import decode_spans
from sru_lm.tasks.text import Vocab, tokenize

TRICKY = "  Zoë  Ødegaard\u00a0played in   São Paulo (1,000 fans) —\n“naïve”  東京 café's x2.5  "


def test_possessives_and_hyphens_split_so_answers_are_whole_tokens():
    text = "France's ice-free port"
    toks, offs = tokenize(text)
    assert toks[:2] == ["France", "'"] and "ice" in toks and "free" in toks
    assert span_text(text, offs, *char_to_token_span(offs, 0, 6)) == "France"


def test_tokenize_offsets_point_at_the_tokens():
    toks, offs = tokenize(TRICKY)
    assert [TRICKY[s:e] for s, e in offs] == toks
    assert "Zoë" in toks and "Ødegaard" in toks and "São" in toks and "東京" in toks and "1,000" in toks
    assert all(not t.isspace() for t in toks)
    assert [s for s, _ in offs] == sorted(s for s, _ in offs)


ANSWERS = ["Zoë  Ødegaard", "São Paulo", "1,000 fans", "“naïve”", "東京 café", "naïve", "café"]


@pytest.mark.parametrize("answer", ANSWERS)
def test_answer_round_trip_gives_the_exact_substring(answer):
    toks, offs = tokenize(TRICKY)
    start = TRICKY.index(answer)
    span = char_to_token_span(offs, start, start + len(answer))
    assert span is not None
    assert span_text(TRICKY, offs, *span) == answer


def test_char_span_inside_a_token_takes_the_whole_token_and_whitespace_gives_none():
    # the helpers are sru_lm.data.squad's; this checks them on this tokenizer's offsets
    text = "the U.N. resolution"
    _, offs = tokenize(text)
    i = text.index("resol")
    assert span_text(text, offs, *char_to_token_span(offs, i, i + 5)) == "resolution"
    assert char_to_token_span(offs, 3, 4) is None  # a single space


def test_featurize_then_collate_maps_gold_spans_back_to_answer_text():
    ctx = "Ünïcode   text: the  answer is «Zürich  Hbf»,\tnot Bern."
    ex = {"id": "1", "context": ctx, "question": "Where is the answer?",
          "answers": {"text": ["Zürich  Hbf"], "answer_start": [ctx.index("Zürich")]}}
    (f,), unaligned = featurize([ex])
    assert unaligned == 0
    assert span_text(f.context, f.offsets, f.start, f.end) == "Zürich  Hbf"
    vocab = Vocab.build([f.context_tokens, f.question_tokens])
    batch = QACollator(vocab)([f, f])
    assert batch["context_mask"].sum(1).tolist() == [len(f.context_tokens)] * 2
    # "the" and "answer" are in the question: exact-match features fire there
    em = batch["context_features"][0, :, 1]
    assert em[f.context_tokens.index("answer")] == 1 and em[f.context_tokens.index("Bern")] == 0


def _brute_force(s, e, n, max_len):
    ls, le = s[:n].log_softmax(-1), e[:n].log_softmax(-1)
    best = max(((ls[i] + le[j]).item(), i, j) for i, j in itertools.product(range(n), range(n))
               if i <= j < i + max_len)
    return best[1], best[2]


@pytest.mark.parametrize("max_len", [1, 3, 15])
def test_decode_spans_picks_the_best_valid_span(max_len):
    torch.manual_seed(0)
    B, L = 6, 23
    s, e = torch.randn(B, L) * 3, torch.randn(B, L) * 3
    lengths = torch.tensor([23, 1, 7, 15, 4, 20])
    mask = torch.arange(L) < lengths.unsqueeze(1)
    # make padding look attractive: decoding must still ignore it
    s[~mask], e[~mask] = 50.0, 50.0
    start, end, _ = decode_spans(s, e, mask, max_len)
    for b in range(B):
        assert (start[b].item(), end[b].item()) == _brute_force(s[b], e[b], lengths[b].item(), max_len)


def test_decode_spans_never_returns_end_before_start():
    s = torch.tensor([[0.0, 0.0, 9.0, 0.0]])
    e = torch.tensor([[9.0, 0.0, 0.0, 1.0]])  # the best end comes before the best start
    start, end, _ = decode_spans(s, e, max_len=15)
    assert start.item() <= end.item()
    assert (start.item(), end.item()) == (2, 3)
