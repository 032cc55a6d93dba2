"""The SRU++ draft generator (sru_lm/models/drafting.py): one draft forward per drafted token, the draft's cache
rolled back to exactly the accepted prefix, transformers' draft-length rules kept (confidence cut-off, end of
sequence, heuristic schedule), and transformers' own generators wherever this one does not apply."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import VOCAB, randomize, tiny_config
from transformers import GenerationConfig
from transformers.generation.candidate_generator import AssistedCandidateGenerator

from sru_lm import SRULMForCausalLM
from sru_lm.models.drafting import SRULMDraftCandidateGenerator, can_draft_directly

PROMPT = [5, 9, 13, 2, 7, 30, 11]


@pytest.fixture(scope="module")
def target() -> SRULMForCausalLM:
    m = randomize(SRULMForCausalLM(tiny_config(num_hidden_layers=4, attention_every_n_layers=2)), seed=1)
    m.generation_config.pad_token_id, m.generation_config.eos_token_id = 0, None
    return m


def _draft(seed: int = 2, k: int = 3, threshold: float = 0.0, schedule: str = "constant") -> SRULMForCausalLM:
    m = randomize(SRULMForCausalLM(tiny_config(num_hidden_layers=3, attention_every_n_layers=3, hidden_size=16)),
                  seed=seed)
    c = m.generation_config
    c.pad_token_id, c.eos_token_id = 0, None
    c.num_assistant_tokens, c.num_assistant_tokens_schedule, c.assistant_confidence_threshold = k, schedule, threshold
    return m


def _generator(draft, ids, eos_token_id=None, do_sample=False) -> SRULMDraftCandidateGenerator:
    config = GenerationConfig(max_length=64, do_sample=do_sample, eos_token_id=eos_token_id, pad_token_id=0)
    config._eos_token_tensor = None if eos_token_id is None else torch.tensor([eos_token_id])
    return SRULMDraftCandidateGenerator(ids, draft, config, {"attention_mask": torch.ones_like(ids)})


class _Counter:
    def __init__(self, model):
        self.calls, self.positions = 0, 0
        self.handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        self.calls += 1
        self.positions += kwargs["input_ids"].shape[1]


def test_one_draft_forward_per_drafted_token_and_greedy_output(target, monkeypatch):
    """The draft never runs generate(), and it runs exactly once per drafted token: every round feeds the
    tokens it has not seen in the same forward that drafts the round's first token."""
    draft = _draft(k=3)
    monkeypatch.setattr(draft, "generate", lambda *a, **k: pytest.fail("the draft ran generate()"))
    ids = torch.tensor([PROMPT])
    plain = target.generate(ids, max_new_tokens=20, do_sample=False)
    t, d = _Counter(target), _Counter(draft)
    try:
        out = target.generate(ids, max_new_tokens=20, do_sample=False, assistant_model=draft)
    finally:
        t.handle.remove(), d.handle.remove()
    torch.testing.assert_close(out, plain, rtol=0, atol=0)
    drafted = t.positions - ids.shape[1] - (t.calls - 1)  # each verification: the last token + its drafts
    assert t.calls > 1 and d.calls == drafted


@pytest.mark.parametrize("accepted", [0, 1, 3])
def test_the_draft_rolls_back_to_the_accepted_prefix(accepted):
    """After a verification that accepts ``accepted`` of 3 drafts and appends its own token, the next round's
    first draft scores are those of a fresh draft forward over the whole accepted sequence."""
    draft = _draft(k=3)
    ids = torch.tensor([PROMPT])
    gen = _generator(draft, ids)
    candidates, scores = gen.get_candidates(ids)
    assert candidates.shape == (1, len(PROMPT) + 3) and scores.shape == (1, 3, VOCAB)
    # only the 2 fed draft tokens were recorded (the state before them and after each), not the prompt
    assert all(len(layer._history) == 3 for layer in gen.cache.layers)
    own = (candidates[:, len(PROMPT) + accepted] + 1) % VOCAB if accepted < 3 else torch.tensor([4])
    sequence = torch.cat([candidates[:, :len(PROMPT) + accepted], own.view(1, 1)], dim=1)
    gen.update_candidate_strategy(sequence, torch.zeros(1, 4, VOCAB), accepted)
    assert gen.absorbed == len(PROMPT) + min(accepted, 2)
    _, scores = gen.get_candidates(sequence)
    with torch.no_grad():
        fresh = draft(sequence).logits[:, -1]
    torch.testing.assert_close(scores[:, 0], fresh, rtol=1e-5, atol=1e-5)


