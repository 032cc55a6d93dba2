"""SRU++ language models for transformers: ``SRULMModel`` and its causal-LM, sequence-classification and
question-answering heads.

Layer design: SRU++ (Lei 2021, "When Attention Meets Fast Recurrence"). Attention does not sit beside the
SRU as an extra sublayer; it *replaces the SRU's input projection*. For a layer input ``x`` (L, B, d)::

    z = W1 x                                    # (L, B, d_proj), d_proj = d/4 by default
    attention layer:  q = z, [k, v] = W2 z,  o = LN(alpha * attn(q, k, v) + z),  alpha starts at 0
    SRU layer:        o = LN(z)
    U = W3 o                                    # (L, B, 3d): the SRU's [U_x, U_f, U_r]
    h, c = SRU(U, highway = x)                  # the highway term is the residual path

Why this design rather than a Transformer block with an SRU beside it: the paper measures it (enwik8
0.97 bpc at 108M, WikiText-103 18.3 ppl at 148M, 3-10x less training cost than Transformer-XL-class models
at equal quality), and it is the cheaper layer. Attention adds ``d_proj^2 * 2`` weights to an SRU layer's
``d * d_proj * 4``, there is no feed-forward block, the SRU's gated highway is the only residual, and
attention is needed only on some layers (every 5th loses little: 17.3 vs 17.1 ppl). For decoding this
means: per token, one small ``sru_step`` per layer, attention over a ``d_proj``-wide KV cache on the
attention layers only, and a cache that is mostly the constant-size SRU state. A sidecar design would keep
a full Transformer block (and a full-width KV cache) per layer and add the SRU's cost on top.

No position encoding by default: the recurrence runs before attention on the previous layers' outputs
and inside every layer, so queries and keys already carry order (as in SRU++). Rotary embeddings are an
option (``position_embedding_type="rotary"``). ``attention_window=W`` makes attention local: the mask
(:meth:`SRULMModel._attention_mask`) keeps keys within W positions, over the whole sequence in training and over
the cache's ring of W slots in decoding (keys are stored after RoPE, so the ring's order does not matter).

Padding: ``attention_mask`` (1 = token, 0 = padding) is turned into the recurrence's ``mask_pad`` (a
padded step keeps ``c`` and outputs 0) and masks attention keys, so padding never reaches a real token's
state: a left-padded batch gives each row what the prompt alone gives.

This file imports only torch, transformers and its sibling modules, so ``save_pretrained`` can copy it
next to the weights for ``trust_remote_code=True`` loading without ``sru_lm`` (see ``sru_backend.py``).
Inside a layer activations are sequence-first (L, B, d), the recurrence's layout; between layers, and for
inputs and outputs, they are batch-first as in transformers (each layer takes and returns a transposed view of
one (L, B, d) buffer, so nothing is copied), and ``output_hidden_states`` records what the layers pass on.
Attention goes through transformers' attention interface (``attn_implementation`` eager, sdpa, flex_attention).
The forward has no data-dependent Python branch, so ``torch.compile(fullgraph=True)`` and ``torch.export`` trace
it whole (tests/models/test_compile.py).
"""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutputWithPast,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import capture_outputs

from .cache import SRULMCache, SRULMLayerCache
from .configuration_sru_lm import ATTENTION_LAYER, ROTARY, SRULMConfig
from .drafting import SRULMDraftCandidateGenerator, assisted_decode, can_draft_directly, verifies_directly
from .sru_backend import linear, sru_recurrence, sru_recurrence_states, sru_step, sru_step_, state_dtype
from .sru_init import dropout_mask, highway_scale, init_sru_weights_, uniform_fan_in_

logger = logging.getLogger(__name__)


def _shape(t) -> str:
    return "None" if t is None else str(tuple(t.shape))


def rotary_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE tables for ``positions`` (B, L): cos and sin of shape (B, 1, L, head_dim)."""
    inv_freq = theta ** -(torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.float()[..., None] * inv_freq  # (B, L, head_dim/2)
    angles = torch.cat([angles, angles], dim=-1)[:, None]  # (B, 1, L, head_dim)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    t1, t2 = t.chunk(2, dim=-1)
    return t * cos + torch.cat([-t2, t1], dim=-1) * sin


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same state dict) whose forward is :func:`~.sru_backend.linear`: decoding's
    1-8 row CPU matmuls (a step, a speculative verification) read each weight once for all rows."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention written out, the implementation that returns its weights: ``query`` (B, nh, L, hd), ``key`` and
    ``value`` (B, nh, S, hd), ``attention_mask`` added to the scores (0 or the dtype's min, (B or 1, 1, L, S)) ->
    ``(output (B, L, nh, hd), weights (B, nh, L, S))``, the layout of transformers' attention functions."""
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # (B, nh, L, S)
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


