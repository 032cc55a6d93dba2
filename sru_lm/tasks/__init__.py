"""Task models over word vectors, the SRU paper's benchmarks: sentence classifiers (SRU, LSTM, CNN) and a
DrQA-style reader (SRU or LSTM), with their data handling and span decoding."""

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