def test_scores_are_the_drafts_own_logits():
    """The candidate scores (for speculative sampling) are the draft's logits after each drafted prefix."""
    draft = _draft(k=4)
    ids = torch.tensor([PROMPT])
    candidates, scores = _generator(draft, ids).get_candidates(ids)
    with torch.no_grad():
        full = draft(candidates).logits[:, len(PROMPT) - 1:-1]
    torch.testing.assert_close(scores, full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(candidates[:, len(PROMPT):], scores.argmax(-1), rtol=0, atol=0)


def test_confidence_threshold_and_end_of_sequence_stop_the_draft():
    ids = torch.tensor([PROMPT])
    assert _generator(_draft(k=5, threshold=0.0), ids).get_candidates(ids)[0].shape[1] == len(PROMPT) + 5
    # no token of a random tiny model reaches probability 0.999: one draft per round
    assert _generator(_draft(k=5, threshold=0.999), ids).get_candidates(ids)[0].shape[1] == len(PROMPT) + 1
    draft = _draft(k=5)
    first = _generator(draft, ids).get_candidates(ids)[0][0, len(PROMPT)].item()
    stopped = _generator(draft, ids, eos_token_id=first).get_candidates(ids)[0]
    assert stopped.shape[1] == len(PROMPT) + 1 and stopped[0, -1].item() == first


def test_heuristic_schedule_grows_and_shrinks_the_draft():
    draft = _draft(k=2, schedule="heuristic")
    ids = torch.tensor([PROMPT])
    gen = _generator(draft, ids)
    candidates, _ = gen.get_candidates(ids)
    gen.update_candidate_strategy(torch.cat([candidates, torch.tensor([[4]])], 1), torch.zeros(1, 3, VOCAB), 2)
    assert gen.num_assistant_tokens == 4
    sequence = torch.cat([candidates, torch.tensor([[4]])], 1)
    candidates, _ = gen.get_candidates(sequence)
    assert candidates.shape[1] == sequence.shape[1] + 4
    gen.update_candidate_strategy(candidates[:, :sequence.shape[1] + 1], torch.zeros(1, 5, VOCAB), 0)
    assert gen.num_assistant_tokens == 3


def test_assisted_sampling_with_the_model_as_its_own_draft_accepts_everything(target):
    """Speculative sampling accepts a draft token with probability min(1, p/q): a draft equal to the target
    (same processed logits) is always accepted, so every verification takes k + 1 tokens."""
    draft = copy.deepcopy(target)
    c = draft.generation_config
    c.num_assistant_tokens, c.num_assistant_tokens_schedule, c.assistant_confidence_threshold = 3, "constant", 0.0
    ids = torch.tensor([PROMPT])
    t = _Counter(target)
    try:
        torch.manual_seed(0)
        out = target.generate(ids, max_new_tokens=16, min_new_tokens=16, do_sample=True, top_k=50,
                              temperature=0.8, assistant_model=draft)
    finally:
        t.handle.remove()
    assert out.shape == (1, len(PROMPT) + 16)
    assert t.calls == 4  # 16 tokens, 4 per verification


def test_other_cases_keep_transformers_generators(target):
    ids = torch.tensor([PROMPT])
    config = GenerationConfig(do_sample=False)
    draft = _draft()
    ones = {"attention_mask": torch.ones_like(ids)}
    assert can_draft_directly(config, draft, ones, ids)
    assert not can_draft_directly(config, None, ones, ids)
    assert not can_draft_directly(config, draft, {"attention_mask": torch.tensor([[0] + [1] * 6])}, ids)
    assert not can_draft_directly(config, draft, ones, ids, target_tokenizer=object(), assistant_tokenizer=object())
    assert not can_draft_directly(GenerationConfig(prompt_lookup_num_tokens=3), draft, ones, ids)
    made = target._get_candidate_generator(config, ids, ids, [], dict(ones), assistant_model=draft)
    assert type(made) is SRULMDraftCandidateGenerator
    draft.draft_directly = False
    made = target._get_candidate_generator(config, ids, ids, [], dict(ones), assistant_model=draft)
    assert type(made) is AssistedCandidateGenerator
    del draft.draft_directly
    padded = {"attention_mask": torch.tensor([[0] + [1] * 6])}
    made = target._get_candidate_generator(config, ids, ids, [], padded, assistant_model=draft)
    assert type(made) is AssistedCandidateGenerator


# ---- the assisted loop (assisted_decode) --------------------------------------------------------------------


def _perturbed(target, seed: int = 5, scale: float = 0.05, k: int = 3):
    """A copy of the target that agrees with it on some drafted tokens, not all."""
    draft = copy.deepcopy(target)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g) * p.abs().mean())
    c = draft.generation_config
    c.num_assistant_tokens, c.num_assistant_tokens_schedule, c.assistant_confidence_threshold = k, "constant", 0.0
    return draft


