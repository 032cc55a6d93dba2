"""SQuAD json loading with offset repair, and char <-> token span round trips on tricky text."""

from __future__ import annotations

import json

import pytest

from sru_lm.data import squad
from sru_lm.data.hub import HubUnavailableError

CTX = "  Zoë  Ødegaard\u00a0played in   São Paulo (1,000 fans) —\n“naïve”  東京 café's x2.5 🤗 end.  "


def _answer(text, shift=0):
    return {"text": text, "answer_start": CTX.index(text) + shift}


def _write(tmp_path):
    data = {"version": "1.1", "data": [{"title": "T", "paragraphs": [{"context": CTX, "qas": [
        {"id": "q1", "question": "Who?", "answers": [_answer("Zoë  Ødegaard"), _answer("Ødegaard")]},
        # BIG-bench quirks: a leading space with the offset one short, an offset 4 too far, an empty answer
        {"id": "q2", "question": "Where?", "answers": [_answer(" São Paulo", -2), _answer("São", 4), _answer("")]},
        {"id": "q3", "question": "What?", "answers": [_answer("東京")]},
    ]}]}]}
    removed = {"canary": "x", "removed": {"q3": ["東京 café's"], "gone": ["never seen"]}}
    (tmp_path / "dev.json").write_text(json.dumps(data), encoding="utf-8")
    (tmp_path / "dev_removed.json").write_text(json.dumps(removed), encoding="utf-8")
    return tmp_path / "dev.json", tmp_path / "dev_removed.json"


def test_read_squad_json_repairs_offsets_and_restores_removed_answers(tmp_path):
    path, removed = _write(tmp_path)
    ds = squad.read_squad_json(path, removed=removed)
    assert ds.features == squad.FEATURES and ds["id"] == ["q1", "q2", "q3"]
    answers = {ex["id"]: ex["answers"] for ex in ds}
    assert answers["q2"]["text"] == ["São Paulo", "São"]  # stripped, empty one dropped
    assert answers["q3"]["text"] == ["東京", "東京 café's"]  # removed answer appended after the kept one
    for ex in ds:
        for t, s in zip(ex["answers"]["text"], ex["answers"]["answer_start"], strict=True):
            assert ex["context"][s : s + len(t)] == t
    assert squad.read_squad_json(path)[2]["answers"]["text"] == ["東京"]


def test_locate_answer_prefers_the_nearest_occurrence():
    ctx = "a cat, a cat, a cat"
    assert squad.locate_answer(ctx, "cat", 12) == ("cat", 9)  # 12 is wrong; 9 is 3 away, 16 is 4 away
    assert squad.locate_answer(ctx, "cat", 2) == ("cat", 2)
    assert squad.locate_answer(ctx, "dog", 2) == ("dog", -1)


def test_token_span_round_trip_on_tricky_text(tiny_tokenizer):
    enc = tiny_tokenizer("Who played?", CTX, return_offsets_mapping=True)
    seq = enc.sequence_ids()
    offsets = [o if s == 1 else None for o, s in zip(enc["offset_mapping"], seq, strict=True)]
    for answer in ["Zoë  Ødegaard", "São Paulo", "(1,000 fans) —\n“naïve”", "東京", "café's x2.5 🤗", "end."]:
        start = CTX.index(answer)
        span = squad.char_to_token_span(offsets, start, start + len(answer))
        assert span is not None
        assert all(seq[i] == 1 for i in range(span[0], span[1] + 1))
        assert squad.span_text(CTX, offsets, *span) == answer
    # A span outside the tokens the window kept maps to None.
    cut = [o if o is not None and o[1] <= 20 else None for o in offsets]
    start = CTX.index("São Paulo")
    assert squad.char_to_token_span(cut, start, start + 9) is None


def test_span_helpers_on_word_offsets():
    words, offs = squad.word_tokenize(CTX)
    assert [CTX[s:e] for s, e in offs] == words
    assert words[:3] == ["Zoë", "Ødegaard", "played"] and "東京" in words and "café's" in words
    start = CTX.index("São")
    span = squad.char_to_token_span(offs, start, start + len("São Paulo"))
    assert span == (words.index("São"), words.index("Paulo"))
    assert squad.span_text(CTX, offs, *span) == "São Paulo"
    # An answer starting or ending inside a word widens to whole words.
    assert squad.span_text(CTX, offs, *squad.char_to_token_span(offs, start + 1, start + 6)) == "São Paulo"
    with pytest.raises(ValueError, match="end_char"):
        squad.char_to_token_span(offs, 5, 5)
    with pytest.raises(ValueError, match="first <= last"):
        squad.token_to_char_span(offs, 3, 2)


def test_offline_loaders_read_the_fetched_folder(tmp_path, monkeypatch):
    path, removed = _write(tmp_path)
    for name in ["squaddev_v1.1", *(f"{d}_v1.0" for d in squad.SHIFTS_DOMAINS)]:
        (tmp_path / f"{name}.json").write_bytes(path.read_bytes())
        (tmp_path / f"{name}_removed.json").write_bytes(removed.read_bytes())
    monkeypatch.setattr(squad, "fetch", lambda name, cache=None: tmp_path)
    ds = squad.load_squad_offline()
    assert len(ds["validation"]) == 3 and len(ds["train"]) == 12
    assert len(squad.load_squad_shifts(["nyt"])) == 3
    with pytest.raises(ValueError, match="domains"):
        squad.load_squad_shifts(["wiki"])


def test_hub_squad_offline_error(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("no")))
    with pytest.raises(HubUnavailableError, match="load_squad_offline"):
        squad.load_squad_hub()
