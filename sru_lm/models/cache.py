"""Decoding state of an SRU++ model: per layer the SRU state ``c``, plus keys and values for attention layers.

Layer kinds follow transformers' hybrid caches (``cache_utils``), keyed by ``config.layer_types``:

- ``"linear_attention"`` (an SRU layer): :class:`SRULMRecurrentLayer`, a ``LinearAttentionLayer``. Its one
  recurrent state is ``c`` (B, D*H) fp32 (``recurrent_states[0]``, also ``c``); there is no conv state and,
  as for transformers' linear-attention layers, no ``keys``/``values`` attribute at all.
- ``"hybrid"`` (an SRU++ layer with attention): :class:`SRULMHybridLayer`, a
  ``LinearAttentionAndFullAttentionLayer``, or with ``max_cache_len`` :class:`SRULMStaticHybridLayer`, a
  ``LinearAttentionAndStaticFullAttentionLayer``: ``c`` plus ``keys``/``values`` (B, heads, T, head_dim), which
  are exactly the ``T = get_seq_length()`` filled positions (views of the buffers, nothing past them).
- ``"hybrid"`` with ``config.attention_window = W``: :class:`SRULMSlidingHybridLayer` (a
  ``LinearAttentionAndSlidingWindowAttentionLayer``) or with ``max_cache_len`` :class:`SRULMStaticSlidingHybridLayer`:
  ``c`` plus a ring of W key/value slots allocated once, so the cache has one size at any length; ``keys``/``values``
  are the last ``min(T, W)`` positions, oldest first, and :meth:`SRULMCache.key_positions` tells the model which
  position each column of ``update``'s result holds, for its mask.

Two deliberate deviations from those classes: every layer counts its tokens (``get_seq_length`` works on an
SRU-only cache, and ``SRULMCache.is_linear`` is all False so that ``generate`` slices a prompt that continues a
returned cache instead of re-feeding it), and ``has_previous_state`` is set when a forward stored ``c``
(transformers sets it only from a conv-state update, which an SRU never makes).

**The contract of one forward** (what :class:`~sru_lm.models.modeling_sru_lm.SRULMModel` does):

1. each attention layer calls ``layer.update(k, v)`` once with the L new positions: they are written at the
   current length ``T`` and ``(B, heads, T + L, head_dim)`` keys/values come back (the whole buffer for a
   static cache, whose unfilled positions the caller masks);
2. each layer calls ``layer.update_state(c, L)`` once with the state after the L tokens;
3. the model calls ``cache.advance(L)`` once, after all layers: only this moves the position.

Nothing else changes the length, so the order of 1 and 2 inside a layer does not matter. ``advance`` checks
that every layer stored exactly L tokens of everything it holds; a second ``update``/``update_state`` of a
layer before ``advance``, or lengths that disagree, raise ``RuntimeError``. Code outside ``sru_lm.models``
uses the public API only: :meth:`SRULMCache.from_states` and :meth:`SRULMCache.sru_states` carry SRU states
across training segments.

**Dynamic and static.** By default key/value buffers grow in chunks and are written in place, so a decoding
step appends one position without copying the past (transformers' ``DynamicLayer`` concatenates). With
``max_cache_len`` every buffer (keys, values, ``c``, the position) is allocated once, on the first forward,
marked with ``torch._dynamo.mark_static_address`` and only ever written in place; the position is a 0-dim
tensor, so a compiled decode step never specialises on it. That cache is ``is_compileable``: ``generate(...,
cache_implementation="static")`` or a ``compile_config`` builds it and runs the decode step under
``torch.compile``.

**Rollback.** An SRU state cannot be un-absorbed, so it is kept instead: after
:meth:`~SRULMCache.activate_past_recording` (assisted/speculative decoding and prompt lookup call it) every
forward hands ``update_state`` the state after each of its positions (the model runs those as decode steps),
and ``crop(-n)`` puts keys/values and every layer's state back ``n`` positions exactly, to any position since
the previous crop. ``is_croppable`` is true exactly while recording. The states are (B, D*H) per position and
layer, dropped at each crop; a sliding-window ring also keeps a copy of itself and the new keys/values since the
crop, since its slots are overwritten.

``generate()`` in transformers 5.24-5.25 also uses: ``reorder_cache`` (beam search, in place for a static cache),
``batch_repeat_interleave``/``batch_select_indices`` (contrastive/assisted decoding).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import (
    Cache,
    LinearAttentionAndFullAttentionLayer,
    LinearAttentionAndSlidingWindowAttentionLayer,
    LinearAttentionAndStaticFullAttentionLayer,
    LinearAttentionAndStaticSlidingWindowAttentionLayer,
    LinearAttentionLayer,
)

from .configuration_sru_lm import ATTENTION_LAYER

_CHUNK = 64  # dynamic key/value buffers grow to the needed length plus max(_CHUNK, 1/8), rounded up to _CHUNK


def _tokens_to_remove(tokens_to_remove: int) -> int:
    if isinstance(tokens_to_remove, bool) or not isinstance(tokens_to_remove, int) or tokens_to_remove > 0:
        raise ValueError(
            f"crop takes minus the number of tokens to remove (an int <= 0, as transformers' caches), got "
            f"{tokens_to_remove!r}"
        )
    return -tokens_to_remove


def _mark_static(t: torch.Tensor) -> torch.Tensor:
    # Not while tracing (dynamo refuses it there); the buffers are allocated by the eager prefill anyway.
    if not torch.compiler.is_compiling():
        torch._dynamo.mark_static_address(t)
    return t


class SRULMLayerCache:
    """What every layer's cache holds and how it is written: the SRU state ``c`` (B, D*H) fp32 and the
    per-forward bookkeeping of the contract in the module docstring. Concrete kinds: :class:`SRULMRecurrentLayer`,
    :class:`SRULMHybridLayer`, :class:`SRULMStaticHybridLayer`."""

    has_attention = False
    is_sliding = False
    supports_early_init = False  # keys/values are allocated by the first forward, with the SRU state

    def __init__(self, layer_idx: int, max_cache_len: int | None = None) -> None:
        self.layer_idx = layer_idx
        self.max_cache_len = max_cache_len
        # transformers' linear-attention attributes: one recurrent state (c), no conv state
        self.number_of_states = 1
        self.recurrent_states: dict[int, torch.Tensor | None] = {0: None}
        self.conv_states: dict[int, torch.Tensor | None] = {0: None}
        self.is_recurrent_states_initialized = {0: False}
        self.is_conv_states_initialized = {0: False}
        self.has_previous_state = {0: False}
        self.conv_kernel_size = {0: None}
        self.record_past = False
        self.device = self.dtype = None
        self._seen = 0  # dynamic caches: tokens absorbed (a static cache uses the shared tensor _pos instead)
        self._pos: torch.Tensor | None = None
        self._pending_state: int | None = None  # tokens stored by update_state since the last advance
        self._pending_record: tuple[torch.Tensor, torch.Tensor] | None = None  # (state before, states after each)
        self._history: list[torch.Tensor] = []  # while recording: the states at positions T - len + 1 .. T
        self._owns_c = True  # False while c is a caller's tensor (from_states): never written in place

    # -- the SRU state ---------------------------------------------------------------------------------
    @property
    def c(self) -> torch.Tensor | None:
        """The SRU state (B, D*H) fp32 after the absorbed tokens, or None before the first forward."""
        return self.recurrent_states[0]

    @property
    def is_static(self) -> bool:
        return self.max_cache_len is not None

    @property
    def is_initialized(self) -> bool:
        return self.c is not None

    def _set_c(self, c: torch.Tensor, owned: bool) -> None:
        self.recurrent_states[0] = c
        self.is_recurrent_states_initialized[0] = True
        self.device, self.dtype = c.device, c.dtype
        self._owns_c = owned

    def update_state(self, c: torch.Tensor, num_tokens: int, states: torch.Tensor | None = None) -> torch.Tensor:
        """Store the SRU state after this forward's ``num_tokens`` tokens; does not move the position.

        While the cache records (:meth:`activate_past_recording`), ``states`` (num_tokens, B, D*H) are the states
        after each position (optional for one token: ``c`` itself), kept until :meth:`SRULMCache.crop`.
        A static cache copies into its one buffer; a dynamic one copies in place when it can (same shape, no
        autograd on either side, a tensor it owns) and otherwise keeps ``c`` itself."""
        if self._pending_state is not None:
            raise RuntimeError(
                f"layer {self.layer_idx}: update_state called twice in one forward ({self._pending_state} then "
                f"{num_tokens} tokens); the model must call cache.advance(num_tokens) once after all layers"
            )
        old = self.c
        if self.record_past:
            if states is None and num_tokens == 1:
                states = c[None]
            if states is None or states.shape != (num_tokens, *c.shape):
                got = None if states is None else tuple(states.shape)
                raise ValueError(
                    f"layer {self.layer_idx}: a recording cache needs the state after each of the {num_tokens} "
                    f"positions, states of shape {(num_tokens, *c.shape)}, got {got}"
                )
            before = torch.zeros_like(c) if old is None else old.clone()
            self._pending_record = (before.detach(), states.detach().clone())
        if c is old:
            pass  # updated in place already (an in-place step op)
        elif self.is_static:
            if old is None or old.shape != c.shape:
                self._set_c(_mark_static(torch.zeros(c.shape, dtype=c.dtype, device=c.device)), True)
            self.c.copy_(c)
        elif old is None or not self._owns_c or old.shape != c.shape or old.requires_grad or c.requires_grad:
            self._set_c(c, True)
        else:
            old.copy_(c)
        self._pending_state = num_tokens
        return self.c

    def update_recurrent_state(self, recurrent_states: torch.Tensor, state_idx: int = 0, **kwargs) -> torch.Tensor:
        """transformers' name for :meth:`update_state` (one token count is not known here: use update_state)."""
        raise NotImplementedError("SRULMCache layers are written with update_state(c, num_tokens)")

    # -- the contract --------------------------------------------------------------------------------
    def _check_forward(self, num_tokens: int) -> None:
        self._check_pending(num_tokens, self._pending_state, "SRU state was stored", "tokens", "stored")

    def _check_pending(self, num_tokens: int, pending: int | None, what: str, unit: str, done: str) -> None:
        """Raise unless this forward wrote ``num_tokens`` (its ``pending`` count) into the layer."""
        if pending != num_tokens:
            raise RuntimeError(
                f"layer {self.layer_idx}: cache.advance({num_tokens}) but its {what} for {pending} {unit} in "
                f"this forward (None: not {done})"
            )

    def _finish_forward(self, num_tokens: int) -> None:
        self._pending_state = None
        self.has_previous_state[0] = True
        if not self.is_static:
            self._seen += num_tokens
        if self.record_past and self._pending_record is not None:
            before, states = self._pending_record
            if not self._history:
                self._history = [before]
            self._history.extend(states.unbind(0))  # the last entry is always the current state
        else:
            self._history = []
        self._pending_record = None

    # -- rollback (assisted decoding) ------------------------------------------------------------------
    def activate_past_recording(self, recurrent_states_to_keep: int | None = None) -> None:
        """Keep the state after every position from now until :meth:`SRULMCache.crop`, so that crop can roll
        back (assisted/speculative decoding calls this). ``record_past = False`` stops it.

        ``recurrent_states_to_keep`` (transformers >= 5.25 passes the draft length) is stored for
        ``Cache.get_recurrent_states_to_keep`` but bounds nothing: transformers' heuristic draft schedule grows
        the draft past it, and the states are dropped at every crop anyway."""
        self.record_past = True
        self.recurrent_states_to_keep = recurrent_states_to_keep

    def _crop_error(self, n: int) -> str | None:
        if n == 0:
            return None
        if not self.record_past:
            return (
                f"SRULMCache cannot remove tokens (asked to crop {-n}): the SRU state c has already absorbed them; "
                "call activate_past_recording() before the forwards to be rolled back"
            )
        if n > len(self._history) - 1:
            return (
                f"layer {self.layer_idx}: cannot remove {n} tokens, the states of only the last "
                f"{max(len(self._history) - 1, 0)} positions were recorded since the last crop"
            )
        return None

    def _crop(self, n: int) -> None:
        """Put the SRU state back to ``n`` positions ago and forget the recorded states (the position itself is
        moved by the caller for a static cache)."""
        if n:
            state = self._history[-1 - n]
            if self.is_static or self._owns_c:
                self.c.copy_(state)
            else:
                self._set_c(state.clone(), True)
            if not self.is_static:
                self._seen -= n
        self._history = []

    def get_seq_length(self) -> int:
        """Tokens absorbed. For a static cache this reads the position tensor (a device sync): the model's
        forward does not call it, so a compiled decode step never does."""
        return int(self._pos) if self.is_static and self._pos is not None else self._seen

    def get_max_length(self) -> int:
        return self.max_cache_len if self.is_static else -1

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        if self.is_static:
            return self.max_cache_len, 0
        return self._seen + query_length, 0

    # -- batch operations ----------------------------------------------------------------------------
    def _tensors(self) -> dict[str, torch.Tensor | None]:
        return {"c": self.c}

    def _store(self, name: str, t: torch.Tensor) -> None:
        self._set_c(t, True)

    def _apply(self, fn, in_place: bool) -> None:
        self._history = [fn(t) for t in self._history]
        for name, t in self._tensors().items():
            if t is None:
                continue
            new = fn(t)
            if in_place and self.is_static and new.shape == t.shape:
                t.copy_(new)  # the address stays: a compiled step keeps reading the same buffer
            else:
                self._store(name, _mark_static(new) if self.is_static else new)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._apply(lambda t: t.index_select(0, beam_idx.to(t.device)), in_place=True)

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._apply(lambda t: t.repeat_interleave(repeats, dim=0), in_place=False)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._apply(lambda t: t[indices], in_place=False)

    def crop(self, tokens_to_remove: int) -> None:
        """This layer alone: see :meth:`SRULMCache.crop`."""
        n = _tokens_to_remove(tokens_to_remove)
        if (error := self._crop_error(n)) is not None:
            raise ValueError(error)
        self._crop(n)
        if self.is_static and n:
            self._pos.sub_(n)

    def reset(self) -> None:
        """Forget every token: a static cache zeroes its buffers in place, a dynamic one drops them."""
        if self.is_static:
            for t in self._tensors().values():
                if t is not None:
                    t.zero_()
        else:
            self.recurrent_states[0] = None
            self.is_recurrent_states_initialized[0] = False
            self._seen = 0
        self.has_previous_state[0] = False
        self._pending_state = self._pending_record = None
        self._history = []

    def offload(self) -> None:  # the state is small; keys/values stay where attention reads them
        pass

    def prefetch(self) -> None:
        pass

    @property
    def is_compileable(self) -> bool:
        # recording appends states every step: not a fixed set of buffers (as transformers' linear layers)
        return self.is_static and not self.record_past

    @property
    def is_croppable(self) -> bool:
        """True while recording: crop can then restore any position since the last crop exactly."""
        return self.record_past

    def nbytes(self) -> int:
        """Bytes allocated (spare key/value capacity included)."""
        return sum(t.numel() * t.element_size() for t in self._buffers() if t is not None)

    def _buffers(self) -> list[torch.Tensor | None]:
        return [self.c]

    def __repr__(self) -> str:
        kind = "static" if self.is_static else "dynamic"
        return f"{type(self).__name__}({kind}, layer {self.layer_idx})"


