"""Tokenizers trained with ``tokenizers``, saved as ``transformers`` fast tokenizers.

The default is a byte-level BPE (:func:`train_tokenizer`). :func:`train_word_tokenizer` builds a
lower-cased word-level vocabulary instead, split like :func:`sru_lm.tasks.text.tokenize`, whose rows
can start from word vectors (:func:`sru_lm.tasks.vectors.init_embeddings_from_vectors`).

BPE details:
Byte level (GPT-2 style): every string encodes, nothing maps to an unknown token, and
``decode(encode(s)) == s`` for any unicode ``s``. One special token, ``<|endoftext|>``, serves as
bos, eos and pad. The tokenizer adds no special tokens by itself (``tokenize_documents`` places
bos/eos), and its offsets are trimmed of the leading space a byte-level token carries, so QA span
mapping lands on the words themselves.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

ENDOFTEXT = "<|endoftext|>"
UNK = "<unk>"
# words for the word-level tokenizer and sru_lm.tasks.text.tokenize alike: a number with inner separators,
# a run of word characters, or one other non-space character
WORD_PATTERN = r"\d+(?:[.,]\d+)*|\w+|[^\w\s]"


# Byte-level pre-tokenization (the GPT-2 regex) never joins "\n" to the piece after it (only a space
# prefixes a word), and a "\n" between two non-space characters is a piece of its own whether or not
# the text ends there. Cutting a long text right after such a newline therefore leaves its tokens
# unchanged, and the parts can be encoded (or counted, for training) in parallel.
_SAFE_BREAK = re.compile(r"(?<=\S)\n(?=\S)")


def split_text(text: str, size: int | None) -> list[str]:
    r"""Cut ``text`` into parts of about ``size`` characters that byte-level BPE encodes identically.

    >>> split_text("ab\ncd\n\nef", 1)
    ['ab\n', 'cd\n\nef']
    """
    if size is None:
        return [text]
    out, start = [], 0
    while len(text) - start > size:
        m = _SAFE_BREAK.search(text, start + size)
        if m is None:
            break
        out.append(text[start : m.end()])
        start = m.end()
    out.append(text[start:])
    return out


def _parts(texts: Iterable[str], size: int) -> Iterator[str]:
    for t in texts:
        yield from split_text(t, size)


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 8192,
    *,
    min_frequency: int = 2,
    special_tokens: tuple[str, ...] = (ENDOFTEXT,),
    model_max_length: int = 1 << 30,
    show_progress: bool = True,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts`` (the training split only) and wrap it for ``transformers``.

    Args:
        texts: training documents, e.g. ``load_lm_corpus()["train"]["text"]``.
        vocab_size: final vocabulary size, including the 256 byte symbols and the special tokens.
        min_frequency: a pair must occur this often to be merged.
        special_tokens: added first (ids 0, 1, ...); the first is bos, eos and pad.
        model_max_length: stored in the config; the models bound their own context.

    Returns:
        a ``PreTrainedTokenizerFast``; ``tok.save_pretrained(dir)`` then
        ``AutoTokenizer.from_pretrained(dir)`` loads it back.

    Example::

        >>> tok = train_tokenizer(load_lm_corpus()["train"]["text"], vocab_size=8192)
        >>> tok.decode(tok.encode("naïve café ☕")) == "naïve café ☕"
        True
    """
    if vocab_size < 256 + len(special_tokens):
        raise ValueError(f"vocab_size must be >= 256 + {len(special_tokens)} special tokens, got {vocab_size}")
    if not special_tokens:
        raise ValueError("special_tokens must hold at least one token (used as bos/eos/pad)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tok.train_from_iterator(_parts(texts, 1 << 16), trainer=trainer)
    return wrap_tokenizer(tok, special_tokens[0], model_max_length=model_max_length)


def train_word_tokenizer(
    texts: Iterable[str],
    max_words: int = 32000,
    *,
    min_frequency: int = 2,
    extra_words: Iterable[str] = (),
    model_max_length: int = 1 << 30,
) -> PreTrainedTokenizerFast:
    """A lower-cased word-level tokenizer: the ``max_words`` most frequent words of ``texts`` that occur at
    least ``min_frequency`` times, then every word of ``extra_words`` not yet in (e.g. the words of a
    downstream task that have pretrained vectors). Ids: ``<|endoftext|>`` = 0 (bos, eos and pad),
    ``<unk>`` = 1 for every other word, then the words by frequency.

    Words are split as :func:`sru_lm.tasks.text.tokenize` splits them (``"France's"`` -> ``france ' s``)
    and looked up lower-cased, so the ids line up with lower-cased word vectors such as GloVe 6B. Offsets
    point into the original text; ``decode`` joins words with spaces (a word tokenizer cannot restore the
    original spacing or case).

    Example:
        >>> tok = train_word_tokenizer(["The cat sat.", "the cat ran"], min_frequency=1)
        >>> tok.convert_ids_to_tokens(tok("The dog sat")["input_ids"])
        ['the', '<unk>', 'sat']
    """
    if max_words < 1:
        raise ValueError(f"max_words must be >= 1, got {max_words}")
    pattern = re.compile(WORD_PATTERN)
    counts: Counter[str] = Counter()
    for t in texts:
        counts.update(m.group().lower() for m in pattern.finditer(t))
    words = [w for w, c in counts.most_common(max_words) if c >= min_frequency]
    vocab = {ENDOFTEXT: 0, UNK: 1}
    for w in [*words, *(w.lower() for w in extra_words)]:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="isolated")]
    )
    # join with spaces: "##" never starts a token (punctuation is split one character at a time)
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tok.add_special_tokens([ENDOFTEXT, UNK])
    wrapped = wrap_tokenizer(tok, ENDOFTEXT, model_max_length=model_max_length)
    wrapped.unk_token = UNK
    return wrapped


def wrap_tokenizer(tok: Tokenizer, special: str = ENDOFTEXT, *, model_max_length: int = 1 << 30):
    """Wrap a ``tokenizers.Tokenizer`` as a ``PreTrainedTokenizerFast`` with ``special`` as bos/eos/pad."""
    if tok.token_to_id(special) is None:
        raise ValueError(f"special token {special!r} is not in the vocabulary")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=special,
        eos_token=special,
        pad_token=special,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,  # keep decode(encode(s)) == s
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, directory: str | os.PathLike[str]) -> None:
    """Save beside a model so ``AutoTokenizer.from_pretrained(directory)`` works."""
    tokenizer.save_pretrained(os.fspath(directory))
