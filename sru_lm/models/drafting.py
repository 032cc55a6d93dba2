"""Drafting with an SRU++ model for assisted (speculative) decoding, stepping its cache directly.

transformers' generic :class:`~transformers.generation.AssistedCandidateGenerator` runs a whole ``generate()``
on the draft for every round: generation-config copies, logits-processor and stopping-criteria construction,
input preparation. On one CPU thread that is ~34 ms per round for a 2-token draft whose forward costs ~2 ms
per token (benchmarks/bench_generate_assisted.md), more than the target's own verification, so a draft can
never pay. :class:`SRULMDraftCandidateGenerator` keeps the draft's :class:`~.cache.SRULMCache` between rounds
and calls the draft's forward once per drafted token, nothing else:

- round i: feed the tokens the draft has not absorbed yet (the whole prompt on the first round, then the
  target's own token, plus the last draft token when every draft was accepted), then draft greedily (or
  sample, with ``do_sample``) one token per forward through the target's logits processors, stopping at
  ``num_assistant_tokens``, at an end-of-sequence token, or when the draft's probability of its token falls
  under ``assistant_confidence_threshold`` (transformers' defaults: 20 tokens, 0.4);
- after the target's verification: :meth:`SRULMCache.crop` rolls the draft back to the last accepted token
  (its cache records the state after each drafted position, as the target's does; the tokens a round feeds
  first were accepted already and are not recorded), and transformers' heuristic schedule, when configured,
  adjusts the draft length.

What reaches the target is what transformers' generator would give it (candidate ids and the processed draft
scores, for speculative sampling), so greedy assisted decoding yields plain greedy's tokens whatever the draft
proposes. :meth:`SRULMForCausalLM._get_candidate_generator` picks this generator when the assistant is an
``sru_lm`` causal LM sharing the target's tokenizer, one unpadded sequence; anything else (other assistants,
prompt lookup, different tokenizers) keeps transformers' own generators.

This file ships next to saved weights (``trust_remote_code``): it imports only torch, transformers and its
siblings.
"""

from __future__ import annotations

import inspect

import torch
from transformers.generation import LogitsProcessorList
from transformers.generation.candidate_generator import AssistedCandidateGenerator


def can_draft_directly(generation_config, assistant_model, model_kwargs: dict, input_ids: torch.Tensor,
                       target_tokenizer=None, assistant_tokenizer=None) -> bool:
    """True when :class:`SRULMDraftCandidateGenerator` can serve this assisted ``generate`` call: an ``sru_lm``
    causal-LM assistant with the target's tokenizer, no other candidate source asked for, one sequence without
    padding (transformers' assisted decoding takes batch size 1 only). ``assistant_model.draft_directly = False``
    opts out (transformers' generator runs instead)."""
    if assistant_model is None or getattr(assistant_model.config, "model_type", None) != "sru_lm":
        return False
    if not getattr(assistant_model, "draft_directly", True):  # set False to compare with transformers' generator
        return False
    if getattr(assistant_model.config, "bidirectional", False) or assistant_model.config.is_encoder_decoder:
        return False
    if target_tokenizer is not None and assistant_tokenizer is not None:
        return False  # universal assisted decoding re-encodes between vocabularies
    other_sources = ("assistant_early_exit", "prompt_lookup_num_tokens", "speculation_type")
    if any(getattr(generation_config, name, None) is not None for name in other_sources):
        return False
    if getattr(generation_config, "use_mtp", False):
        return False
    mask = model_kwargs.get("attention_mask")
    return input_ids.shape[0] == 1 and (mask is None or bool(mask.all()))