class SRULMRecurrentLayer(SRULMLayerCache, LinearAttentionLayer):
    """An SRU layer's cache (layer type ``"linear_attention"``): the state ``c`` only, no keys or values."""

    def __init__(self, layer_idx: int, max_cache_len: int | None = None) -> None:
        SRULMLayerCache.__init__(self, layer_idx, max_cache_len)

    def lazy_initialization(self, *args, **kwargs) -> None:  # c is allocated by update_state
        pass

    def update_conv_state(self, conv_states: torch.Tensor, state_idx: int = 0, **kwargs) -> torch.Tensor:
        raise NotImplementedError("an SRU layer has no conv state")


class _KeyValueMixin:
    """Keys/values of an attention layer: dynamic buffers grown in chunks, or static ``max_cache_len`` ones."""

    has_attention = True

    def _init_kv(self) -> None:
        self._k: torch.Tensor | None = None  # (B, heads, capacity, head_dim)
        self._v: torch.Tensor | None = None
        self._pending_kv: int | None = None

    @property
    def keys(self) -> torch.Tensor | None:
        """(B, heads, T, head_dim): exactly the T filled positions, a view of the buffer."""
        return None if self._k is None else self._k[:, :, : self.get_seq_length()]

    @property
    def values(self) -> torch.Tensor | None:
        return None if self._v is None else self._v[:, :, : self.get_seq_length()]

    @property
    def is_initialized(self) -> bool:
        return self.c is not None and self._k is not None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        B, nh, _, hd = key_states.shape
        if self.is_static:
            # zeros, not empty: masked positions still enter SDPA's matmul with the values (0 * NaN is NaN)
            self._k = _mark_static(key_states.new_zeros(B, nh, self.max_cache_len, hd))
            self._v = _mark_static(value_states.new_zeros(B, nh, self.max_cache_len, value_states.shape[-1]))
        else:
            self._k = key_states.new_empty(B, nh, 0, hd)
            self._v = value_states.new_empty(B, nh, 0, value_states.shape[-1])

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Write ``(B, heads, L, head_dim)`` keys/values at the current length T (the position does not move:
        ``cache.advance`` does). Returns ``(B, heads, T + L, head_dim)``, or for a static cache the whole
        ``max_cache_len`` buffers, whose positions from T + L on the caller must mask."""
        if self._pending_kv is not None:
            raise RuntimeError(
                f"layer {self.layer_idx}: keys/values updated twice in one forward ({self._pending_kv} then "
                f"{key_states.shape[2]} positions); the model must call cache.advance(num_tokens) after all layers"
            )
        L = key_states.shape[2]
        self._pending_kv = L
        if self._k is None or self._k.shape[0] != key_states.shape[0]:
            self.lazy_initialization(key_states, value_states)
        if self.is_static:
            positions = self._pos + torch.arange(L, device=self._pos.device)  # (L,)
            self._k.index_copy_(2, positions, key_states)
            self._v.index_copy_(2, positions, value_states)
            return self._k, self._v
        past, end = self._seen, self._seen + L
        if end > self._k.shape[2]:
            capacity = -(-(end + max(_CHUNK, end // 8)) // _CHUNK) * _CHUNK
            B, nh, _, hd = self._k.shape
            keys, values = self._k.new_empty(B, nh, capacity, hd), self._v.new_empty(B, nh, capacity, hd)
            keys[:, :, :past] = self._k[:, :, :past]
            values[:, :, :past] = self._v[:, :, :past]
            self._k, self._v = keys, values
        self._k[:, :, past:end] = key_states
        self._v[:, :, past:end] = value_states
        return self._k[:, :, :end], self._v[:, :, :end]

    def _check_forward(self, num_tokens: int) -> None:
        SRULMLayerCache._check_forward(self, num_tokens)
        self._check_pending(num_tokens, self._pending_kv, "keys/values were written", "positions", "written")

    def _finish_forward(self, num_tokens: int) -> None:
        self._pending_kv = None
        SRULMLayerCache._finish_forward(self, num_tokens)

    def _tensors(self) -> dict[str, torch.Tensor | None]:
        return {"c": self.c, "_k": self._k, "_v": self._v}

    def _store(self, name: str, t: torch.Tensor) -> None:
        if name == "c":
            self._set_c(t, True)
        else:
            setattr(self, name, t)

    def _buffers(self) -> list[torch.Tensor | None]:
        return [self.c, self._k, self._v]

    def reset(self) -> None:
        SRULMLayerCache.reset(self)
        if not self.is_static:
            self._k = self._v = None
        self._pending_kv = None



class SRULMHybridLayer(_KeyValueMixin, SRULMLayerCache, LinearAttentionAndFullAttentionLayer):
    """An SRU++ attention layer's cache (layer type ``"hybrid"``): ``c`` plus growing keys/values."""

    def __init__(self, layer_idx: int, max_cache_len: int | None = None) -> None:
        SRULMLayerCache.__init__(self, layer_idx, None)
        self._init_kv()


