"""output_hidden_states and output capture: the hidden states are the tensors the layers pass on (on the autograd
graph), recorded by transformers' @capture_outputs from _can_record_outputs, through every head."""

from __future__ import annotations

import torch
from conftest import VOCAB, randomize, tiny_config

from sru_lm import SRULMForCausalLM, SRULMForQuestionAnswering, SRULMForSequenceClassification, SRULMModel


def _causal_lm(**overrides) -> SRULMForCausalLM:
    torch.manual_seed(0)
    return randomize(SRULMForCausalLM(tiny_config(**overrides)))


def test_hidden_states_are_the_tensors_the_layers_consume():
    model = _causal_lm()
    ids = torch.randint(1, VOCAB, (2, 7))
    seen = []
    for layer in model.model.layers:
        layer.register_forward_hook(lambda mod, args, out: seen.append((args[0], out)))
    out = model(ids, output_hidden_states=True)
    n = model.config.num_hidden_layers
    assert len(out.hidden_states) == n + 1
    for i in range(n):
        assert out.hidden_states[i] is seen[i][0]  # layer i's very input
        if i:
            assert seen[i][0] is seen[i - 1][1]  # which is layer i-1's output
    torch.testing.assert_close(out.hidden_states[0], model.model.embed_tokens(ids))  # eval: no dropout
    last = model.model(ids).last_hidden_state
    torch.testing.assert_close(out.hidden_states[-1], last)  # the final, normed output, as transformers returns
    assert all(h.shape == (2, 7, model.config.hidden_size) for h in out.hidden_states)


def test_hidden_states_are_on_the_autograd_graph():
    """Gradient attribution through hidden states: before, they were transposed copies taken off the graph."""
    model = _causal_lm()
    ids = torch.randint(1, VOCAB, (2, 7))
    out = model(ids, labels=ids, output_hidden_states=True)
    for h in out.hidden_states:
        h.retain_grad()
    grads = torch.autograd.grad(out.loss, out.hidden_states, retain_graph=True)
    for h in out.hidden_states:
        h.grad = None  # (retain_grad also records what autograd.grad computed)
    out.loss.backward(retain_graph=True)
    for i, (h, g) in enumerate(zip(out.hidden_states, grads, strict=True)):
        assert h.grad is not None and h.grad.abs().sum() > 0, i
        torch.testing.assert_close(h.grad, g)
    # the chain rule across the last layer: d loss / d h_{n-1} = (d h_n / d h_{n-1})^T d loss / d h_n, where
    # h_n (the normed output) depends on h_{n-1} through that layer only
    (chained,) = torch.autograd.grad(out.hidden_states[-1], out.hidden_states[-2], grad_outputs=grads[-1])
    torch.testing.assert_close(chained, grads[-2])


def test_output_flags_follow_the_config_and_every_head():
    ids = torch.randint(1, VOCAB, (2, 6))
    model = _causal_lm(output_hidden_states=True)
    with torch.no_grad():
        assert len(model(ids).hidden_states) == model.config.num_hidden_layers + 1  # from the config
        assert model(ids, output_hidden_states=False).hidden_states is None  # the argument wins
        loss_logits_cache_hidden = model(ids, labels=ids, return_dict=False)
    assert len(loss_logits_cache_hidden) == 4 and len(loss_logits_cache_hidden[3]) == 4
    for cls in (SRULMModel, SRULMForSequenceClassification, SRULMForQuestionAnswering):
        torch.manual_seed(0)
        head = randomize(cls(tiny_config(bidirectional=cls is SRULMForQuestionAnswering)))
        with torch.no_grad():
            out = head(ids, output_hidden_states=True)
            assert len(out.hidden_states) == head.config.num_hidden_layers + 1, cls.__name__
            assert head(ids).hidden_states is None
            as_tuple = head(ids, output_hidden_states=True, return_dict=False)
        assert isinstance(as_tuple, tuple) and any(isinstance(t, tuple) and len(t) == 4 for t in as_tuple)


def test_hidden_states_under_gradient_checkpointing():
    model = _causal_lm()
    model.activation_checkpointing_enable()
    model.train()
    ids = torch.randint(1, VOCAB, (2, 6))
    out = model(ids, labels=ids, output_hidden_states=True)
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    grads = torch.autograd.grad(out.loss, out.hidden_states[1:-1])
    assert all(g.abs().sum() > 0 for g in grads)
