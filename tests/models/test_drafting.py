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