def _both_loops(target, draft, ids, monkeypatch, **kw):
    """generate() through assisted_decode and through transformers' own loop (same draft generator)."""
    ours = target.generate(ids, assistant_model=draft, **kw)
    with monkeypatch.context() as m:
        m.setattr("sru_lm.models.modeling_sru_lm.verifies_directly", lambda *a, **k: False)
        theirs = target.generate(ids, assistant_model=draft, **kw)
    return ours, theirs


def test_the_sru_lm_loop_runs_for_an_sru_lm_draft_and_only_then(target, monkeypatch):
    """An sru_lm draft decodes through assisted_decode (transformers' loop would fail here); with
    ``draft_directly = False`` transformers' generator and loop run, and the tokens are the same."""
    from transformers.generation.utils import GenerationMixin

    draft, ids = _perturbed(target), torch.tensor([PROMPT])
    plain = target.generate(ids, max_new_tokens=16, do_sample=False)
    theirs = GenerationMixin._assisted_decoding
    with monkeypatch.context() as m:
        m.setattr(GenerationMixin, "_assisted_decoding", lambda *a, **k: pytest.fail("transformers' loop ran"))
        ours = target.generate(ids, max_new_tokens=16, do_sample=False, assistant_model=draft)
    torch.testing.assert_close(ours, plain, rtol=0, atol=0)
    calls = []
    with monkeypatch.context() as m:
        m.setattr(GenerationMixin, "_assisted_decoding", lambda *a, **k: calls.append(1) or theirs(*a, **k))
        draft.draft_directly = False
        try:
            generic = target.generate(ids, max_new_tokens=16, do_sample=False, assistant_model=draft)
        finally:
            del draft.draft_directly
    assert calls == [1]
    torch.testing.assert_close(generic, plain, rtol=0, atol=0)


@pytest.mark.parametrize("k", [1, 2, 5])
def test_scores_logits_and_processors_match_transformers_loop(target, monkeypatch, k):
    """return_dict_in_generate with scores and raw logits, under min_new_tokens and a repetition penalty (logits
    processors applied at every verified position): the same sequences, scores and logits as transformers'
    loop, one entry per new token."""
    draft, ids = _perturbed(target, k=k), torch.tensor([PROMPT])
    kw = dict(max_new_tokens=14, min_new_tokens=14, repetition_penalty=1.3, do_sample=False,
              return_dict_in_generate=True, output_scores=True, output_logits=True)
    ours, theirs = _both_loops(target, draft, ids, monkeypatch, **kw)
    plain = target.generate(ids, **kw)
    torch.testing.assert_close(ours.sequences, plain.sequences, rtol=0, atol=0)
    torch.testing.assert_close(ours.sequences, theirs.sequences, rtol=0, atol=0)
    assert len(ours.scores) == len(ours.logits) == len(theirs.scores) == 14
    for name in ("scores", "logits"):
        for a, b, c in zip(getattr(ours, name), getattr(theirs, name), getattr(plain, name), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-5)
    assert ours.cache is not None and ours.cache.get_seq_length() == ours.sequences.shape[1] - 1


def test_end_of_sequence_and_max_length_cut_the_accepted_drafts(target):
    """An end-of-sequence token inside an accepted draft ends the output there (plain greedy stops at the same
    token), and a draft running past max_new_tokens is cut: the output is greedy's either way."""
    ids = torch.tensor([PROMPT])
    free = target.generate(ids, max_new_tokens=20, do_sample=False)[0, ids.shape[1]:].tolist()
    eos = free[6]  # a token greedy decoding reaches after a few steps
    draft = copy.deepcopy(target)  # every draft is accepted, so the end comes inside a draft
    c = draft.generation_config
    c.num_assistant_tokens, c.num_assistant_tokens_schedule, c.assistant_confidence_threshold = 4, "constant", 0.0
    for max_new in (20, 7, 3):
        plain = target.generate(ids, max_new_tokens=max_new, do_sample=False, eos_token_id=eos)
        assisted = target.generate(ids, max_new_tokens=max_new, do_sample=False, eos_token_id=eos,
                                   assistant_model=draft)
        torch.testing.assert_close(assisted, plain, rtol=0, atol=0)
        assert plain.shape[1] - ids.shape[1] == min(max_new, free.index(eos) + 1)


