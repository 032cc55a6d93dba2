"""The SRU / SRUCell modules: nn.GRU conventions, masks, packing, one-step decoding, learning, and
numerical equality with the official `sru` package given the same weights."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from sru_lm import SRU, SRUCell
from sru_lm.ops import sru_recurrence_ref

TOL = dict(atol=1e-5, rtol=1e-4)  # fp32 end to end


def _lengths_mask(lengths: list[int], L: int) -> torch.Tensor:
    return torch.arange(L).unsqueeze(1) >= torch.tensor(lengths).unsqueeze(0)  # (L, B), True = pad


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("input_size", [24, 40])  # 40 == hidden output for bidi -> k=3; else k=4 somewhere
def test_shapes_and_matches_reference_layer_by_layer(bidirectional, input_size):
    torch.manual_seed(0)
    H, L, B = 20, 9, 3
    rnn = SRU(input_size, H, num_layers=3, bidirectional=bidirectional, layer_norm=True, highway_bias=-1.0,
              rescale=True)
    x = torch.randn(L, B, input_size)
    out, c_n = rnn(x)
    D = 2 if bidirectional else 1
    assert out.shape == (L, B, D * H)
    assert c_n.shape == (3 * D, B, H) and c_n.dtype == torch.float32
    # Recompute with the reference recurrence directly from the parameters.
    h = x
    finals = []
    for cell in rnn.layers:
        xin = cell.layer_norm(h) if cell.layer_norm is not None else h
        U = cell.compute_U(xin)
        h, c = sru_recurrence_ref(U, h if cell.k == 3 else None, cell.weight_c, cell.bias,
                                  bidirectional=bidirectional, scale_x=cell.scale_x)
        finals.append(c.view(B, D, H).transpose(0, 1))  # (D, B, H)
    torch.testing.assert_close(out, h, **TOL)
    torch.testing.assert_close(c_n, torch.cat(finals), **TOL)


def test_batch_first_equals_sequence_first():
    torch.manual_seed(1)
    rnn_t = SRU(16, 12, num_layers=2, bidirectional=True)
    rnn_b = SRU(16, 12, num_layers=2, bidirectional=True, batch_first=True)
    rnn_b.load_state_dict(rnn_t.state_dict())
    x = torch.randn(7, 4, 16)
    mask = _lengths_mask([7, 3, 5, 1], 7)
    c0 = torch.randn(4, 4, 12)
    out_t, c_t = rnn_t(x, c0, mask)
    out_b, c_b = rnn_b(x.transpose(0, 1), c0, mask.transpose(0, 1))
    torch.testing.assert_close(out_b, out_t.transpose(0, 1), **TOL)
    torch.testing.assert_close(c_b, c_t, **TOL)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_mask_pad_final_state_is_last_real_token(bidirectional):
    torch.manual_seed(2)
    rnn = SRU(10, 8, num_layers=2, bidirectional=bidirectional)
    lengths = [6, 2, 4]
    L = 6
    x = torch.randn(L, 3, 10)
    out, c_n = rnn(x, mask_pad=_lengths_mask(lengths, L))
    D = 2 if bidirectional else 1
    for i, n in enumerate(lengths):
        out_i, c_i = rnn(x[:n, i : i + 1])  # the sequence alone, unpadded
        torch.testing.assert_close(out[:n, i : i + 1], out_i, **TOL)
        torch.testing.assert_close(c_n[:, i : i + 1], c_i, **TOL)
        assert torch.all(out[n:, i] == 0), "padded outputs must be zero"
    assert c_n.shape == (2 * D, 3, 8)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_packed_sequence_equals_mask_pad(bidirectional):
    torch.manual_seed(3)
    rnn = SRU(10, 8, num_layers=2, bidirectional=bidirectional)
    lengths = [3, 7, 5, 1]
    x = torch.randn(7, 4, 10)
    out_m, c_m = rnn(x, mask_pad=_lengths_mask(lengths, 7))
    packed = pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False)
    out_p, c_p = rnn(packed)
    assert isinstance(out_p, torch.nn.utils.rnn.PackedSequence)
    out_p, lens = pad_packed_sequence(out_p)
    assert lens.tolist() == lengths
    torch.testing.assert_close(out_p, out_m, **TOL)
    torch.testing.assert_close(c_p, c_m, **TOL)


@pytest.mark.parametrize("input_size", [8, 12])  # k=4 then k=3 in layer 0
@pytest.mark.parametrize("layer_norm", [False, True])
def test_step_equals_full_forward(input_size, layer_norm):
    torch.manual_seed(4)
    rnn = SRU(input_size, 12, num_layers=3, layer_norm=layer_norm, highway_bias=-2.0, rescale=True).eval()
    x = torch.randn(11, 2, input_size)
    c0 = torch.randn(3, 2, 12)
    out, c_n = rnn(x, c0)
    c = c0
    for t in range(x.shape[0]):
        h, c = rnn.step(x[t], c)
        torch.testing.assert_close(h, out[t], **TOL)
    torch.testing.assert_close(c, c_n, **TOL)


@pytest.mark.parametrize("input_size", [8, 12])  # k=4, and k=3 where the fp32 input is the highway term
def test_autocast_bf16_forward_backward_and_step_follow_fp32(input_size):
    """Under autocast the projection gives bf16 U while the input stays fp32: the layer runs in U's dtype and
    agrees with the fp32 layer to bf16 accuracy (found on a GPU, where mixed precision is the default)."""
    torch.manual_seed(5)
    rnn = SRU(input_size, 12, num_layers=2, highway_bias=-1.0)
    x = torch.randn(9, 3, input_size, requires_grad=True)
    out, c = rnn(x)
    out.square().sum().backward()
    g_ref = x.grad.clone()
    x.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_bf, c_bf = rnn(x)
        h_step, _ = rnn.eval().step(x[0], torch.zeros(2, 3, 12))
    rnn.train()
    assert out_bf.dtype == torch.bfloat16 and c_bf.dtype == torch.float32
    torch.testing.assert_close(out_bf.float(), out, atol=5e-2, rtol=5e-2)
    torch.testing.assert_close(c_bf, c, atol=5e-2, rtol=5e-2)
    torch.testing.assert_close(h_step.float(), out[0].detach(), atol=5e-2, rtol=5e-2)
    out_bf.float().square().sum().backward()
    torch.testing.assert_close(x.grad, g_ref, atol=0.1, rtol=0.1)


def test_module_learns_a_sequence_task():
    """Predict the first token of the sequence at every step: it needs memory across the sequence
    (the forget gate must learn to hold c); chance level is ln 2 ~ 0.69."""
    torch.manual_seed(5)
    rnn = SRU(1, 32, num_layers=2, batch_first=True)
    head = nn.Linear(32, 1)
    opt = torch.optim.Adam([*rnn.parameters(), *head.parameters()], lr=1e-2)
    losses = []
    for _ in range(120):
        bits = torch.randint(0, 2, (32, 12, 1)).float()
        target = bits[:, :1].expand_as(bits)
        out, _ = rnn(bits * 2 - 1)
        loss = nn.functional.binary_cross_entropy_with_logits(head(out), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 0.6
    assert sum(losses[-10:]) / 10 < 0.15, losses[-10:]


def test_dropout_is_variational_and_off_in_eval():
    torch.manual_seed(6)
    cell = SRUCell(8, 8, dropout=0.5)
    x = torch.randn(5, 3, 8)
    cell.eval()
    a, _ = cell(x)
    b, _ = cell(x)
    torch.testing.assert_close(a, b)
    cell.train()
    mask = cell._dropout_mask(3, x)
    assert mask.shape == (3, 8)
    assert set(mask.unique().tolist()) <= {0.0, 2.0}


def test_bad_inputs_raise_clear_errors():
    rnn = SRU(10, 8, num_layers=2)
    with pytest.raises(ValueError, match=r"input must have shape \(L, B, input_size\)"):
        rnn(torch.randn(5, 10))
    with pytest.raises(ValueError, match="input_size=10"):
        rnn(torch.randn(5, 2, 9))
    with pytest.raises(ValueError, match=r"c0 must have shape .*\(2, 2, 8\)"):
        rnn(torch.randn(5, 2, 10), torch.zeros(1, 2, 8))
    with pytest.raises(ValueError, match=r"mask_pad must have shape \(L, B\)"):
        rnn(torch.randn(5, 2, 10), mask_pad=torch.zeros(2, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask_pad must be a bool"):
        rnn(torch.randn(5, 2, 10), mask_pad=torch.zeros(5, 2))
    with pytest.raises(TypeError, match="floating"):
        rnn(torch.ones(5, 2, 10, dtype=torch.long))
    with pytest.raises(ValueError, match="projection_size"):
        SRU(10, 8, projection_size=12)
    with pytest.raises(ValueError, match="bidirectional"):
        SRU(10, 8, bidirectional=True).step(torch.randn(2, 10))


# ---------------------------------------------------------------- the official package, when installed


def _copy_official_weights(ours: SRU, theirs) -> None:
    """Official layout: weight (d_in, D*H*k), weight_c/bias (2*D*H) as (2, D, H)."""
    with torch.no_grad():
        for cell, off in zip(ours.layers, theirs.rnn_lst, strict=True):
            D, H, k = cell.num_directions, cell.hidden_size, cell.k
            assert off.num_matrices == k
            w = off.weight.detach()
            cell.weight.copy_(w.view(w.shape[0], D, H, k).permute(1, 3, 2, 0).reshape(D * k * H, -1))
            if cell.weight_proj is not None:
                cell.weight_proj.copy_(off.weight_proj.detach().t())
            cell.weight_c.copy_(off.weight_c.detach().view(2, D, H).transpose(0, 1))
            cell.bias.copy_(off.bias.detach().view(2, D, H).transpose(0, 1))
            if cell.layer_norm is not None:
                cell.layer_norm.load_state_dict(off.layer_norm.state_dict())
            assert abs(cell.scale_x - (float(off.scale_x) if off.rescale else 1.0)) < 1e-6


@pytest.mark.skipif(importlib.util.find_spec("sru") is None, reason="official sru==2.6.0 not installed")
@pytest.mark.parametrize(
    "kw",
    [
        dict(input_size=16, bidirectional=False),
        dict(input_size=12, bidirectional=False, layer_norm=True, highway_bias=-2.0, rescale=True),
        dict(input_size=24, bidirectional=True),  # 24 == 2*12: k=3 with a bidirectional highway
        dict(input_size=20, bidirectional=True, projection_size=8, rescale=True, highway_bias=-1.0),
    ],
)
def test_equals_official_sru_given_same_weights(kw):
    import sru as official

    torch.manual_seed(7)
    input_size = kw.pop("input_size")
    theirs = official.SRU(input_size, 12, num_layers=2, nn_rnn_compatible_return=True, **kw)
    ours = SRU(input_size, 12, num_layers=2, **kw)
    _copy_official_weights(ours, theirs)
    x = torch.randn(9, 3, input_size, requires_grad=True)
    mask = _lengths_mask([9, 4, 6], 9)
    c0 = torch.randn(2 * ours.num_directions, 3, 12)
    D = ours.num_directions
    c0_theirs = c0.view(2, D, 3, 12).transpose(1, 2).reshape(2, 3, D * 12)  # it takes (layers, B, D*H)
    h_theirs, c_theirs = theirs(x, c0_theirs, mask_pad=mask)  # grad-enabled: the official Python loop
    h_ours, c_ours = ours(x, c0.clone(), mask_pad=mask)
    torch.testing.assert_close(h_ours, h_theirs, **TOL)
    torch.testing.assert_close(c_ours, c_theirs, **TOL)
    g_theirs = torch.autograd.grad(h_theirs.square().sum(), x)[0]
    g_ours = torch.autograd.grad(h_ours.square().sum(), x)[0]
    torch.testing.assert_close(g_ours, g_theirs, **TOL)
