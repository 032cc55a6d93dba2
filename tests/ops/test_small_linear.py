"""The small-batch linear kernel (csrc small_linear through sru_lm.ops.cpu.linear): F.linear's values for 1 to
8 rows at awkward sizes, each row bit-identical whether computed alone or with others (so a verification forward
gives exactly the decode steps' logits), and F.linear itself wherever the kernel does not apply."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from sru_lm import SRULMConfig, SRULMForCausalLM
from sru_lm.ops import cpu

pytestmark = pytest.mark.skipif(not cpu.available(), reason=f"CPU kernel unavailable: {cpu.why_unavailable()}")

# fp32 sums of `in` products of N(0, 1) values (|y| ~ sqrt(in) <= 28): the kernel's 8-lane order differs from
# MKL's, a few ulp of the sum
RTOL, ATOL = 1e-5, 1e-4
IN_SIZES = (1, 7, 33, 257, 768)  # 1 and 7: only the masked tail; 33, 257: a tail of 1; 768: none
OUT_SIZES = (1, 3, 65, 2304)  # shorter than every row block, and not a multiple of any (8, 6, 4, 3)


def _problem(rows: int, in_features: int, out_features: int, bias: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, in_features, generator=g)
    w = torch.randn(out_features, in_features, generator=g)
    b = torch.randn(out_features, generator=g) if bias else None
    return x, w, b


@pytest.fixture
def kernel_runs():
    """``kernel_runs()``: how many calls ran the kernel since the test started (the others ran F.linear)."""
    start = cpu._ext.small_linear_runs()
    return lambda: cpu._ext.small_linear_runs() - start


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("out_features", OUT_SIZES)
@pytest.mark.parametrize("in_features", IN_SIZES)
def test_matches_f_linear_for_every_row_count(in_features, out_features, threads, kernel_runs):
    for rows in range(1, 9):
        for bias in (False, True):
            x, w, b = _problem(rows, in_features, out_features, bias, seed=rows)
            got = cpu.linear(x, w, b)
            assert got.shape == (rows, out_features)
            torch.testing.assert_close(got, F.linear(x, w, b), rtol=RTOL, atol=ATOL)
    assert kernel_runs() == 16  # every call ran the kernel


def test_a_row_does_not_depend_on_the_others(threads):
    """Row m is bit-identical alone, in every prefix of rows (each row count has its own register blocking)
    and at every position in a block (the rows are shifted through the blocks), on any number of threads."""
    x, w, b = _problem(8, 771, 2048 + 5, bias=True)
    all_rows = cpu.linear(x, w, b)  # (8, out)
    for m in range(8):
        assert torch.equal(cpu.linear(x[m], w, b), all_rows[m]), m
        assert torch.equal(cpu.linear(x[m : m + 1], w, b), all_rows[m : m + 1]), m
    for rows in range(1, 8):
        for first in range(8 - rows + 1):
            assert torch.equal(cpu.linear(x[first : first + rows], w, b), all_rows[first : first + rows]), (rows, first)
    for rows in range(1, 9):  # out not a multiple of the block: the last weight rows take the one-row path
        tail = slice(2048 - 7, 2048 + 5)
        assert torch.equal(cpu.linear(x[:rows], w[tail], b[tail]), all_rows[:rows, tail]), rows
    torch.set_num_threads(3 - torch.get_num_threads())  # the other thread count: the same bits
    assert torch.equal(cpu.linear(x, w, b), all_rows)


def test_leading_dimensions_and_layouts(kernel_runs):
    x, w, b = _problem(6, 40, 24, bias=True)
    x3 = x.view(2, 3, 40)  # (B, T, in)
    got = cpu.linear(x3, w, b)
    assert got.shape == (2, 3, 24) and kernel_runs() == 1
    torch.testing.assert_close(got, F.linear(x3, w, b), rtol=RTOL, atol=ATOL)
    assert torch.equal(got.view(6, 24), cpu.linear(x, w, b))
    strided = torch.randn(3, 80)[:, ::2]  # not contiguous: copied for the kernel
    w_t = torch.randn(40, 24).t()  # neither is the weight
    torch.testing.assert_close(cpu.linear(strided, w_t), F.linear(strided, w_t), rtol=RTOL, atol=ATOL)
    assert kernel_runs() == 3


def test_f_linear_where_the_kernel_does_not_apply(kernel_runs, monkeypatch):
    x, w, b = _problem(9, 16, 8, bias=True)
    torch.testing.assert_close(cpu.linear(x, w, b), F.linear(x, w, b), rtol=0, atol=0)  # 9 rows
    x3 = x[:8].view(2, 4, 16)
    torch.testing.assert_close(cpu.linear(x3.repeat(1, 2, 1), w, b), F.linear(x3.repeat(1, 2, 1), w, b), rtol=0,
                               atol=0)  # 16 rows in (2, 8, in)
    for dtype in (torch.float64, torch.bfloat16, torch.float16):
        xd, wd, bd = x[:2].to(dtype), w.to(dtype), b.to(dtype)
        got = cpu.linear(xd, wd, bd)
        assert got.dtype == dtype
        torch.testing.assert_close(got, F.linear(xd, wd, bd), rtol=0, atol=0)
    with pytest.raises(RuntimeError):  # F.linear's own error
        cpu.linear(x[:2], w[:, :15])
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast computes in bf16: F.linear's
        got = cpu.linear(x[:2], w, b)
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got, F.linear(x[:2], w, b), rtol=0, atol=0)
    with FlopCounterMode(display=False) as flops:  # a Python dispatch mode sees the matmul
        cpu.linear(x[:2], w, b)
    assert flops.get_total_flops() == 2 * 2 * 16 * 8
    batched = torch.vmap(lambda xi: cpu.linear(xi, w, b))(x[:8].view(4, 2, 16))  # a functorch transform
    torch.testing.assert_close(batched, F.linear(x[:8], w, b).view(4, 2, 8), rtol=RTOL, atol=ATOL)
    monkeypatch.setattr(cpu, "small_linear_enabled", False)
    torch.testing.assert_close(cpu.linear(x[:2], w, b), F.linear(x[:2], w, b), rtol=0, atol=0)
    assert kernel_runs() == 0


def test_gradients_flow_through_f_linear(kernel_runs):
    x, w, b = _problem(2, 16, 8, bias=True)
    for leaf in ((x,), (w,), (b,), (x, w, b)):
        for t in leaf:
            t.requires_grad_(True)
        cpu.linear(x, w, b).square().sum().backward()
        grads = [None if t.grad is None else t.grad.clone() for t in (x, w, b)]
        for t in (x, w, b):
            t.grad = None
        F.linear(x, w, b).square().sum().backward()
        for got, want in zip(grads, (x.grad, w.grad, b.grad), strict=True):
            assert (got is None) == (want is None)
            if want is not None:
                torch.testing.assert_close(got, want, rtol=0, atol=0)
        for t in (x, w, b):
            t.grad = None
            t.requires_grad_(False)
    assert kernel_runs() == 0
    w.requires_grad_(True)
    with torch.no_grad():  # the same parameters without autograd: the kernel
        cpu.linear(x, w, b)
    with torch.inference_mode():
        cpu.linear(x, w, b)
    assert kernel_runs() == 2


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated")
def test_jit_trace_records_the_matmul(kernel_runs):
    """A traced function must contain the matmul, not the kernel's output as a constant."""
    x, w, b = _problem(2, 16, 8, bias=True)
    traced = torch.jit.trace(lambda xi: cpu.linear(xi, w, b), (x,), check_trace=False)
    assert kernel_runs() == 0
    x2 = torch.randn(2, 16)
    torch.testing.assert_close(traced(x2), F.linear(x2, w, b), rtol=RTOL, atol=ATOL)