def test_streamer_gets_every_token_once(target):
    class Collect:
        def __init__(self):
            self.tokens, self.ended = [], False

        def put(self, value):
            self.tokens += value.reshape(-1).tolist()

        def end(self):
            self.ended = True

    draft, ids, streamer = _perturbed(target), torch.tensor([PROMPT]), Collect()
    out = target.generate(ids, max_new_tokens=15, do_sample=False, assistant_model=draft, streamer=streamer)
    assert streamer.ended and streamer.tokens == out[0].tolist()  # the prompt (put by generate), then the rest


def test_heuristic_schedule_carries_over_to_the_next_call(target):
    """As in transformers: the heuristic draft length a call ends with is where the next call starts."""
    draft = copy.deepcopy(target)  # every draft accepted: the heuristic grows the length by 2 per round
    c = draft.generation_config
    c.num_assistant_tokens, c.num_assistant_tokens_schedule, c.assistant_confidence_threshold = 2, "heuristic", 0.0
    target.generate(torch.tensor([PROMPT]), max_new_tokens=20, do_sample=False, assistant_model=draft)
    assert draft.generation_config.num_assistant_tokens > 2


# ---- drafting among the first token ids (generation_config.draft_vocab_size) --------------------------------


@pytest.mark.parametrize("n", [7, 30])
def test_a_draft_vocabulary_keeps_the_drafts_logits_on_its_tokens(n):
    """With draft_vocab_size = n the scores are the draft's own logits on tokens 0..n-1 and -inf elsewhere, and
    every drafted token is one of those."""
    draft = _draft(k=4)
    draft.generation_config.draft_vocab_size = n
    ids = torch.tensor([PROMPT])
    candidates, scores = _generator(draft, ids).get_candidates(ids)
    with torch.no_grad():
        full = draft(candidates).logits[:, len(PROMPT) - 1:-1]
    torch.testing.assert_close(scores[..., :n], full[..., :n], rtol=1e-5, atol=1e-5)
    assert torch.isneginf(scores[..., n:]).all()
    assert (candidates[0, len(PROMPT):] < n).all()
    torch.testing.assert_close(candidates[:, len(PROMPT):], full[..., :n].argmax(-1), rtol=0, atol=0)


@pytest.mark.parametrize("n", [1, 20, VOCAB])
def test_assisted_greedy_with_a_draft_vocabulary_equals_greedy(target, n):
    draft, ids = _perturbed(target, k=3), torch.tensor([PROMPT])
    draft.generation_config.draft_vocab_size = n
    plain = target.generate(ids, max_new_tokens=16, do_sample=False)
    assisted = target.generate(ids, max_new_tokens=16, do_sample=False, assistant_model=draft)
    torch.testing.assert_close(assisted, plain, rtol=0, atol=0)


def test_speculative_sampling_with_a_draft_vocabulary_still_reaches_every_token(target):
    """The draft proposes only tokens 0..4, but the target's tokens come from the residual of speculative
    sampling where it rejects, so tokens outside the draft's vocabulary still appear."""
    draft = _perturbed(target, k=2)
    draft.generation_config.draft_vocab_size = 5
    torch.manual_seed(0)
    out = target.generate(torch.tensor([PROMPT]), max_new_tokens=40, min_new_tokens=40, do_sample=True,
                          top_k=0, assistant_model=draft)
    new = out[0, len(PROMPT):]
    assert new.numel() == 40 and (new >= 5).any()


@pytest.mark.parametrize("bad", [0, VOCAB + 1, 2.5, True, "10"])
def test_a_bad_draft_vocab_size_is_refused(bad):
    draft = _draft()
    draft.generation_config.draft_vocab_size = bad
    ids = torch.tensor([PROMPT])
    with pytest.raises(ValueError, match="draft_vocab_size"):
        _generator(draft, ids)


@pytest.mark.parametrize("extra", [dict(return_dict_in_generate=True, output_hidden_states=True),
                                   dict(return_dict_in_generate=True, output_attentions=True),
                                   dict(cache_implementation="static")])
def test_what_only_transformers_loop_returns_runs_there(target, monkeypatch, extra):
    """Hidden states, attentions and a static cache go through transformers' loop, with greedy's tokens."""
    from transformers.generation.utils import GenerationMixin

    theirs, calls = GenerationMixin._assisted_decoding, []
    monkeypatch.setattr(GenerationMixin, "_assisted_decoding", lambda *a, **k: calls.append(1) or theirs(*a, **k))
    draft, ids = _perturbed(target), torch.tensor([PROMPT])
    plain = target.generate(ids, max_new_tokens=10, do_sample=False)
    out = target.generate(ids, max_new_tokens=10, do_sample=False, assistant_model=draft, **extra)
    sequences = out if isinstance(out, torch.Tensor) else out.sequences
    assert calls == [1]
    torch.testing.assert_close(sequences, plain, rtol=0, atol=0)
