"""What an SRU layer is besides its recurrence: weight initialisation, the variational dropout mask and the
highway scale. One definition, used by :class:`sru_lm.layers.SRUCell` and by the SRU++ layer
(:class:`~sru_lm.models.modeling_sru_lm.SRULMLayer`).

Initialisation follows the SRU paper's argument (Lei et al. 2018, section 3.2): with inputs of unit variance,
``W`` is drawn uniform with variance ``1/d_in`` so every projection has unit variance; the two gate blocks and
``v`` are scaled so a gate's pre-activation ``U_f + v_f c`` still has unit variance when ``c`` does (each term
gets half); with dropout ``p`` on the gated term the candidate block ``U_x`` is scaled by ``sqrt(1 - p)``;
``b_r = highway_bias``. With ``rescale`` the highway term is scaled by ``sqrt(1 + 2 exp(b_r))``, which keeps
``h`` at unit variance when the reset gate starts biased.

Lives in ``models/`` (and imports only torch and transformers) because a saved model ships this folder for
``trust_remote_code=True`` loading. Writes go through ``transformers.initialization``, which leaves weights
that ``from_pretrained`` already loaded alone; on a plain ``nn.Module`` they are ordinary in-place inits.
"""

from __future__ import annotations

import math

import torch
from transformers import initialization as init


def highway_scale(highway_bias: float, rescale: bool) -> float:
    """The highway scale ``scale_x``: ``sqrt(1 + 2 exp(highway_bias))`` with ``rescale``, else 1."""
    return math.sqrt(1 + 2 * math.exp(highway_bias)) if rescale else 1.0


def dropout_mask(batch: int, width: int, p: float, training: bool, like: torch.Tensor) -> torch.Tensor | None:
    """The variational dropout mask ``(batch, width)``: one Bernoulli(1 - p) draw per sequence and unit, the
    same at every time step, scaled by ``1 / (1 - p)``; None outside training or when ``p == 0``."""
    if not (training and p > 0):
        return None
    keep = 1.0 - p
    return like.new_empty(batch, width).bernoulli_(keep).div_(keep)


@torch.no_grad()
def uniform_fan_in_(weight: torch.Tensor) -> None:
    """A ``(out, in)`` projection drawn uniform with variance ``1 / in``."""
    bound = math.sqrt(3.0 / weight.shape[1])
    init.uniform_(weight, -bound, bound)


@torch.no_grad()
def init_sru_weights_(
    weight: torch.Tensor,
    weight_c: torch.Tensor,
    bias: torch.Tensor,
    dropout: float = 0.0,
    highway_bias: float = 0.0,
    scale_x: float = 1.0,
    v1: bool = False,
) -> None:
    """Initialise one SRU layer's ``W`` (rows laid out ``(D, k, H)``, the last dim is the input width), ``v``
    (``weight_c``, ``(D, 2, H)``) and ``b`` (``bias``, ``(D, 2, H)``) as described in the module docstring.

    ``v1`` is the original SRU without ``v`` (``v`` = 0 and the gates keep all of ``W``'s variance);
    ``scale_x`` scales the projected highway block ``U_h`` when ``k == 4``.
    """
    D, _, H = weight_c.shape
    k = weight.shape[0] // (D * H)
    bound = math.sqrt(3.0 / weight.shape[1])  # Var = 1 / d_in
    w = torch.empty(weight.shape, device=weight.device, dtype=torch.float32).uniform_(-bound, bound)
    blocks = w.view(D, k, H, -1)
    if dropout > 0:
        blocks[:, 0] *= math.sqrt(1 - dropout)
    if not v1:
        blocks[:, 1:3] *= math.sqrt(0.5)  # half the gate variance from U, half from v * c
    if k == 4:
        blocks[:, 3] *= scale_x
    init.copy_(weight, w)
    if v1:
        init.zeros_(weight_c)
    else:
        init.uniform_(weight_c, -math.sqrt(1.5), math.sqrt(1.5))  # Var = 0.5
    b = torch.zeros(bias.shape, device=bias.device, dtype=torch.float32)
    b[:, 1] = highway_bias
    init.copy_(bias, b)


__all__ = ["dropout_mask", "highway_scale", "init_sru_weights_", "uniform_fan_in_"]
