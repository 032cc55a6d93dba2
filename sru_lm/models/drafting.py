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

- **Draft vocabulary.** ``draft.generation_config.draft_vocab_size = n`` drafts among token ids ``0..n-1``
  only: the draft's LM head runs over its first n rows (the other scores are -inf). For a small draft the head
  is most of a step: with 8192 tokens and width 256 it is 8 MiB of fp32 read per token from memory, since the
  target's forward evicts it from the caches in between. A byte-level BPE numbers its merges in the order it
  learned them, most frequent first, so the first ids cover most text: in our bench 95% of the target's greedy
  tokens are below 2048 (`benchmarks/bench_generate_assisted_draft3.md`). Greedy output is still greedy's; with
  sampling the target's rejections are resampled from the residual, which reaches every token.
- **The verification loop.** :func:`assisted_decode` replaces transformers' ``_assisted_decoding`` when this
  generator serves the call (:func:`verifies_directly`): the same rules, without the per-round input
  preparation, attention-mask bookkeeping and kwargs copies an unpadded sequence does not need.

This file ships next to saved weights (``trust_remote_code``): it imports only torch, transformers and its
siblings.
"""

from __future__ import annotations

import inspect

import torch
from transformers.generation import LogitsProcessorList
from transformers.generation.candidate_generator import AssistedCandidateGenerator

from .sru_backend import linear


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


def processing(logits_processor):
    """``(input_ids, scores) -> scores`` through ``logits_processor`` (a ``LogitsProcessorList``).
    ``LogitsProcessorList.__call__`` reads every processor's signature on every call (~0.1 ms a token on one
    CPU thread); when every processor takes only ``(input_ids, scores)`` they are called directly, and that is
    decided once here. An empty list returns the scores as they are."""
    processors = list(logits_processor or ())
    if not processors:
        return lambda ids, scores: scores
    if not all(len(inspect.signature(p.__call__).parameters) <= 2 for p in processors):
        return logits_processor

    def process(ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for processor in processors:
            scores = processor(ids, scores)
        return scores

    return process


def _draft_vocab_size(config, assistant_model) -> int | None:
    """The draft's ``generation_config.draft_vocab_size``: draft only among token ids below it (None: all)."""
    n = getattr(config, "draft_vocab_size", None)
    if n is None:
        return None
    vocab = assistant_model.lm_head.weight.shape[0]
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= vocab:
        raise ValueError(f"draft_vocab_size (the draft's generation_config) must be an int from 1 to the vocabulary "
                         f"size {vocab}, or None for the whole vocabulary; got {n!r}")
    return None if n == vocab else n


class SRULMDraftCandidateGenerator(AssistedCandidateGenerator):
    """Candidates from an SRU++ draft model, one draft forward per token on a cache kept between rounds (see
    the module docstring). Same constructor and protocol as transformers' ``AssistedCandidateGenerator``, whose
    draft-length schedule (``num_assistant_tokens``, ``num_assistant_tokens_schedule``) it keeps."""

    def __init__(self, input_ids, assistant_model, generation_config, model_kwargs, inputs_tensor=None,
                 logits_processor=None):
        super().__init__(input_ids, assistant_model, generation_config, model_kwargs, inputs_tensor,
                         logits_processor)
        self.logits_processor = LogitsProcessorList(self.logits_processor)  # the base class leaves a plain list
        self._process = processing(self.logits_processor)
        self.device = assistant_model.device
        self.do_sample = bool(generation_config.do_sample)
        self.confidence_threshold = self.assistant_generation_config.assistant_confidence_threshold or 0.0
        eos = generation_config._eos_token_tensor if hasattr(generation_config, "_eos_token_tensor") else None
        self.eos_token_id = None if eos is None else eos.to(assistant_model.device).reshape(-1)
        self.draft_vocab_size = _draft_vocab_size(self.assistant_generation_config, assistant_model)
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
        n = self.draft_vocab_size
        if n is None:
            out = self.assistant_model(input_ids=tokens, cache=self.cache, use_cache=True, logits_to_keep=1)
            logits = out.logits[:, -1].float()
        else:  # the head's first n rows only; the other tokens are never drafted
            out = self.assistant_model.model(input_ids=tokens, cache=self.cache, use_cache=True)
            head = self.assistant_model.lm_head
            h = out.last_hidden_state[:, -1]  # (1, d)
            logits = h.new_full((h.shape[0], head.weight.shape[0]), float("-inf"), dtype=torch.float32)
            logits[:, :n] = linear(h, head.weight[:n], None if head.bias is None else head.bias[:n]).float()
        self.cache = out.cache
        self.absorbed += tokens.shape[1]
        return logits

    def _is_eos(self, token: torch.Tensor) -> bool:
        return self.eos_token_id is not None and bool(torch.isin(token, self.eos_token_id).any())

    def get_candidates(self, input_ids: torch.LongTensor, **kwargs) -> tuple[torch.LongTensor, torch.Tensor | None]:
        input_ids = input_ids.to(self.device)
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


