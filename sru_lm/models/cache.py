"""Decoding state of an SRU++ model: per layer the SRU state ``c``, plus keys and values for attention layers.

Every layer holds ``c`` (B, D*H) in fp32, whose size does not depend on the sequence length, updated in
place. Attention layers also hold keys and values, (B, heads, capacity, head_dim) buffers grown in chunks
and written in place, so a decoding step appends one position without copying the past (transformers'
``DynamicLayer`` concatenates, which copies the whole cache every step).

``generate()`` in transformers 5.24 uses the cache through: ``get_seq_length`` (to slice the prompt when a
cache is passed in), ``reorder_cache`` (beam search), ``batch_repeat_interleave``/``batch_select_indices``
(contrastive/assisted decoding), ``crop`` (assisted decoding and deferred stopping, which need
``is_croppable``) and ``is_compileable`` (auto-compilation). An SRU state cannot be rolled back after it
absorbed a token, so ``crop`` only accepts 0 and ``is_croppable`` is False: generate then never needs it.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache

_CHUNK = 64  # key/value buffers grow to the needed length plus max(_CHUNK, 1/8), rounded up to _CHUNK


class SRULMLayerCache:
    """One layer's state: ``c`` (B, D*H) fp32, and for attention layers ``keys``/``values``
    (B, heads, capacity, head_dim) of which the first ``seen_tokens`` positions are filled."""

    supports_early_init = False
    is_compileable = False
    is_croppable = False
    is_sliding = False

    def __init__(self, has_attention: bool, max_cache_len: int | None = None) -> None:
        self.has_attention = has_attention
        self.max_cache_len = max_cache_len
        self.c: torch.Tensor | None = None
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.seen_tokens = 0

    @property
    def is_initialized(self) -> bool:
        return self.c is not None

    def update_state(self, c: torch.Tensor, num_tokens: int) -> None:
        """Store the SRU state after ``num_tokens`` more tokens (in place when shapes allow)."""
        if self.c is None or self.c.shape != c.shape or self.c.requires_grad or c.requires_grad:
            self.c = c
        else:
            self.c.copy_(c)
        self.seen_tokens += num_tokens

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Append ``(B, heads, L, head_dim)`` keys/values; return all of them, ``(B, heads, past + L, head_dim)``.

        Called before :meth:`update_state` of the same forward, so ``seen_tokens`` is the past length."""
        B, nh, L, hd = key_states.shape
        past, end = self.seen_tokens, self.seen_tokens + key_states.shape[2]
        if self.keys is None or end > self.keys.shape[2] or self.keys.shape[0] != B:
            capacity = -(-(end + max(_CHUNK, end // 8)) // _CHUNK) * _CHUNK
            if self.max_cache_len is not None and end <= self.max_cache_len:
                capacity = self.max_cache_len
            keys = key_states.new_empty(B, nh, capacity, hd)
            values = value_states.new_empty(B, nh, capacity, hd)
            if past:
                keys[:, :, :past] = self.keys[:, :, :past]
                values[:, :, :past] = self.values[:, :, :past]
            self.keys, self.values = keys, values
        self.keys[:, :, past:end] = key_states
        self.values[:, :, past:end] = value_states
        return self.keys[:, :, :end], self.values[:, :, :end]

    def get_seq_length(self) -> int:
        return self.seen_tokens

    def get_max_length(self) -> int:
        return -1

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.seen_tokens + query_length, 0

    def _apply(self, fn) -> None:
        for name in ("c", "keys", "values"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, fn(t))

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._apply(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._apply(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._apply(lambda t: t[indices])

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove != 0:
            raise ValueError(
                f"SRULMCache cannot remove tokens (asked to crop {tokens_to_remove}): the SRU state c has already "
                "absorbed them and cannot be rolled back"
            )

    def reset(self) -> None:
        self.c = self.keys = self.values = None
        self.seen_tokens = 0

    def offload(self) -> None:  # the state is small; keys/values stay where attention reads them
        pass

    def prefetch(self) -> None:
        pass

    def activate_past_recording(self) -> None:
        raise ValueError("SRULMCache cannot record past states for rollback (assisted decoding needs it)")

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.c, self.keys, self.values) if t is not None)

    def __repr__(self) -> str:
        kind = "attention+sru" if self.has_attention else "sru"
        return f"SRULMLayerCache({kind}, seen_tokens={self.seen_tokens})"


class SRULMCache(Cache):
    """The decoding cache of :class:`~sru_lm.models.modeling_sru_lm.SRULMModel`: one
    :class:`SRULMLayerCache` per layer, built from ``config.layer_types``.

    The model creates it on the first forward with ``use_cache=True``; pass it back as ``cache=`` with only
    the new tokens. Give ``max_cache_len`` to allocate the key/value buffers once at that length (they then
    never move, as CUDA-graph capture needs); otherwise they grow in chunks. Memory: ``num_layers * B *
    hidden_size * 4`` bytes of SRU state, plus ``2 * B * seq_len * projection_size`` elements per attention
    layer.

    Example:
        >>> out = model(input_ids, use_cache=True)
        >>> step = model(next_ids, cache=out.cache)   # next_ids: (B, 1)
        >>> out.cache.get_seq_length()
    """

    def __init__(self, config, max_cache_len: int | None = None) -> None:
        layers = [SRULMLayerCache(t == "hybrid", max_cache_len) for t in config.layer_types]
        super().__init__(layers=layers)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.layers[layer_idx].seen_tokens if layer_idx < len(self.layers) else 0

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return -1

    def get_mask_sizes(self, query_length: int, layer_idx: int) -> tuple[int, int]:
        return self.get_seq_length(layer_idx) + query_length, 0

    @property
    def is_compileable(self) -> bool:
        return False

    @property
    def is_croppable(self) -> bool:
        return False

    @property
    def is_linear(self) -> list[bool]:
        # transformers treats "linear" layers as having no sequence length and then re-feeds the whole prompt;
        # every layer here counts its tokens, so `generate` must slice by `get_seq_length` as for attention.
        return [False] * len(self.layers)

    @property
    def is_sliding(self) -> list[bool]:
        return [False] * len(self.layers)

    @property
    def is_dummy(self) -> list[bool]:
        return [False] * len(self.layers)

    @property
    def is_initialized(self) -> bool:
        return len(self.layers) > 0 and all(layer.is_initialized for layer in self.layers)

    def nbytes(self) -> int:
        """Bytes allocated by the cache (SRU states plus key/value buffers, spare capacity included)."""
        return sum(layer.nbytes() for layer in self.layers)


__all__ = ["SRULMCache", "SRULMLayerCache"]