class SRULMAttention(nn.Module):
    """SRU++ attention: the query is ``z`` itself, keys and values come from one projection ``W2 z``.

    ``forward(z (L, B, d_proj), attn_mask, is_causal, rotary, layer_cache) -> (out (L, B, d_proj), weights)``; with
    a ``layer_cache`` the new keys/values are appended and the queries attend to all cached positions. The scores
    go through ``config._attn_implementation`` (transformers' ``ALL_ATTENTION_FUNCTIONS``: ``"sdpa"``,
    ``"flex_attention"``, ...; ``"eager"`` is :func:`eager_attention_forward`); ``weights`` (B, heads, L, S) come
    back from eager only, None otherwise. ``attn_mask`` is in the form :meth:`SRULMModel._attention_mask_for`
    made for that implementation.
    """

    def __init__(self, config: SRULMConfig, layer_idx: int | None = None) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.projection_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = not config.bidirectional
        self.dropout = config.attention_dropout
        self.kv_proj = Linear(config.projection_size, 2 * config.projection_size, bias=False)  # W2

    def forward(
        self,
        z: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        layer_cache: SRULMLayerCache | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        L, B, dp = z.shape
        nh, hd = self.num_heads, self.head_dim
        q = z.view(L, B, nh, hd).permute(1, 2, 0, 3)  # (B, nh, L, hd)
        k, v = self.kv_proj(z).view(L, B, 2, nh, hd).permute(2, 1, 3, 0, 4).unbind(0)  # 2 x (B, nh, L, hd)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        if layer_cache is not None:
            k, v = layer_cache.update(k, v)  # (B, nh, past + L, hd)
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        a, weights = attention(
            self, q, k, v, attn_mask, dropout=self.dropout if self.training else 0.0, scaling=self.scaling,
            is_causal=is_causal, **kwargs,
        )  # a: (B, L, nh, hd)
        return a.transpose(0, 1).reshape(L, B, dp), weights


class SRULMLayer(GradientCheckpointingLayer):
    """One SRU++ layer (see the module docstring): ``x (B, L, d) -> h (B, L, d)``.

    Parameters: ``in_proj`` (W1, d -> d_proj), ``attention`` (W2 and the scalar ``alpha``) on attention
    layers, ``norm`` (LayerNorm on z, or on x with ``normalize_after=False``), ``out_proj`` (W3, d_proj ->
    3d, rows laid out (D, 3, H) = [U_x, U_f, U_r] per direction), ``weight_c``/``bias`` (D, 2, H): the SRU's
    ``v`` and ``b``. ``cache`` is this layer's :class:`SRULMLayerCache`; with it and one new token the SRU
    runs :func:`sru_step`, or :func:`sru_step_` into a static cache's own state. Under gradient checkpointing
    transformers drops ``cache`` (a replayed forward must not write it twice).
    """

    def __init__(self, config: SRULMConfig, layer_idx: int) -> None:
        super().__init__()
        d, dp = config.hidden_size, config.projection_size
        self.layer_idx = layer_idx
        self.bidirectional = config.bidirectional
        self.num_directions = D = 2 if config.bidirectional else 1
        self.hidden_size = H = d // D  # units per direction
        self.dropout = config.hidden_dropout
        self.normalize_after = config.normalize_after
        self.in_proj = Linear(d, dp, bias=False)
        if config.layer_types[layer_idx] == ATTENTION_LAYER:
            self.attention = SRULMAttention(config, layer_idx)
            self.alpha = nn.Parameter(torch.zeros(1))
        else:
            self.attention = self.alpha = None
        self.norm = nn.LayerNorm(dp if config.normalize_after else d, eps=config.layer_norm_eps)
        self.out_proj = Linear(dp, D * 3 * H, bias=False)
        self.weight_c = nn.Parameter(torch.zeros(D, 2, H))
        self.bias = nn.Parameter(torch.zeros(D, 2, H))
        self.highway_bias = config.highway_bias
        self.scale_x = highway_scale(config.highway_bias, config.rescale)
        self.config = config  # read at forward: config.sru_backend may be changed on a built model

    @torch.no_grad()
    def init_sru_weights(self) -> None:
        """SRU-paper init (:func:`~.sru_init.init_sru_weights_`, shared with ``SRUCell``) for W1, W2 and the
        SRU's W3/v/b; alpha = 0 so attention starts switched off. Weights loaded by ``from_pretrained`` are
        left alone."""
        uniform_fan_in_(self.in_proj.weight)
        if self.attention is not None:
            uniform_fan_in_(self.attention.kv_proj.weight)
            init.zeros_(self.alpha)
        init_sru_weights_(self.out_proj.weight, self.weight_c, self.bias, self.dropout, self.highway_bias)
        init.ones_(self.norm.weight)
        init.zeros_(self.norm.bias)

    def _state_after_each_position(self, U, x, mask_pad, dropout_mask, c0, c_last) -> torch.Tensor | None:
        """The SRU state after each of the L positions, (L, B, d) (the last is ``c_last``): what a recording cache
        keeps so that ``crop`` can roll back rejected draft tokens. None for one position.

        One more scan, with the reset gate pinned open and no highway (``U_r = 1e4``, ``v_r = 0``: ``r = 1``
        exactly; ``x' = 0``), outputs ``h = x' + r (c - x') = c`` itself; the forget path is the forward's, so
        these are the states the forward computed, bit for bit. A padded step outputs 0 instead of ``c``, so
        padded positions take the state of the last real one. Under bf16/fp16 that output would round the fp32
        state, so there the states come from decode steps."""
        L, B, d = x.shape
        if L == 1:
            return None
        c = torch.zeros_like(c_last) if c0 is None else c0  # (B, d)
        if U.dtype != state_dtype(U.dtype):
            states = []
            for t in range(L - 1):
                _, c = sru_step(
                    U[t], x[t], self.weight_c, self.bias, c, None if mask_pad is None else mask_pad[t], dropout_mask,
                    self.scale_x, backend=self.config.sru_backend,
                )
                states.append(c)
            return torch.stack([*states, c_last])
        with torch.no_grad():
            U_open = U.view(L, B, 3, d).clone()  # (L, B, [U_x, U_f, U_r], d): one direction (causal)
            U_open[:, :, 2] = 1e4
            v_open = self.weight_c.detach().clone()  # (1, 2, d)
            v_open[:, 1] = 0
            states, _ = sru_recurrence(
                U_open.view(L, B, 3 * d), torch.zeros_like(x), v_open, self.bias, c0, mask_pad, None, False, 1.0,
                backend=self.config.sru_backend,
            )  # (L, B, d)
            if mask_pad is not None:
                t = torch.arange(L, device=x.device)[:, None].expand(L, B)
                last_real = torch.where(mask_pad, -1, t).cummax(0).values  # (L, B)
                states = states.gather(0, last_real.clamp(min=0)[..., None].expand(L, B, d))
                states = torch.where((last_real < 0)[..., None], c[None], states)
        return states

    def _steps_in_place(self, cache: SRULMLayerCache, U: torch.Tensor, x: torch.Tensor) -> bool:
        """Whether a decode step can write the state into the cache's buffer (:func:`sru_step_`): a static cache
        (its addresses must not move) that does not record (it keeps the state before the step), ``c`` in the
        state dtype, and no autograd (the in-place op has no backward)."""
        c = cache.c
        return (
            cache.is_static and not cache.record_past and c.dtype == state_dtype(U.dtype) and c.is_contiguous()
            and not (torch.is_grad_enabled()
                     and any(t.requires_grad for t in (U, x, self.weight_c, self.bias, c)))
        )

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        mask_pad: torch.Tensor | None = None,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: SRULMLayerCache | None = None,
    ) -> torch.Tensor:
        # Batch-first at the boundary, so output capture (hidden states) sees the very tensors the layers pass
        # on; inside, sequence-first, the recurrence's layout. Consecutive layers hand over a transposed view of
        # one (L, B, d) buffer, so the transposes below copy nothing after the first layer.
        x = x.transpose(0, 1).contiguous()  # (L, B, d)
        L, B, d = x.shape
        z = self.in_proj(x if self.normalize_after else self.norm(x))  # (L, B, d_proj)
        if self.attention is not None:
            a, _ = self.attention(z, attn_mask, is_causal, rotary, cache)  # weights: recorded by output capture
            z = z + self.alpha * a
        if self.normalize_after:
            z = self.norm(z)
        U = self.out_proj(z)  # (L, B, D*3*H)
        mask = dropout_mask(B, d, self.dropout, self.training, U)  # (B, d), the same at every step
        c0 = None if cache is None else cache.c
        x = x.to(U.dtype)  # the highway input: under autocast U comes out of out_proj in bf16/fp16
        states = None  # the SRU state after each position, when a recording cache needs them
        if c0 is not None and L == 1 and not self.bidirectional:
            if self._steps_in_place(cache, U, x):  # the static cache's own c becomes the new state
                c, h = c0, U.new_empty(B, d)
                sru_step_(
                    U[0], x[0], self.weight_c, self.bias, c, h,
                    None if mask_pad is None else mask_pad[0], mask, self.scale_x,
                    backend=self.config.sru_backend,
                )
                h = h[None]  # (1, B, d)
            else:
                h, c = sru_step(
                    U[0], x[0], self.weight_c, self.bias, c0,
                    None if mask_pad is None else mask_pad[0], mask, self.scale_x,
                    backend=self.config.sru_backend,
                )
                h = h[None]  # (1, B, d)
        elif cache is not None and cache.record_past and not self.bidirectional:
            # the kernel's own pass gives the per-position states a recording cache keeps, where it writes them
            h, c, states = sru_recurrence_states(
                U, x, self.weight_c, self.bias, c0, mask_pad, mask, self.scale_x, backend=self.config.sru_backend,
            )
        else:
            h, c = sru_recurrence(
                U, x, self.weight_c, self.bias, c0, mask_pad, mask, self.bidirectional, self.scale_x,
                backend=self.config.sru_backend,
            )
        if cache is not None:
            # while the cache records (assisted decoding) it keeps the state after every position, for crop()
            if cache.record_past and states is None:
                states = self._state_after_each_position(U, x, mask_pad, mask, c0, c)
            cache.update_state(c, L, states)
        return h.transpose(0, 1)  # (B, L, d)


