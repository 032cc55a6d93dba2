"""SRU++ model family: cached decoding equals the full forward, padding never reaches real tokens, heads,
bidirectional encoders, gradient checkpointing and input errors."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, randomize, tiny_config

from sru_lm import (
    SRULMCache,
    SRULMForCausalLM,
    SRULMForQuestionAnswering,
    SRULMForSequenceClassification,
    SRULMModel,
)
from sru_lm.models.configuration_sru_lm import ATTENTION_LAYER

TOL = dict(atol=2e-5, rtol=1e-4)

LAYOUTS = {
    "mixed": dict(attention_every_n_layers=2),
    "all_attention": dict(attention_every_n_layers=1),
    "no_attention": dict(attention_every_n_layers=0),
    "rotary": dict(attention_every_n_layers=2, position_embedding_type="rotary"),
    "pre_norm": dict(attention_every_n_layers=2, normalize_after=False, rescale=True),
}


def _causal_lm(**overrides) -> SRULMForCausalLM:
    torch.manual_seed(0)
    return randomize(SRULMForCausalLM(tiny_config(**overrides)))


def _left_padded(lengths: list[int], L: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (len(lengths), L), generator=g)
    mask = torch.zeros(len(lengths), L, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, L - n:] = 1
    return ids.masked_fill(mask == 0, 0), mask


@pytest.mark.parametrize("layout", LAYOUTS)
def test_full_forward_equals_prefill_plus_cached_steps(layout):
    model = _causal_lm(**LAYOUTS[layout])
    ids, mask = _left_padded([9, 6, 4], 9)
    with torch.no_grad():
        full = model(ids, attention_mask=mask, use_cache=False).logits  # (B, L, V)
        out = model(ids[:, :5], attention_mask=mask[:, :5], use_cache=True)
        cache, logits = out.cache, [out.logits]
        assert isinstance(cache, SRULMCache) and cache.get_seq_length() == 5
        out = model(ids[:, 5:7], attention_mask=mask[:, :7], cache=cache)  # a 2-token chunk
        logits.append(out.logits)
        for t in range(7, 9):  # then one token at a time (the sru_step path)
            out = model(ids[:, t : t + 1], attention_mask=mask[:, : t + 1], cache=cache)
            logits.append(out.logits)
    assert out.cache is cache and cache.get_seq_length() == 9
    real = mask.bool()
    torch.testing.assert_close(torch.cat(logits, 1)[real], full[real], **TOL)


@pytest.mark.parametrize("layout", ["mixed", "rotary"])
def test_left_padding_does_not_touch_real_tokens(layout):
    model = _causal_lm(**LAYOUTS[layout])
    ids, mask = _left_padded([7, 3], 7)
    with torch.no_grad():
        batch = model(ids, attention_mask=mask).logits
        for i, n in enumerate([7, 3]):
            alone = model(ids[i : i + 1, 7 - n :]).logits[0]
            torch.testing.assert_close(batch[i, 7 - n :], alone, **TOL)
    # garbage in the padded positions changes nothing either
    noisy = ids.clone()
    noisy[1, :4] = torch.randint(1, VOCAB, (4,))
    with torch.no_grad():
        torch.testing.assert_close(model(noisy, attention_mask=mask).logits[1, 4:], batch[1, 4:], **TOL)


def test_attention_is_live_after_randomize():
    """Guard for the tests above: with alpha != 0, attention changes the output (the KV path is exercised)."""
    model = _causal_lm()
    ids = torch.randint(1, VOCAB, (2, 6))
    with torch.no_grad():
        base = model(ids).logits
        for layer in model.model.layers:
            if layer.alpha is not None:
                layer.alpha.zero_()
        assert (model(ids).logits - base).abs().max() > 1e-3


def test_cache_holds_constant_size_sru_state_and_kv_for_attention_layers():
    cfg = tiny_config(num_hidden_layers=4, attention_every_n_layers=2)
    model = randomize(SRULMForCausalLM(cfg))
    with torch.no_grad():
        cache = model(torch.randint(1, VOCAB, (2, 10)), use_cache=True).cache
    for layer_type, layer in zip(cfg.layer_types, cache.layers, strict=True):
        assert layer.c.shape == (2, cfg.hidden_size) and layer.c.dtype == torch.float32
        if layer_type == ATTENTION_LAYER:
            assert layer.keys.shape[:2] == (2, cfg.num_attention_heads) and layer.keys.shape[2] == 10
            assert layer.keys.shape[3] == cfg.projection_size // cfg.num_attention_heads
        else:  # an SRU layer is transformers' linear-attention kind: a state, no keys/values attribute
            assert not hasattr(layer, "keys") and layer.recurrent_states[0] is layer.c
    c_before = cache.layers[0].c
    with torch.no_grad():
        model(torch.randint(1, VOCAB, (2, 1)), cache=cache)
    assert cache.layers[0].c is c_before  # updated in place
    assert cache.nbytes() > 0


def test_cache_reorder_select_and_repeat():
    model = _causal_lm()
    with torch.no_grad():
        cache = model(torch.randint(1, VOCAB, (3, 5)), use_cache=True).cache
    c = cache.layers[0].c.clone()
    k = cache.layers[0].keys[:, :, :5].clone()
    cache.reorder_cache(torch.tensor([2, 2, 0]))
    torch.testing.assert_close(cache.layers[0].c, c[[2, 2, 0]])
    torch.testing.assert_close(cache.layers[0].keys[:, :, :5], k[[2, 2, 0]])
    cache.batch_repeat_interleave(2)
    assert cache.layers[0].c.shape[0] == 6 and cache.layers[2].keys.shape[0] == 6
    cache.batch_select_indices(torch.tensor([0, 5]))
    torch.testing.assert_close(cache.layers[0].c, c[[2, 0]])
    cache.crop(0)
    with pytest.raises(ValueError, match="cannot remove tokens"):
        cache.crop(-1)
    assert not cache.is_croppable and not cache.is_compileable


def test_causal_lm_shapes_and_loss():
    model = _causal_lm()
    ids = torch.randint(1, VOCAB, (2, 8))
    out = model(ids, labels=ids, output_hidden_states=True)
    assert out.logits.shape == (2, 8, VOCAB)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    assert all(h.shape == (2, 8, 24) for h in out.hidden_states)
    manual = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, manual)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied
    assert model(ids, logits_to_keep=1).logits.shape == (2, 1, VOCAB)
    loss, logits = model(ids, labels=ids, return_dict=False)[:2]
    torch.testing.assert_close(loss, out.loss)


def test_autocast_bf16_training_step_and_cached_decoding_follow_fp32():
    """Mixed precision (the trainer's default on a GPU): the SRU highway input is fp32 while U comes out of
    a bf16 matmul; the model must run, and agree with fp32 to bf16 accuracy, prefill and decode alike."""
    model = _causal_lm()
    ids = torch.randint(1, VOCAB, (2, 10))
    ref = model(ids, labels=ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, labels=ids)
        prefill = model(ids[:, :-1], use_cache=True)
        step = model(ids[:, -1:], past_key_values=prefill.past_key_values, use_cache=True)
    torch.testing.assert_close(out.logits.float(), ref.logits, atol=0.1, rtol=0.05)
    torch.testing.assert_close(step.logits[:, -1].float(), ref.logits[:, -1], atol=0.1, rtol=0.05)
    assert abs(out.loss.item() - ref.loss.item()) < 0.02
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_untied_head():
    model = SRULMForCausalLM(tiny_config(tie_word_embeddings=False))
    assert model.lm_head.weight is not model.model.embed_tokens.weight


@pytest.mark.parametrize("bidirectional", [False, True])
def test_sequence_classification(bidirectional):
    torch.manual_seed(0)
    cfg = tiny_config(bidirectional=bidirectional, num_labels=3)
    model = randomize(SRULMForSequenceClassification(cfg))
    ids, mask = _left_padded([6, 3], 6)
    labels = torch.tensor([2, 0])
    out = model(ids, attention_mask=mask, labels=labels)
    assert out.logits.shape == (2, 3) and out.loss.ndim == 0
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))
    with torch.no_grad():  # padding does not change a row's prediction
        alone = model(ids[1:, 3:]).logits
    torch.testing.assert_close(out.logits[1:], alone, **TOL)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_question_answering(bidirectional):
    torch.manual_seed(0)
    model = randomize(SRULMForQuestionAnswering(tiny_config(bidirectional=bidirectional)))
    ids, mask = _left_padded([7, 5], 7)
    out = model(ids, attention_mask=mask, start_positions=torch.tensor([2, 4]), end_positions=torch.tensor([3, 6]))
    assert out.start_logits.shape == (2, 7) and out.end_logits.shape == (2, 7)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert (out.start_logits[1, :2] < -1e30).all()  # padded positions cannot be answers
    out.loss.backward()


def test_bidirectional_encoder_reads_the_future():
    torch.manual_seed(0)
    model = randomize(SRULMModel(tiny_config(bidirectional=True)))
    assert model.layers[0].weight_c.shape == (2, 2, 12)  # two directions of hidden_size / 2
    ids = torch.randint(1, VOCAB, (1, 6))
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] % (VOCAB - 1)) + 1
    with torch.no_grad():
        a, b = model(ids).last_hidden_state, model(changed).last_hidden_state
    assert (a[0, 0] - b[0, 0]).abs().max() > 1e-4  # the first token sees the last one
    assert model(ids).cache is None
    with pytest.raises(ValueError, match="takes no cache"):
        model(ids, cache=SRULMCache(model.config))
    with pytest.raises(ValueError, match="bidirectional=False"):
        SRULMForCausalLM(tiny_config(bidirectional=True))


def test_causal_model_does_not_read_the_future():
    model = randomize(SRULMModel(tiny_config()))
    ids = torch.randint(1, VOCAB, (1, 6))
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] % (VOCAB - 1)) + 1
    with torch.no_grad():
        a, b = model(ids).last_hidden_state, model(changed).last_hidden_state
    torch.testing.assert_close(a[0, :-1], b[0, :-1])


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = randomize(SRULMForCausalLM(tiny_config(hidden_dropout=0.1, attention_dropout=0.1)))
    ids = torch.randint(1, VOCAB, (2, 9))

    def grads():
        model.zero_grad()
        torch.manual_seed(123)  # the same dropout masks in both runs (checkpointing replays the RNG)
        loss = model(ids, labels=ids).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    calls = []
    model.model.layers[1].in_proj.register_forward_hook(lambda *_: calls.append(1))
    model.train()
    loss_ref, ref = grads()
    assert len(calls) == 1
    model.activation_checkpointing_enable()
    loss_ckpt, ckpt = grads()
    assert len(calls) == 3  # forward, then the recompute in backward: checkpointing really ran
    torch.testing.assert_close(loss_ckpt, loss_ref)
    for name in ref:
        torch.testing.assert_close(ckpt[name], ref[name], msg=name)


def test_wrong_attention_mask_and_inputs_raise_clear_errors():
    model = _causal_lm()
    ids = torch.randint(1, VOCAB, (2, 5))
    with pytest.raises(ValueError, match=r"attention_mask must have shape .*\(2, 0 \+ 5\)"):
        model(ids, attention_mask=torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        model(ids, attention_mask=torch.ones(2, 1, 5, 5))
    with torch.no_grad():
        cache = model(ids, use_cache=True).cache
    with pytest.raises(ValueError, match=r"\(2, 5 \+ 1\)"):  # a decoding step needs the mask of the past too
        model(ids[:, :1], attention_mask=torch.ones(2, 1, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="exactly one of input_ids"):
        model()
    with pytest.raises(TypeError, match="SRULMCache"):
        from transformers import DynamicCache

        model(ids, cache=DynamicCache())


def test_rotary_is_applied():
    rotary = _causal_lm(**LAYOUTS["rotary"])
    plain = SRULMForCausalLM(tiny_config(**LAYOUTS["mixed"])).eval()
    plain.load_state_dict(rotary.state_dict())
    ids = torch.randint(1, VOCAB, (1, 6))
    with torch.no_grad():
        assert (rotary(ids).logits - plain(ids).logits).abs().max() > 1e-4


def test_preallocated_cache_keeps_its_buffers():
    model = _causal_lm()
    ids = torch.randint(1, VOCAB, (2, 12))
    cache = SRULMCache(model.config, max_cache_len=16)
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, :4], cache=cache)
        keys = cache.layers[0].keys
        assert keys.shape[2] == 4  # the filled positions of a 16-position buffer
        steps = [out.logits] + [model(ids[:, t : t + 1], cache=cache).logits for t in range(4, 12)]
    assert cache.layers[0].keys.data_ptr() == keys.data_ptr()  # written in place, never reallocated
    assert cache.layers[0].keys.shape[2] == 12
    torch.testing.assert_close(torch.cat(steps, 1), full, **TOL)


@pytest.mark.parametrize(
    "cls", [SRULMModel, SRULMForCausalLM, SRULMForSequenceClassification, SRULMForQuestionAnswering]
)
def test_input_embeddings_accessors_and_resizing(cls):
    """transformers' own get/set_input_embeddings find ``embed_tokens`` (on the model or on ``.model``)."""
    model = cls(tiny_config())
    base = getattr(model, "model", model)
    assert model.get_input_embeddings() is base.embed_tokens
    new = torch.nn.Embedding(VOCAB, model.config.hidden_size)
    model.set_input_embeddings(new)
    assert base.embed_tokens is new
    model.resize_token_embeddings(VOCAB + 3)
    assert base.embed_tokens.weight.shape == (VOCAB + 3, model.config.hidden_size)
    if cls is SRULMForCausalLM:
        assert model.lm_head.weight is base.embed_tokens.weight  # still tied
    with torch.no_grad():
        model.eval()(torch.tensor([[VOCAB + 2, 1]]))
