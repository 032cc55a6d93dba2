"""The small-batch linear kernel (csrc small_linear through sru_lm.ops.cpu.linear): F.linear's values for 1 to
8 rows at any size, each row bit-identical whether computed alone or with others (so a verification forward
gives exactly the decode steps' logits), and F.linear itself wherever the kernel does not apply."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sru_lm import SRULMConfig, SRULMForCausalLM
from sru_lm.ops import cpu

pytestmark = pytest.mark.skipif(not cpu.available(), reason=f"CPU kernel unavailable: {cpu.why_unavailable()}")

# fp32, sums of `in` products of N(0, 1) values: the kernel's 8-lane order differs from MKL's
RTOL, ATOL = 1e-5, 1e-4


def _problem(rows: int, in_features: int, out_features: int, bias: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, in_features, generator=g)
    w = torch.randn(out_features, in_features, generator=g)
    b = torch.randn(out_features, generator=g) if bias else None
    return x, w, b


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts calls into the kernel, so a test can tell which path ran."""
    calls = []
    real = cpu._ext.small_linear

    class Spy:
        def __getattr__(self, name):
            return getattr(real_ext, name)

        @staticmethod
        def small_linear(*args):
            calls.append(args[0].shape[0])
            return real(*args)

    real_ext = cpu._ext
    monkeypatch.setattr(cpu, "_ext", Spy())
    return calls


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("in_features,out_features", [(1, 3), (7, 65), (33, 1), (257, 2304), (768, 65)])
def test_matches_f_linear_for_every_row_count(in_features, out_features, threads, kernel_calls):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for rows in range(1, 9):
            for bias in (False, True):
                x, w, b = _problem(rows, in_features, out_features, bias, seed=rows)
                got = cpu.linear(x, w, b)
                torch.testing.assert_close(got, F.linear(x, w, b), rtol=RTOL, atol=ATOL)
    finally:
        torch.set_num_threads(before)
    assert kernel_calls == [r for r in range(1, 9) for _ in (0, 1)]  # every call ran the kernel


@pytest.mark.parametrize("threads", [1, 2])
def test_a_row_does_not_depend_on_the_others(threads):
    """Bit-identical rows across row counts (different register blocks) and thread splits."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x, w, b = _problem(8, 771, 8192 + 5, bias=True)
        all_rows = cpu.linear(x, w, b)
        for rows in range(1, 8):
            assert torch.equal(cpu.linear(x[:rows], w, b), all_rows[:rows]), rows
        for m in range(8):
            assert torch.equal(cpu.linear(x[m], w, b), all_rows[m]), m
    finally:
        torch.set_num_threads(before)


def test_leading_dimensions_are_kept(kernel_calls):
    x, w, b = _problem(6, 40, 24, bias=True)
    x = x.view(2, 3, 40)
    got = cpu.linear(x, w, b)
    assert got.shape == (2, 3, 24) and kernel_calls == [6]
    torch.testing.assert_close(got, F.linear(x, w, b), rtol=RTOL, atol=ATOL)
    strided = torch.randn(3, 80)[:, ::2]  # not contiguous: copied for the kernel
    torch.testing.assert_close(cpu.linear(strided, w), F.linear(strided, w), rtol=RTOL, atol=ATOL)


def test_f_linear_where_the_kernel_does_not_apply(kernel_calls, monkeypatch):
    x, w, b = _problem(9, 16, 8, bias=True)
    torch.testing.assert_close(cpu.linear(x, w, b), F.linear(x, w, b), rtol=0, atol=0)  # 9 rows
    for dtype in (torch.float64, torch.bfloat16):
        xd, wd = x[:2].to(dtype), w.to(dtype)
        torch.testing.assert_close(cpu.linear(xd, wd), F.linear(xd, wd), rtol=0, atol=0)
    monkeypatch.setattr(cpu, "small_linear_enabled", False)
    torch.testing.assert_close(cpu.linear(x[:2], w, b), F.linear(x[:2], w, b), rtol=0, atol=0)
    assert kernel_calls == []


def test_gradients_flow_through_f_linear(kernel_calls):
    x, w, b = _problem(2, 16, 8, bias=True)
    for t in (x, w, b):
        t.requires_grad_(True)
    cpu.linear(x, w, b).square().sum().backward()
    grads = [t.grad.clone() for t in (x, w, b)]
    for t in (x, w, b):
        t.grad = None
    F.linear(x, w, b).square().sum().backward()
    for got, want in zip(grads, (x.grad, w.grad, b.grad), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert kernel_calls == []
    with torch.no_grad():  # the same parameters without autograd: the kernel
        cpu.linear(x, w, b)
    assert kernel_calls == [2]


def test_poisoned_outputs_are_all_written(monkeypatch):
    monkeypatch.setattr(cpu, "poison_outputs", True)
    for rows in range(1, 9):
        x, w, b = _problem(rows, 13, 29, bias=rows % 2 == 0)
        assert torch.isfinite(cpu.linear(x, w, b)).all()


def test_model_projections_run_the_kernel(kernel_calls, monkeypatch):
    """The model's projections and head go through it when decoding (a 3-token verification-sized forward on
    a cache), with F.linear's logits; its parameters are nn.Linear's, so checkpoints load as before."""
    torch.manual_seed(0)
    config = SRULMConfig(vocab_size=50, hidden_size=24, num_hidden_layers=2, projection_size=8,
                         num_attention_heads=2, attention_every_n_layers=2)
    model = SRULMForCausalLM(config).eval()
    ids = torch.randint(1, 50, (1, 6))
    with torch.no_grad():
        fast = model(ids[:, 3:], cache=model(ids[:, :3], use_cache=True).cache, use_cache=True).logits
    assert kernel_calls and max(kernel_calls) == 3
    monkeypatch.setattr(cpu, "small_linear_enabled", False)
    with torch.no_grad():
        slow = model(ids[:, 3:], cache=model(ids[:, :3], use_cache=True).cache, use_cache=True).logits
    torch.testing.assert_close(fast, slow, rtol=RTOL, atol=ATOL)
    assert isinstance(model.lm_head, torch.nn.Linear)
    assert "lm_head.weight" in model.state_dict() and "model.layers.0.in_proj.weight" in model.state_dict()