def causal_to_bidirectional_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a causal checkpoint's weights onto the bidirectional layout of the same ``hidden_size``.

    A causal layer has ``d`` units in one direction, a bidirectional one ``d/2`` per direction, and the
    projection rows and the ``(D, 2, H)`` state weights are laid out direction-major, so the same tensors
    loaded as they are would mix up gates. Here unit ``j < d/2`` of the causal layer becomes unit ``j`` of the
    forward direction and unit ``d/2 + j`` becomes unit ``j`` of the backward one, each keeping its own
    projection rows, ``v`` and ``b`` (and its slice of the highway input): the forward half computes exactly
    what the causal layer did, the backward half applies the other units to the reversed sequence.
    Everything else (embeddings, attention, norms, heads) is unchanged.
    """
    out = {}
    for name, t in state_dict.items():
        if ".layers." in name and name.rsplit(".", 1)[-1] in ("weight_c", "bias") and t.dim() == 3:
            if t.shape[0] != 1 or t.shape[1] != 2 or t.shape[2] % 2:
                raise ValueError(f"{name}: expected a causal (1, 2, even d) tensor, got {tuple(t.shape)}")
            t = t.reshape(2, 2, t.shape[2] // 2).permute(1, 0, 2).contiguous()  # (gate, D, H) -> (D, gate, H)
        elif ".layers." in name and name.endswith("out_proj.weight"):
            rows, dp = t.shape
            if rows % 6:
                raise ValueError(f"{name}: expected 3d rows with d even, got {rows}")
            t = t.reshape(3, 2, rows // 6, dp).permute(1, 0, 2, 3).reshape(rows, dp)  # (3, D, H) -> (D, 3, H)
        out[name] = t
    return out


class SRULMPreTrainedModel(PreTrainedModel):
    config_class = SRULMConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["SRULMLayer"]
    # Attention goes through config._attn_implementation: eager (returns weights), sdpa and flex_attention are
    # tested (tests/models/test_attention.py); flash attention would need the 2D padding mask path, not written.
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_flash_attn = False
    _can_compile_fullgraph = True  # tests/models/test_compile.py
    # output_hidden_states: each layer's input (B, L, d) and the final normed output, the tensors the layers pass
    # on (so hidden_states[i].retain_grad() works); output_attentions: per attention layer, eager only
    _can_record_outputs = {"hidden_states": SRULMLayer, "attentions": SRULMAttention}
    _is_stateful = False  # SRULMCache records the SRU state per position and crops it: assisted decoding works

    def __init__(self, config: SRULMConfig, *inputs, **kwargs) -> None:
        if hasattr(config, "validate_sru_lm"):  # (a remote-code config class is another class of the same name)
            config.validate_sru_lm()  # again: fields may have changed since the config was created
        super().__init__(config, *inputs, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """``PreTrainedModel.from_pretrained``; with ``bidirectional=True`` on a causal checkpoint, the SRU
        weights are mapped onto the bidirectional layout (:func:`causal_to_bidirectional_state_dict`)
        instead of being loaded into the wrong rows."""
        if kwargs.get("bidirectional") and not model_args and kwargs.get("config") is None:
            hub = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")
            hub_kwargs = {k: kwargs[k] for k in hub if k in kwargs}
            saved = SRULMConfig.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
            if not saved.bidirectional:
                if kwargs.get("output_loading_info"):
                    raise ValueError("output_loading_info is not supported when converting a causal checkpoint "
                                     "to bidirectional=True")
                causal = super().from_pretrained(pretrained_model_name_or_path, **{**kwargs, "bidirectional": False})
                config = copy.deepcopy(causal.config)
                if config.hidden_size % 2:
                    raise ValueError(f"bidirectional=True needs an even hidden_size, got {config.hidden_size}")
                config.bidirectional, config.use_cache = True, False
                model = cls(config).to(device=causal.device, dtype=causal.dtype)
                model.load_state_dict(causal_to_bidirectional_state_dict(causal.state_dict()))
                logger.info("loaded the causal checkpoint %s as a bidirectional %s (forward units 0..d/2, backward "
                            "units d/2..d of each layer)", pretrained_model_name_or_path, cls.__name__)
                return model.eval()
        return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """``PreTrainedModel.save_pretrained``; the config's ``auto_map`` names every head of the family, not only
        this model's class, so ``trust_remote_code=True`` loads the checkpoint into each Auto class without
        ``sru_lm`` (e.g. a causal LM fine-tuned as a classifier). A bidirectional model has no causal-LM head."""
        if self.is_remote_code():
            module = type(self).__module__.rsplit(".", 1)[-1]
            heads = {
                auto: f"{module}.{cls.__name__}" for auto, cls in AUTO_CLASSES.items()
                if not (self.config.bidirectional and auto == "AutoModelForCausalLM")
            }
            self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **heads}
        return super().save_pretrained(save_directory, *args, **kwargs)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, SRULMLayer):
            module.init_sru_weights()  # after its children: overrides the generic Linear init below
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)


class SRULMModel(SRULMPreTrainedModel):
    """Embeddings, the SRU++ layers and a final LayerNorm.

    ``forward(input_ids (B, L) or inputs_embeds (B, L, d), attention_mask (B, past + L), cache, use_cache,
    position_ids, output_hidden_states, output_attentions, return_dict) -> BaseModelOutputWithPast(
    last_hidden_state (B, L, d), cache, hidden_states, attentions)``. ``attention_mask`` spans the cached tokens
    plus the new ones (as ``generate`` passes it); ``cache`` is an :class:`SRULMCache` (created when
    ``use_cache`` and none is given). ``hidden_states``: every layer's input (B, L, d) and the normed output
    (``num_hidden_layers + 1``), the very tensors the layers pass on; ``attentions``: one (B, heads, L, S) per
    attention layer, from ``attn_implementation="eager"`` only. Both are recorded by transformers'
    ``@capture_outputs`` from ``_can_record_outputs``.

    Example:
        >>> model = SRULMModel(SRULMConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2))
        >>> model(torch.randint(100, (2, 7))).last_hidden_state.shape
        torch.Size([2, 7, 32])
    """

    def __init__(self, config: SRULMConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=None)
        self.embed_dropout = nn.Dropout(config.embedding_dropout)
        self.layers = nn.ModuleList(SRULMLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.has_attention = config.num_attention_layers > 0
        self.gradient_checkpointing = False
        self.post_init()

    def _attention_mask(
        self, attention_mask: torch.Tensor | None, L: int, past: int | torch.Tensor, device: torch.device,
        key_positions: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | None, bool]:
        """SDPA's boolean mask (B or 1, 1, L, S), True = may attend, and its ``is_causal`` flag.

        Keys are the columns 0 .. past + L - 1, or those of ``key_positions`` (S,): the position each column of
        the cache's keys holds (-1: an empty slot), as :meth:`SRULMCache.key_positions` gives for a static cache
        (``past`` a 0-dim tensor, unfilled positions masked by causality) or a sliding-window ring. A query at
        ``q`` sees ``k <= q`` (causal), ``q - k < attention_window`` (``|q - k|`` bidirectional), and no padding
        (``attention_mask`` (B, past + L), or (B, max_cache_len) over a static cache)."""
        causal, window = not self.config.bidirectional, self.config.attention_window
        if key_positions is None:
            if attention_mask is None and (window is None or past + L <= window):
                if not causal or L == 1:
                    return None, False
                if past == 0:
                    return None, True
            key_positions = torch.arange(past + L, device=device)
        q_pos = (torch.arange(L, device=device) + past)[:, None]  # (L, 1)
        k_pos = key_positions[None, :]  # (1, S)
        allowed = k_pos >= 0  # (L, S)
        if causal:
            allowed = allowed & (k_pos <= q_pos)
        if window is not None:
            allowed = allowed & ((q_pos - k_pos < window) if causal else ((q_pos - k_pos).abs() < window))
        if attention_mask is not None:
            valid = attention_mask.bool()[:, key_positions.clamp(min=0)][:, None, None, :]  # (B, 1, 1, S)
            allowed = (valid & allowed) | (k_pos == q_pos)  # a padded query sees itself: no empty softmax row
        return allowed, False

    def _attention_mask_for(
        self, allowed: torch.Tensor | None, is_causal: bool, B: int, L: int, like: torch.Tensor
    ) -> tuple[torch.Tensor | None, bool]:
        """SDPA's ``(boolean mask, is_causal)`` from :meth:`_attention_mask` in the form that
        ``config._attn_implementation`` reads: ``"sdpa"`` takes them as they are; ``"flex_attention"`` a
        ``BlockMask`` (its float score-mask path aborts on CPU in torch 2.13); eager and others a float mask added
        to the scores (0 where allowed, the dtype's min elsewhere, (B, 1, L, S)). Only SDPA reads ``is_causal``,
        so for the others causality is spelled out."""
        implementation = self.config._attn_implementation
        if implementation == "sdpa" or (allowed is None and not is_causal):
            return allowed, is_causal
        if allowed is None:  # causal over the new tokens only (no cache, no padding)
            pos = torch.arange(L, device=like.device)
            allowed = pos[None, :] <= pos[:, None]  # (L, L)
        S = allowed.shape[-1]
        allowed = allowed.expand(B, 1, L, S)
        if implementation == "flex_attention":
            from torch.nn.attention.flex_attention import create_block_mask

            def mask_mod(b, h, q, k):
                return allowed[b, 0, q, k]

            return create_block_mask(mask_mod, B, None, L, S, device=like.device), False
        float_mask = torch.zeros(allowed.shape, device=like.device, dtype=like.dtype)
        return float_mask.masked_fill(~allowed, torch.finfo(like.dtype).min), False

    def _check_attention_mask(self, attention_mask: torch.Tensor, B: int, L: int, past: int) -> None:
        if not isinstance(attention_mask, torch.Tensor):
            raise TypeError(f"attention_mask must be a torch.Tensor, got {type(attention_mask).__name__}")
        if attention_mask.dim() != 2 or attention_mask.shape != (B, past + L):
            raise ValueError(
                f"attention_mask must have shape (batch, cached + new tokens) = ({B}, {past} + {L}) with 1 for "
                f"tokens and 0 for padding, got {_shape(attention_mask)}"
            )

    def _static_attention_mask(self, attention_mask: torch.Tensor, B: int, L: int, cache: SRULMCache) -> torch.Tensor:
        """``attention_mask`` over a static cache's whole buffer, (B, max_cache_len): given so (as ``generate``
        passes it, a fixed shape) or as (B, cached + new tokens), which is padded (reads the position: eager only)."""
        T = cache.max_cache_len
        if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2 and attention_mask.shape == (B, T):
            return attention_mask
        past = cache.get_seq_length()
        if past + L > T:
            raise ValueError(f"the static cache holds max_cache_len={T} tokens: {past} cached + {L} new do not fit")
        self._check_attention_mask(attention_mask, B, L, past)
        return F.pad(attention_mask, (0, T - past - L))

    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: SRULMCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        # output_hidden_states, output_attentions and return_dict are handled by @capture_outputs
        if "past_key_values" in kwargs and cache is None:
            cache = kwargs.pop("past_key_values")
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids (B, L) and inputs_embeds (B, L, hidden_size)")
        if inputs_embeds is None:
            if input_ids.dim() != 2:
                raise ValueError(f"input_ids must have shape (batch, seq_len), got {_shape(input_ids)}")
            inputs_embeds = self.embed_tokens(input_ids)
        elif inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != self.config.hidden_size:
            raise ValueError(
                f"inputs_embeds must have shape (batch, seq_len, {self.config.hidden_size}), "
                f"got {_shape(inputs_embeds)}"
            )
        B, L, _ = inputs_embeds.shape
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        if self.gradient_checkpointing and self.training:
            use_cache = False
        if self.config.bidirectional and (use_cache or cache is not None):
            if cache is not None:
                raise ValueError("a bidirectional (encoder) model reads the whole sequence at once: it takes no cache")
            use_cache = False
        if cache is not None and not isinstance(cache, SRULMCache):
            raise TypeError(f"cache must be an SRULMCache (SRU states + key/value buffers), got {type(cache).__name__}")
        if use_cache and cache is None:
            cache = SRULMCache(self.config)
        new = slice(None)  # the new tokens' columns of attention_mask
        if cache is not None and cache.is_static:
            # Every shape is fixed and the position is a tensor, so a compiled decode step never recompiles.
            past = cache.position_on(inputs_embeds.device)
            new = past + torch.arange(L, device=inputs_embeds.device)  # (L,)
            if attention_mask is not None:
                attention_mask = self._static_attention_mask(attention_mask, B, L, cache)  # (B, max_cache_len)
        else:
            past = cache.get_seq_length() if cache is not None else 0
            new = slice(past, None)
            if attention_mask is not None:
                self._check_attention_mask(attention_mask, B, L, past)

        mask_pad = None
        if attention_mask is not None:
            mask_pad = (attention_mask[:, new] == 0).T.contiguous()  # (L, B), True = padding
        attn_mask, is_causal = (None, False)
        rotary = None
        if self.has_attention:
            key_positions = None if cache is None else cache.key_positions(L, inputs_embeds.device)
            attn_mask, is_causal = self._attention_mask(attention_mask, L, past, inputs_embeds.device, key_positions)
            attn_mask, is_causal = self._attention_mask_for(attn_mask, is_causal, B, L, inputs_embeds)
            if self.config.position_embedding_type == ROTARY:
                if position_ids is None:
                    if attention_mask is not None:  # count real tokens only, so left padding shifts nothing
                        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, new]
                    else:
                        position_ids = (torch.arange(L, device=inputs_embeds.device) + past)[None].expand(B, L)
                head_dim = self.config.projection_size // self.config.num_attention_heads
                rotary = rotary_cos_sin(position_ids, head_dim, self.config.rope_theta, inputs_embeds.dtype)

        h = self.embed_dropout(inputs_embeds)  # (B, L, d)
        for i, layer in enumerate(self.layers):
            h = layer(
                h, attn_mask=attn_mask, is_causal=is_causal, mask_pad=mask_pad, rotary=rotary,
                cache=cache.layers[i] if cache is not None else None,
            )  # (B, L, d): what output_hidden_states records
        if cache is not None:
            cache.advance(L)  # the one call per forward that moves the cache's position
        return BaseModelOutputWithPast(last_hidden_state=self.norm(h), cache=cache if use_cache else None)


class SRULMForCausalLM(SRULMPreTrainedModel, GenerationMixin):
    """:class:`SRULMModel` with a language-modeling head (tied to the embeddings by default).

    ``forward(..., labels (B, L), logits_to_keep) -> CausalLMOutputWithPast(loss, logits (B, L, vocab),
    cache, hidden_states)``; labels are shifted inside (set ``labels = input_ids``), -100 is ignored.

    Example:
        >>> model = SRULMForCausalLM(SRULMConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2))
        >>> model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=5, do_sample=False).shape
        torch.Size([1, 8])
    """

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: SRULMConfig) -> None:
        if config.bidirectional:
            raise ValueError("SRULMForCausalLM needs bidirectional=False: a backward direction reads the future")
        super().__init__(config)
        self.model = SRULMModel(config)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # never a DynamicCache: _prepare_cache_for_generation below builds SRULMCache

    def _prepare_cache_for_generation(
        self, generation_config, model_kwargs: dict, generation_mode, batch_size: int, max_cache_length: int
    ) -> None:
        """The cache ``generate`` decodes with. ``cache_implementation`` None or ``"dynamic"``: a growing
        :class:`SRULMCache` (recording, so croppable, when this model drafts for another). ``"static"``, or a
        ``compile_config`` with no
        ``cache_implementation``: a static one of ``max_cache_len`` (the generation's ``max_length``, or
        ``generation_config.max_cache_len`` when larger), which ``generate`` runs under ``torch.compile``.
        Any other ``cache_implementation`` is refused with this list."""
        if model_kwargs.get("cache") is not None or generation_config.use_cache is False:
            return super()._prepare_cache_for_generation(
                generation_config, model_kwargs, generation_mode, batch_size, max_cache_length
            )
        implementation = generation_config.cache_implementation
        wants_compile = generation_config.compile_config is not None and not generation_config.disable_compile
        if implementation == "static" or (implementation is None and wants_compile):
            if generation_config.max_cache_len is not None:
                max_cache_length = max(max_cache_length, generation_config.max_cache_len)
            # prompt lookup's last verification can run past max_length by up to its draft length
            max_cache_length += generation_config.prompt_lookup_num_tokens or 0
            model_kwargs["cache"] = SRULMCache(self.config, max_cache_len=max_cache_length)
        elif implementation not in (None, "dynamic"):
            raise ValueError(
                f"{type(self).__name__} decodes with SRULMCache: cache_implementation None or 'dynamic' (key/value "
                "buffers that grow) or 'static' (allocated once at max_length, compileable); got "
                f"{implementation!r}"
            )
        else:
            model_kwargs["cache"] = SRULMCache(self.config)  # assisted decoding needs it before the first forward
        if generation_config.is_assistant:  # a draft model's cache is cropped to the accepted tokens
            model_kwargs["cache"].activate_past_recording()

    def _get_candidate_generator(self, generation_config, input_ids, inputs_tensor, logits_processor, model_kwargs,
                                 assistant_model=None, target_tokenizer=None, assistant_tokenizer=None):
        """An ``sru_lm`` draft (``assistant_model=``) drafts through :class:`~.drafting.SRULMDraftCandidateGenerator`,
        one forward per draft token on a cache kept between rounds, instead of a whole ``generate()`` per round;
        every other candidate source is transformers' own."""
        if can_draft_directly(generation_config, assistant_model, model_kwargs, input_ids,
                              target_tokenizer, assistant_tokenizer):
            return SRULMDraftCandidateGenerator(
                input_ids=input_ids, assistant_model=assistant_model, generation_config=generation_config,
                model_kwargs=model_kwargs, inputs_tensor=inputs_tensor, logits_processor=logits_processor,
            )
        return super()._get_candidate_generator(
            generation_config=generation_config, input_ids=input_ids, inputs_tensor=inputs_tensor,
            logits_processor=logits_processor, model_kwargs=model_kwargs, assistant_model=assistant_model,
            target_tokenizer=target_tokenizer, assistant_tokenizer=assistant_tokenizer,
        )

    def _assisted_decoding(self, input_ids, logits_processor, stopping_criteria, generation_config, synced_gpus=False,
                           streamer=None, inputs_tensor=None, assistant_model=None, assistant_tokenizer=None,
                           tokenizer=None, **model_kwargs):
        """``generate(..., assistant_model=draft)`` with an ``sru_lm`` draft runs :func:`~.drafting.assisted_decode`
        (transformers' rules, less work per round); every other assisted call runs transformers' own loop."""
        if verifies_directly(self, generation_config, assistant_model, model_kwargs, input_ids, synced_gpus,
                             tokenizer, assistant_tokenizer):
            generator = self._get_candidate_generator(
                generation_config=generation_config, input_ids=input_ids, inputs_tensor=inputs_tensor,
                logits_processor=logits_processor, model_kwargs=model_kwargs, assistant_model=assistant_model,
                target_tokenizer=tokenizer, assistant_tokenizer=assistant_tokenizer,
            )
            return assisted_decode(self, input_ids, generator, logits_processor, stopping_criteria, generation_config,
                                   model_kwargs["cache"], streamer)
        return super()._assisted_decoding(
            input_ids, logits_processor, stopping_criteria, generation_config, synced_gpus=synced_gpus,
            streamer=streamer, inputs_tensor=inputs_tensor, assistant_model=assistant_model,
            assistant_tokenizer=assistant_tokenizer, tokenizer=tokenizer, **model_kwargs,
        )

    def create_masks_for_generate(self, config, inputs_embeds, attention_mask, cache=None, **kwargs):
        """``generate`` asks a compileable cache's model for the masks of each step: the 2D mask padded to the
        static buffer, (B, max_cache_len), one shape for every step (the model masks the unfilled positions)."""
        if attention_mask is None or not isinstance(cache, SRULMCache) or not cache.is_static:
            return attention_mask
        return F.pad(attention_mask, (0, cache.max_cache_len - attention_mask.shape[1]))

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: SRULMCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast | tuple:
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
            inputs_embeds=inputs_embeds, use_cache=use_cache, past_key_values=kwargs.pop("past_key_values", None),
            **_capture_flags(output_hidden_states, output_attentions),
        )
        h = out.last_hidden_state
        if isinstance(logits_to_keep, int):
            h = h[:, -logits_to_keep:] if logits_to_keep else h
        else:
            h = h[:, logits_to_keep]
        logits = self.lm_head(h)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        result = CausalLMOutputWithPast(
            loss=loss, logits=logits, cache=out.cache, hidden_states=out.hidden_states, attentions=out.attentions
        )
        return result if return_dict else result.to_tuple()


