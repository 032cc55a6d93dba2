"""The model family traces whole: torch.compile(fullgraph=True) (no graph break anywhere, so no data-dependent
branch, .item() or logging in a forward) gives eager's outputs and gradients, and torch.export (static and with a
dynamic sequence length) gives eager's outputs, with the default CPU kernel (a torch.library custom op) and the
reference recurrence."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, randomize, tiny_config

from sru_lm import SRULMForCausalLM, SRULMForQuestionAnswering, SRULMForSequenceClassification

TOL = dict(atol=2e-5, rtol=1e-4)
BACKENDS = [None, "reference"]  # None: chosen by device, the C++ custom op on this CPU


def _inputs(B: int = 2, L: int = 9, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (B, L), generator=g)
    mask = torch.ones(B, L, dtype=torch.long)
    mask[1, : L // 3] = 0  # left padding in the second row
    return ids, mask


def _train_step(model, fn, ids, mask):
    model.zero_grad()
    out = fn(ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100), output_hidden_states=True)
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    return out.loss.detach(), out.logits.detach(), [h.detach() for h in out.hidden_states], grads


def _assert_same_step(got, want):
    torch.testing.assert_close(got[0], want[0], **TOL)
    torch.testing.assert_close(got[1], want[1], **TOL)
    assert len(got[2]) == len(want[2])
    for g, w in zip(got[2], want[2], strict=True):
        torch.testing.assert_close(g, w, **TOL)
    assert got[3].keys() == want[3].keys()
    for name in want[3]:
        torch.testing.assert_close(got[3][name], want[3][name], **TOL, msg=name)


@pytest.mark.parametrize("sru_backend", BACKENDS)
@pytest.mark.parametrize("layout", [{}, dict(position_embedding_type="rotary", normalize_after=False)])
def test_compiled_fullgraph_training_step_equals_eager(sru_backend, layout):
    """aot_eager runs dynamo (fullgraph: one graph or an error) and AOT autograd (forward and backward graphs,
    the custom op's autograd formula included) without inductor's C++ build, which the slow test below does."""
    torch.manual_seed(0)
    model = randomize(SRULMForCausalLM(tiny_config(sru_backend=sru_backend, **layout))).train()
    ids, mask = _inputs()
    want = _train_step(model, model, ids, mask)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    _assert_same_step(_train_step(model, compiled, ids, mask), want)


@pytest.mark.parametrize("cls", [SRULMForSequenceClassification, SRULMForQuestionAnswering])
def test_compiled_fullgraph_bidirectional_heads_equal_eager(cls):
    torch.manual_seed(0)
    model = randomize(cls(tiny_config(bidirectional=True, num_labels=3)))
    ids, mask = _inputs()
    with torch.no_grad():
        want = model(ids, attention_mask=mask)
        got = torch.compile(model, fullgraph=True, backend="aot_eager")(ids, attention_mask=mask)
    for key in want.keys():
        torch.testing.assert_close(got[key], want[key], **TOL, msg=key)


@pytest.mark.slow  # inductor builds C++ for the graph: about a minute and a half on 2 cores
def test_inductor_compiled_training_step_equals_eager():
    torch.manual_seed(0)
    model = randomize(SRULMForCausalLM(tiny_config(position_embedding_type="rotary"))).train()
    ids, mask = _inputs()
    want = _train_step(model, model, ids, mask)
    _assert_same_step(_train_step(model, torch.compile(model, fullgraph=True), ids, mask), want)


class _Logits(torch.nn.Module):
    """The causal LM's logits as a plain function of tensors, the form torch.export takes."""

    def __init__(self, model: SRULMForCausalLM) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, attention_mask=attention_mask, use_cache=False).logits


@pytest.mark.parametrize("sru_backend", BACKENDS)
def test_export_with_static_shapes_equals_eager(sru_backend):
    torch.manual_seed(0)
    model = _Logits(randomize(SRULMForCausalLM(tiny_config(sru_backend=sru_backend)))).eval()
    ids, mask = _inputs()
    program = torch.export.export(model, (ids, mask))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(ids, mask), model(ids, mask), **TOL)
        other_ids, _ = _inputs(seed=1)  # same shapes, other values
        torch.testing.assert_close(program.module()(other_ids, mask), model(other_ids, mask), **TOL)


@pytest.mark.parametrize("layout", [{}, dict(position_embedding_type="rotary")])
def test_export_with_a_dynamic_sequence_length_equals_eager(layout):
    """One exported program serves every length (the reference recurrence loops over time in Python, so its
    length is static: this needs the default backend, the custom op)."""
    torch.manual_seed(0)
    model = _Logits(randomize(SRULMForCausalLM(tiny_config(**layout)))).eval()
    ids, mask = _inputs(L=9)
    length = torch.export.Dim("length", min=2, max=256)
    program = torch.export.export(model, (ids, mask), dynamic_shapes=({1: length}, {1: length}))
    for L in (9, 4, 17):
        ids, mask = _inputs(L=L, seed=L)
        with torch.no_grad():
            torch.testing.assert_close(program.module()(ids, mask), model(ids, mask), **TOL, msg=f"L={L}")
