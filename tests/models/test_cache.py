"""SRULMCache: the per-forward contract (one advance, checked), transformers' layer kinds, keys/values that are
exactly the filled positions, the static (preallocated, compileable) cache, and the training-state API."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, randomize, tiny_config
from transformers.cache_utils import (
    LinearAttentionAndFullAttentionLayer,
    LinearAttentionAndStaticFullAttentionLayer,
    LinearAttentionCacheLayerMixin,
    LinearAttentionLayer,
)

from sru_lm import SRULMCache, SRULMForCausalLM
from sru_lm.models import modeling_sru_lm

TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def model() -> SRULMForCausalLM:
    torch.manual_seed(0)
    return randomize(SRULMForCausalLM(tiny_config(num_hidden_layers=4, attention_every_n_layers=2)))


def _ids(B=2, L=9, seed=0):
    return torch.randint(1, VOCAB, (B, L), generator=torch.Generator().manual_seed(seed))


# -- the contract -----------------------------------------------------------------------------------------
def test_only_advance_moves_the_position(model):
    cache = SRULMCache(model.config)
    with torch.no_grad():
        model(_ids(L=5), cache=cache)
    attn = next(layer for layer in cache.layers if layer.has_attention)
    k, v = torch.randn(2, 2, 3, 4), torch.randn(2, 2, 3, 4)
    keys, _ = attn.update(k, v)  # written at position 5, the position stays
    assert keys.shape[2] == 8 and cache.get_seq_length() == 5
    torch.testing.assert_close(keys[:, :, 5:], k)
    attn.update_state(attn.c.clone(), 3)  # the order of update and update_state does not matter
    assert cache.get_seq_length() == 5


def test_a_layer_written_twice_in_one_forward_is_an_error(model):
    cache = SRULMCache(model.config)
    with torch.no_grad():
        model(_ids(L=4), cache=cache)
    layer = cache.layers[0]
    layer.update_state(layer.c.clone(), 1)
    with pytest.raises(RuntimeError, match="update_state called twice"):
        layer.update_state(layer.c.clone(), 1)
    attn = next(layer for layer in cache.layers if layer.has_attention)
    attn.update(torch.randn(2, 2, 1, 4), torch.randn(2, 2, 1, 4))
    with pytest.raises(RuntimeError, match="updated twice"):
        attn.update(torch.randn(2, 2, 1, 4), torch.randn(2, 2, 1, 4))


def test_advance_checks_that_every_layer_stored_the_same_tokens(model):
    cache = SRULMCache(model.config)
    with torch.no_grad():
        model(_ids(L=4), cache=cache)
    with pytest.raises(RuntimeError, match="not stored"):  # no layer ran
        cache.advance(1)
    for layer in cache.layers:
        layer.update_state(layer.c.clone(), 2)
        if layer.has_attention:
            layer.update(torch.randn(2, 2, 1, 4), torch.randn(2, 2, 1, 4))  # 1 position, not 2
    with pytest.raises(RuntimeError, match="written for 1 positions"):
        cache.advance(2)
    assert cache.get_seq_length() == 4


def test_forward_advances_once_per_call(model):
    cache = SRULMCache(model.config)
    with torch.no_grad():
        model(_ids(L=4), cache=cache)
        model(_ids(L=3)[:, :3], cache=cache)
        model(_ids(L=1), cache=cache)
    assert [layer.get_seq_length() for layer in cache.layers] == [8] * len(cache.layers)


# -- layer kinds and keys/values --------------------------------------------------------------------------
def test_layer_kinds_follow_transformers_hybrid_caches(model):
    with torch.no_grad():
        cache = model(_ids(L=6), use_cache=True).cache
    for layer_type, layer, idx in zip(model.config.layer_types, cache.layers, range(99), strict=False):
        assert isinstance(layer, LinearAttentionCacheLayerMixin)
        assert cache.get_recurrent_state(idx) is layer.c and layer.c.shape == (2, model.config.hidden_size)
        assert cache.has_previous_state(idx)
        if layer_type == "hybrid":
            assert isinstance(layer, LinearAttentionAndFullAttentionLayer)
        else:
            assert isinstance(layer, LinearAttentionLayer) and not hasattr(layer, "keys")
            assert not isinstance(layer, LinearAttentionAndFullAttentionLayer)
    assert cache.get_seq_length() == 6 and cache.batch_size == 2
    assert not any(cache.is_linear)  # every layer counts tokens: generate slices a continued prompt


@pytest.mark.parametrize("max_cache_len", [None, 32])
def test_keys_and_values_are_exactly_the_filled_positions(model, max_cache_len):
    ids = _ids(L=11)
    cache = SRULMCache(model.config, max_cache_len=max_cache_len)
    with torch.no_grad():
        model(ids[:, :6], cache=cache)
        for t in range(6, 11):
            model(ids[:, t : t + 1], cache=cache)
        fresh = model(ids, use_cache=True).cache
    for got, want in zip(cache.layers, fresh.layers, strict=True):
        if got.has_attention:
            assert got.keys.shape == want.keys.shape == (2, 2, 11, 4)
            torch.testing.assert_close(got.keys, want.keys, **TOL)
            torch.testing.assert_close(got.values, want.values, **TOL)
        torch.testing.assert_close(got.c, want.c, **TOL)


def test_generate_returns_a_cache_whose_keys_match_a_fresh_prefill(model):
    ids = _ids(B=1, L=5)
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = 0, None
    out = model.generate(ids, max_new_tokens=6, do_sample=False, return_dict_in_generate=True)
    with torch.no_grad():
        fresh = model(out.sequences[:, :-1], use_cache=True).cache
    for got, want in zip(out.cache.layers, fresh.layers, strict=True):
        if got.has_attention:
            assert got.keys.shape == want.keys.shape
            torch.testing.assert_close(got.keys, want.keys, **TOL)


# -- the static cache -------------------------------------------------------------------------------------
def test_static_cache_equals_dynamic_and_never_moves_its_buffers(model):
    ids = _ids(L=12)
    cache = SRULMCache(model.config, max_cache_len=16)
    with torch.no_grad():
        full = model(ids).logits
        steps = [model(ids[:, :4], cache=cache).logits]
        ptrs = [(layer.c.data_ptr(), layer.has_attention and layer._k.data_ptr()) for layer in cache.layers]
        pos = cache.position_on("cpu").data_ptr()
        for t in range(4, 12):
            steps.append(model(ids[:, t : t + 1], cache=cache).logits)
            assert [(layer.c.data_ptr(), layer.has_attention and layer._k.data_ptr()) for layer in cache.layers] == ptrs
            assert cache.position_on("cpu").data_ptr() == pos
    torch.testing.assert_close(torch.cat(steps, 1), full, **TOL)
    assert cache.is_compileable and cache.get_seq_length() == 12 and cache.get_max_length() == 16
    attn = [layer for layer in cache.layers if layer.has_attention]
    assert attn and all(isinstance(layer, LinearAttentionAndStaticFullAttentionLayer) for layer in attn)


@pytest.mark.parametrize("mode", ["no_grad", "autograd", "recording"])
def test_static_decode_writes_c_in_place_unless_autograd_or_recording_needs_a_new_state(model, monkeypatch, mode):
    """Without autograd a static cache's decode step is the in-place op on the cache's own c; with autograd (the
    op has no backward) or while recording (the state before the step is kept for crop) it is sru_step, copied
    in by update_state. Either way the buffer keeps its address and the logits are the dynamic cache's."""
    calls = []
    for name in ("sru_step", "sru_step_"):
        real = getattr(modeling_sru_lm, name)
        monkeypatch.setattr(modeling_sru_lm, name, lambda *a, _real=real, _name=name, **k: calls.append(_name)
                            or _real(*a, **k))
    ids = _ids(L=7)
    static, dynamic = SRULMCache(model.config, max_cache_len=8), SRULMCache(model.config)
    with torch.no_grad():
        for cache in (static, dynamic):
            model(ids[:, :6], cache=cache)
    if mode == "recording":
        static.activate_past_recording()
    ptrs = [layer.c.data_ptr() for layer in static.layers]
    calls.clear()
    with torch.set_grad_enabled(mode == "autograd"):
        got = model(ids[:, 6:], cache=static).logits
    assert calls == ["sru_step_" if mode == "no_grad" else "sru_step"] * len(static.layers)
    assert [layer.c.data_ptr() for layer in static.layers] == ptrs
    with torch.no_grad():
        want = model(ids[:, 6:], cache=dynamic).logits
    torch.testing.assert_close(got, want, **TOL)
    for got_c, want_c in zip(static.sru_states(), dynamic.sru_states(), strict=True):
        torch.testing.assert_close(got_c, want_c, **TOL)