def _capture_flags(output_hidden_states: bool | None, output_attentions: bool | None) -> dict[str, bool]:
    """The output flags a head was given, passed on to :class:`SRULMModel`; unset ones stay unset, so the base
    model's ``@capture_outputs`` falls back to the config."""
    flags = {"output_hidden_states": output_hidden_states, "output_attentions": output_attentions}
    return {k: v for k, v in flags.items() if v is not None}


def _encode(
    model: SRULMModel, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None,
    inputs_embeds: torch.Tensor | None, kwargs: dict,
) -> BaseModelOutputWithPast:
    """A task head's pass through the encoder: no cache, and the output flags in the head's ``kwargs``."""
    flags = _capture_flags(kwargs.get("output_hidden_states"), kwargs.get("output_attentions"))
    return model(
        input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, use_cache=False, **flags
    )


def _last_token_index(
    attention_mask: torch.Tensor | None, input_ids: torch.Tensor | None, pad_token_id: int | None, B: int, L: int,
    device: torch.device,
) -> torch.Tensor:
    """Index (B,) of each row's last real token, for left or right padding."""
    if attention_mask is not None:
        real = attention_mask.bool()
    elif input_ids is not None and pad_token_id is not None:
        real = input_ids != pad_token_id
    else:
        return torch.full((B,), L - 1, device=device, dtype=torch.long)
    positions = torch.arange(L, device=device)
    return (positions * real.to(device)).argmax(-1)


