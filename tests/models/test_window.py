"""Sliding-window attention (``SRULMConfig.attention_window``): the model equals a hand-written forward whose
attention is full attention masked to the window; cached decoding over the ring buffer equals the full forward
across the window edge (dynamic and static caches, chunks of any size, left padding, RoPE); the cache has a fixed
size; crop rolls the ring back exactly; assisted, prompt-lookup and compiled decoding give plain greedy's tokens;
save/load keeps the option."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from conftest import VOCAB, left_pad, randomize, tiny_config
from transformers import CompileConfig
from transformers.cache_utils import (
    LinearAttentionAndSlidingWindowAttentionLayer,
    LinearAttentionAndStaticSlidingWindowAttentionLayer,
)

from sru_lm import SRULMCache, SRULMConfig, SRULMForCausalLM
from sru_lm.models.modeling_sru_lm import apply_rotary, rotary_cos_sin
from sru_lm.models.sru_backend import sru_recurrence_ref

W = 4
TOL = dict(rtol=1e-5, atol=1e-5)


def _model(window=W, seed=0, **overrides) -> SRULMForCausalLM:
    torch.manual_seed(seed)
    kw = dict(num_hidden_layers=3, attention_every_n_layers=1, attention_window=window)
    kw.update(overrides)
    m = randomize(SRULMForCausalLM(tiny_config(**kw)), seed=seed)
    m.generation_config.pad_token_id, m.generation_config.eos_token_id = 0, None
    return m


@pytest.fixture(scope="module")
def model() -> SRULMForCausalLM:
    return _model()


def _ids(B=2, L=19, seed=0):
    return torch.randint(1, VOCAB, (B, L), generator=torch.Generator().manual_seed(seed))


def _reference_logits(model: SRULMForCausalLM, ids: torch.Tensor, window: int | None) -> torch.Tensor:
    """The model written out: attention scores computed in full, then masked to causal positions within
    ``window`` (None: causal only), softmax; the recurrence by its spec."""
    cfg = model.config
    nh, hd = cfg.num_attention_heads, cfg.projection_size // cfg.num_attention_heads
    B, L = ids.shape
    pos = torch.arange(L)
    allowed = pos[None, :] <= pos[:, None]  # (L query, L key)
    if window is not None:
        allowed &= pos[:, None] - pos[None, :] < window
    h = model.model.embed_tokens(ids)  # (B, L, d)
    for layer in model.model.layers:
        x = h.transpose(0, 1)  # (L, B, d)
        z = layer.in_proj(x)  # (L, B, dp)
        q = z.view(L, B, nh, hd).permute(1, 2, 0, 3)  # (B, nh, L, hd)
        k, v = layer.attention.kv_proj(z).view(L, B, 2, nh, hd).permute(2, 1, 3, 0, 4)
        if cfg.position_embedding_type == "rotary":
            cos, sin = rotary_cos_sin(pos[None].expand(B, L), hd, cfg.rope_theta, z.dtype)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        scores = (q @ k.transpose(-1, -2)) * hd**-0.5  # (B, nh, L, L)
        a = F.softmax(scores.masked_fill(~allowed, float("-inf")), -1) @ v  # (B, nh, L, hd)
        z = layer.norm(z + layer.alpha * a.permute(2, 0, 1, 3).reshape(L, B, -1))
        out, _ = sru_recurrence_ref(layer.out_proj(z), x, layer.weight_c, layer.bias, scale_x=layer.scale_x)
        h = out.transpose(0, 1)
    return model.lm_head(model.model.norm(h))


# -- the attention it computes ------------------------------------------------------------------------------
@pytest.mark.parametrize("implementation", ["sdpa", "eager", "flex_attention"])
@pytest.mark.parametrize("position", ["none", "rotary"])
def test_windowed_attention_equals_full_attention_masked_to_the_window(implementation, position):
    model = _model(position_embedding_type=position)
    model.config._attn_implementation = implementation
    ids = _ids()
    with torch.no_grad():
        got = model(ids).logits
        torch.testing.assert_close(got, _reference_logits(model, ids, W), **TOL)
        # and the window matters: full attention differs past the first W positions only
        full = _reference_logits(model, ids, None)
    torch.testing.assert_close(got[:, :W], full[:, :W], **TOL)
    assert (got[:, W:] - full[:, W:]).abs().max() > 1e-3


def test_a_window_as_long_as_the_sequence_is_full_attention():
    ids = _ids(L=7)
    windowed, full = _model(window=7), _model(window=None)
    with torch.no_grad():
        torch.testing.assert_close(windowed(ids).logits, full(ids).logits, **TOL)


def test_bidirectional_window_is_symmetric():
    """An encoder with a window: position q sees |q - k| < W; tokens further away than W in both directions
    cannot reach it through attention (a token W away on the right changes nothing in a one-layer model's
    attention output at q, one within the window does)."""
    torch.manual_seed(0)
    from sru_lm import SRULMModel

    model = randomize(SRULMModel(tiny_config(num_hidden_layers=1, attention_every_n_layers=1, attention_window=W,
                                             bidirectional=True)))
    model.layers[0].bias.data[:, 1] = 30.0  # reset gate r ~ 1: the output is the state c, no highway
    model.layers[0].weight_c.data.zero_()
    model.layers[0].bias.data[:, 0] = -30.0  # forget gate f ~ 0: c_t = U_x(t), no recurrence across time
    ids = _ids(B=1, L=12)
    q = 5
    with torch.no_grad():
        base = model(ids).last_hidden_state[0, q]
        for j, should_change in ((q + W, False), (q - W, False), (q + W - 1, True), (q - W + 1, True)):
            other = ids.clone()
            other[0, j] = (other[0, j] % (VOCAB - 1)) + 1
            changed = (model(other).last_hidden_state[0, q] - base).abs().max() > 1e-6
            assert bool(changed) == should_change, (j, should_change)


# -- cached decoding over the ring ----------------------------------------------------------------------------
@pytest.mark.parametrize("max_cache_len", [None, 32])
@pytest.mark.parametrize("chunks", [(1,) * 19, (5, 1, 1, 1, 1, 1, 1, 1, 7), (2, 9, 3, 1, 4), (19,)])
@pytest.mark.parametrize("position", ["none", "rotary"])
def test_cached_forwards_equal_the_full_forward_across_the_window_edge(max_cache_len, chunks, position):
    model = _model(position_embedding_type=position)
    ids = _ids(L=sum(chunks))
    cache = SRULMCache(model.config, max_cache_len=max_cache_len)
    out, start = [], 0
    with torch.no_grad():
        full = model(ids).logits
        for n in chunks:
            out.append(model(ids[:, start : start + n], cache=cache).logits)
            start += n
    torch.testing.assert_close(torch.cat(out, 1), full, **TOL)
    assert cache.get_seq_length() == sum(chunks)


@pytest.mark.parametrize("max_cache_len", [None, 40])
def test_left_padded_batch_decodes_as_each_prompt_alone(model, max_cache_len):
    prompts = [[5, 9, 13, 2, 7, 30, 11], [41, 3], [17, 18, 19, 20, 21]]
    ids, mask = left_pad(prompts)
    batch = model.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False,
                           cache_implementation="static" if max_cache_len else None)
    for i, p in enumerate(prompts):
        alone = model.generate(torch.tensor([p]), max_new_tokens=12, do_sample=False)
        torch.testing.assert_close(batch[i, -12:], alone[0, -12:], rtol=0, atol=0)


def test_cache_size_is_fixed_once_allocated(model):
    cache = SRULMCache(model.config)
    sizes = []
    with torch.no_grad():
        model(_ids(L=2), cache=cache)
        for t in range(6 * W):
            model(_ids(L=1, seed=t), cache=cache)
            sizes.append(cache.nbytes())
    assert len(set(sizes)) == 1
    layer = cache.layers[0]
    assert layer.is_sliding and isinstance(layer, LinearAttentionAndSlidingWindowAttentionLayer)
    assert cache.is_sliding == [True] * 3
    assert layer.keys.shape[2] == W  # the window's positions, oldest first
    static = SRULMCache(model.config, max_cache_len=64)
    assert isinstance(static.layers[0], LinearAttentionAndStaticSlidingWindowAttentionLayer)
    full = SRULMCache(_model(window=None).config)
    with torch.no_grad():
        model(_ids(L=6 * W), cache=SRULMCache(model.config))
        _model(window=None)(_ids(L=6 * W), cache=full)
    assert full.nbytes() > sizes[0]


def test_keys_are_the_last_window_positions_in_order(model):
    cache, full = SRULMCache(model.config), SRULMCache(_model(window=None).config)
    ids = _ids(L=11)
    with torch.no_grad():
        model(ids, cache=cache)
        model(ids, cache=full)  # the same weights' keys: attention does not feed the keys of its own layer 0
    torch.testing.assert_close(cache.layers[0].keys, full.layers[0].keys[:, :, -W:], rtol=0, atol=0)


# -- rollback ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("max_cache_len", [None, 40])
@pytest.mark.parametrize(
    "chunks,keep", [((3, 9), 5), ((6, 1, 1, 1, 1, 1), 7), ((2, 1), 2), ((7, 6), 8), ((4, 3, 5), 4)]
)
def test_crop_then_forward_equals_forward_of_the_kept_tokens(model, max_cache_len, chunks, keep):
    """Crop back across slots the ring has overwritten since (several wraps of a 4-slot ring)."""
    ids, other = _ids(L=sum(chunks)), _ids(L=6, seed=1)
    cropped = SRULMCache(model.config, max_cache_len=max_cache_len)
    with torch.no_grad():
        model(ids[:, : chunks[0]], cache=cropped)  # before recording starts
        cropped.activate_past_recording()
        start = chunks[0]
        for n in chunks[1:]:
            model(ids[:, start : start + n], cache=cropped)
            start += n
    keep = max(keep, chunks[0])
    cropped.crop(keep - sum(chunks))
    fresh = SRULMCache(model.config, max_cache_len=max_cache_len)
    with torch.no_grad():
        model(ids[:, :keep], cache=fresh)
        a, b = model(other, cache=cropped).logits, model(other, cache=fresh).logits
    torch.testing.assert_close(a, b, **TOL)
    for got, want in zip(cropped.layers, fresh.layers, strict=True):
        torch.testing.assert_close(got.keys, want.keys, **TOL)


@pytest.mark.parametrize("num_assistant_tokens", [1, 3, 7])
def test_assisted_greedy_equals_greedy(model, num_assistant_tokens):
    ids = _ids(B=1, L=6)
    plain = model.generate(ids, max_new_tokens=16, do_sample=False)
    for assistant in (_model(seed=3, num_hidden_layers=2), _model(window=2, seed=4), model):
        config = assistant.generation_config
        config.num_assistant_tokens, config.num_assistant_tokens_schedule = num_assistant_tokens, "constant"
        config.assistant_confidence_threshold = 0.0
        got = model.generate(ids, max_new_tokens=16, do_sample=False, assistant_model=assistant)
        torch.testing.assert_close(got, plain, rtol=0, atol=0)


@pytest.mark.parametrize("prompt_lookup_num_tokens", [2, 6])
def test_prompt_lookup_greedy_equals_greedy(model, prompt_lookup_num_tokens):
    ids = torch.tensor([[5, 9, 13, 2, 5, 9, 13, 2, 5, 9, 13]])
    plain = model.generate(ids, max_new_tokens=14, do_sample=False)
    got = model.generate(ids, max_new_tokens=14, do_sample=False, prompt_lookup_num_tokens=prompt_lookup_num_tokens)
    torch.testing.assert_close(got, plain, rtol=0, atol=0)


# -- compiled decoding, save/load, config ------------------------------------------------------------------
def test_compiled_decoding_over_the_ring_equals_eager(model):
    torch._dynamo.reset()
    compile_config = CompileConfig(backend="aot_eager", fullgraph=True)
    compile_config._compile_all_devices = True
    ids, mask = left_pad([[5, 9, 13, 2, 7], [41, 3, 8]])
    eager = model.generate(ids, attention_mask=mask, max_new_tokens=3 * W, do_sample=False)
    compiled = model.generate(ids, attention_mask=mask, max_new_tokens=3 * W, do_sample=False,
                              compile_config=compile_config)
    torch._dynamo.reset()
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)


def test_save_and_load_keep_the_window(tmp_path, model):
    model.save_pretrained(tmp_path)
    again = SRULMForCausalLM.from_pretrained(tmp_path).eval()
    assert again.config.attention_window == W
    ids = _ids(L=13)
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, model(ids).logits, rtol=0, atol=0)


@pytest.mark.parametrize("window", [0, -3, 2.5, True, "8"])
def test_bad_window_is_refused(window):
    with pytest.raises(ValueError, match="attention_window must be None"):
        SRULMConfig(vocab_size=VOCAB, hidden_size=8, num_hidden_layers=1, attention_window=window)
