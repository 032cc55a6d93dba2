"""The SRU as ``nn.Module``s: :class:`SRUCell` (one layer) and :class:`SRU` (a stack, a drop-in for
``nn.LSTM``/``nn.GRU``).

A layer computes all its projections in one matmul over the whole sequence, ``U = x W`` with ``U`` laid
out ``(L, B, D, k, H)`` (gate blocks ``[U_x, U_f, U_r, (U_h)]``) so each gate's values are contiguous
across hidden units for the recurrence kernels, then runs the elementwise recurrence
:func:`sru_lm.ops.sru_recurrence`.

Initialization, the variational dropout mask and the highway scale are shared with the SRU++ layer of the
model family and defined once, in :mod:`sru_lm.models.sru_init`.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ..models.sru_init import dropout_mask, highway_scale, init_sru_weights_, uniform_fan_in_
from ..ops import sru_recurrence, sru_step


def _shape(t: torch.Tensor | None) -> str:
    return "None" if t is None else str(tuple(t.shape))


class SRUCell(nn.Module):
    """One SRU layer over a whole sequence (sequence-first), optionally bidirectional.

    Args:
        input_size: features of the input ``x``.
        hidden_size: units per direction; the output has ``hidden_size * num_directions`` features.
        dropout: variational dropout on the gated term of ``h`` (one mask per sequence), training only.
        bidirectional: add a reversed-time direction.
        layer_norm: apply ``nn.LayerNorm``; on the input (default) or, with ``normalize_after``, on ``h``.
        projection_size: if > 0, ``W`` is factored as ``(input_size -> projection_size -> k*H)``.
        highway_bias: initial bias of the reset gate ``b_r`` (negative favours the highway path).
        rescale: scale the highway term by ``sqrt(1 + 2 exp(highway_bias))``.
        v1: the original SRU without the ``v ⊙ c`` terms (``v`` fixed at zero).
        backend: force a recurrence backend (``"reference"``, ``"cpu"``, ``"triton"``); None picks by device.

    Shapes: ``forward(x (L, B, input_size), c0 (B, D*H), mask_pad (L, B) bool) ->
    (h (L, B, D*H), c (B, D*H) fp32)``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        dropout: float = 0.0,
        bidirectional: bool = False,
        layer_norm: bool = False,
        normalize_after: bool = False,
        projection_size: int = 0,
        highway_bias: float = 0.0,
        rescale: bool = False,
        v1: bool = False,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        if input_size <= 0 or hidden_size <= 0:
            raise ValueError(f"input_size and hidden_size must be positive, got {input_size} and {hidden_size}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if projection_size < 0 or projection_size >= input_size and projection_size > 0:
            raise ValueError(f"projection_size must be 0 or in [1, input_size={input_size}), got {projection_size}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_directions = 2 if bidirectional else 1
        self.output_size = hidden_size * self.num_directions
        self.bidirectional = bidirectional
        self.dropout = dropout
        self.projection_size = projection_size
        self.highway_bias = highway_bias
        self.rescale = rescale
        self.v1 = v1
        self.backend = backend
        self.normalize_after = normalize_after
        self.k = 3 if input_size == self.output_size else 4
        D, H, k = self.num_directions, hidden_size, self.k
        d_in = projection_size or input_size
        self.weight_proj = nn.Parameter(torch.empty(projection_size, input_size)) if projection_size else None
        self.weight = nn.Parameter(torch.empty(D * k * H, d_in))  # rows laid out (D, k, H)
        self.weight_c = nn.Parameter(torch.empty(D, 2, H), requires_grad=not v1)
        self.bias = nn.Parameter(torch.empty(D, 2, H))
        ln_size = self.output_size if normalize_after else input_size
        self.layer_norm = nn.LayerNorm(ln_size) if layer_norm else None
        self.scale_x = highway_scale(highway_bias, rescale)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.weight_proj is not None:
            uniform_fan_in_(self.weight_proj)
        init_sru_weights_(
            self.weight, self.weight_c, self.bias, self.dropout, self.highway_bias, self.scale_x, v1=self.v1
        )
        if self.layer_norm is not None:
            self.layer_norm.reset_parameters()

    def compute_U(self, x: torch.Tensor) -> torch.Tensor:
        """The projections ``U = x W``: ``(..., input_size) -> (..., D*k*H)``; x already layer-normed."""
        if self.weight_proj is not None:
            x = F.linear(x, self.weight_proj)
        return F.linear(x, self.weight)

    def _dropout_mask(self, batch: int, like: torch.Tensor) -> torch.Tensor | None:
        return dropout_mask(batch, self.output_size, self.dropout, self.training, like)

    def _check_input(self, x: torch.Tensor, rank: int) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != rank or x.shape[-1] != self.input_size:
            want = "(L, B, input_size)" if rank == 3 else "(B, input_size)"
            raise ValueError(f"input must have shape {want} with input_size={self.input_size}, got {_shape(x)}")
        if not x.is_floating_point():
            raise TypeError(f"input must be a floating tensor, got {x.dtype}")
        if x.device != self.weight.device:
            raise ValueError(f"input is on {x.device} but the layer's weights are on {self.weight.device}")

    def forward(
        self, x: torch.Tensor, c0: torch.Tensor | None = None, mask_pad: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_input(x, 3)
        L, B, _ = x.shape
        residual = x
        if self.layer_norm is not None and not self.normalize_after:
            x = self.layer_norm(x)
        U = self.compute_U(x)  # (L, B, D*k*H)
        h, c = sru_recurrence(
            U,
            residual.to(U.dtype) if self.k == 3 else None,  # under autocast U is bf16/fp16, the input may be fp32
            self.weight_c,
            self.bias,
            initial_state=c0,
            mask_pad=mask_pad,
            dropout_mask=self._dropout_mask(B, U),
            bidirectional=self.bidirectional,
            scale_x=self.scale_x,
            backend=self.backend,
        )
        if self.layer_norm is not None and self.normalize_after:
            h = self.layer_norm(h)
        return h, c

    def step(
        self, x: torch.Tensor, c: torch.Tensor, mask_pad: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One decoding step: ``x (B, input_size)``, ``c (B, H)`` -> ``(h (B, H), c (B, H) fp32)``.

        Equal to :meth:`forward` on a length-1 sequence; unidirectional layers only (a reversed
        direction needs the future).
        """
        if self.bidirectional:
            raise ValueError("step() needs a unidirectional layer: a bidirectional SRU reads the future")
        self._check_input(x, 2)
        residual = x
        if self.layer_norm is not None and not self.normalize_after:
            x = self.layer_norm(x)
        U = self.compute_U(x)  # (B, k*H)
        h, c = sru_step(
            U, residual.to(U.dtype) if self.k == 3 else None, self.weight_c, self.bias, c, mask_pad,
            self._dropout_mask(x.shape[0], U), self.scale_x, self.backend,
        )
        if self.layer_norm is not None and self.normalize_after:
            h = self.layer_norm(h)
        return h, c

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, k={self.k}"
        for name in ("dropout", "bidirectional", "projection_size", "highway_bias", "rescale", "v1"):
            val = getattr(self, name)
            if val:
                s += f", {name}={val}"
        if self.layer_norm is not None:
            s += f", layer_norm={'after' if self.normalize_after else 'before'}"
        return s


# SRUCell's arguments after ``bidirectional``: the options every layer of an SRU stack shares. They are
# listed once, in SRUCell's signature; SRU takes them as keywords and shows them in its own (below).
_CELL_PARAMS = inspect.signature(SRUCell.__init__).parameters
_LAYER_OPTIONS = tuple(_CELL_PARAMS)[list(_CELL_PARAMS).index("bidirectional") + 1:]


class SRU(nn.Module):
    """A stack of SRU layers with the calling convention of ``nn.GRU``.

    Args:
        input_size, hidden_size, num_layers, dropout, bidirectional, batch_first: as in ``nn.GRU``
            (``dropout`` is SRU's variational dropout inside every layer but the last).
        layer_norm, normalize_after, projection_size, highway_bias, rescale, v1, backend: keyword
            arguments, passed to every layer; see :class:`SRUCell`.

    ``forward(input, c0=None, mask_pad=None) -> (output, c_n)``:
        input: ``(L, B, input_size)`` (``(B, L, input_size)`` if ``batch_first``) or a ``PackedSequence``.
        c0: ``(num_layers * num_directions, B, hidden_size)``, zeros when None.
        mask_pad: bool, True at padding, ``(L, B)`` (``(B, L)`` if ``batch_first``).
        output: ``(L, B, num_directions * hidden_size)`` in the input's dtype (``PackedSequence`` in,
            ``PackedSequence`` out); padded positions are zero.
        c_n: ``(num_layers * num_directions, B, hidden_size)`` in fp32: each layer's state after the
            last real token of each sequence (in both directions).

    Example:
        >>> rnn = SRU(32, 64, num_layers=2, batch_first=True)
        >>> out, c_n = rnn(torch.randn(4, 10, 32))
        >>> out.shape, c_n.shape
        (torch.Size([4, 10, 64]), torch.Size([2, 4, 64]))
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 2,
        dropout: float = 0.0,
        bidirectional: bool = False,
        batch_first: bool = False,
        **layer_options,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        unknown = sorted(set(layer_options) - set(_LAYER_OPTIONS))
        if unknown:
            raise TypeError(f"SRU got unexpected keyword arguments {unknown}; the layer options are {_LAYER_OPTIONS}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bidirectional = bidirectional
        self.batch_first = batch_first
        self.num_directions = 2 if bidirectional else 1
        self.output_size = hidden_size * self.num_directions
        self.layers = nn.ModuleList(
            SRUCell(
                input_size if i == 0 else self.output_size,
                hidden_size,
                dropout=dropout if i + 1 < num_layers else 0.0,
                bidirectional=bidirectional,
                **layer_options,
            )
            for i in range(num_layers)
        )

    def _split_state(self, c0: torch.Tensor | None, batch: int) -> list[torch.Tensor | None]:
        """``(num_layers*D, B, H)`` -> per layer ``(B, D*H)``."""
        if c0 is None:
            return [None] * self.num_layers
        D, H = self.num_directions, self.hidden_size
        want = (self.num_layers * D, batch, H)
        if not isinstance(c0, torch.Tensor) or c0.shape != want:
            raise ValueError(f"c0 must have shape (num_layers*num_directions, B, hidden_size)={want}, got {_shape(c0)}")
        c = c0.view(self.num_layers, D, batch, H).transpose(1, 2).reshape(self.num_layers, batch, D * H)
        return list(c.unbind(0))

    def _join_state(self, cs: list[torch.Tensor]) -> torch.Tensor:
        """per layer ``(B, D*H)`` -> ``(num_layers*D, B, H)``."""
        D, H = self.num_directions, self.hidden_size
        c = torch.stack(cs)  # (num_layers, B, D*H)
        B = c.shape[1]
        return c.view(self.num_layers, B, D, H).transpose(1, 2).reshape(self.num_layers * D, B, H)

    def forward(
        self,
        input: torch.Tensor | PackedSequence,
        c0: torch.Tensor | None = None,
        mask_pad: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | PackedSequence, torch.Tensor]:
        packed = isinstance(input, PackedSequence)
        if packed:
            if mask_pad is not None:
                raise ValueError("mask_pad must be None for a PackedSequence input: the lengths define it")
            x, lengths = pad_packed_sequence(input)  # (L, B, F), batch in the original order
            mask_pad = torch.arange(x.shape[0]).unsqueeze(1) >= lengths.unsqueeze(0)  # (L, B)
            mask_pad = mask_pad.to(x.device)
        else:
            if not isinstance(input, torch.Tensor):
                raise TypeError(f"input must be a torch.Tensor or PackedSequence, got {type(input).__name__}")
            if input.dim() != 3:
                want = "(B, L, input_size)" if self.batch_first else "(L, B, input_size)"
                raise ValueError(f"input must have shape {want}, got {_shape(input)}")
            x = input.transpose(0, 1) if self.batch_first else input
            if mask_pad is not None:
                want = tuple(input.shape[:2])
                if not isinstance(mask_pad, torch.Tensor) or mask_pad.shape != want:
                    layout = "(B, L)" if self.batch_first else "(L, B)"
                    raise ValueError(f"mask_pad must have shape {layout}={want}, got {_shape(mask_pad)}")
                if mask_pad.dtype != torch.bool:
                    raise TypeError(f"mask_pad must be a bool tensor (True = padding), got {mask_pad.dtype}")
                mask_pad = mask_pad.transpose(0, 1) if self.batch_first else mask_pad
        states = self._split_state(c0, x.shape[1])
        h, c_last = x, []
        for layer, c in zip(self.layers, states, strict=True):
            h, c = layer(h, c, mask_pad)
            c_last.append(c)
        c_n = self._join_state(c_last)
        if packed:
            out = pack_padded_sequence(h, lengths, enforce_sorted=False)
            return out, c_n
        return (h.transpose(0, 1) if self.batch_first else h), c_n

    def step(
        self, input: torch.Tensor, c: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One decoding step through every layer: ``input (B, input_size)``, ``c (num_layers, B, H)``
        -> ``(output (B, H), c_new (num_layers, B, H) fp32)``. Equal to :meth:`forward` fed one token at a
        time. Unidirectional stacks only."""
        if self.bidirectional:
            raise ValueError("step() needs a unidirectional SRU: a bidirectional SRU reads the future")
        if not isinstance(input, torch.Tensor) or input.dim() != 2:
            raise ValueError(f"input must have shape (B, input_size) for one step, got {_shape(input)}")
        B = input.shape[0]
        if c is None:
            c = input.new_zeros(self.num_layers, B, self.hidden_size, dtype=torch.float32)
        elif c.shape != (self.num_layers, B, self.hidden_size):
            want = (self.num_layers, B, self.hidden_size)
            raise ValueError(f"c must have shape (num_layers, B, hidden_size)={want}, got {_shape(c)}")
        h, new = input, []
        for i, layer in enumerate(self.layers):
            h, ci = layer.step(h, c[i])
            new.append(ci)
        return h, torch.stack(new)


# help(SRU) and inspect.signature(SRU) show every argument with its default: SRU's own, then the layer
# options (keyword-only) from SRUCell's signature
SRU.__init__.__signature__ = inspect.Signature(
    list(inspect.signature(SRU.__init__).parameters.values())[:-1]  # all but **layer_options
    + [_CELL_PARAMS[name].replace(kind=inspect.Parameter.KEYWORD_ONLY) for name in _LAYER_OPTIONS],
    return_annotation="None",
)