class SRULMForSequenceClassification(SRULMPreTrainedModel):
    """:class:`SRULMModel` with a linear classifier on a pooled representation: the last real token for a
    causal model, the mean over real tokens for a ``bidirectional`` one.

    ``forward(..., labels (B,)) -> SequenceClassifierOutputWithPast(loss, logits (B, num_labels), hidden_states)``;
    the loss follows ``config.problem_type`` (regression, single- or multi-label) as in transformers.
    """

    def __init__(self, config: SRULMConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = SRULMModel(config)
        self.score = Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs,
    ) -> SequenceClassifierOutputWithPast:
        out = _encode(self.model, input_ids, attention_mask, inputs_embeds, kwargs)
        h = out.last_hidden_state  # (B, L, d)
        B, L, _ = h.shape
        if self.config.bidirectional:
            weight = (
                torch.ones(B, L, 1, device=h.device, dtype=h.dtype)
                if attention_mask is None
                else attention_mask[..., None].to(h.dtype)
            )
            pooled = (h * weight).sum(1) / weight.sum(1).clamp(min=1)
        else:
            last = _last_token_index(attention_mask, input_ids, self.config.pad_token_id, B, L, h.device)
            pooled = h[torch.arange(B, device=h.device), last]
        logits = self.score(pooled)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, pooled_logits=logits, config=self.config)
        return SequenceClassifierOutputWithPast(
            loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions
        )