def test_static_cache_masks_unfilled_positions(model):
    """Garbage in the unfilled part of the buffers must not change anything: it is masked, not trusted."""
    ids = _ids(L=8)
    clean = SRULMCache(model.config, max_cache_len=24)
    dirty = SRULMCache(model.config, max_cache_len=24)
    with torch.no_grad():
        a = model(ids[:, :5], cache=clean).logits
        b = model(ids[:, :5], cache=dirty).logits
        for layer in dirty.layers:
            if layer.has_attention:
                layer._k[:, :, 5:] = 1e4
                layer._v[:, :, 5:] = -1e4
        a = torch.cat([a, model(ids[:, 5:], cache=clean).logits], 1)
        b = torch.cat([b, model(ids[:, 5:], cache=dirty).logits], 1)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_static_cache_with_left_padding_equals_dynamic(model):
    ids = _ids(L=9)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    static, dynamic = SRULMCache(model.config, max_cache_len=12), SRULMCache(model.config)
    with torch.no_grad():
        outs = []
        for cache in (static, dynamic):
            logits = [model(ids[:, :6], attention_mask=mask[:, :6], cache=cache).logits]
            for t in range(6, 9):
                logits.append(model(ids[:, t : t + 1], attention_mask=mask[:, : t + 1], cache=cache).logits)
            outs.append(torch.cat(logits, 1))
    torch.testing.assert_close(outs[0], outs[1], **TOL)


