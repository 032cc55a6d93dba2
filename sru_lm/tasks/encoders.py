"""Sequence encoders shared by the task models: one stack API over SRU, LSTM, and a Kim-style CNN.

The SRU and LSTM stacks are built layer by layer so they are the same model but for the recurrence:
the same dropout on every layer's input, the same optional concatenation of all layers' outputs
(DrQA), the same padding contract. Padding never changes a sequence's encoding: the SRU gets
``mask_pad`` (a padded step carries ``c`` and outputs zero, so the reversed direction starts at the
last real token); a bidirectional LSTM layer is two ``nn.LSTM`` directions, the backward one run on each
sequence reversed within its own length; the CNN masks windows that hold no real token.

Why not ``pack_padded_sequence`` for the LSTM: on CPU (torch 2.13) a packed bidirectional LSTM trains
about 3x and infers about 9x slower than the same LSTM on a padded batch (L=150, B=32, d=128,
measured on this machine), which would hand the SRU an unfair speed advantage.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import SRUCell

logger = logging.getLogger(__name__)
RNN_TYPES = ("sru", "lstm")
_warned_lstm_bf16 = False


def _run_lstm(lstm: nn.LSTM, h: torch.Tensor) -> torch.Tensor:
    """``lstm(h)[0]``. oneDNN has no bf16 LSTM primitive on CPUs without AVX512-BF16/AMX: under CPU bf16
    autocast it raises "could not create a primitive descriptor". There the LSTM runs in fp32 with autocast
    off (logged once); the other layers still autocast."""
    global _warned_lstm_bf16
    if (h.device.type != "cpu" or not torch.is_autocast_enabled("cpu")
            or torch.get_autocast_dtype("cpu") != torch.bfloat16 or torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return lstm(h)[0]
    if not _warned_lstm_bf16:
        _warned_lstm_bf16 = True
        logger.warning("this CPU has no bf16 LSTM kernel (no AVX512-BF16/AMX): the LSTM layers run in fp32 "
                       "under bf16 autocast")
    with torch.autocast("cpu", enabled=False):
        return lstm(h.to(lstm.weight_ih_l0.dtype))[0]


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence of ``x (L, B, F)`` within its length; padding stays at the end. Its own inverse."""
    L = x.shape[0]
    t = torch.arange(L, device=x.device).unsqueeze(1)  # (L, 1)
    n = lengths.to(x.device).unsqueeze(0)  # (1, B)
    idx = torch.where(t < n, n - 1 - t, t)  # (L, B)
    return x.gather(0, idx.unsqueeze(-1).expand_as(x))


