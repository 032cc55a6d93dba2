"""The pure-torch recurrence that ships with saved models (for loading without sru_lm) against the spec."""

from __future__ import annotations

import pytest
import torch

from sru_lm.models import sru_backend
from sru_lm.ops import sru_recurrence_ref, sru_step

TOL = dict(atol=1e-5, rtol=1e-5)


def test_package_uses_the_sru_lm_ops_dispatcher():
    assert sru_backend.FAST_PATH
    assert sru_backend.sru_step is sru_step


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("k", [3, 4])
def test_fallback_recurrence_matches_reference(bidirectional, k):
    torch.manual_seed(0)
    L, B, H = 13, 3, 10
    D = 2 if bidirectional else 1
    U = torch.randn(L, B, D * k * H, requires_grad=True)
    x = torch.randn(L, B, D * H, requires_grad=True) if k == 3 else None
    v, b = torch.randn(D, 2, H, requires_grad=True), torch.randn(D, 2, H, requires_grad=True)
    c0 = torch.randn(B, D * H)
    mask = torch.zeros(L, B, dtype=torch.bool)
    mask[:4, 1] = True  # left padding
    mask[-3:, 2] = True  # right padding
    drop = torch.rand(B, D * H) + 0.5
    args = (U, x, v, b, c0, mask, drop, bidirectional, 1.3)
    h, c = sru_backend.sru_recurrence_torch(*args)
    h_ref, c_ref = sru_recurrence_ref(*args)
    torch.testing.assert_close(h, h_ref, **TOL)
    torch.testing.assert_close(c, c_ref, **TOL)
    inputs = [t for t in (U, x, v, b) if t is not None]
    w = torch.randn_like(h)
    g = torch.autograd.grad((h * w).sum() + c.sum(), inputs)
    g_ref = torch.autograd.grad((h_ref * w).sum() + c_ref.sum(), inputs)
    for a, r in zip(g, g_ref, strict=True):
        torch.testing.assert_close(a, r, **TOL)


def test_fallback_step_matches_ops_step():
    torch.manual_seed(0)
    B, H = 4, 6
    U, x = torch.randn(B, 3 * H), torch.randn(B, H)
    v, b, c = torch.randn(1, 2, H), torch.randn(1, 2, H), torch.randn(B, H)
    pad = torch.tensor([False, True, False, False])
    h, c_new = sru_backend.sru_step_torch(U, x, v, b, c, pad, None, 1.1)
    h_ref, c_ref = sru_step(U, x, v, b, c, pad, None, 1.1)
    torch.testing.assert_close(h, h_ref, **TOL)
    torch.testing.assert_close(c_new, c_ref, **TOL)
    assert h[1].abs().max() == 0 and torch.equal(c_new[1], c[1])