def test_static_cache_refuses_to_overflow(model):
    cache = SRULMCache(model.config, max_cache_len=4)
    with torch.no_grad(), pytest.raises(ValueError, match="max_cache_len=4"):
        model(_ids(L=5), attention_mask=torch.ones(2, 5, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="max_cache_len"):
        SRULMCache(model.config, max_cache_len=0)


def test_static_reorder_is_in_place(model):
    cache = SRULMCache(model.config, max_cache_len=8)
    with torch.no_grad():
        model(_ids(B=3, L=4), cache=cache)
    attn = next(layer for layer in cache.layers if layer.has_attention)
    c, k = attn.c.clone(), attn.keys.clone()
    ptrs = attn.c.data_ptr(), attn._k.data_ptr()
    cache.reorder_cache(torch.tensor([2, 2, 0]))
    torch.testing.assert_close(attn.c, c[[2, 2, 0]])
    torch.testing.assert_close(attn.keys, k[[2, 2, 0]])
    assert (attn.c.data_ptr(), attn._k.data_ptr()) == ptrs


# -- the training-state API -------------------------------------------------------------------------------
def test_from_states_continues_and_never_writes_the_given_states(model):
    ids = _ids(L=8)
    with torch.no_grad():
        first = model(ids[:, :5], use_cache=True).cache
        states = tuple(c.clone() for c in first.sru_states())
        kept = tuple(c.clone() for c in states)
        cache = SRULMCache.from_states(model.config, states)
        assert cache.get_seq_length() == 0
        model(ids[:, 5:], cache=cache)
    for given, before in zip(states, kept, strict=True):
        torch.testing.assert_close(given, before, rtol=0, atol=0)
    new = cache.sru_states()
    assert all(n is not g for n, g in zip(new, states, strict=True)) and cache.get_seq_length() == 3
    with pytest.raises(ValueError, match="one SRU state per layer"):
        SRULMCache.from_states(model.config, states[:1])


# -- generate's cache_implementation ------------------------------------------------------------------------
def test_cache_implementation_static_builds_the_static_cache(model, caplog):
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = 0, None
    ids = _ids(B=1, L=5)
    with caplog.at_level("WARNING"):
        out = model.generate(ids, max_new_tokens=4, do_sample=False, cache_implementation="static",
                             return_dict_in_generate=True)
    assert "does not support" not in caplog.text
    assert out.cache.is_static and out.cache.max_cache_len == 5 + 4 - 1
    plain = model.generate(ids, max_new_tokens=4, do_sample=False)
    torch.testing.assert_close(out.sequences, plain, rtol=0, atol=0)


@pytest.mark.parametrize("implementation", ["offloaded", "quantized", "offloaded_static"])
def test_unsupported_cache_implementation_says_what_is_supported(model, implementation):
    with pytest.raises(ValueError, match="'dynamic'.*'static'"):
        model.generate(_ids(B=1, L=3), max_new_tokens=2, cache_implementation=implementation)


# -- rollback -----------------------------------------------------------------------------------------------
def _forward_chunks(model, cache, ids, chunks):
    out, start = [], 0
    with torch.no_grad():
        for n in chunks:
            out.append(model(ids[:, start : start + n], cache=cache).logits)
            start += n
    return torch.cat(out, 1)


@pytest.mark.parametrize("max_cache_len", [None, 24])
@pytest.mark.parametrize("chunks,keep", [((8,), 5), ((8,), 0), ((5, 3), 5), ((4, 1, 1, 1, 1), 5), ((3, 4, 1), 3)])
def test_crop_then_forward_equals_forward_of_the_kept_tokens(model, max_cache_len, chunks, keep):
    """crop back to `keep` tokens (within one forward, across several, to the start), then feed other tokens:
    the same logits, keys/values and SRU states as a cache that only ever saw the kept tokens."""
    ids, other = _ids(L=sum(chunks)), _ids(L=3, seed=1)
    cropped = SRULMCache(model.config, max_cache_len=max_cache_len)
    cropped.activate_past_recording()
    assert cropped.is_croppable and not cropped.is_compileable
    _forward_chunks(model, cropped, ids, chunks)
    cropped.crop(keep - sum(chunks))
    assert cropped.get_seq_length() == keep
    fresh = SRULMCache(model.config, max_cache_len=max_cache_len)
    with torch.no_grad():
        if keep:
            model(ids[:, :keep], cache=fresh)
        a, b = model(other, cache=cropped).logits, model(other, cache=fresh).logits
    torch.testing.assert_close(a, b, **TOL)
    for got, want in zip(cropped.layers, fresh.layers, strict=True):
        torch.testing.assert_close(got.c, want.c, **TOL)
        if got.has_attention:
            torch.testing.assert_close(got.keys, want.keys, **TOL)


def test_crop_reaches_back_only_to_the_previous_crop(model):
    cache = SRULMCache(model.config)
    cache.activate_past_recording()
    _forward_chunks(model, cache, _ids(L=6), (4, 2))
    cache.crop(-1)
    _forward_chunks(model, cache, _ids(L=1), (1,))
    with pytest.raises(ValueError, match="only the last 1 positions"):
        cache.crop(-2)
    cache.crop(0)  # forgets the recorded states
    with pytest.raises(ValueError, match="only the last 0 positions"):
        cache.crop(-1)
    with pytest.raises(ValueError, match="an int <= 0"):
        cache.crop(2)
    assert cache.get_seq_length() == 6


def test_a_cache_that_does_not_record_cannot_be_rolled_back(model):
    cache = SRULMCache(model.config)
    _forward_chunks(model, cache, _ids(L=4), (4,))
    assert not cache.is_croppable
    cache.crop(0)
    with pytest.raises(ValueError, match="activate_past_recording"):
        cache.crop(-1)
    assert cache.get_seq_length() == 4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("padded", [False, True])
def test_recorded_states_are_the_states_after_each_position(model, dtype, padded):
    """What a recording forward keeps for crop: the state after every position, as decode steps by the spec
    compute them, with padded positions keeping the last real state (and the initial one before any)."""
    from sru_lm.models.sru_backend import sru_recurrence, sru_recurrence_states, sru_step_ref
    from sru_lm.ops import cpu

    layer = model.model.layers[1]
    L, B, d = 7, 3, model.config.hidden_size
    g = torch.Generator().manual_seed(0)
    U = torch.randn(L, B, 3 * d, generator=g).to(dtype)
    x = torch.randn(L, B, d, generator=g).to(dtype)
    c0 = torch.randn(B, d, generator=g)
    mask_pad = None
    if padded:
        mask_pad = torch.zeros(L, B, dtype=torch.bool)
        mask_pad[:2, 0] = True  # left padding
        mask_pad[3, 1] = True  # a hole
        mask_pad[5:, 2] = True  # right padding
    with torch.no_grad():
        h, c_last = sru_recurrence(U, x, layer.weight_c, layer.bias, c0, mask_pad, None, False, layer.scale_x)
        got = layer._state_after_each_position(U, x, mask_pad, None, c0, c_last)
        # the same states from the recurrence's own pass, where its backend writes them (the C++ CPU kernel)
        h1, c1, one_pass = sru_recurrence_states(U, x, layer.weight_c, layer.bias, c0, mask_pad, None,
                                                 layer.scale_x)
        c, want = c0, []
        for t in range(L):
            _, c = sru_step_ref(U[t], x[t], layer.weight_c, layer.bias, c, None if mask_pad is None else mask_pad[t],
                                None, layer.scale_x)
            want.append(c)
    assert got.dtype == torch.float32 and got.shape == (L, B, d)
    torch.testing.assert_close(got, torch.stack(want), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[-1], c_last, rtol=0, atol=0)
    if padded:
        torch.testing.assert_close(got[1, 0], c0[0], rtol=0, atol=0)
        torch.testing.assert_close(got[3, 1], got[2, 1], rtol=0, atol=0)
    torch.testing.assert_close((h1, c1), (h, c_last), rtol=0, atol=0)
    if cpu.available():
        assert one_pass is not None and one_pass.dtype == torch.float32
        torch.testing.assert_close(one_pass, got, rtol=0, atol=0)  # bit for bit: the same kernel's c
