"""The C++ CPU kernel as torch.library custom ops: opcheck, and torch.compile(fullgraph=True) / torch.export
(static and dynamic shapes) through sru_recurrence, sru_step and sru_step_ with eager's outputs and gradients."""

from __future__ import annotations

import shutil

import pytest
import torch

from sru_lm.ops import cpu, sru_recurrence, sru_step, sru_step_

pytestmark = [
    pytest.mark.skipif(not cpu.available(), reason=f"CPU kernel unavailable: {cpu.why_unavailable()}"),
]
needs_compiler = pytest.mark.skipif(shutil.which("c++") is None, reason="torch.compile's CPU backend needs a compiler")
OPCHECK_UTILS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


def inputs(L=9, B=3, H=20, bidirectional=False, k=3, grad=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    D = 2 if bidirectional else 1
    U = torch.randn(L, B, D * k * H, generator=g)
    x = torch.randn(L, B, D * H, generator=g) if k == 3 else None
    v, b = torch.rand(D, 2, H, generator=g) - 0.5, torch.randn(D, 2, H, generator=g) * 0.5
    c0 = torch.randn(B, D * H, generator=g)
    mask = torch.zeros(L, B, dtype=torch.bool)
    mask[-2:, 1] = True
    drop = (torch.rand(B, D * H, generator=g) < 0.7).float() / 0.7
    ts = [t.requires_grad_(grad) if t is not None else None for t in (U, x, v, b, c0)]
    return (*ts, mask, drop, bidirectional, 1.2)


@pytest.mark.parametrize("bidirectional,k", [(False, 3), (True, 4)], ids=["uni-k3", "bi-k4"])
def test_opcheck_scan(bidirectional, k):
    U, x, v, b, c0, mask, drop, bi, scale = inputs(bidirectional=bidirectional, k=k)
    for save in (True, False):
        torch.library.opcheck(torch.ops.sru_lm.cpu_scan_fwd, (U, x, v, b, c0, mask, drop, bi, scale, save),
                              test_utils=OPCHECK_UTILS)
    h, c_last, c_all = torch.ops.sru_lm.cpu_scan_fwd(U.detach(), x, v.detach(), b.detach(), c0.detach(), mask,
                                                      drop, bi, scale, True)
    args = (U.detach(), None if x is None else x.detach(), v.detach(), b.detach(), c0.detach(), mask, drop, bi,
            scale, c_all, torch.randn_like(h), torch.randn_like(c_last))
    torch.library.opcheck(torch.ops.sru_lm.cpu_scan_bwd, args, test_utils=OPCHECK_UTILS[:3])


def test_opcheck_steps():
    U, x, v, b, c0, mask, drop, _, scale = inputs(grad=False)
    step_args = (U[0], x[0], v, b, c0, mask[-1], drop, scale)
    torch.library.opcheck(torch.ops.sru_lm.cpu_step, step_args, test_utils=OPCHECK_UTILS[:3])
    h_out = torch.empty(c0.shape)
    torch.library.opcheck(torch.ops.sru_lm.sru_step_, (U[0], x[0], v, b, c0.clone(), h_out, mask[-1], drop, scale),
                          test_utils=("test_schema", "test_faketensor"))


def _grads(out, ts):
    h, c = out
    w = torch.linspace(-1, 1, h.numel()).view(h.shape)
    ts = [t for t in ts if t is not None]
    return torch.autograd.grad((h * w).sum() + c.sum(), ts)


def _same(got, want):
    for a, e in zip(got, want, strict=True):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5)


@needs_compiler
@pytest.mark.slow
@pytest.mark.parametrize("bidirectional,k", [(False, 3), (True, 4)], ids=["uni-k3", "bi-k4"])
def test_compile_fullgraph_matches_eager(bidirectional, k):
    torch._dynamo.reset()
    args = inputs(bidirectional=bidirectional, k=k)

    def fn(U, x, v, b, c0, mask, drop):
        return sru_recurrence(U, x, v, b, c0, mask, drop, bidirectional, 1.2)

    want = fn(*args[:7])
    got = torch.compile(fn, fullgraph=True, dynamic=False)(*args[:7])
    _same(got, want)
    _same(_grads(got, args[:5]), _grads(want, args[:5]))

    def step(U, x, v, b, c, mask, drop):  # decode: the one-call C++ step, no autograd
        return sru_step(U, x, v, b, c, mask, drop, 1.2)

    if not bidirectional:
        with torch.no_grad():
            step_args = (args[0][0], None if x_none(args) else args[1][0], *args[2:5], args[5][-1], args[6])
            _same(torch.compile(step, fullgraph=True)(*step_args), step(*step_args))


def x_none(args) -> bool:
    return args[1] is None


@needs_compiler
@pytest.mark.slow
def test_compile_inplace_step():
    torch._dynamo.reset()
    U, x, v, b, c0, mask, drop, _, scale = inputs(grad=False)

    def step_(U, x, v, b, c, h_out, mask, drop):
        sru_step_(U, x, v, b, c, h_out, mask, drop, 1.2)

    c_eager, h_eager = c0.clone(), torch.full(c0.shape, float("nan"))
    c_comp, h_comp = c0.clone(), torch.full(c0.shape, float("nan"))
    compiled = torch.compile(step_, fullgraph=True)
    for t in range(3):
        step_(U[t], x[t], v, b, c_eager, h_eager, mask[t], drop)
        compiled(U[t], x[t], v, b, c_comp, h_comp, mask[t], drop)
        _same((h_comp, c_comp), (h_eager, c_eager))


class Recurrence(torch.nn.Module):
    def __init__(self, bidirectional: bool):
        super().__init__()
        self.bidirectional = bidirectional

    def forward(self, U, x, v, b, c0, mask, drop):
        return sru_recurrence(U, x, v, b, c0, mask, drop, self.bidirectional, 1.2)


class Step(torch.nn.Module):
    def forward(self, U, x, v, b, c, mask, drop):
        return sru_step(U, x, v, b, c, mask, drop, 1.2)


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_export_matches_eager(dynamic, bidirectional):
    args = inputs(bidirectional=bidirectional, grad=False)[:7]
    shapes = None
    if dynamic:
        L, B = torch.export.Dim("L", min=2), torch.export.Dim("B", min=2)
        shapes = ({0: L, 1: B}, {0: L, 1: B}, None, None, {0: B}, {0: L, 1: B}, {0: B})
    ep = torch.export.export(Recurrence(bidirectional), args, dynamic_shapes=shapes)
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert "sru_lm.cpu_scan_fwd.default" in targets, targets
    new = inputs(L=14, B=5, bidirectional=bidirectional, grad=False, seed=1)[:7] if dynamic else args
    _same(ep.module()(*new), Recurrence(bidirectional)(*new))

    if not bidirectional:  # the decode step
        step_args = (args[0][0], args[1][0], *args[2:5], args[5][-1], args[6])
        step_shapes = None
        if dynamic:
            B = torch.export.Dim("B", min=2)
            step_shapes = ({0: B}, {0: B}, None, None, {0: B}, {0: B}, {0: B})
        ep = torch.export.export(Step(), step_args, dynamic_shapes=step_shapes)
        _same(ep.module()(*step_args), Step()(*step_args))


def test_export_training_graph_has_the_backward_op():
    """Exported with gradients (joint graph): the forward saves states and autograd reaches cpu_scan_bwd."""
    args = inputs(grad=True)[:7]
    ep = torch.export.export(Recurrence(False), args)
    out = ep.module()(*args)
    _same(_grads(out, args[:5]), _grads(Recurrence(False)(*args), args[:5]))