def test_poisoned_outputs_are_all_written():
    assert cpu.poison_outputs  # tests/ops/conftest.py: the kernel pre-fills its outputs with NaN
    for rows in range(1, 9):
        for in_features, out_features in ((13, 29), (1, 1), (768, 65)):
            x, w, b = _problem(rows, in_features, out_features, bias=rows % 2 == 0)
            assert torch.isfinite(cpu.linear(x, w, b)).all(), (rows, in_features, out_features)
            assert torch.isfinite(cpu._ext.small_linear(x, w, b, True)).all(), (rows, in_features, out_features)


def test_small_linear_rejects_what_it_cannot_run():
    x, w, _ = _problem(9, 16, 8, bias=False)
    with pytest.raises(RuntimeError, match="1 to 8 rows"):
        cpu._ext.small_linear(x, w, None, False)
    with pytest.raises(RuntimeError, match="float32"):
        cpu._ext.small_linear(x[:2].double(), w.double(), None, False)
    with pytest.raises(RuntimeError, match="x \\(M, in\\) and weight"):
        cpu._ext.small_linear(x[:2], w[:, :15], None, False)


def _tiny_model() -> SRULMForCausalLM:
    torch.manual_seed(0)
    config = SRULMConfig(vocab_size=50, hidden_size=24, num_hidden_layers=2, projection_size=8,
                         num_attention_heads=2, attention_every_n_layers=2)
    return SRULMForCausalLM(config).eval()


