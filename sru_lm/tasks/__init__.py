"""The SRU paper's benchmarks as tasks: word-vector models (sentence classifiers with an SRU, LSTM or CNN
encoder; a DrQA-style reader with SRU or LSTM layers), their data handling and span decoding, SQuAD
windows for the LM's QA head (:mod:`.qa_subword`), and the glue to the shared training loop
(:mod:`.training`)."""

from __future__ import annotations

from .classifier import SentenceClassifier, SentenceClassifierConfig
from .encoders import CNNEncoder, RNNEncoder
from .reader import DrQAReader, DrQAReaderConfig
from .spans import decode_spans
from .text import Vocab, tokenize

__all__ = [
    "CNNEncoder", "DrQAReader", "DrQAReaderConfig", "RNNEncoder", "SentenceClassifier", "SentenceClassifierConfig",
    "Vocab", "decode_spans", "tokenize",
]
