"""``sru_step`` and the in-place ``sru_step_`` on every path equal the full recurrence (the spec) fed one
token at a time: outputs, states with padding and dropout, and gradients through a chain of steps."""

from __future__ import annotations

import pytest
import torch

from sru_lm.ops import cpu, recurrence, sru_recurrence_ref, sru_step, sru_step_, sru_step_ref

no_cpu = pytest.mark.skipif(not cpu.available(), reason="no CPU kernel")
# (backend, whether inputs require grad): "reference" is the spec's step; "cpu" the one-call C++ step;
# "cpu-autograd" the CPU path when gradients are needed (the custom op on a length-1 sequence); "torch"
# the scripted loops (the no-compiler fallback), likewise with and without gradients.
PATHS = [
    pytest.param("reference", False, id="reference"),
    pytest.param("cpu", False, id="cpu", marks=no_cpu),
    pytest.param("cpu", True, id="cpu-autograd", marks=no_cpu),
    pytest.param("torch", False, id="torch"),
    pytest.param("torch", True, id="torch-autograd"),
]
DTYPES = [pytest.param(d, id=str(d).removeprefix("torch."))
          for d in (torch.float32, torch.bfloat16, torch.float16, torch.float64)]


def steps(p, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Run p token by token through sru_step; returns (h (L, B, H), final c)."""
    L, B = p.U.shape[:2]
    H = p.v.shape[-1]
    c = torch.zeros(B, H, dtype=p.v.dtype) if p.initial_state is None else p.initial_state
    hs = []
    for t in range(L):
        h, c = sru_step(
            p.U[t], None if p.x is None else p.x[t], p.v, p.b, c,
            None if p.mask_pad is None else p.mask_pad[t], p.dropout_mask, p.scale_x, backend=backend,
        )
        assert h.dtype == p.U.dtype and c.dtype == (torch.float64 if h.dtype == torch.float64 else torch.float32)
        hs.append(h)
    return torch.stack(hs), c


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [3, 4], ids=["k3", "k4"])
@pytest.mark.parametrize("path,with_grad", PATHS)
def test_steps_equal_full_recurrence(path, with_grad, k, dtype, problem, close):
    p = problem(L=12, B=4, H=100, k=k, init=True, pad=True, dropout=True, scale_x=1.3, dtype=dtype)
    if not with_grad:
        for t in p.differentiable().values():
            t.requires_grad_(False)
    h, c = steps(p, path)
    want_h, want_c = sru_recurrence_ref(*p.args())
    close(h.detach(), want_h.detach(), dtype, "h")
    close(c.detach(), want_c.detach(), dtype, "c")
    assert (h[p.mask_pad] == 0).all()
    if with_grad:
        inputs = list(p.differentiable().values())
        got = torch.autograd.grad(h.float().sum() + c.sum(), inputs)
        want = torch.autograd.grad(want_h.float().sum() + want_c.sum(), inputs)
        for name, a, e in zip(p.differentiable(), got, want, strict=True):
            close(a, e, dtype, f"grad_{name}")


@pytest.mark.parametrize("path,with_grad", PATHS[:2])
def test_step_without_optional_inputs(path, with_grad, problem, close):
    """No mask, no dropout, state from zeros (k=3, scale 1): the plainest decode call."""
    p = problem(L=5, B=1, H=64, k=3)
    for t in p.differentiable().values():
        t.requires_grad_(False)
    h, c = steps(p, path)
    want_h, want_c = sru_recurrence_ref(*p.args())
    close(h, want_h, torch.float32, "h")
    close(c, want_c, torch.float32, "c")


def test_step_accepts_low_precision_state(problem, close):
    """A state handed back in bf16 is widened to fp32; the result matches the fp32 state's result
    on the bf16-rounded values."""
    p = problem(L=1, B=2, H=16, init=True)
    c_bf16 = p.initial_state.detach().bfloat16()
    h, c = sru_step(p.U[0].detach(), p.x[0].detach(), p.v.detach(), p.b.detach(), c_bf16)
    want_h, want_c = sru_step(p.U[0].detach(), p.x[0].detach(), p.v.detach(), p.b.detach(), c_bf16.float())
    assert c.dtype == torch.float32
    close(h, want_h, torch.float32, "h")
    close(c, want_c, torch.float32, "c")


B_, H_ = 2, 4
GOOD = {
    "U": torch.randn(B_, 3 * H_), "x": torch.randn(B_, H_), "v": torch.randn(1, 2, H_),
    "b": torch.randn(1, 2, H_), "c": torch.randn(B_, H_),
}
BAD = [
    ("U", torch.randn(1, B_, 3 * H_)),
    ("U", torch.randint(0, 3, (B_, 3 * H_)), TypeError),
    ("c", torch.zeros(B_, H_, dtype=torch.int64), TypeError),
    ("U", torch.randn(B_, 5 * H_)),
    ("c", torch.randn(B_ + 1, H_)),
    ("v", torch.randn(2, 2, H_)),
    ("b", torch.randn(1, 2, H_ + 1)),
    ("x", None),
    ("x", torch.randn(B_, H_ + 1)),
    ("mask_pad", torch.zeros(B_ + 1, dtype=torch.bool)),
    ("mask_pad", torch.zeros(B_), TypeError),
    ("dropout_mask", torch.ones(B_, H_ + 1)),
]


BAD = [(n, v, *e) if e else (n, v, ValueError) for n, v, *e in BAD]


@pytest.mark.parametrize("name,value,error", BAD, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(BAD)])
def test_step_input_errors(name, value, error):
    args = dict(GOOD)
    args[name] = value
    with pytest.raises(error, match=name if name != "b" else "v and b"):
        sru_step(**args)
    args["h_out"] = torch.empty(B_, H_)  # the in-place step checks its arguments the same way
    with pytest.raises(error, match=name if name != "b" else "v and b"):
        sru_step_(**args)


def test_reference_step_is_the_spec(problem):
    """backend="reference" runs the spec's step, bit for bit, with the same arguments as sru_step."""
    p = problem(L=3, B=4, H=20, init=True, pad=True, dropout=True, scale_x=1.3)
    args = (p.U[2], p.x[2], p.v, p.b, p.initial_state, p.mask_pad[2], p.dropout_mask, p.scale_x)
    assert p.mask_pad[2].any()
    for got, want in zip(sru_step(*args, backend="reference"), sru_step_ref(*args), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [3, 4], ids=["k3", "k4"])
@pytest.mark.parametrize("path", [pytest.param("cpu", marks=no_cpu), "torch", "reference"])
def test_inplace_step(path, k, dtype, problem, close, monkeypatch):
    """sru_step_ updates c where it lies and fills a NaN-prefilled h_out; it equals the spec over a sequence."""
    monkeypatch.setattr(recurrence, "ENV_BACKEND", path)
    p = problem(L=9, B=4, H=100, k=k, init=True, pad=True, dropout=True, scale_x=1.3, dtype=dtype)
    for t in p.differentiable().values():
        t.requires_grad_(False)
    c = p.initial_state.clone()
    ptr, hs = c.data_ptr(), []
    for t in range(p.U.shape[0]):
        h_out = torch.full(c.shape, float("nan"), dtype=dtype)
        sru_step_(p.U[t], None if p.x is None else p.x[t], p.v, p.b, c, h_out, p.mask_pad[t], p.dropout_mask,
                  p.scale_x)
        hs.append(h_out)
    assert c.data_ptr() == ptr
    want_h, want_c = sru_recurrence_ref(*p.args())
    close(torch.stack(hs), want_h, dtype, "h")
    close(c, want_c, dtype, "c")


def test_inplace_step_checks_its_buffers():
    args = dict(GOOD, h_out=torch.empty(B_, H_))
    with pytest.raises(TypeError, match="c must be a contiguous torch.float32"):
        sru_step_(**dict(args, c=torch.zeros(B_, H_, dtype=torch.bfloat16)))
    with pytest.raises(ValueError, match="h_out"):
        sru_step_(**dict(args, h_out=torch.empty(B_, H_ + 1)))