class SRULMStaticHybridLayer(_KeyValueMixin, SRULMLayerCache, LinearAttentionAndStaticFullAttentionLayer):
    """An SRU++ attention layer's cache with ``max_cache_len`` buffers allocated once (compileable)."""

    def __init__(self, layer_idx: int, max_cache_len: int) -> None:
        SRULMLayerCache.__init__(self, layer_idx, max_cache_len)
        self._init_kv()


class _SlidingKeyValueMixin(_KeyValueMixin):
    """Keys/values of a sliding-window attention layer (``config.attention_window = W``): a ring of ``R`` slots
    (``R = W``, or ``max_cache_len`` when smaller), allocated once, position ``p`` in slot ``p % R``.

    A query at ``q`` sees keys ``q - W + 1 .. q``, so the ring holds all a decode step needs. ``update`` with one
    token writes its slot and returns the ring (R columns); with ``L > 1`` tokens it returns the ring as it was
    followed by the L new positions (R + L columns: queries early in the chunk still need the positions the chunk
    overwrites), then writes the last ``min(L, R)``. :meth:`key_positions` says which position each returned
    column holds (-1: an empty slot), which is all the caller's mask needs: attention does not care about
    column order, and RoPE was applied to the keys before they were stored.

    Rollback: while recording, the first forward after a crop keeps a copy of the ring and every forward's new
    keys/values; ``crop`` restores the copy and rewrites the kept positions, so overwritten slots come back."""

    is_sliding = True

    def _init_kv(self) -> None:
        _KeyValueMixin._init_kv(self)
        self._snapshot: tuple[torch.Tensor, torch.Tensor, int] | None = None  # (ring k, ring v, position) then
        self._recorded: list[tuple[torch.Tensor, torch.Tensor]] = []  # new (k, v) of each forward since then

    @property
    def ring_size(self) -> int:
        return self.sliding_window if self.max_cache_len is None else min(self.sliding_window, self.max_cache_len)

    def _position(self) -> int | torch.Tensor:
        return self._pos if self.is_static else self._seen

    def key_positions(self, num_tokens: int, device: torch.device) -> torch.Tensor:
        """(S,) long: the position held by each key column that :meth:`update` returns for ``num_tokens`` new
        tokens, -1 for an empty slot (S = R for one token, R + num_tokens for more)."""
        R, T = self.ring_size, self._position()
        slots = torch.arange(R, device=device)
        if num_tokens == 1:  # written first: the latest position <= T in each slot
            return _latest_in_slot(T, slots, R)
        ring = _latest_in_slot(T - 1, slots, R)  # the ring before this forward
        return torch.cat([ring, T + torch.arange(num_tokens, device=device)])

    @property
    def keys(self) -> torch.Tensor | None:
        """(B, heads, min(T, R), head_dim): the positions in the ring, oldest first (a copy)."""
        return None if self._k is None else self._k[:, :, self._filled_slots()]

    @property
    def values(self) -> torch.Tensor | None:
        return None if self._v is None else self._v[:, :, self._filled_slots()]

    def _filled_slots(self) -> torch.Tensor:
        T, R = self.get_seq_length(), self.ring_size
        return torch.arange(max(T - R, 0), T, device=self._k.device) % R

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        B, nh, _, hd = key_states.shape
        # zeros, not empty: empty slots still enter SDPA's matmul with the values (0 * NaN is NaN)
        k = key_states.new_zeros(B, nh, self.ring_size, hd)
        v = value_states.new_zeros(B, nh, self.ring_size, value_states.shape[-1])
        self._k, self._v = (_mark_static(k), _mark_static(v)) if self.is_static else (k, v)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Write ``(B, heads, L, head_dim)`` keys/values into the ring (the position does not move:
        ``cache.advance`` does) and return the key/value columns described by :meth:`key_positions`."""
        if self._pending_kv is not None:
            raise RuntimeError(
                f"layer {self.layer_idx}: keys/values updated twice in one forward ({self._pending_kv} then "
                f"{key_states.shape[2]} positions); the model must call cache.advance(num_tokens) after all layers"
            )
        L, T = key_states.shape[2], self._position()
        self._pending_kv = L
        if self._k is None or self._k.shape[0] != key_states.shape[0]:
            self.lazy_initialization(key_states, value_states)
        if self.record_past:
            if self._snapshot is None:
                self._snapshot = (self._k.clone(), self._v.clone(), int(T))
            self._recorded.append((key_states.detach(), value_states.detach()))
        else:
            self._snapshot, self._recorded = None, []
        if L == 1:
            self._write(key_states, value_states, T)
            return self._k, self._v
        keys, values = torch.cat([self._k, key_states], dim=2), torch.cat([self._v, value_states], dim=2)
        self._write(key_states, value_states, T)
        return keys, values

    def _write(self, key_states: torch.Tensor, value_states: torch.Tensor, start: int | torch.Tensor) -> None:
        """Put positions ``start .. start + L - 1`` into their slots; only the last R of them survive."""
        L, R = key_states.shape[2], self.ring_size
        m = min(L, R)
        slots = (start + torch.arange(L - m, L, device=self._k.device)) % R  # (m,) distinct slots
        self._k.index_copy_(2, slots, key_states[:, :, L - m:])
        self._v.index_copy_(2, slots, value_states[:, :, L - m:])

    def _crop(self, n: int) -> None:
        if n:
            k, v, start = self._snapshot
            keep = self.get_seq_length() - n - start  # positions start .. start + keep - 1 stay
            self._k.copy_(k)
            self._v.copy_(v)
            if keep:
                self._write(*(torch.cat(t, dim=2)[:, :, :keep] for t in zip(*self._recorded, strict=True)), start)
        self._snapshot, self._recorded = None, []
        SRULMLayerCache._crop(self, n)

    def _apply(self, fn, in_place: bool) -> None:
        SRULMLayerCache._apply(self, fn, in_place)
        if self._snapshot is not None:
            k, v, start = self._snapshot
            self._snapshot = (fn(k), fn(v), start)
        self._recorded = [(fn(k), fn(v)) for k, v in self._recorded]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.ring_size + (query_length if query_length > 1 else 0), 0

    def _buffers(self) -> list[torch.Tensor | None]:
        return [self.c, self._k, self._v]

    def reset(self) -> None:
        _KeyValueMixin.reset(self)
        self._snapshot, self._recorded = None, []


def _latest_in_slot(T: int | torch.Tensor, slots: torch.Tensor, R: int) -> torch.Tensor:
    """For each ring slot, the latest position <= T stored there (p = T - ((T - s) mod R)); negative: empty."""
    return T - torch.remainder(T - slots, R)


class SRULMSlidingHybridLayer(_SlidingKeyValueMixin, SRULMLayerCache, LinearAttentionAndSlidingWindowAttentionLayer):
    """An SRU++ attention layer's cache with ``attention_window``: ``c`` plus a ring of W keys/values."""

    def __init__(self, layer_idx: int, sliding_window: int) -> None:
        SRULMLayerCache.__init__(self, layer_idx, None)
        self.sliding_window = sliding_window
        self._init_kv()


