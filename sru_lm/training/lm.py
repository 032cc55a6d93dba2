"""Language-model training and evaluation on top of :class:`~sru_lm.training.trainer.Trainer`.

Model families differ in one respect that matters here: what state, if any, runs from one segment to
the next. An adapter hides that: ``forward(model, input_ids, state) -> (logits, state)``,
``keep_rows(state, keep)`` (zero the rows that start a new document) and ``detach``; for evaluation with
the whole decoding cache also ``forward_cache(model, input_ids, cache) -> (logits, cache)`` and
``select_rows(cache, rows)``. :func:`adapter_for` picks it. Three exist, the last two subclasses of the first:

- :class:`StatelessAdapter`: any Hugging Face causal LM (GPT-2): no state;
- :class:`LSTMAdapter`: :class:`~sru_lm.training.baselines.LSTMLanguageModel`, state ``(h, c)``;
- :class:`SRULMAdapter`: ``SRULMForCausalLM``; the state is the SRU layers' ``c`` only (attention
  layers get no memory of earlier segments), passed in and out through the model's cache.

:class:`LMStep` is the step function for the trainer: it carries the detached state across the
consecutive segments of a :class:`~sru_lm.data.lm.SegmentBatcher` (truncated backpropagation
through time, as the SRU++ LM experiments do) and resets it where ``reset`` marks a new stream.

Evaluation (all in nats summed over targets, converted at the end):

- :func:`evaluate_sliding`: each document scored with windows of ``context`` tokens advanced by
  ``stride``; a window scores only its last ``stride`` targets (the first window scores all), so
  every target is scored once with at least ``context - stride`` tokens of context (fewer only
  near the start of its document). No state crosses windows. Comparable across model families.
- :func:`evaluate_streaming`: each document read once in consecutive windows of ``window`` tokens,
  every target scored once. What crosses from one window to the next is ``carry``: ``"state"`` the
  recurrent state (the SRU ``c``; attention restarts each window, as in training), ``"cache"`` everything
  the model keeps for decoding (SRU state and attention keys/values: exactly one pass over the whole
  document, attention reaching back as far as the model lets it), ``"none"`` nothing (plain
  non-overlapping windows).

The targets of a document ``[bos] t_1 ... t_n [eos]`` are ``t_1 ... t_n, eos``; bits per byte divide
their summed NLL by ``ln 2`` times the UTF-8 bytes of the document text, so tokenizers compare.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data.lm import SegmentBatcher
from ..eval import metrics
from .batches import EpochBatches
from .trainer import StepOutput

logger = logging.getLogger(__name__)

State = Any  # a tensor or a (nested) tuple/list of tensors


def _nbytes(state: State) -> int:
    """Bytes held by a state or cache (a cache object with ``nbytes()``, or nested tensors)."""
    if state is None:
        return 0
    if callable(getattr(state, "nbytes", None)):
        return int(state.nbytes())
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    items = state.values() if isinstance(state, dict) else state
    return sum(_nbytes(s) for s in items)


def _map(state: State, fn: Callable[[torch.Tensor], torch.Tensor]) -> State:
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return fn(state)
    if isinstance(state, (tuple, list)):
        return type(state)(_map(s, fn) for s in state)
    if isinstance(state, dict):
        return {k: _map(v, fn) for k, v in state.items()}
    raise TypeError(f"state: expected tensors in tuples/lists/dicts, got {type(state).__name__}")


# --------------------------------------------------------------------------------------------------
# Adapters: one way to run each model family with a carried state.


class StatelessAdapter:
    """Any causal LM called as ``model(input_ids=...).logits``; no state crosses segments."""

    stateful = False
    batch_dim = 0

    def forward(
        self, model: nn.Module, input_ids: torch.Tensor, state: State, return_state: bool = True
    ) -> tuple[torch.Tensor, State]:
        """``(logits (B, T, V), final state)``, starting from ``state`` (None: zero state)."""
        return model(input_ids=input_ids).logits, None

    def keep_rows(self, state: State, keep: torch.Tensor) -> State:
        """Zero the state of rows where ``keep`` (B,) is False."""
        if state is None:
            return None
        dim = self.batch_dim

        def mask(t: torch.Tensor) -> torch.Tensor:
            shape = [1] * t.ndim
            shape[dim] = -1
            return t * keep.to(device=t.device, dtype=t.dtype).view(shape)

        return _map(state, mask)

    @staticmethod
    def detach(state: State) -> State:
        return _map(state, torch.Tensor.detach)

    def forward_cache(self, model: nn.Module, input_ids: torch.Tensor, cache: State) -> tuple[torch.Tensor, State]:
        """``(logits (B, T, V), cache)``: ``input_ids`` continue the tokens ``cache`` has absorbed (None: none)."""
        raise ValueError(
            f"carry='cache': {type(getattr(model, 'module', model)).__name__} keeps no decoding cache this package "
            "carries across windows; use carry='none'"
        )

    def select_rows(self, cache: State, rows: torch.Tensor) -> State:
        """The cache of the batch rows ``rows`` (long (B',)) only, in that order."""
        return _map(cache, lambda t: t.index_select(self.batch_dim, rows.to(t.device)))


class LSTMAdapter(StatelessAdapter):
    """:class:`~sru_lm.training.baselines.LSTMLanguageModel`: state ``(h, c)``, each (layers, B, H)."""

    stateful = True
    batch_dim = 1

    def forward(
        self, model: nn.Module, input_ids: torch.Tensor, state: State, return_state: bool = True
    ) -> tuple[torch.Tensor, State]:
        return model(input_ids, state)

    def forward_cache(self, model: nn.Module, input_ids: torch.Tensor, cache: State) -> tuple[torch.Tensor, State]:
        return self.forward(model, input_ids, cache)  # the state is everything an LSTM keeps


class SRULMAdapter(StatelessAdapter):
    """``SRULMForCausalLM``: the carried state is the SRU layers' ``c``, one (B, d) fp32 tensor per layer.

    The model's cache holds attention keys/values and SRU state together. Across training segments only
    the SRU state is carried (no Transformer-XL memory for the attention layers), so each call gets a
    fresh cache holding just the given states (``SRULMCache.from_states``: no tokens seen, so attention
    starts empty), and the new states are read back with ``sru_states()``. :meth:`forward_cache` instead
    passes the model's whole ``SRULMCache`` on (evaluation with ``carry="cache"``).
    """

    stateful = True
    batch_dim = 0

    def forward(
        self, model: nn.Module, input_ids: torch.Tensor, state: State, return_state: bool = True
    ) -> tuple[torch.Tensor, State]:
        from ..models import SRULMCache

        if state is None and not return_state:  # no cache: attention keeps no keys/values
            return model(input_ids=input_ids, use_cache=False).logits, None

        cache = None if state is None else SRULMCache.from_states(getattr(model, "module", model).config, state)
        out = model(input_ids=input_ids, cache=cache, use_cache=True)
        if out.cache is None:  # e.g. gradient checkpointing turns the cache off
            return out.logits, None
        return out.logits, out.cache.sru_states()

    def forward_cache(self, model: nn.Module, input_ids: torch.Tensor, cache: State) -> tuple[torch.Tensor, State]:
        out = model(input_ids=input_ids, cache=cache, use_cache=True)
        return out.logits, out.cache

    def select_rows(self, cache: State, rows: torch.Tensor) -> State:
        cache.batch_select_indices(rows)  # every layer: SRU state and keys/values
        return cache


def adapter_for(model: nn.Module) -> StatelessAdapter:
    """The adapter for ``model`` (unwrapping DDP): LSTM LM, SRU LM, else stateless."""
    from .baselines import LSTMLanguageModel

    model = getattr(model, "module", model)
    if isinstance(model, LSTMLanguageModel):
        return LSTMAdapter()
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) == "sru_lm":
        return SRULMAdapter()
    return StatelessAdapter()


# --------------------------------------------------------------------------------------------------
# Training.


def _loss_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # fp32 log-softmax even when the model runs in bf16
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum")


class LMStep:
    """Trainer step for segments ``{"input_ids", "targets", "reset"}`` (see :func:`segment_batches`).

    Args:
        adapter: from :func:`adapter_for`.
        carry_state: feed each row's detached final state into its next segment (reset to zero where
            a new stream starts). False: every segment starts from zero state.

    The carried state is part of the checkpoint (``state_dict``), so a resumed run continues exactly.
    """

    def __init__(self, adapter: StatelessAdapter, carry_state: bool = True) -> None:
        self.adapter = adapter
        self.carry_state = carry_state and adapter.stateful
        self.state: State = None

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> StepOutput:
        x, y = batch["input_ids"], batch["targets"]  # (B, T), (B, T) already shifted
        state = None
        if self.carry_state and self.state is not None:
            state = _map(self.state, lambda t: t.to(x.device))
            state = self.adapter.keep_rows(state, ~batch["reset"])
        logits, new_state = self.adapter.forward(model, x, state, return_state=self.carry_state)  # (B, T, V)
        n = int((y != -100).sum())
        loss = _loss_sum(logits, y) / max(n, 1)
        self.state = self.adapter.detach(new_state) if self.carry_state else None
        return StepOutput(loss, n)

    def state_dict(self) -> dict[str, Any]:
        return {"state": _map(self.state, lambda t: t.detach().cpu())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = state["state"]


def segment_batches(batcher: SegmentBatcher) -> EpochBatches:
    """Endless, resumable trainer batches from a ``SegmentBatcher``: epoch e is ``set_epoch(e)``'s order."""

    def epoch(e: int) -> Iterator[dict[str, torch.Tensor]]:
        batcher.set_epoch(e)
        for seg in batcher:
            yield {"input_ids": seg.input_ids, "targets": seg.targets, "reset": seg.reset}

    return EpochBatches(epoch)


# --------------------------------------------------------------------------------------------------
# Evaluation.


@dataclass
class LMScore:
    """Summed negative log-likelihood (nats) of ``tokens`` targets covering ``num_bytes`` bytes."""

    nll: float
    tokens: int
    num_bytes: int

    @property
    def loss(self) -> float:
        return self.nll / self.tokens

    @property
    def perplexity(self) -> float:
        return metrics.perplexity(self.nll, self.tokens)

    @property
    def bits_per_byte(self) -> float:
        return metrics.bits_per_byte(self.nll, self.num_bytes)

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        """``loss``, ``perplexity``, ``bits_per_token``, ``bits_per_byte`` and ``tokens``, each prefixed."""
        scores = metrics.lm_scores(self.nll, self.tokens, self.num_bytes)
        return {f"{prefix}{k}": v for k, v in {**scores, "tokens": float(self.tokens)}.items()}


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def evaluate_sliding(
    model: nn.Module,
    streams: Sequence[np.ndarray],
    num_bytes: int,
    *,
    context: int = 512,
    stride: int = 256,
    batch_size: int = 8,
    adapter: StatelessAdapter | None = None,
) -> LMScore:
    """Score every target of every stream once with sliding windows (module docstring).

    Args:
        streams: token streams ``[bos] ... [eos]`` (``sru_lm.data.lm.tokenize_documents``).
        num_bytes: UTF-8 bytes of the text the streams encode (for bits per byte).
        context: window length in input tokens. stride: new targets per window (``<= context``).

    Example::

        >>> score = evaluate_sliding(model, test_streams, test_bytes, context=512, stride=256)
        >>> score.perplexity, score.bits_per_byte
    """
    if not 0 < stride <= context:
        raise ValueError(f"stride must be in [1, context={context}], got {stride}")
    adapter = adapter or adapter_for(model)
    was_training = model.training
    model.eval()
    windows = []  # (stream, start, end, first scored position)
    for k, s in enumerate(streams):
        n = len(s) - 1  # targets
        start, scored_to = 0, 0
        while scored_to < n:
            end = min(start + context, n)
            windows.append((k, start, end, scored_to))
            scored_to = end
            start += stride
    device = _device(model)
    nll, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        chunk = windows[i : i + batch_size]
        T = max(end - start for _, start, end, _ in chunk)
        x = torch.zeros(len(chunk), T, dtype=torch.long)
        y = torch.full((len(chunk), T), -100, dtype=torch.long)
        for row, (k, start, end, first) in enumerate(chunk):
            s = torch.as_tensor(streams[k][start : end + 1], dtype=torch.long)
            x[row, : end - start] = s[:-1]
            skip = first - start  # targets before `first` were scored by an earlier window
            y[row, skip : end - start] = s[1 + skip :]
        logits, _ = adapter.forward(model, x.to(device), None, return_state=False)
        nll += float(_loss_sum(logits, y.to(device)))
        count += int((y != -100).sum())
    model.train(was_training)
    return LMScore(nll, count, num_bytes)


CARRY_MODES = ("state", "cache", "none")


def _carry_mode(carry: bool | str) -> str:
    if carry is True or carry is False:  # the older spelling: state carried or not
        return "state" if carry else "none"
    if carry not in CARRY_MODES:
        raise ValueError(f"carry must be one of {CARRY_MODES} (or True/False for 'state'/'none'), got {carry!r}")
    return carry


@torch.no_grad()
def evaluate_streaming(
    model: nn.Module,
    streams: Sequence[np.ndarray],
    num_bytes: int,
    *,
    window: int = 512,
    batch_size: int = 8,
    carry: bool | str = "state",
    adapter: StatelessAdapter | None = None,
    pad_id: int = 0,
    progress: bool = False,
) -> LMScore:
    """Read each stream once in consecutive ``window``-token windows; every target is scored once.

    Args:
        streams: token streams ``[bos] ... [eos]`` (``sru_lm.data.lm.tokenize_documents``).
        num_bytes: UTF-8 bytes of the text the streams encode (for bits per byte).
        window: input tokens per forward.
        batch_size: streams read side by side, one stream per row (rows never mix documents).
        carry: what crosses from one window of a stream to the next:

            - ``"state"`` (or True): the recurrent state (an SRU LM's ``c``, an LSTM's ``(h, c)``); attention
              starts empty in every window, as in training. Streams are dealt to rows as a row frees up.
            - ``"cache"``: the model's whole decoding cache (an SRU LM: SRU state and attention keys/values,
              ``SRULMCache``), so the result equals one forward over each whole stream, chunked. A
              sliding-window model (``attention_window=W``) keeps W keys/values per attention layer:
              constant memory. A full-attention model's keys/values grow with the stream (a book of n
              tokens holds ``2 * n * projection_size`` floats per row and attention layer; the peak is
              logged) and every window attends to the whole prefix, so time grows with n**2. Streams
              are read ``batch_size`` at a time, longest first, each group with a fresh cache; a row
              whose stream has ended leaves the batch (``select_rows``).
            - ``"none"`` (or False): nothing; plain non-overlapping windows.
        progress: a tqdm bar over the targets.

    A stream's last window is padded at its end (``pad_id``, targets ignored); a causal model's earlier
    positions never see that padding, so no attention mask is needed.

    Example::

        >>> whole = evaluate_streaming(model, test_streams, test_bytes, window=128, carry="cache")
        >>> state = evaluate_streaming(model, test_streams, test_bytes, window=128, carry="state")
        >>> whole.bits_per_byte, state.bits_per_byte
    """
    carry = _carry_mode(carry)
    if window < 1 or batch_size < 1:
        raise ValueError(f"window and batch_size must be >= 1, got window={window}, batch_size={batch_size}")
    adapter = adapter or adapter_for(model)
    was_training = model.training
    model.eval()
    bar = tqdm(total=sum(len(s) - 1 for s in streams), unit="tok", disable=not progress,
               desc=f"streaming ({carry} carried)", leave=False)
    if carry == "cache":
        nll, count = _stream_with_cache(model, adapter, streams, window, batch_size, pad_id, bar)
    else:
        nll, count = _stream_with_state(model, adapter, streams, window, batch_size, pad_id, carry == "state", bar)
    bar.close()
    model.train(was_training)
    return LMScore(nll, count, num_bytes)


def _stream_with_state(
    model: nn.Module, adapter: StatelessAdapter, streams: Sequence[np.ndarray], window: int, batch_size: int,
    pad_id: int, carry: bool, bar: tqdm,
) -> tuple[float, int]:
    # Rows are lanes of a SegmentBatcher: a row that finishes a stream starts the next one with its state zeroed.
    longest = max(len(s) for s in streams)
    batcher = SegmentBatcher(
        streams, batch_size=min(batch_size, len(streams)), seq_len=window, pad_id=pad_id, max_stream_len=longest
    )
    device = _device(model)
    state, nll, count = None, 0.0, 0
    for seg in batcher:
        if carry and state is not None:
            state = adapter.keep_rows(state, (~seg.reset).to(device))
        x = seg.input_ids.to(device)
        logits, new_state = adapter.forward(model, x, state if carry else None, return_state=carry)
        state = new_state if carry else None
        nll += float(_loss_sum(logits, seg.targets.to(device)))
        count += seg.n_targets
        bar.update(seg.n_targets)
    return nll, count


def _stream_with_cache(
    model: nn.Module, adapter: StatelessAdapter, streams: Sequence[np.ndarray], window: int, batch_size: int,
    pad_id: int, bar: tqdm,
) -> tuple[float, int]:
    # A cache has one position for all its rows, so a row cannot start a new stream mid-way: groups of
    # streams of similar length share a fresh cache, and rows leave it as their streams end.
    device = _device(model)
    order = sorted((k for k in range(len(streams)) if len(streams[k]) > 1), key=lambda k: -len(streams[k]))
    nll, count, peak = 0.0, 0, 0
    for g in range(0, len(order), batch_size):
        group = order[g : g + batch_size]
        n = {k: len(streams[k]) - 1 for k in group}  # targets per stream
        rows, cache = list(group), None
        for start in range(0, n[group[0]], window):
            ended = [k for k in rows if n[k] <= start]
            if ended:
                keep = [i for i, k in enumerate(rows) if n[k] > start]
                cache = adapter.select_rows(cache, torch.tensor(keep, dtype=torch.long, device=device))
                rows = [rows[i] for i in keep]
            T = min(window, max(n[k] for k in rows) - start)
            x = torch.full((len(rows), T), pad_id, dtype=torch.long)
            y = torch.full((len(rows), T), -100, dtype=torch.long)
            for i, k in enumerate(rows):
                s = torch.as_tensor(streams[k][start : start + T + 1], dtype=torch.long)
                x[i, : len(s) - 1] = s[:-1]
                y[i, : len(s) - 1] = s[1:]
            logits, cache = adapter.forward_cache(model, x.to(device), cache)  # (B, T, V)
            nll += float(_loss_sum(logits, y.to(device)))
            targets = int((y != -100).sum())
            count += targets
            size = _nbytes(cache)
            peak = max(peak, size)
            bar.update(targets)
            bar.set_postfix(cache=f"{size / 2**20:.1f} MiB", refresh=False)
    logger.info("streaming with the whole cache carried: peak cache %.1f MiB", peak / 2**20)
    return nll, count


# The evaluation modes the scripts name, and what a streaming one carries (sliding: no carry, its own function).
EVAL_MODES: dict[str, str | None] = {"sliding": None, "streaming": "state", "cache": "cache", "windows": "none"}


def make_eval_fn(
    streams: Sequence[np.ndarray],
    num_bytes: int,
    *,
    mode: str = "sliding",
    window: int = 512,
    batch_size: int = 8,
    prefix: str = "val_",
) -> Callable[[nn.Module], dict[str, float]]:
    """A trainer ``eval_fn`` -> ``{val_loss, val_bits_per_byte, ...}`` on ``streams``.

    ``mode``: ``"sliding"`` (:func:`evaluate_sliding`, context ``window``, stride ``window // 2``: every
    target has at least half a window of context and no model family gets state the others lack), or one
    of :data:`EVAL_MODES`' streaming modes: ``"streaming"`` (state carried through each stream),
    ``"cache"`` (the whole decoding cache carried) or ``"windows"`` (nothing carried).
    """
    if mode not in EVAL_MODES:
        raise ValueError(f"mode must be one of {tuple(EVAL_MODES)}, got {mode!r}")

    def eval_fn(model: nn.Module) -> dict[str, float]:
        if mode == "sliding":
            score = evaluate_sliding(model, streams, num_bytes, context=window, stride=max(1, window // 2),
                                     batch_size=batch_size)
        else:
            score = evaluate_streaming(model, streams, num_bytes, window=window, batch_size=batch_size,
                                       carry=EVAL_MODES[mode])
        return score.as_dict(prefix)

    return eval_fn
