"""Data: pinned registry sources (fetch), the hub loader, LM corpora and segment batching, tokenizers,
sentiment (MR, SST-2), SQuAD."""

from __future__ import annotations

# The function ``fetch`` is not re-exported: it would hide the module ``sru_lm.data.fetch``.
from .fetch import SOURCES, ChecksumError, FetchError, Source, cache_dir, register_source
from .hub import HubUnavailableError, load_hub_dataset
from .lm import (
    GUTENBERG_SPLITS,
    Segment,
    SegmentBatcher,
    corpus_stats,
    load_hub_corpus,
    load_lm_corpus,
    read_text,
    split_by_name,
    tokenize_documents,
)
from .sentiment import load_mr, load_sst2
from .squad import (
    char_to_token_span,
    load_squad_dev,
    load_squad_hub,
    load_squad_offline,
    load_squad_shifts,
    read_squad_json,
    span_text,
    token_to_char_span,
    word_tokenize,
)
from .tokenizer import ENDOFTEXT, save_tokenizer, split_text, train_tokenizer

__all__ = [
    "ENDOFTEXT", "GUTENBERG_SPLITS", "SOURCES", "ChecksumError", "FetchError", "HubUnavailableError", "Segment",
    "SegmentBatcher", "Source", "cache_dir", "char_to_token_span", "corpus_stats", "load_hub_corpus",
    "load_hub_dataset", "load_lm_corpus", "load_mr", "load_squad_dev", "load_squad_hub", "load_squad_offline",
    "load_squad_shifts", "load_sst2", "read_squad_json", "read_text", "register_source", "save_tokenizer",
    "span_text", "split_by_name", "split_text", "token_to_char_span", "tokenize_documents", "train_tokenizer",
    "word_tokenize",
]