class SRULMDraftCandidateGenerator(AssistedCandidateGenerator):
    """Candidates from an SRU++ draft model, one draft forward per token on a cache kept between rounds (see
    the module docstring). Same constructor and protocol as transformers' ``AssistedCandidateGenerator``, whose
    draft-length schedule (``num_assistant_tokens``, ``num_assistant_tokens_schedule``) it keeps."""

    def __init__(self, input_ids, assistant_model, generation_config, model_kwargs, inputs_tensor=None,
                 logits_processor=None):
        super().__init__(input_ids, assistant_model, generation_config, model_kwargs, inputs_tensor,
                         logits_processor)
        self.logits_processor = LogitsProcessorList(self.logits_processor)  # the base class leaves a plain list
        # LogitsProcessorList.__call__ reads every processor's signature on every call (~0.1 ms a token here):
        # processors taking only (input_ids, scores) are called directly, read once here
        self._direct = all(len(inspect.signature(p.__call__).parameters) <= 2 for p in self.logits_processor)
        self.do_sample = bool(generation_config.do_sample)
        self.confidence_threshold = self.assistant_generation_config.assistant_confidence_threshold or 0.0
        eos = generation_config._eos_token_tensor if hasattr(generation_config, "_eos_token_tensor") else None
        self.eos_token_id = None if eos is None else eos.to(assistant_model.device).reshape(-1)
        self.cache = None
        self.absorbed = 0  # tokens of the sequence the draft's cache holds (a prefix of input_ids)
        self._round_start: int | None = None  # sequence length when the last round drafted, None: no draft

    def _forward(self, tokens: torch.Tensor, record: bool) -> torch.Tensor:
        """Feed ``tokens`` (1, n) to the draft after the ``absorbed`` ones; the logits after the last one. Only
        drafted tokens can be rejected, so only their forwards record the states that crop rolls back to: the
        round's first forward feeds tokens the target already accepted, without recording."""
        if self.cache is not None:
            for layer in self.cache.layers:
                layer.record_past = record
        out = self.assistant_model(input_ids=tokens, cache=self.cache, use_cache=True, logits_to_keep=1)
        self.cache = out.cache
        self.absorbed += tokens.shape[1]
        return out.logits[:, -1].float()

    def _process(self, ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if not self._direct:
            return self.logits_processor(ids, logits)
        for processor in self.logits_processor:
            logits = processor(ids, logits)
        return logits

    def _is_eos(self, token: torch.Tensor) -> bool:
        return self.eos_token_id is not None and bool(torch.isin(token, self.eos_token_id).any())

    def get_candidates(self, input_ids: torch.LongTensor, **kwargs) -> tuple[torch.LongTensor, torch.Tensor | None]:
        input_ids = input_ids.to(self.assistant_model.device)
        length = input_ids.shape[1]
        max_new = min(int(self.num_assistant_tokens), self.main_model_max_length - length - 1)
        if max_new <= 0:
            self._round_start = None
            return input_ids, None
        if self.absorbed > length:
            raise RuntimeError(f"the draft holds {self.absorbed} tokens but the sequence has only {length}: "
                               "update_candidate_strategy was not called after the last verification")
        ids, scores = input_ids, []
        feed = input_ids[:, self.absorbed:]
        with torch.no_grad():  # not inference_mode: crop writes these tensors outside it
            for i in range(max_new):
                logits = self._forward(feed, record=i > 0)
                processed = self._process(ids, logits)
                if self.do_sample:
                    token = torch.multinomial(processed.softmax(-1), num_samples=1)
                else:
                    token = processed.argmax(-1, keepdim=True)
                ids = torch.cat([ids, token], dim=1)
                scores.append(processed)
                if i == max_new - 1 or self._is_eos(token):
                    break
                if self.confidence_threshold > 0:
                    p = processed.softmax(-1).gather(-1, token)
                    if float(p) < self.confidence_threshold:
                        break
                feed = token
        self._round_start = length
        self._last_ids_length = ids.shape[1]
        return ids, torch.stack(scores, dim=1)

    def update_candidate_strategy(self, input_ids: torch.LongTensor, scores: torch.Tensor, num_matches: int):
        super().update_candidate_strategy(input_ids, scores, num_matches)
        if self._round_start is None or self.cache is None:
            return
        # The draft absorbed the sequence up to its last draft token (that one was never fed); keep the prompt
        # of this round plus the accepted drafts, drop the rest. crop(0) forgets the recorded states.
        keep = min(self.absorbed, self._round_start + int(num_matches))
        with torch.no_grad():
            self.cache.crop(-(self.absorbed - keep))
        self.absorbed = keep
        self._round_start = None


__all__ = ["SRULMDraftCandidateGenerator", "can_draft_directly"]
