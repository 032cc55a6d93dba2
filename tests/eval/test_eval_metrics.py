"""Metrics on cases worked out by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sru_lm.eval import metrics as M


def test_accuracy():
    # matches at positions 0, 2, 4 -> 3 / 5
    assert M.accuracy([1, 0, 1, 1, 0], [1, 1, 1, 0, 0]) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="one length"):
        M.accuracy([1], [1, 0])


def test_normalize_answer():
    # lower -> "the cat's  hat!"; punctuation -> "the cats  hat"; articles -> " cats  hat"; spaces -> "cats hat"
    assert M.normalize_answer("The Cat's  hat!") == "cats hat"
    # only whole words are articles: "anthem", "and", "theater" survive
    assert M.normalize_answer("The anthem and a theater") == "anthem and theater"
    assert M.normalize_answer(" \n\t ") == ""


def test_exact_match_and_f1_by_hand():
    assert M.exact_match("Denver Broncos", "the denver broncos.") == 1.0
    # pred -> [big, red, dog, barked] (4), gold -> [red, dog] (2), common 2:
    # P = 2/4, R = 2/2, F1 = 2 * 0.5 * 1 / 1.5 = 2/3
    assert M.f1("the big red dog barked", "a red dog") == pytest.approx(2 / 3)
    # repeated tokens count with multiplicity: pred {dog: 3}, gold {dog: 2, cat: 1}, common = min(3, 2) = 2:
    # P = 2/3, R = 2/3, F1 = 2/3
    assert M.f1("dog dog dog", "dog cat dog") == pytest.approx(2 / 3)
    assert M.f1("Paris", "London") == 0.0
    assert M.f1("", "London") == 0.0  # empty prediction: no common token (v1.1 behaviour)


def test_squad_scores_by_hand():
    refs = {
        "q1": ["Denver Broncos", "Broncos"],  # pred equals the first gold: EM 1, F1 1
        "q2": ["a red dog"],  # EM 0, F1 2/3 (above)
        "q3": ["London"],  # EM 0, F1 0
        "q4": ["Carolina Panthers"],  # no prediction: counts as 0
        "q5": ["Panthers", "the Carolina Panthers", "Carolina"],  # max over golds: the 2nd matches exactly
    }
    preds = {"q1": "Denver Broncos", "q2": "the big red dog barked", "q3": "Paris", "q5": "Carolina Panthers",
             "extra": "ignored"}
    scores = M.squad_scores(preds, refs)
    # EM = 100 * (1 + 0 + 0 + 0 + 1) / 5 = 40; F1 = 100 * (1 + 2/3 + 0 + 0 + 1) / 5 = 100 * (8/3) / 5 = 53.33...
    assert scores["exact_match"] == pytest.approx(40.0)
    assert scores["f1"] == pytest.approx(160 / 3)
    with pytest.raises(ValueError, match="no gold answer"):
        M.squad_scores({}, {"q": []})


def test_span_errors_by_hand():
    refs = {
        "exact": ["Eiffel Tower", "the tower"],  # "The Eiffel Tower" normalizes to the first gold
        "longer": ["Eiffel Tower"],  # 4 words against 2
        "shorter": ["big red dog", "dog"],  # "red" overlaps only the first (F1 1/2): 1 word against 3
        "same": ["red big"],  # all tokens shared, order differs: F1 1, EM 0, 2 words against 2
        "miss": ["Paris"],
        "none": ["Carolina Panthers"],  # no prediction: counts as no overlap, 0 words
    }
    preds = {"exact": "The Eiffel Tower", "longer": "Eiffel Tower in Paris", "shorter": "red", "same": "big red",
             "miss": "London"}
    out = M.span_errors(preds, refs)
    for key in ("exact", "longer", "shorter", "same_length"):
        assert out[key] == pytest.approx(100 / 6), key
    assert out["no_overlap"] == pytest.approx(200 / 6)
    # pred words 2 + 4 + 1 + 2 + 1 + 0 = 10; gold words (best-F1 gold) 2 + 2 + 3 + 2 + 1 + 2 = 12
    assert out["pred_words"] == pytest.approx(10 / 6) and out["gold_words"] == pytest.approx(12 / 6)
    with pytest.raises(ValueError, match="no gold answer"):
        M.span_errors({}, {"q": []})


def test_perplexity_and_bits_per_byte_by_direct_computation():
    # A model gives its three targets probabilities 1/2, 1/4, 1/8:
    # nll = ln 2 + 2 ln 2 + 3 ln 2 = 6 ln 2 nats; perplexity = exp(6 ln 2 / 3) = 4; bits/token = 2.
    # The text is "héllo": 6 UTF-8 bytes (é takes 2), so bits per byte = 6 ln 2 / (ln 2 * 6) = 1.
    probs = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25], [0.125, 0.875, 0.0, 0.0]])
    logits = torch.log(probs.clamp_min(1e-30))
    targets = torch.tensor([1, 3, 0])
    nll = float(F.cross_entropy(logits, targets, reduction="sum"))
    assert nll == pytest.approx(6 * math.log(2), rel=1e-6)
    n_bytes = M.utf8_bytes("héllo")
    assert n_bytes == 6 and M.utf8_bytes(["hé", "llo"]) == 6
    assert M.perplexity(nll, 3) == pytest.approx(4.0, rel=1e-6)
    assert M.bits_per_byte(nll, n_bytes) == pytest.approx(1.0, rel=1e-6)
    s = M.lm_scores(nll, 3, n_bytes)
    assert s["loss"] == pytest.approx(2 * math.log(2), rel=1e-6) and s["bits_per_token"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="n_tokens"):
        M.perplexity(1.0, 0)
    with pytest.raises(ValueError, match="n_bytes"):
        M.bits_per_byte(1.0, 0)
