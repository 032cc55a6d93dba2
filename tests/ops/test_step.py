"""``sru_step`` on every path equals the full recurrence fed one token at a time: outputs, states with
padding and dropout, and gradients through a chain of steps."""

from __future__ import annotations

import pytest
import torch

from sru_lm.ops import cpu, sru_recurrence_ref, sru_step

# (backend, whether inputs require grad): "reference" is the torch step; "cpu" the one-call C++ step;
# "cpu-autograd" the CPU path when gradients are needed (the autograd Function on a length-1 sequence).
PATHS = [
    pytest.param("reference", False, id="reference"),
    pytest.param("cpu", False, id="cpu", marks=pytest.mark.skipif(not cpu.available(), reason="no CPU kernel")),
    pytest.param("cpu", True, id="cpu-autograd",
                 marks=pytest.mark.skipif(not cpu.available(), reason="no CPU kernel")),
]
DTYPES = [pytest.param(d, id=str(d).removeprefix("torch.")) for d in (torch.float32, torch.bfloat16, torch.float16)]


def steps(p, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Run p token by token through sru_step; returns (h (L, B, H), final c)."""
    L, B = p.U.shape[:2]
    H = p.v.shape[-1]
    c = torch.zeros(B, H) if p.initial_state is None else p.initial_state
    hs = []
    for t in range(L):
        h, c = sru_step(
            p.U[t], None if p.x is None else p.x[t], p.v, p.b, c,
            None if p.mask_pad is None else p.mask_pad[t], p.dropout_mask, p.scale_x, backend=backend,
        )
        assert h.dtype == p.U.dtype and c.dtype == torch.float32
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
    ("U", torch.randn(B_, 5 * H_)),
    ("c", torch.randn(B_ + 1, H_)),
    ("v", torch.randn(2, 2, H_)),
    ("b", torch.randn(1, 2, H_ + 1)),
    ("x", None),
    ("x", torch.randn(B_, H_ + 1)),
    ("mask_pad", torch.zeros(B_ + 1, dtype=torch.bool)),
    ("mask_pad", torch.zeros(B_)),
    ("dropout_mask", torch.ones(B_, H_ + 1)),
]


@pytest.mark.parametrize("name,value", BAD, ids=[f"{n}-{i}" for i, (n, _) in enumerate(BAD)])
def test_step_input_errors(name, value):
    args = dict(GOOD)
    args[name] = value
    with pytest.raises(ValueError, match=name if name != "b" else "v and b"):
        sru_step(**args)