def verifies_directly(model, generation_config, assistant_model, model_kwargs: dict, input_ids: torch.Tensor,
                      synced_gpus: bool = False, target_tokenizer=None, assistant_tokenizer=None) -> bool:
    """True when :func:`assisted_decode` can run this assisted ``generate`` call in place of transformers'
    ``_assisted_decoding``: the draft is served by :class:`SRULMDraftCandidateGenerator` (see
    :func:`can_draft_directly`), the target's cache is a fresh dynamic :class:`~.cache.SRULMCache`, the only model
    inputs are ``attention_mask`` (all ones), the cache and generate's own positions, and nothing asks for what
    only transformers' loop returns (attentions, hidden states, synced GPUs, ensemble verification)."""
    if not can_draft_directly(generation_config, assistant_model, model_kwargs, input_ids, target_tokenizer,
                              assistant_tokenizer):
        return False
    if synced_gpus or model.config.is_encoder_decoder:
        return False
    if generation_config.return_dict_in_generate and (
        generation_config.output_attentions or generation_config.output_hidden_states
    ):
        return False
    if getattr(generation_config, "assistant_ensemble_weight", None) is not None:
        return False
    if set(model_kwargs) - {"attention_mask", "cache", "use_cache", "logits_to_keep", "position_ids"}:
        return False  # inputs the loop would not pass on
    if model_kwargs.get("use_cache") is False:
        return False
    positions = model_kwargs.get("position_ids")  # generate's own are 0, 1, ... for an unpadded sequence
    if positions is not None and not torch.equal(positions.reshape(-1).cpu(), torch.arange(input_ids.shape[1])):
        return False
    cache = model_kwargs.get("cache")
    return (
        cache is not None and type(cache).__name__ == "SRULMCache" and not cache.is_static
        and cache.get_seq_length() == 0
    )