class SRULMStaticSlidingHybridLayer(
    _SlidingKeyValueMixin, SRULMLayerCache, LinearAttentionAndStaticSlidingWindowAttentionLayer
):
    """The same with a tensor position and buffers marked static (compileable): ``max_cache_len`` bounds the
    tokens, ``min(W, max_cache_len)`` the ring."""

    def __init__(self, layer_idx: int, sliding_window: int, max_cache_len: int) -> None:
        SRULMLayerCache.__init__(self, layer_idx, max_cache_len)
        self.sliding_window = sliding_window
        self._init_kv()


class SRULMCache(Cache):
    """The decoding cache of :class:`~sru_lm.models.modeling_sru_lm.SRULMModel`: one layer cache per layer,
    built from ``config.layer_types`` (see the module docstring for the kinds and the per-forward contract).

    The model creates a dynamic one on the first forward with ``use_cache=True``; pass it back as ``cache=``
    with only the new tokens. ``max_cache_len`` makes it static: every buffer is allocated once at that length
    (a longer sequence is an error), written in place, and the cache is compileable. Memory: ``num_layers * B *
    hidden_size * 4`` bytes of SRU state, plus ``2 * B * T * projection_size`` elements per attention layer
    (T = ``max_cache_len`` for a static cache, ``attention_window`` (or less) for a sliding-window model at any
    length).

    Example:
        >>> out = model(input_ids, use_cache=True)
        >>> step = model(next_ids, cache=out.cache)   # next_ids: (B, 1)
        >>> out.cache.get_seq_length()
        >>> static = SRULMCache(model.config, max_cache_len=256)   # what generate(cache_implementation="static") builds
    """

    def __init__(self, config, max_cache_len: int | None = None) -> None:
        if max_cache_len is not None and (isinstance(max_cache_len, bool) or not isinstance(max_cache_len, int)
                                          or max_cache_len < 1):
            raise ValueError(f"max_cache_len must be None (dynamic) or an int >= 1, got {max_cache_len!r}")
        self.max_cache_len = max_cache_len
        layers = []
        window = getattr(config, "attention_window", None)
        for i, layer_type in enumerate(config.layer_types):
            if layer_type != ATTENTION_LAYER:
                layers.append(SRULMRecurrentLayer(i, max_cache_len))
            elif window is not None:
                layers.append(SRULMSlidingHybridLayer(i, window) if max_cache_len is None
                              else SRULMStaticSlidingHybridLayer(i, window, max_cache_len))
            elif max_cache_len is None:
                layers.append(SRULMHybridLayer(i))
            else:
                layers.append(SRULMStaticHybridLayer(i, max_cache_len))
        super().__init__(layers=layers)
        self._pos: torch.Tensor | None = None  # static caches: the position, a 0-dim tensor shared by the layers

    @classmethod
    def from_states(cls, config, states) -> SRULMCache:
        """A dynamic cache whose layers start from the SRU states ``states`` (one (B, D*H) tensor per layer, e.g.
        :meth:`sru_states` of the previous training segment), with no tokens seen: attention starts empty.
        The given tensors are read, never written in place."""
        cache = cls(config)
        states = tuple(states)
        if len(states) != len(cache.layers):
            raise ValueError(f"states must hold one SRU state per layer ({len(cache.layers)}), got {len(states)}")
        for layer, c in zip(cache.layers, states, strict=True):
            layer._set_c(c, owned=False)
        return cache

    def sru_states(self) -> tuple[torch.Tensor | None, ...]:
        """Every layer's SRU state ``c`` (B, D*H), the state to carry into the next segment."""
        return tuple(layer.c for layer in self.layers)

    @property
    def is_static(self) -> bool:
        return self.max_cache_len is not None

    def position_on(self, device: torch.device) -> torch.Tensor:
        """A static cache's position (0-dim long tensor on ``device``, its address never moves once there)."""
        if not self.is_static:
            raise ValueError("only a static SRULMCache (max_cache_len set) keeps its position in a tensor")
        if self._pos is None or self._pos.device != torch.device(device):
            old = 0 if self._pos is None else int(self._pos)
            self._pos = _mark_static(torch.tensor(old, dtype=torch.long, device=device))
            for layer in self.layers:
                layer._pos = self._pos
        return self._pos

    def key_positions(self, num_tokens: int, device: torch.device) -> torch.Tensor | None:
        """(S,) long: the position of each key/value column the attention layers' ``update`` will return for
        ``num_tokens`` new tokens (-1: an empty ring slot), for the caller's mask; None for a dynamic
        full-attention cache (columns 0 .. T + num_tokens - 1) or a cache without attention layers."""
        layer = next((layer for layer in self.layers if layer.has_attention), None)
        if layer is None or not (layer.is_sliding or self.is_static):
            return None
        if layer.is_sliding:
            return layer.key_positions(num_tokens, device)
        return torch.arange(self.max_cache_len, device=device)

    def advance(self, num_tokens: int) -> None:
        """End one forward over ``num_tokens`` tokens: check that every layer stored exactly that many (see the
        module docstring), then move the position. The one place the length changes."""
        for layer in self.layers:
            layer._check_forward(num_tokens)
        if self.is_static:
            if self._pos is None:
                raise RuntimeError("a static SRULMCache's position was never placed: call position_on(device) first")
            self._pos.add_(num_tokens)
        for layer in self.layers:
            layer._finish_forward(num_tokens)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.layers[layer_idx].get_seq_length() if layer_idx < len(self.layers) else 0

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return self.max_cache_len if self.is_static else -1

    def get_mask_sizes(self, query_length: int, layer_idx: int) -> tuple[int, int]:
        return self.layers[layer_idx].get_mask_sizes(query_length)

    def crop(self, tokens_to_remove: int) -> None:
        """Remove the last ``-tokens_to_remove`` tokens: keys/values and every layer's SRU state go back to that
        position exactly. Needs :meth:`activate_past_recording` before the forwards that fed them (assisted
        decoding does so); ``crop(0)`` only forgets the recorded states. A cache that does not record can only
        ``crop(0)``."""
        n = _tokens_to_remove(tokens_to_remove)
        for layer in self.layers:  # all or nothing
            if (error := layer._crop_error(n)) is not None:
                raise ValueError(error)
        for layer in self.layers:
            layer._crop(n)
        if self.is_static and n:
            self._pos.sub_(n)

    def reset(self) -> None:
        super().reset()
        if self._pos is not None:
            self._pos.zero_()

    @property
    def batch_size(self) -> int:
        c = self.layers[0].c if self.layers else None
        return -1 if c is None else c.shape[0]

    @property
    def is_compileable(self) -> bool:
        return self.is_static and not any(layer.record_past for layer in self.layers)

    @property
    def is_croppable(self) -> bool:
        return len(self.layers) > 0 and all(layer.record_past for layer in self.layers)

    @property
    def is_linear(self) -> list[bool]:
        # transformers treats "linear" layers as having no sequence length and then re-feeds the whole prompt;
        # every layer here counts its tokens, so `generate` must slice by `get_seq_length` as for attention.
        return [False] * len(self.layers)

    @property
    def is_sliding(self) -> list[bool]:
        return [layer.is_sliding for layer in self.layers]

    @property
    def is_dummy(self) -> list[bool]:
        return [False] * len(self.layers)

    @property
    def is_initialized(self) -> bool:
        return len(self.layers) > 0 and all(layer.is_initialized for layer in self.layers)

    def nbytes(self) -> int:
        """Bytes allocated by the cache (SRU states plus key/value buffers, spare capacity included)."""
        return sum(layer.nbytes() for layer in self.layers)


__all__ = [
    "SRULMCache",
    "SRULMHybridLayer",
    "SRULMLayerCache",
    "SRULMRecurrentLayer",
    "SRULMSlidingHybridLayer",
    "SRULMStaticHybridLayer",
    "SRULMStaticSlidingHybridLayer",
]
