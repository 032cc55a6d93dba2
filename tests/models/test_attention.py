"""Attention through transformers' interface (config._attn_implementation): every implementation this machine runs
gives the same outputs, caches and gradients; eager returns the attention weights; the _supports_* flags are true."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, randomize, tiny_config

from sru_lm import SRULMForCausalLM, SRULMForQuestionAnswering, SRULMForSequenceClassification, SRULMModel

TOL = dict(atol=2e-5, rtol=1e-4)
CPU_IMPLEMENTATIONS = ["eager", "sdpa"]  # flex_attention compiles per shape: its own, smaller test below


def _model(cls, implementation: str, **overrides):
    torch.manual_seed(0)
    config = tiny_config(**overrides)
    return randomize(cls._from_config(config, attn_implementation=implementation))


def _left_padded(B: int, L: int, lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (B, L), generator=g)
    mask = torch.zeros(B, L, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, L - n:] = 1
    return ids.masked_fill(mask == 0, 0), mask


def _decode(model, ids, mask) -> torch.Tensor:
    """Prefill 4 tokens, a 2-token chunk, then one token at a time: the logits of every step, (B, L, V)."""
    out = model(ids[:, :4], attention_mask=mask[:, :4], use_cache=True)
    logits, cache = [out.logits], out.cache
    out = model(ids[:, 4:6], attention_mask=mask[:, :6], cache=cache)
    logits.append(out.logits)
    for t in range(6, ids.shape[1]):
        logits.append(model(ids[:, t : t + 1], attention_mask=mask[:, : t + 1], cache=cache).logits)
    return torch.cat(logits, 1)


@pytest.mark.parametrize("layout", [{}, dict(position_embedding_type="rotary"), dict(attention_every_n_layers=1)])
def test_implementations_agree_on_padded_batches_cached_decoding_and_gradients(layout):
    ids, mask = _left_padded(3, 8, [8, 5, 2])
    results = {}
    for implementation in CPU_IMPLEMENTATIONS:
        model = _model(SRULMForCausalLM, implementation, **layout)
        assert model.config._attn_implementation == implementation
        with torch.no_grad():
            full = model(ids, attention_mask=mask).logits
            steps = _decode(model, ids, mask)
        model.train()
        model.zero_grad()
        model(ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[implementation] = full, steps, grads
    real = mask.bool()
    ref_full, ref_steps, ref_grads = results["sdpa"]
    torch.testing.assert_close(ref_steps[real], ref_full[real], **TOL)  # decoding = the full forward
    for implementation, (full, steps, grads) in results.items():
        torch.testing.assert_close(full[real], ref_full[real], **TOL, msg=implementation)
        torch.testing.assert_close(steps[real], ref_full[real], **TOL, msg=implementation)
        assert grads.keys() == ref_grads.keys()
        for name in grads:
            torch.testing.assert_close(grads[name], ref_grads[name], **TOL, msg=f"{implementation} {name}")


def test_implementations_agree_for_bidirectional_encoders():
    ids, mask = _left_padded(2, 7, [7, 4])
    outs = {}
    for implementation in CPU_IMPLEMENTATIONS:
        model = _model(SRULMModel, implementation, bidirectional=True)
        with torch.no_grad():
            outs[implementation] = (model(ids, attention_mask=mask).last_hidden_state, model(ids).last_hidden_state)
    real = mask.bool()
    for implementation, (padded, plain) in outs.items():
        torch.testing.assert_close(padded[real], outs["sdpa"][0][real], **TOL, msg=implementation)
        torch.testing.assert_close(plain, outs["sdpa"][1], **TOL, msg=implementation)


@pytest.mark.slow  # compiles flex_attention once per shape (about a minute on 2 cores)
def test_flex_attention_agrees_with_sdpa():
    pytest.importorskip("torch.nn.attention.flex_attention")
    ids, mask = _left_padded(2, 7, [7, 4])
    want, got = {}, {}
    for implementation, into in (("sdpa", want), ("flex_attention", got)):
        model = _model(SRULMForCausalLM, implementation)
        with torch.no_grad():
            into["padded"] = model(ids, attention_mask=mask).logits
            into["causal"] = model(ids).logits  # no mask given: causality must still hold
            out = model(ids[:, :6], attention_mask=mask[:, :6], use_cache=True)
            into["step"] = model(ids[:, 6:], attention_mask=mask, cache=out.cache).logits
        bi = _model(SRULMModel, implementation, bidirectional=True)
        with torch.no_grad():
            into["bidirectional"] = bi(ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(got["padded"][real], want["padded"][real], **TOL)
    torch.testing.assert_close(got["causal"], want["causal"], **TOL)
    torch.testing.assert_close(got["step"], want["step"], **TOL)
    torch.testing.assert_close(got["bidirectional"][real], want["bidirectional"][real], **TOL)


def test_eager_returns_attention_weights_per_attention_layer():
    model = _model(SRULMForCausalLM, "eager", num_hidden_layers=4, attention_every_n_layers=2)
    ids, mask = _left_padded(2, 6, [6, 3])
    with torch.no_grad():
        out = model(ids, attention_mask=mask, output_attentions=True)
    n_attention = model.config.num_attention_layers
    assert n_attention == 2 and len(out.attentions) == n_attention
    for w in out.attentions:
        assert w.shape == (2, model.config.num_attention_heads, 6, 6)
        torch.testing.assert_close(w.sum(-1), torch.ones(2, model.config.num_attention_heads, 6))
        assert (w.triu(1) == 0).all()  # causal: no weight on a later token
        assert (w[1, :, 3:, :3] == 0).all()  # real tokens give padding no weight
    # the weights are the ones the layer used: zeroing alpha removes attention, and the output with it
    # recomputed from them equals the layer's attention output
    layer = next(m for m in model.model.layers if m.attention is not None)
    seen = []
    layer.attention.register_forward_hook(lambda mod, args, output: seen.append((args[0], output)))
    with torch.no_grad():
        model(ids, attention_mask=mask, output_attentions=True)
    z, (a, w) = seen[0]  # z (L, B, dp), a (L, B, dp), w (B, nh, L, S)
    L, B, dp = z.shape
    nh, hd = layer.attention.num_heads, layer.attention.head_dim
    v = layer.attention.kv_proj(z).view(L, B, 2, nh, hd)[:, :, 1].permute(1, 2, 0, 3)  # (B, nh, L, hd)
    torch.testing.assert_close((w @ v).permute(2, 0, 1, 3).reshape(L, B, dp), a, **TOL)
    # every head passes them on; sdpa computes none
    for cls in (SRULMForSequenceClassification, SRULMForQuestionAnswering):
        head = _model(cls, "eager")
        with torch.no_grad():
            assert len(head(ids, attention_mask=mask, output_attentions=True).attentions) == 2
    with torch.no_grad():
        assert not _model(SRULMForCausalLM, "sdpa")(ids, output_attentions=True).attentions
        assert model(ids).attentions is None  # not asked for


def test_decode_step_attention_weights_span_the_cache():
    model = _model(SRULMForCausalLM, "eager")
    ids = torch.randint(1, VOCAB, (2, 5))
    with torch.no_grad():
        out = model(ids[:, :4], use_cache=True)
        step = model(ids[:, 4:], cache=out.cache, output_attentions=True)
    assert all(w.shape == (2, 2, 1, 5) for w in step.attentions)


def test_supports_flags_are_what_works():
    assert SRULMForCausalLM._supports_sdpa and SRULMForCausalLM._supports_flex_attn
    assert not SRULMForCausalLM._supports_flash_attn  # the 2D padding-mask path flash needs is not written
    with pytest.raises(ValueError, match="Flash Attention"):
        SRULMForCausalLM._from_config(tiny_config(), attn_implementation="flash_attention_2")
    model = _model(SRULMForCausalLM, "sdpa")
    ids = torch.randint(1, VOCAB, (1, 5))
    with torch.no_grad():
        before = model(ids).logits
        model.set_attn_implementation("eager")  # switched on a built model: every layer follows
        assert all(m.attention.config._attn_implementation == "eager" for m in model.model.layers if m.attention)
        after = model(ids, output_attentions=True)
    assert len(after.attentions) == model.config.num_attention_layers
    torch.testing.assert_close(after.logits, before, **TOL)


def test_eager_under_bf16_autocast_follows_fp32():
    """The eager mask is built in the input's dtype (fp32 under autocast) and added to bf16 scores: it must
    still mask (no overflow to NaN) and agree with fp32 to bf16 accuracy, prefill and decode."""
    ids, mask = _left_padded(2, 8, [8, 5])
    fp32 = _model(SRULMForCausalLM, "sdpa")
    model = _model(SRULMForCausalLM, "eager")
    with torch.no_grad():
        want = fp32(ids, attention_mask=mask).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model(ids, attention_mask=mask).logits
            steps = _decode(model, ids, mask)
    real = mask.bool()
    assert torch.isfinite(got).all() and torch.isfinite(steps).all()
    torch.testing.assert_close(got.float()[real], want[real], atol=0.1, rtol=0.05)
    torch.testing.assert_close(steps.float()[real], want[real], atol=0.1, rtol=0.05)