class RNNEncoder(nn.Module):
    """A stack of (bi)directional SRU or LSTM layers over a batch-first padded batch.

    Args:
        input_size: features per input token.
        hidden_size: units per direction.
        num_layers: stacked layers.
        rnn_type: ``"sru"`` or ``"lstm"``.
        bidirectional: add a reversed direction to every layer.
        dropout: plain dropout on every layer's input, the same for both recurrences (the SRU's own
            variational dropout is left off so the two models are regularized alike).
        concat_layers: return all layers' outputs concatenated (DrQA) instead of the last layer's.
        sru_kwargs: extra :class:`sru_lm.layers.SRUCell` arguments (``highway_bias``, ``layer_norm``, ...).

    Shapes: ``forward(x (B, L, input_size), mask (B, L) 1/True = real token) -> (B, L, output_size)``,
    zero at padded positions. ``output_size = hidden_size * directions * (num_layers if concat_layers else 1)``.

    Example:
        >>> enc = RNNEncoder(50, 64, num_layers=2, rnn_type="sru")
        >>> enc(torch.randn(3, 7, 50), torch.ones(3, 7, dtype=torch.bool)).shape
        torch.Size([3, 7, 128])
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 2,
        rnn_type: str = "sru",
        bidirectional: bool = True,
        dropout: float = 0.0,
        concat_layers: bool = False,
        sru_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        if rnn_type not in RNN_TYPES:
            raise ValueError(f"rnn_type must be one of {RNN_TYPES}, got {rnn_type!r}")
        self.rnn_type = rnn_type
        self.dropout = dropout
        self.concat_layers = concat_layers
        D = 2 if bidirectional else 1
        self.layers = nn.ModuleList()
        for i in range(num_layers):
            d_in = input_size if i == 0 else hidden_size * D
            if rnn_type == "sru":
                self.layers.append(SRUCell(d_in, hidden_size, bidirectional=bidirectional, **(sru_kwargs or {})))
            else:  # one nn.LSTM per direction, see the module docstring
                self.layers.append(nn.ModuleList(nn.LSTM(d_in, hidden_size, 1) for _ in range(D)))
        self.output_size = hidden_size * D * (num_layers if concat_layers else 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or mask.shape != x.shape[:2]:
            raise ValueError(f"x must be (B, L, F) and mask (B, L); got {tuple(x.shape)} and {tuple(mask.shape)}")
        mask = mask.bool()
        h = x.transpose(0, 1)  # (L, B, F)
        pad = ~mask.t()  # (L, B) True = padding
        lengths = mask.sum(1)
        outputs = []
        for layer in self.layers:
            h = F.dropout(h, self.dropout, self.training)
            if self.rnn_type == "sru":
                h, _ = layer(h, mask_pad=pad)
            else:
                # a forward LSTM never sees the padding after a sequence; the backward one reads the reversal
                hs = [_run_lstm(layer[0], h)]
                if len(layer) == 2:
                    hs.append(reverse_padded(_run_lstm(layer[1], reverse_padded(h, lengths)), lengths))
                h = torch.cat(hs, -1).masked_fill(pad.unsqueeze(-1), 0.0)  # (L, B, D*H)
            outputs.append(h)
        out = torch.cat(outputs, -1) if self.concat_layers else outputs[-1]  # (L, B, output_size)
        return out.masked_fill(pad.unsqueeze(-1), 0.0).transpose(0, 1)


class CNNEncoder(nn.Module):
    """Kim (2014): parallel 1-d convolutions of several widths, ReLU, max over time.

    Shapes: ``forward(x (B, L, input_size), mask (B, L)) -> (B, channels * len(kernel_sizes))``.
    Each width ``w`` is zero-padded by ``w - 1`` on both sides, so every window that holds at least one
    real token is kept and sentences shorter than ``w`` still get one; windows of padding only are
    masked out before the max, so extra padding never changes the result.
    """

    def __init__(self, input_size: int, channels: int = 100, kernel_sizes: tuple[int, ...] = (3, 4, 5)) -> None:
        super().__init__()
        self.kernel_sizes = tuple(kernel_sizes)
        self.convs = nn.ModuleList(nn.Conv1d(input_size, channels, w, padding=w - 1) for w in self.kernel_sizes)
        self.output_size = channels * len(self.kernel_sizes)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x.masked_fill(~mask.bool().unsqueeze(-1), 0.0).transpose(1, 2)  # (B, F, L)
        lengths = mask.sum(1, keepdim=True)  # (B, 1)
        pooled = []
        for w, conv in zip(self.kernel_sizes, self.convs, strict=True):
            y = F.relu(conv(x))  # (B, C, L + w - 1); position j covers inputs j-w+1 .. j
            valid = torch.arange(y.shape[-1], device=y.device).unsqueeze(0) < lengths + w - 1  # (B, L + w - 1)
            pooled.append(y.masked_fill(~valid.unsqueeze(1), float("-inf")).amax(-1))  # (B, C)
        return torch.cat(pooled, -1)


def masked_pool(h: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """Pool ``h (B, L, F)`` over the real tokens of ``mask (B, L)`` with ``"max"`` or ``"mean"``: ``(B, F)``."""
    m = mask.bool().unsqueeze(-1)  # (B, L, 1)
    if how == "max":
        return h.masked_fill(~m, float("-inf")).amax(1)
    if how == "mean":
        return (h * m).sum(1) / m.sum(1).clamp(min=1)
    raise ValueError(f"pooling must be 'max' or 'mean', got {how!r}")
