"""generate(): cached decoding equals uncached, left-padded batches equal single prompts, beam search
reorders the SRU state and the keys/values, assisted and prompt-lookup decoding equal greedy decoding."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import VOCAB, left_pad, randomize, tiny_config

from sru_lm import SRULMCache, SRULMForCausalLM


@pytest.fixture(scope="module")
def model() -> SRULMForCausalLM:
    torch.manual_seed(0)
    m = randomize(SRULMForCausalLM(tiny_config(num_hidden_layers=4, attention_every_n_layers=2)))
    m.generation_config.pad_token_id = 0
    m.generation_config.eos_token_id = None
    return m


def _gen(model, ids, mask=None, **kw):
    kw.setdefault("max_new_tokens", 8)
    kw.setdefault("do_sample", False)
    return model.generate(ids, attention_mask=mask, **kw)


PROMPTS = [[5, 9, 13, 2, 7, 30], [41, 3], [17, 18, 19, 20]]


def test_greedy_with_cache_equals_without(model):
    ids = torch.tensor([PROMPTS[0]])
    with_cache = _gen(model, ids, max_new_tokens=12)
    assert with_cache.shape == (1, 6 + 12)
    torch.testing.assert_close(with_cache, _gen(model, ids, max_new_tokens=12, use_cache=False), rtol=0, atol=0)


def test_generate_returns_the_sru_cache(model):
    out = _gen(model, torch.tensor([PROMPTS[0]]), return_dict_in_generate=True)
    assert isinstance(out.cache, SRULMCache)
    assert out.cache.get_seq_length() == 6 + 8 - 1  # the last token is sampled, not fed


def test_left_padded_batch_equals_each_prompt_alone(model):
    ids, mask = left_pad(PROMPTS)
    batch = _gen(model, ids, mask)
    for i, p in enumerate(PROMPTS):
        alone = _gen(model, torch.tensor([p]))
        torch.testing.assert_close(batch[i, ids.shape[1]:], alone[0, len(p):], rtol=0, atol=0)
    torch.testing.assert_close(batch, _gen(model, ids, mask, use_cache=False), rtol=0, atol=0)


def test_sampling_with_cache_equals_without(model):
    ids, mask = left_pad(PROMPTS)
    torch.manual_seed(7)
    a = _gen(model, ids, mask, do_sample=True, top_k=20, num_return_sequences=2)
    torch.manual_seed(7)
    b = _gen(model, ids, mask, do_sample=True, top_k=20, num_return_sequences=2, use_cache=False)
    assert a.shape == (6, ids.shape[1] + 8)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_beam_search_with_one_beam_is_greedy(model):
    ids = torch.tensor([PROMPTS[2]])
    torch.testing.assert_close(_gen(model, ids, num_beams=1), _gen(model, ids), rtol=0, atol=0)


def test_beam_search_reorders_the_cache(model, monkeypatch):
    calls = []
    reorder = SRULMCache.reorder_cache

    def spy(self, beam_idx):
        calls.append(beam_idx.clone())
        return reorder(self, beam_idx)

    monkeypatch.setattr(SRULMCache, "reorder_cache", spy)
    ids, mask = left_pad(PROMPTS)
    cached = _gen(model, ids, mask, num_beams=3, num_return_sequences=3, max_new_tokens=10)
    assert calls and any(not torch.equal(c, torch.arange(len(c))) for c in calls)  # beams really moved
    uncached = _gen(model, ids, mask, num_beams=3, num_return_sequences=3, max_new_tokens=10, use_cache=False)
    torch.testing.assert_close(cached, uncached, rtol=0, atol=0)
    assert cached.shape == (9, ids.shape[1] + 10)


def test_continuing_from_a_returned_cache(model):
    ids = torch.tensor([PROMPTS[0]])
    first = _gen(model, ids, max_new_tokens=4, return_dict_in_generate=True)
    more = _gen(model, first.sequences, max_new_tokens=4, cache=first.cache)
    torch.testing.assert_close(more, _gen(model, ids, max_new_tokens=8), rtol=0, atol=0)


def test_no_attention_layers_generate(model):
    m = randomize(SRULMForCausalLM(tiny_config(attention_every_n_layers=0)))
    m.generation_config.eos_token_id = None
    ids = torch.randint(1, VOCAB, (2, 5))
    torch.testing.assert_close(_gen(m, ids), _gen(m, ids, use_cache=False), rtol=0, atol=0)


def _assistant(seed: int, **overrides) -> SRULMForCausalLM:
    m = randomize(SRULMForCausalLM(tiny_config(**overrides)), seed=seed)
    m.generation_config.pad_token_id, m.generation_config.eos_token_id = 0, None
    return m


@pytest.mark.parametrize("num_assistant_tokens", [1, 3, 6])
def test_assisted_greedy_equals_greedy(model, num_assistant_tokens):
    """Drafts from a different, smaller SRU++ model (rejected), from a perturbed copy of the model (some
    accepted) and from the model itself (all accepted): the output is plain greedy decoding's every time, so
    both caches rolled back exactly (the draft's across several of its decode steps)."""
    ids = torch.tensor([PROMPTS[0]])
    plain = _gen(model, ids, max_new_tokens=12)
    perturbed = copy.deepcopy(model)  # agrees with the model on some drafted tokens, not all
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in perturbed.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g) * p.abs().mean())
    for assistant in (_assistant(3, num_hidden_layers=2, hidden_size=16), perturbed, model):
        config = assistant.generation_config
        config.num_assistant_tokens, config.num_assistant_tokens_schedule = num_assistant_tokens, "constant"
        config.assistant_confidence_threshold = 0.0  # always draft num_assistant_tokens
        assisted = _gen(model, ids, max_new_tokens=12, assistant_model=assistant)
        torch.testing.assert_close(assisted, plain, rtol=0, atol=0)


def test_assisted_greedy_with_every_draft_rejected(model):
    assistant = _assistant(4, num_hidden_layers=2)
    with torch.no_grad():
        assistant.lm_head.weight.zero_()  # it always drafts token 0, which the model never picks here
    assistant.generation_config.num_assistant_tokens_schedule = "constant"
    assistant.generation_config.assistant_confidence_threshold = 0.0
    ids = torch.tensor([PROMPTS[2]])
    plain = _gen(model, ids, max_new_tokens=10)
    assert (plain[0, ids.shape[1]:] != 0).all()
    torch.testing.assert_close(_gen(model, ids, max_new_tokens=10, assistant_model=assistant), plain, rtol=0, atol=0)


@pytest.mark.parametrize("cache_implementation", [None, "static"])
@pytest.mark.parametrize("prompt_lookup_num_tokens", [1, 3, 5])
def test_prompt_lookup_greedy_equals_greedy(model, prompt_lookup_num_tokens, cache_implementation):
    """Also over the static cache, which a last lookup draft running past max_length must not overflow."""
    ids = torch.tensor([[5, 9, 13, 2, 5, 9, 13, 2, 5, 9]])  # repeated n-grams: lookup drafts from the prompt
    for max_new_tokens in (3, 12):
        plain = _gen(model, ids, max_new_tokens=max_new_tokens)
        lookup = _gen(model, ids, max_new_tokens=max_new_tokens, prompt_lookup_num_tokens=prompt_lookup_num_tokens,
                      cache_implementation=cache_implementation)
        torch.testing.assert_close(lookup, plain, rtol=0, atol=0)