def test_model_logits_with_and_without_the_kernel(kernel_runs, monkeypatch):
    """The model's projections and head run the kernel when decoding (a 3-token verification-sized forward
    on a cache, then a step), with F.linear's logits within fp32 tolerance."""
    model = _tiny_model()
    ids = torch.randint(1, 50, (1, 7))

    def decode() -> torch.Tensor:
        with torch.no_grad():
            cache = model(ids[:, :3], use_cache=True).cache
            verify = model(ids[:, 3:6], cache=cache, use_cache=True)
            step = model(ids[:, 6:], cache=verify.cache, use_cache=True)
        return torch.cat([verify.logits, step.logits], dim=1)

    fast = decode()
    assert kernel_runs() > 0
    monkeypatch.setattr(cpu, "small_linear_enabled", False)  # what SRU_LM_NO_SMALL_LINEAR=1 / NO_CPU_EXT=1 do
    runs = kernel_runs()
    slow = decode()
    assert kernel_runs() == runs
    torch.testing.assert_close(fast, slow, rtol=RTOL, atol=ATOL)


def test_model_linears_are_nn_linear_and_load_old_checkpoints():
    """The projections are nn.Linear subclasses with nn.Linear's parameters: a state dict saved when they were
    plain nn.Linear loads strictly, `_init_weights` still finds them, and the head stays tied."""
    model = _tiny_model()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert {"lm_head", "model.layers.0.in_proj", "model.layers.0.out_proj", "model.layers.1.attention.kv_proj"} \
        <= set(linears)
    assert all(type(m) is not nn.Linear for m in linears.values())  # all of them run the kernel

    old = _tiny_model()  # the same model built from plain nn.Linear, as before the kernel
    for name, m in list(old.named_modules()):
        if isinstance(m, nn.Linear):
            plain = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
            plain.load_state_dict(m.state_dict())
            parent, _, child = name.rpartition(".")
            setattr(old.get_submodule(parent) if parent else old, child, plain)
    old.lm_head.weight = old.model.embed_tokens.weight  # tied, as saved
    with torch.no_grad():
        for p in old.parameters():
            p.add_(torch.randn_like(p))
    old_state = old.state_dict()
    assert old_state.keys() == model.state_dict().keys()
    model.load_state_dict(old_state, strict=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, old_state[key]), key

    in_proj = model.model.layers[0].in_proj  # _init_weights' nn.Linear branch initializes it
    in_proj.weight.data.zero_()
    model._init_weights(in_proj)
    assert in_proj.weight.abs().sum() > 0
