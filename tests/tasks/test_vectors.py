"""Starting a model's token embeddings from narrower word vectors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sru_lm.data.tokenizer import train_word_tokenizer
from sru_lm.tasks.vectors import init_embeddings_from_vectors


def test_vectors_map_into_the_embedding_preserving_geometry():
    tok = train_word_tokenizer(["cat dog car tree unknownish"], 100, min_frequency=1)
    words = ["cat", "dog", "car", "tree", "absent"]
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(5, 4)).astype(np.float32)
    emb = torch.nn.Embedding(len(tok), 16)
    hits = init_embeddings_from_vectors(emb, tok, (words, matrix), std=0.1, seed=3)
    assert hits == 4  # "unknownish" and the specials have no vector; "absent" is not a token
    vocab = tok.get_vocab()
    ids = [vocab[w] for w in words[:4]]
    got = emb.weight[ids].double()
    ref = torch.from_numpy(matrix[:4]).double()
    # an orthonormal map times one scale: Gram matrices agree up to that scale
    scale = got.norm() / ref.norm()
    torch.testing.assert_close(got @ got.t(), scale**2 * (ref @ ref.t()), rtol=1e-4, atol=1e-6)
    assert abs(got.std().item() - 0.1) < 0.05
    # the same seed gives the same rows; another seed another map
    emb2 = torch.nn.Embedding(len(tok), 16)
    init_embeddings_from_vectors(emb2, tok, (words, matrix), std=0.1, seed=3)
    torch.testing.assert_close(emb.weight, emb2.weight)
    init_embeddings_from_vectors(emb2, tok, (words, matrix), std=0.1, seed=4)
    assert not torch.allclose(emb.weight[ids], emb2.weight[ids])


def test_vectors_wider_than_the_embedding_or_too_few_rows_are_refused():
    tok = train_word_tokenizer(["cat dog"], 10, min_frequency=1)
    vectors = (["cat"], np.ones((1, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="embedding_dim"):
        init_embeddings_from_vectors(torch.nn.Embedding(len(tok), 4), tok, vectors)
    with pytest.raises(ValueError, match="rows"):
        init_embeddings_from_vectors(torch.nn.Embedding(2, 16), tok, vectors)
