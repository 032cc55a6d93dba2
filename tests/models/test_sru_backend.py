"""The file that ships with saved models: it holds the spec, and its entry points run sru_lm.ops when
importable and the spec (logged once) when not."""

from __future__ import annotations

import logging

import pytest
import torch

import sru_lm.ops
from sru_lm.models import sru_backend


@pytest.fixture
def without_sru_lm(monkeypatch):
    """As remote code where sru_lm is not installed: importing it fails (until monkeypatch.undo())."""
    monkeypatch.setattr(sru_backend, "_ops", None)
    monkeypatch.setattr(sru_backend, "_ops_missing", False)
    real_import = __builtins__["__import__"] if isinstance(__builtins__, dict) else __builtins__.__import__

    def no_sru_lm(name, *args, **kwargs):
        if name.startswith("sru_lm"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr("builtins.__import__", no_sru_lm)


def test_package_uses_the_sru_lm_ops_dispatcher():
    assert sru_backend.FAST_PATH
    assert sru_lm.ops.sru_recurrence is sru_backend.sru_recurrence  # one public function, documented once
    assert sru_lm.ops.sru_recurrence_ref is sru_backend.sru_recurrence_ref  # one spec
    assert sru_lm.ops.sru_step_ref is sru_backend.sru_step_ref


def test_the_backend_reaches_the_dispatcher(monkeypatch):
    """backend= is passed through (the model family passes config.sru_backend)."""
    seen = []
    real = sru_lm.ops.recurrence.select_backend
    monkeypatch.setattr(sru_lm.ops.recurrence, "select_backend", lambda U, backend=None: seen.append(backend)
                        or real(U, backend))
    U, x, v, b = torch.randn(3, 2, 12), torch.randn(3, 2, 4), torch.randn(1, 2, 4), torch.randn(1, 2, 4)
    sru_backend.sru_recurrence(U, x, v, b, backend="reference")
    sru_backend.sru_step(U[0], x[0], v, b, torch.zeros(2, 4), backend="torch")
    assert seen == ["reference", "torch"]
    in_place = []
    monkeypatch.setattr(sru_lm.ops.step, "select_backend", lambda U, backend=None: in_place.append(backend)
                        or real(U, backend))
    sru_backend.sru_step_(U[0], x[0], v, b, torch.zeros(2, 4), torch.empty(2, 4), backend="reference")
    assert in_place == ["reference"]


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("k", [3, 4])
def test_without_sru_lm_the_spec_runs_logged_once(monkeypatch, without_sru_lm, caplog, bidirectional, k):
    """As remote code without sru_lm: the import fails at the first call, the spec runs, one warning."""
    torch.manual_seed(0)
    L, B, H = 13, 3, 10
    D = 2 if bidirectional else 1
    U = torch.randn(L, B, D * k * H)
    x = torch.randn(L, B, D * H) if k == 3 else None
    v, b = torch.randn(D, 2, H), torch.randn(D, 2, H)
    mask = torch.zeros(L, B, dtype=torch.bool)
    mask[:4, 1] = True
    args = (U, x, v, b, torch.randn(B, D * H), mask, torch.rand(B, D * H) + 0.5, bidirectional, 1.3)
    with caplog.at_level(logging.WARNING, logger=sru_backend.logger.name):
        for _ in range(2):
            h, c = sru_backend.sru_recurrence(*args)
        if not bidirectional:
            sru_backend.sru_step(U[0], None if x is None else x[0], v, b, args[4], mask[0])
    monkeypatch.undo()
    assert [r.getMessage() for r in caplog.records].count(caplog.records[0].getMessage()) == 1
    assert "sru_lm is not importable" in caplog.records[0].getMessage()
    h_ref, c_ref = sru_backend.sru_recurrence_ref(*args)
    assert torch.equal(h, h_ref) and torch.equal(c, c_ref)


def test_spec_step_is_the_spec_on_one_token():
    """sru_step_ref takes sru_step's arguments (mask_pad included) and is the recurrence on length 1."""
    torch.manual_seed(0)
    B, H = 4, 6
    U, x = torch.randn(B, 3 * H), torch.randn(B, H)
    v, b, c = torch.randn(1, 2, H), torch.randn(1, 2, H), torch.randn(B, H)
    pad = torch.tensor([False, True, False, False])
    drop = torch.rand(B, H) + 0.5
    h, c_new = sru_backend.sru_step_ref(U, x, v, b, c, pad, drop, 1.1)
    h_seq, c_seq = sru_backend.sru_recurrence_ref(U[None], x[None], v, b, c, pad[None], drop, False, 1.1)
    assert torch.equal(h, h_seq[0]) and torch.equal(c_new, c_seq)
    assert h[1].abs().max() == 0 and torch.equal(c_new[1], c[1])
    h_ops, c_ops = sru_backend.sru_step(U, x, v, b, c, pad, drop, 1.1)
    torch.testing.assert_close(h_ops, h, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c_ops, c_new, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("k", [3, 4])
def test_inplace_step_without_sru_lm_equals_the_op(monkeypatch, without_sru_lm, k):
    """The remote-code fallback of sru_step_ (the spec, copied into c and h_out) updates the same buffers to what
    sru_lm.ops.sru_step_ gives: the default backend within fp32 tolerance, backend="reference" bit for bit."""
    torch.manual_seed(0)
    B, H = 4, 100
    U = torch.randn(B, k * H)
    x = torch.randn(B, H) if k == 3 else None
    v, b, c0 = torch.randn(1, 2, H), torch.randn(1, 2, H), torch.randn(B, H)
    pad, drop = torch.tensor([False, True, False, False]), torch.rand(B, H) + 0.5
    c, h = c0.clone(), torch.full((B, H), float("nan"))
    ptr = c.data_ptr()
    for _ in range(2):  # the second step starts from the state the first wrote
        sru_backend.sru_step_(U, x, v, b, c, h, pad, drop, 1.3)
    assert sru_backend._ops_missing  # the spec ran
    monkeypatch.undo()
    assert c.data_ptr() == ptr and not h.isnan().any() and torch.equal(c[1], c0[1]) and h[1].abs().max() == 0
    for backend, tol in ((None, dict(rtol=1e-5, atol=1e-5)), ("reference", dict(rtol=0, atol=0))):
        c_op, h_op = c0.clone(), torch.full((B, H), float("nan"))
        for _ in range(2):
            sru_lm.ops.sru_step_(U, x, v, b, c_op, h_op, pad, drop, 1.3, backend=backend)
        torch.testing.assert_close(h_op, h, **tol)
        torch.testing.assert_close(c_op, c, **tol)