def assisted_decode(model, input_ids: torch.LongTensor, generator: SRULMDraftCandidateGenerator,
                    logits_processor, stopping_criteria, generation_config, cache, streamer=None):
    """Assisted (speculative) decoding of one unpadded sequence: ``generate(..., assistant_model=draft)``'s
    loop for an ``sru_lm`` target and draft, with transformers' rules and per-round work cut to what they need.

    Each round: the draft proposes k tokens (:meth:`SRULMDraftCandidateGenerator.get_candidates`); one target
    forward takes the last accepted token and the k drafts (the whole prompt on the first round) and keeps the
    k + 1 logits; greedy keeps the drafts up to the first one the target would not pick, plus the target's own
    next token, and sampling runs transformers' ``_speculative_sampling`` (algorithm 1 of the speculative
    decoding paper) on the processed scores; ``max_length`` and the first end-of-sequence token cut the
    accepted tokens; ``cache.crop`` rolls the target back over the rejected drafts and the draft follows. The
    logits processors see each position with the sequence before it; stopping criteria, the streamer,
    ``output_scores``/``output_logits`` and the heuristic draft-length schedule behave as in transformers'
    ``_assisted_decoding``. Greedy output equals plain greedy decoding's, whatever the draft proposes.

    What it leaves out of each round: input preparation and the attention-mask bookkeeping (an unpadded sequence
    needs no mask), copies of the model kwargs, and reading the processors' signatures per call (with two
    processors, ~0.1 ms per verified position on one CPU thread; without processors the difference is within
    noise, benchmarks/bench_generate_assisted_draft3.md).
    """
    from transformers.generation.utils import GenerateDecoderOnlyOutput, _speculative_sampling

    if input_ids.shape[0] != 1:
        raise ValueError(f"assisted decoding takes one sequence, got input_ids of shape {tuple(input_ids.shape)}")
    process = processing(logits_processor)
    has_processors = len(logits_processor or ()) > 0
    config = generation_config
    eos = getattr(config, "_eos_token_tensor", None)
    eos = None if eos is None else eos.to(input_ids.device).reshape(-1)
    want_scores = bool(config.return_dict_in_generate and config.output_scores)
    want_logits = bool(config.return_dict_in_generate and config.output_logits)
    scores, raw_logits = [], []
    cache.activate_past_recording(recurrent_states_to_keep=getattr(generator, "num_drafting_tokens", None))

    ids, fed = input_ids, 0  # fed: tokens of ids the target's cache holds (all but the last, after round 1)
    while True:
        length = ids.shape[1]
        candidates, draft_scores = generator.get_candidates(ids)
        candidates = candidates.to(ids.device)
        k = candidates.shape[1] - length
        out = model(input_ids=candidates[:, fed:], cache=cache, use_cache=True, logits_to_keep=k + 1)
        logits = out.logits[:, -(k + 1):].float()  # (1, k + 1, vocab): after the last accepted token, each draft
        raw = logits.clone() if want_logits else None
        if has_processors:
            for i in range(k + 1):
                logits[:, i] = process(candidates[:, :length + i], logits[:, i])

        if config.do_sample and draft_scores is not None:
            valid, n = _speculative_sampling(candidates, draft_scores.to(logits.device), k, logits)
        else:
            if config.do_sample:
                picked = torch.multinomial(logits[0].softmax(-1), num_samples=1).T  # (1, k + 1)
            else:
                picked = logits.argmax(-1)  # (1, k + 1)
            drafted, chosen = candidates[0, length:].tolist(), picked[0].tolist()
            n = 0
            while n < k and drafted[n] == chosen[n]:
                n += 1
            valid = picked[:, :n + 1]  # the accepted drafts (equal to the target's picks) and the target's next
        valid = valid[:, :max(config.max_length - length, 1)]
        if eos is not None:
            ends = torch.isin(valid[0], eos).nonzero()
            if ends.numel():
                valid = valid[:, :int(ends[0]) + 1]
        n = valid.shape[1] - 1

        ids = torch.cat([ids, valid], dim=1)
        if streamer is not None:
            streamer.put(valid.cpu())
        cache.crop(-(k - n))  # also when nothing is rejected: it drops the recorded states
        fed = ids.shape[1] - 1
        generator.update_candidate_strategy(ids, logits, n)
        if want_scores:
            scores.extend(logits[:, i] for i in range(n + 1))
        if want_logits:
            raw_logits.extend(raw[:, i] for i in range(n + 1))
        if bool(stopping_criteria(ids, tuple(scores) if want_scores else None).all()):
            break

    if streamer is not None:
        streamer.end()
    draft_config = generator.assistant_model.generation_config
    if draft_config.num_assistant_tokens_schedule == "heuristic":  # the next call starts where this one ended
        draft_config.num_assistant_tokens = generator.num_assistant_tokens
    if not config.return_dict_in_generate:
        return ids
    return GenerateDecoderOnlyOutput(
        sequences=ids, scores=tuple(scores) if want_scores else None,
        logits=tuple(raw_logits) if want_logits else None, cache=cache,
    )


__all__ = ["SRULMDraftCandidateGenerator", "assisted_decode", "can_draft_directly", "processing",
           "verifies_directly"]
