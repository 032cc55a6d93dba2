"""Shared pieces of the ops tests: which backends run, random problems, dtype-aware comparison.

Backends: a test that takes a ``backend`` argument runs once per backend usable on this machine
(see :func:`pytest_generate_tests`). Another backend's test file reuses the whole suite by importing
the tests and naming its backends, e.g. for the Triton kernels under the interpreter::

    # tests/ops/test_recurrence_triton.py
    import os
    os.environ["TRITON_INTERPRET"] = "1"   # before triton is imported
    from test_recurrence import *          # noqa: F401,F403  (the backend-parametrized tests)
    BACKENDS_UNDER_TEST = ["triton"]
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from sru_lm.ops import cpu


def cpu_backends() -> list:
    """The fast backends that run on CPU, tested against the reference: the C++ kernel and the scripted
    loops (backend "torch", the fallback where no compiler exists). The reference backend itself is checked
    once (``test_reference_backend_is_the_spec``). The C++ kernel is skipped, with the reason, where it
    cannot be built; ``test_cpu_extension_builds`` fails where it should have been."""
    why = "" if cpu.available() else cpu.why_unavailable()
    return [pytest.param("cpu", marks=pytest.mark.skipif(bool(why), reason=f"CPU kernel: {why}")), "torch"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        backends = getattr(metafunc.module, "BACKENDS_UNDER_TEST", None) or cpu_backends()
        metafunc.parametrize("backend", backends)


@pytest.fixture(autouse=True)
def poison_kernel_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kernels pre-fill their outputs with NaN, so an element they forget to write fails a test."""
    monkeypatch.setattr(cpu, "poison_outputs", True)


# Per input dtype: (atol as a fraction of the largest expected magnitude, rtol). The kernels and the
# reference both compute in fp32 and round once, so low-precision results may differ by one ulp:
# 2^-8..2^-7 relative for bf16, 2^-11..2^-10 for fp16. fp32 differs by accumulated rounding only.
TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.bfloat16: (1e-3, 1.6e-2),
    torch.float16: (2e-4, 2e-3),
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, name: str) -> None:
    """Elementwise ``|a - e| <= atol * max|e| + rtol * |e|`` with the tolerances of the input dtype."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype} != {expected.dtype}"
    a, e = actual.double(), expected.double()
    assert not torch.isnan(a).any(), f"{name}: NaN in the result (an element never written?)"
    atol, rtol = TOLERANCES[dtype]
    bound = atol * max(1.0, e.abs().max().item()) + rtol * e.abs()
    err = (a - e).abs()
    excess = err - bound
    if (excess > 0).any():
        where = tuple(int(i) for i in torch.unravel_index(excess.argmax(), err.shape))
        raise AssertionError(
            f"{name} ({dtype}): {int((excess > 0).sum())}/{err.numel()} elements out of tolerance; worst at "
            f"{where}: got {a[where].item():.6g}, expected {e[where].item():.6g}"
        )


@dataclass
class Problem:
    """One random recurrence problem: the arguments of ``sru_recurrence`` after ``U, x, v, b``."""

    U: torch.Tensor
    x: torch.Tensor | None
    v: torch.Tensor
    b: torch.Tensor
    initial_state: torch.Tensor | None
    mask_pad: torch.Tensor | None
    dropout_mask: torch.Tensor | None
    bidirectional: bool
    scale_x: float
    lengths: torch.Tensor

    def args(self) -> tuple:
        return (self.U, self.x, self.v, self.b, self.initial_state, self.mask_pad, self.dropout_mask,
                self.bidirectional, self.scale_x)

    def differentiable(self) -> dict[str, torch.Tensor]:
        named = {"U": self.U, "x": self.x, "v": self.v, "b": self.b, "initial_state": self.initial_state}
        return {k: t for k, t in named.items() if t is not None}

    def fresh(self) -> Problem:
        """The same values in new leaf tensors (so two backends' gradients do not mix)."""
        def leaf(t):
            return None if t is None else t.detach().clone().requires_grad_(t.is_floating_point())
        return Problem(leaf(self.U), leaf(self.x), leaf(self.v), leaf(self.b), leaf(self.initial_state),
                       self.mask_pad, self.dropout_mask, self.bidirectional, self.scale_x, self.lengths)


def make_problem(L: int = 63, B: int = 3, H: int = 100, *, bidirectional: bool = False, k: int = 3,
                 init: bool = False, pad: bool = False, dropout: bool = False, scale_x: float = 1.0,
                 dtype: torch.dtype = torch.float32, seed: int = 0) -> Problem:
    """Random inputs; with ``pad`` the sequence lengths are L (row 0), 0 (row 1: fully padded) and
    random in [1, L) for the other rows."""
    g = torch.Generator().manual_seed(seed)
    D = 2 if bidirectional else 1
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    U = torch.randn(L, B, D * k * H, generator=g).to(dtype)
    x = torch.randn(L, B, D * H, generator=g).to(dtype) if k == 3 else None
    v = (torch.rand(D, 2, H, generator=g, dtype=acc) * 2 - 1)
    b = torch.randn(D, 2, H, generator=g, dtype=acc) * 0.5
    c0 = torch.randn(B, D * H, generator=g, dtype=acc) if init else None
    lengths = torch.full((B,), L)
    mask_pad = None
    if pad:
        lengths = torch.randint(1, L, (B,), generator=g)
        lengths[0] = L
        if B > 1:
            lengths[1] = 0
        mask_pad = torch.arange(L).unsqueeze(1) >= lengths.unsqueeze(0)  # (L, B), True = pad
    dropout_mask = None
    if dropout:
        keep = 0.7
        dropout_mask = (torch.rand(B, D * H, generator=g, dtype=acc) < keep).to(acc) / keep
    p = Problem(U, x, v, b, c0, mask_pad, dropout_mask, bidirectional, scale_x, lengths)
    return p.fresh()


@pytest.fixture
def problem():
    """``problem(**options)`` -> a random :class:`Problem` (see :func:`make_problem`)."""
    return make_problem


@pytest.fixture
def close():
    """``close(actual, expected, input_dtype, name)``: see :func:`assert_close`."""
    return assert_close