class SRULMForQuestionAnswering(SRULMPreTrainedModel):
    """:class:`SRULMModel` with a span head: start/end logits per token (use ``bidirectional=True``).

    ``forward(..., start_positions (B,), end_positions (B,)) -> QuestionAnsweringModelOutput(loss,
    start_logits (B, L), end_logits (B, L), hidden_states)``; padded positions get -inf logits.
    """

    def __init__(self, config: SRULMConfig) -> None:
        super().__init__(config)
        self.model = SRULMModel(config)
        self.qa_outputs = Linear(config.hidden_size, 2)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        start_positions: torch.LongTensor | None = None,
        end_positions: torch.LongTensor | None = None,
        **kwargs,
    ) -> QuestionAnsweringModelOutput:
        out = _encode(self.model, input_ids, attention_mask, inputs_embeds, kwargs)
        logits = self.qa_outputs(out.last_hidden_state)  # (B, L, 2)
        if attention_mask is not None:
            logits = logits.masked_fill(attention_mask[..., None] == 0, torch.finfo(logits.dtype).min)
        start_logits, end_logits = (t.squeeze(-1).contiguous() for t in logits.split(1, dim=-1))
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = self.loss_function(start_logits, end_logits, start_positions, end_positions, **kwargs)
        return QuestionAnsweringModelOutput(
            loss=loss, start_logits=start_logits, end_logits=end_logits, hidden_states=out.hidden_states,
            attentions=out.attentions,
        )


AUTO_CLASSES = {  # every Auto class the family fills: registered here, named in a saved config's auto_map
    "AutoModel": SRULMModel,
    "AutoModelForCausalLM": SRULMForCausalLM,
    "AutoModelForSequenceClassification": SRULMForSequenceClassification,
    "AutoModelForQuestionAnswering": SRULMForQuestionAnswering,
}
SRULMConfig.register_for_auto_class()
for _auto, _cls in AUTO_CLASSES.items():
    _cls.register_for_auto_class(_auto)

__all__ = [
    "SRULMAttention",
    "SRULMForCausalLM",
    "SRULMForQuestionAnswering",
    "SRULMForSequenceClassification",
    "SRULMLayer",
    "SRULMModel",
    "SRULMPreTrainedModel",
]
