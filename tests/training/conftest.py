"""A small local corpus standing in for the fetched one: five 'books' of seeded synthetic English."""

from __future__ import annotations

import random

import pytest

WORDS = {
    "det": ["the", "a", "my", "her", "that"],
    "noun": ["king", "garden", "letter", "sister", "storm", "whale", "river", "house", "café"],
    "verb": ["saw", "wrote", "found", "lost", "followed", "remembered"],
    "adj": ["old", "quiet", "dark", "naïve", "bright"],
}


def sentence(rng: random.Random) -> str:
    w = lambda k: rng.choice(WORDS[k])
    s = f"{w('det')} {w('adj')} {w('noun')} {w('verb')} {w('det')} {w('noun')}"
    return s[0].upper() + s[1:] + rng.choice([".", "!", "?", ";"])


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("books")
    for i in range(5):
        rng = random.Random(i)
        paragraphs = [" ".join(sentence(rng) for _ in range(rng.randint(2, 6))) for _ in range(120)]
        (root / f"book-{i}.txt").write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def lm_data(corpus_dir, tmp_path_factory):
    from sru_lm.training.pipeline import prepare_lm_data

    return prepare_lm_data(paths=[str(corpus_dir)], vocab_size=300, cache=tmp_path_factory.mktemp("cache"))
