"""The SRU layer's initialisation, dropout mask and highway scale: one definition (sru_lm.models.sru_init) that
SRUCell and the SRU++ layer of the model family both use."""

from __future__ import annotations

import math

import pytest
import torch

from sru_lm import SRUCell
from sru_lm.models.configuration_sru_lm import SRU_LAYER, SRULMConfig
from sru_lm.models.modeling_sru_lm import SRULMLayer
from sru_lm.models.sru_init import dropout_mask, highway_scale, init_sru_weights_


def test_highway_scale():
    assert highway_scale(-2.0, False) == 1.0
    assert highway_scale(-2.0, True) == pytest.approx(math.sqrt(1 + 2 * math.exp(-2.0)))
    assert highway_scale(0.0, True) == pytest.approx(math.sqrt(3.0))


def test_dropout_mask_is_per_sequence_scaled_and_off_in_eval():
    like = torch.empty(0, dtype=torch.float64)
    assert dropout_mask(4, 8, 0.3, False, like) is None
    assert dropout_mask(4, 8, 0.0, True, like) is None
    torch.manual_seed(0)
    m = dropout_mask(2000, 50, 0.3, True, like)
    assert m.shape == (2000, 50) and m.dtype == torch.float64
    assert m.unique().tolist() == pytest.approx([0.0, 1 / 0.7])
    assert (m == 0).double().mean().item() == pytest.approx(0.3, abs=0.01)
    assert m.mean().item() == pytest.approx(1.0, abs=0.02)  # unbiased


@pytest.mark.parametrize("v1", [False, True])
def test_init_statistics_follow_the_sru_paper(v1):
    D, H, d_in, p, hb = 2, 300, 400, 0.2, -1.5
    torch.manual_seed(0)
    weight, v, b = torch.empty(D * 4 * H, d_in), torch.empty(D, 2, H), torch.empty(D, 2, H)
    init_sru_weights_(weight, v, b, dropout=p, highway_bias=hb, scale_x=2.0, v1=v1)
    blocks = weight.view(D, 4, H, d_in)
    var = 1 / d_in
    assert blocks[:, 0].var().item() == pytest.approx(var * (1 - p), rel=0.03)  # U_x scaled by sqrt(1 - p)
    gate_var = var if v1 else var / 2  # half the gate variance from U, half from v * c
    assert blocks[:, 1:3].var().item() == pytest.approx(gate_var, rel=0.03)
    assert blocks[:, 3].var().item() == pytest.approx(var * 4, rel=0.03)  # U_h scaled by scale_x
    if v1:
        assert (v == 0).all()
    else:
        assert v.var().item() == pytest.approx(0.5, rel=0.1) and v.abs().max() <= math.sqrt(1.5)
    assert (b[:, 0] == 0).all() and (b[:, 1] == hb).all()


def test_sru_cell_and_sru_pp_layer_share_one_init():
    """An SRU++ layer without attention is an SRUCell with a projection (W1 then W3): the same seed must give
    the same W1, W3, v and b, so any drift between the two inits fails here."""
    d, dp, p, hb = 24, 8, 0.1, -2.0
    config = SRULMConfig(
        vocab_size=10, hidden_size=d, projection_size=dp, num_hidden_layers=1, layer_types=[SRU_LAYER],
        hidden_dropout=p, highway_bias=hb, rescale=True,
    )
    layer = SRULMLayer(config, 0)
    cell = SRUCell(d, d, dropout=p, projection_size=dp, highway_bias=hb, rescale=True)
    torch.manual_seed(3)
    layer.init_sru_weights()
    torch.manual_seed(3)
    cell.reset_parameters()
    assert torch.equal(layer.in_proj.weight, cell.weight_proj)
    assert torch.equal(layer.out_proj.weight, cell.weight)
    assert torch.equal(layer.weight_c, cell.weight_c)
    assert torch.equal(layer.bias, cell.bias)
    assert layer.scale_x == cell.scale_x == highway_scale(hb, True)

