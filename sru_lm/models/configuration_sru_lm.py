"""Configuration of the SRU++ language models (:mod:`sru_lm.models.modeling_sru_lm`).

This module imports only ``transformers``: it is copied next to the weights by ``save_pretrained`` and
loaded with ``trust_remote_code=True`` where ``sru_lm`` is not installed.
"""

from __future__ import annotations

from transformers import PreTrainedConfig

SRU_LAYER = "linear_attention"  # an SRU layer without attention: U = W2 LN(W1 x)
ATTENTION_LAYER = "hybrid"  # an SRU++ layer: attention computes the SRU's input (and keeps a KV cache)
ROTARY = "rotary"
POSITION_EMBEDDING_TYPES = ("none", ROTARY)


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _check_rate(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a float in [0, 1), got {value!r}")


class SRULMConfig(PreTrainedConfig):
    r"""Configuration of an SRU++ model (Lei 2021): a stack of SRU layers, some of which compute the SRU's
    input with single-projection self-attention.

    Args:
        vocab_size: tokens in the vocabulary.
        hidden_size: ``d``, the width of every layer's input and output (the SRU state ``c`` has ``d``
            units; ``d/2`` per direction when ``bidirectional``).
        num_hidden_layers: SRU layers in the stack.
        num_attention_heads: heads of each attention layer (SRU++ uses 1); must divide ``projection_size``.
        projection_size: ``d_proj``, the width of ``z = W1 x``: the attention width, and the bottleneck of
            the layers without attention. Default ``hidden_size // 4`` as in SRU++.
        layer_types: one entry per layer, ``"hybrid"`` (SRU++ layer with attention) or
            ``"linear_attention"`` (SRU layer without attention); the names are transformers' layer types
            for "attention plus a recurrent state" and "recurrent state only". Default: from
            ``attention_every_n_layers``.
        attention_every_n_layers: shorthand for ``layer_types``: attention on the last layer and every n-th
            layer below it; ``0`` means no attention at all. Default 1 (every layer). Giving both this and
            ``layer_types`` is an error unless they agree.
        highway_bias: initial bias of the SRU reset gate ``b_r`` (SRU++: -2, so a layer starts close to an
            identity map and deep stacks train stably).
        rescale: scale the highway term by ``sqrt(1 + 2 exp(highway_bias))``.
        normalize_after: where LayerNorm sits: ``True`` (SRU++) normalizes ``z`` (after attention is added),
            ``False`` normalizes the layer input ``x`` before ``W1``.
        layer_norm_eps: epsilon of every LayerNorm.
        hidden_dropout: variational dropout inside the SRU (one mask per sequence), training only.
        attention_dropout: dropout on attention probabilities, training only.
        embedding_dropout: dropout on the token embeddings, training only.
        position_embedding_type: ``"none"`` (default, as SRU++: the recurrence already tells the attention
            where a token is, nothing limits the context length and decoding does no per-step position
            work) or ``"rotary"`` (RoPE on the attention's query and key, for experiments).
        rope_theta: RoPE base when ``position_embedding_type="rotary"``.
        attention_window: ``None`` (default): attention sees every earlier position. An int ``W``: sliding-window
            (local) attention, a query at position ``q`` sees the keys at ``q - W + 1 .. q`` (``W`` tokens, itself
            included; ``|q - k| < W`` for a ``bidirectional`` encoder), in training and in decoding alike. The
            SRU state still carries the whole context, and the decoding cache keeps ``W`` keys/values per
            attention layer in a ring buffer: its size is fixed at any length.
        bidirectional: encoder mode for classification/QA heads: a backward SRU direction and attention
            without the causal mask. Causal LM and caching need ``False``.
        tie_word_embeddings: share the LM head with the input embeddings.
        initializer_range: std of the normal init of embeddings and task heads (SRU weights use the SRU
            paper's variance-preserving init, see ``SRULMPreTrainedModel._init_weights``).
        use_cache: return an :class:`~sru_lm.models.cache.SRULMCache` from forward by default.
        sru_backend: the SRU recurrence backend for every layer (``"reference"``, ``"cpu"``, ``"triton"``, ...;
            see :func:`sru_lm.ops.select_backend`, which rejects unknown names); None (default) chooses by
            device, or from the ``SRU_LM_BACKEND`` environment variable. Saved with the config; override at
            load with ``from_pretrained(path, sru_backend="reference")``.

    Example:
        >>> config = SRULMConfig(vocab_size=1000, hidden_size=256, num_hidden_layers=6, attention_every_n_layers=3)
        >>> config.layer_types
        ['linear_attention', 'linear_attention', 'hybrid', 'linear_attention', 'linear_attention', 'hybrid']
    """

    model_type = "sru_lm"
    keys_to_ignore_at_inference = ["cache"]

    vocab_size: int = 32000
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 1
    projection_size: int | None = None
    layer_types: list[str] | None = None
    attention_every_n_layers: int | None = None
    highway_bias: float = -2.0
    rescale: bool = False
    normalize_after: bool = True
    layer_norm_eps: float = 1e-5
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    embedding_dropout: float = 0.0
    position_embedding_type: str = "none"
    rope_theta: float = 10000.0
    attention_window: int | None = None
    bidirectional: bool = False
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02
    use_cache: bool = True
    sru_backend: str | None = None
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self, **kwargs):
        _check_int("hidden_size", self.hidden_size, 1)
        if self.projection_size is None:
            self.projection_size = max(1, self.hidden_size // 4)
        _check_int("num_hidden_layers", self.num_hidden_layers, 1)
        self.layer_types = self._resolve_layer_types()
        if self.bidirectional and self.use_cache:
            self.use_cache = False  # an encoder reads the whole sequence: there is nothing to cache
        self.validate_sru_lm()
        super().__post_init__(**kwargs)

    def validate(self) -> None:
        """transformers' checks (run by ``save_pretrained``) plus :meth:`validate_sru_lm`."""
        super().validate()
        self.validate_sru_lm()

    def validate_sru_lm(self) -> None:
        """Raise ``ValueError``/``TypeError`` for sizes and options the model cannot be built from. Run when the
        config is created and again when a model is built from it, so a field changed in between (say
        ``num_attention_heads``) fails here with a clear message rather than inside a forward."""
        _check_int("vocab_size", self.vocab_size, 1)
        _check_int("hidden_size", self.hidden_size, 1)
        _check_int("num_hidden_layers", self.num_hidden_layers, 1)
        _check_int("num_attention_heads", self.num_attention_heads, 1)
        _check_int("projection_size", self.projection_size, 1)
        if self.layer_types is None:
            raise ValueError("layer_types must be a list with one entry per layer, got None")
        self._resolve_layer_types()  # checks length, entries and agreement with attention_every_n_layers
        if ATTENTION_LAYER in self.layer_types and self.projection_size % self.num_attention_heads:
            raise ValueError(
                f"projection_size ({self.projection_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads}): the attention heads split z = W1 x"
            )
        if self.position_embedding_type not in POSITION_EMBEDDING_TYPES:
            raise ValueError(
                f"position_embedding_type must be one of {POSITION_EMBEDDING_TYPES}, "
                f"got {self.position_embedding_type!r}"
            )
        if self.position_embedding_type == ROTARY and (self.projection_size // self.num_attention_heads) % 2:
            raise ValueError(
                f"rotary position embeddings need an even head size, got projection_size / num_attention_heads = "
                f"{self.projection_size} / {self.num_attention_heads}"
            )
        if self.bidirectional and self.hidden_size % 2:
            raise ValueError(
                "bidirectional=True splits hidden_size between two directions, so it must be even, "
                f"got {self.hidden_size}"
            )
        window = self.attention_window
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
            raise ValueError(f"attention_window must be None (full attention) or an int >= 1, got {window!r}")
        for name in ("hidden_dropout", "attention_dropout", "embedding_dropout"):
            _check_rate(name, getattr(self, name))
        if not self.layer_norm_eps > 0:
            raise ValueError(f"layer_norm_eps must be > 0, got {self.layer_norm_eps!r}")
        if self.sru_backend is not None and not isinstance(self.sru_backend, str):
            raise TypeError(
                f"sru_backend must be None (choose by device) or a backend name such as 'reference', "
                f"got {type(self.sru_backend).__name__} {self.sru_backend!r}"
            )

    def _resolve_layer_types(self) -> list[str]:
        n_layers, every = self.num_hidden_layers, self.attention_every_n_layers
        if every is not None:
            _check_int("attention_every_n_layers", every, 0)
        from_every = None
        if every is not None or self.layer_types is None:
            n = 1 if every is None else every
            from_every = [
                ATTENTION_LAYER if n and (n_layers - 1 - i) % n == 0 else SRU_LAYER for i in range(n_layers)
            ]
        if self.layer_types is None:
            return from_every
        layer_types = list(self.layer_types)
        if len(layer_types) != n_layers:
            raise ValueError(
                f"layer_types must have num_hidden_layers={n_layers} entries, got {len(layer_types)}: {layer_types}"
            )
        bad = sorted({t for t in layer_types if t not in (SRU_LAYER, ATTENTION_LAYER)})
        if bad:
            raise ValueError(
                f"layer_types entries must be {ATTENTION_LAYER!r} (SRU++ layer with attention) or {SRU_LAYER!r} "
                f"(SRU layer), got {bad}"
            )
        if from_every is not None and from_every != layer_types:
            raise ValueError(
                f"layer_types {layer_types} disagrees with attention_every_n_layers={every} ({from_every}); give one"
            )
        return layer_types

    @property
    def num_attention_layers(self) -> int:
        return sum(t == ATTENTION_LAYER for t in self.layer_types)


__all__ = ["SRULMConfig"]
