"""Every recurrence backend against the reference: outputs, final state and every gradient, at awkward
sizes (L=63, H=100, B=3), with every option, in fp32, bf16 and fp16; gradcheck of the C++ op and the
scripted Function in fp64; gradients laid out like their inputs; padding semantics; input checks and
backend dispatch."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import shutil
import zlib

import pytest
import torch

from sru_lm.ops import cpu, recurrence, scripted, select_backend, sru_recurrence, sru_recurrence_ref

# Imported by other backends' test files (see conftest.py): the tests parametrized by `backend`.
__all__ = [
    "test_matches_reference",
    "test_fp64_matches_reference",
    "test_some_inputs_without_grad",
    "test_noncontiguous_inputs",
    "test_arbitrary_padding",
    "test_wide_hidden",
    "test_empty_sequence",
    "test_final_state_is_last_real_token",
    "test_grads_are_laid_out_like_inputs",
]

OPTIONS = {
    "plain": {},
    "init": {"init": True},
    "pad": {"pad": True},
    "dropout_scale": {"dropout": True, "scale_x": 0.6},
    "all": {"init": True, "pad": True, "dropout": True, "scale_x": 1.3},
}


def case_id(dtype, bi, k, opt):
    return f"{str(dtype).removeprefix('torch.')}-{'bi' if bi else 'uni'}-k{k}-{opt}"


# fp32: every layout with every option on its own and all together; bf16/fp16: all options together.
_cases = [(torch.float32, bi, k, opt) for bi in (False, True) for k in (3, 4) for opt in OPTIONS] + [
    (dt, bi, k, "all") for dt in (torch.bfloat16, torch.float16) for bi in (False, True) for k in (3, 4)
]
CASES = [pytest.param(*c, id=case_id(*c)) for c in _cases]


@contextlib.contextmanager
def one_thread():
    """For the reference loop: its ops are tiny, and on a busy 2-core machine each OpenMP barrier of a
    2-thread op can stall for milliseconds (measured: 0.12 s per case on 1 thread, 1-12 s on 2)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def run(p, backend: str | None, seed: int = 1, grads: bool = True) -> dict[str, torch.Tensor]:
    """Forward on fresh copies of p's tensors, then backward with random output gradients.
    backend None runs the reference function itself (the spec) rather than through the dispatcher."""
    q = p.fresh()
    with one_thread() if backend in (None, "reference") else contextlib.nullcontext():
        if backend is None:
            h, c = sru_recurrence_ref(*q.args())
        else:
            h, c = sru_recurrence(*q.args(), backend=backend)
        out = {"h": h.detach(), "c_last": c.detach()}
        if grads:
            g = torch.Generator().manual_seed(seed)
            gh = torch.randn(h.shape, generator=g).to(h.dtype)
            gc = torch.randn(c.shape, generator=g).to(c.dtype)
            inputs = q.differentiable()
            got = torch.autograd.grad((h, c), list(inputs.values()), (gh, gc))
            out.update({f"grad_{name}": t for name, t in zip(inputs, got, strict=True)})
    return out


def compare(got: dict, want: dict, dtype: torch.dtype, close) -> None:
    assert got.keys() == want.keys()
    for name in want:
        close(got[name], want[name], dtype, name)


_expected: dict[str, dict[str, torch.Tensor]] = {}


@pytest.mark.parametrize("dtype,bidirectional,k,options", CASES)
def test_matches_reference(backend, dtype, bidirectional, k, options, problem, close):
    key = case_id(dtype, bidirectional, k, options)
    p = problem(bidirectional=bidirectional, k=k, dtype=dtype, seed=zlib.crc32(key.encode()), **OPTIONS[options])
    got = run(p, backend)
    if key not in _expected:  # the reference's answer, once per session whatever the number of backends
        _expected[key] = run(p, None)
    assert got["h"].dtype == dtype and got["c_last"].dtype == torch.float32
    compare(got, _expected[key], dtype, close)


def test_arbitrary_padding(backend, problem, close):
    """Padding anywhere, not only at the end: left-padded rows and random holes."""
    p = problem(L=40, B=4, H=36, bidirectional=True, k=3, init=True, dropout=True, scale_x=0.8)
    g = torch.Generator().manual_seed(7)
    mask = torch.rand(40, 4, generator=g) < 0.3  # holes
    mask[:25, 0] = True  # row 0 left-padded
    mask[:, 1] = False  # row 1 unpadded
    p.mask_pad = mask
    compare(run(p, backend), run(p, None), torch.float32, close)


def test_wide_hidden(backend, problem, close):
    """H > 256 with a remainder: the kernel's widest columns plus a partial one."""
    p = problem(L=20, B=2, H=300, bidirectional=False, k=4, **OPTIONS["all"])
    compare(run(p, backend), run(p, None), torch.float32, close)


def test_empty_sequence(backend, problem):
    """L = 0: no outputs, the final state is the initial state, and its gradient passes through."""
    p = problem(L=1, B=2, H=8, bidirectional=True, init=True)
    U, x = p.U[:0].detach().requires_grad_(), p.x[:0].detach()
    h, c = sru_recurrence(U, x, p.v, p.b, p.initial_state, bidirectional=True, backend=backend)
    assert h.shape == (0, 2, 16)
    torch.testing.assert_close(c, p.initial_state.detach())
    g, = torch.autograd.grad(c.sum(), [p.initial_state])
    torch.testing.assert_close(g, torch.ones_like(g))


def test_reference_backend_is_the_spec(problem):
    p = problem(L=9, bidirectional=True, k=3, **OPTIONS["all"])
    got, want = run(p, "reference"), run(p, None)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0, msg=name)


def test_fp64_matches_reference(backend, problem, close):
    p = problem(L=20, H=12, bidirectional=True, k=3, dtype=torch.float64, **OPTIONS["all"])
    got = run(p, backend)
    assert got["c_last"].dtype == torch.float64
    compare(got, run(p, None), torch.float64, close)


@pytest.mark.parametrize("needs_grad", [(), ("U",), ("v", "b"), ("x", "initial_state")], ids=str)
def test_some_inputs_without_grad(backend, needs_grad, problem, close):
    """Only some inputs require grad (or none: inference under no_grad keeps no graph)."""
    p = problem(bidirectional=True, **OPTIONS["all"])
    for name, t in p.differentiable().items():
        t.requires_grad_(name in needs_grad)
    with torch.set_grad_enabled(bool(needs_grad)):
        h, c = sru_recurrence(*p.args(), backend=backend)
    with one_thread():
        want_h, want_c = sru_recurrence_ref(*p.args())
    close(h.detach(), want_h.detach(), torch.float32, "h")
    close(c.detach(), want_c.detach(), torch.float32, "c_last")
    if not needs_grad:
        assert h.grad_fn is None and c.grad_fn is None
        return
    inputs = [p.differentiable()[n] for n in needs_grad]
    got = torch.autograd.grad(h.sum() + c.sum(), inputs)
    with one_thread():
        want = torch.autograd.grad(want_h.sum() + want_c.sum(), inputs)
    for name, a, e in zip(needs_grad, got, want, strict=True):
        close(a, e, torch.float32, f"grad_{name}")


def test_noncontiguous_inputs(backend, problem, close):
    """U from a batch-first projection is a transposed view; x a strided slice."""
    p = problem(k=3, **OPTIONS["all"])
    L, B, _ = p.U.shape
    U = p.U.detach().transpose(0, 1).contiguous().transpose(0, 1).requires_grad_()  # (L, B, 3H), strides of (B, L, 3H)
    xx = torch.cat([p.x.detach(), p.x.detach()], dim=-1)[..., ::2].requires_grad_()  # stride 2 in the last dim
    assert not U.is_contiguous() and not xx.is_contiguous()
    args = (U, xx, *p.args()[2:])
    h, c = sru_recurrence(*args, backend=backend)
    with one_thread():
        want_h, want_c = sru_recurrence_ref(U, xx.detach().contiguous(), *p.args()[2:])
        want_gU, = torch.autograd.grad(want_h.sum() + want_c.sum(), [U])
    close(h.detach(), want_h.detach(), torch.float32, "h")
    close(c.detach(), want_c.detach(), torch.float32, "c_last")
    gU, = torch.autograd.grad(h.sum() + c.sum(), [U])
    close(gU, want_gU, torch.float32, "grad_U")


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_final_state_is_last_real_token(backend, bidirectional, problem, close):
    """With padding, each sequence's outputs and final state (both directions) equal those of the
    sequence run alone, unpadded; outputs at pads are exactly zero."""
    p = problem(L=17, B=4, H=20, bidirectional=bidirectional, k=3, init=True, pad=True, dropout=True)
    h, c = sru_recurrence(*p.args(), backend=backend)
    assert (h[p.mask_pad] == 0).all()
    for i, n in enumerate(p.lengths.tolist()):
        if n == 0:  # fully padded: the state is the initial state
            close(c[i], p.initial_state[i], torch.float32, f"c_last[{i}] (fully padded)")
            continue
        h_i, c_i = sru_recurrence(
            p.U[:n, i : i + 1], p.x[:n, i : i + 1], p.v, p.b, p.initial_state[i : i + 1], None,
            p.dropout_mask[i : i + 1], bidirectional, p.scale_x, backend=backend,
        )
        close(h[:n, i : i + 1], h_i, torch.float32, f"h[:{n}, {i}]")
        close(c[i : i + 1], c_i, torch.float32, f"c_last[{i}] (length {n})")


needs_cpu = pytest.mark.skipif(not cpu.available(), reason=f"CPU kernel unavailable: {cpu.why_unavailable()}")


# The differentiable fast paths, called directly (no dispatcher), for gradcheck.
FUNCTIONS = [
    pytest.param(cpu.sru_recurrence_cpu, id="cpu", marks=needs_cpu),
    pytest.param(scripted.sru_recurrence_torch, id="torch"),
]


@pytest.mark.parametrize("fn", FUNCTIONS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("k", [3, 4], ids=["k3", "k4"])
def test_gradcheck(fn, bidirectional, k, problem):
    p = problem(L=6, B=3, H=4, bidirectional=bidirectional, k=k, dtype=torch.float64, **OPTIONS["all"])
    inputs = tuple(p.differentiable().values())

    def run_fn(*ts):
        named = dict(zip(p.differentiable(), ts, strict=True))
        return fn(named["U"], named.get("x"), named["v"], named["b"], named["initial_state"], p.mask_pad,
                  p.dropout_mask, bidirectional, p.scale_x)

    assert torch.autograd.gradcheck(run_fn, inputs)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_grads_are_laid_out_like_inputs(backend, bidirectional, dtype, problem):
    """Every gradient has its input's dtype and strides: DDP copies a parameter's gradient whose strides
    differ from the parameter's, e.g. a (1, 2, H) slice of a (1, 4, H) buffer, which counts as contiguous
    but has strides (4H, H, 1)."""
    p = problem(L=7, B=3, H=10, bidirectional=bidirectional, k=3, init=True, dtype=dtype)
    inputs = (p.U, p.x, p.v, p.b, p.initial_state)
    h, c = sru_recurrence(*inputs, bidirectional=bidirectional, backend=backend)
    grads = torch.autograd.grad(h.float().sum() + c.sum(), inputs)
    for name, g, t in zip(("U", "x", "v", "b", "initial_state"), grads, inputs, strict=True):
        assert g.stride() == t.stride() and g.dtype == t.dtype, (name, g.stride(), t.stride())


def test_cpu_extension_builds():
    """Where a compiler and ninja exist the kernel must build; the other tests would only skip."""
    if shutil.which("c++") is None or importlib.util.find_spec("ninja") is None or cpu._disabled:
        pytest.skip("no C++ compiler or ninja here, or the kernel is switched off (SRU_LM_NO_CPU_EXT)")
    assert cpu.available(), cpu.why_unavailable()


# ---- input checks: a clear error naming the argument -------------------------------------------------

L_, B_, H_ = 5, 2, 4


def good_args(k: int = 3) -> dict:
    return {
        "U": torch.randn(L_, B_, k * H_),
        "x": torch.randn(L_, B_, H_) if k == 3 else None,
        "v": torch.randn(1, 2, H_),
        "b": torch.randn(1, 2, H_),
        "initial_state": torch.randn(B_, H_),
        "mask_pad": torch.zeros(L_, B_, dtype=torch.bool),
        "dropout_mask": torch.ones(B_, H_),
    }


BAD = [
    ("U", [1, 2, 3], TypeError),
    ("U", torch.randn(L_, 3 * H_), ValueError),
    ("U", torch.randint(0, 3, (L_, B_, 3 * H_)), TypeError),
    ("U", torch.randn(L_, B_, 5 * H_), ValueError),
    ("v", torch.randn(2, 2, H_), ValueError),
    ("b", torch.randn(1, 2, H_ + 1), ValueError),
    ("x", None, ValueError),
    ("x", torch.randn(L_, B_, H_ + 1), ValueError),
    ("x", torch.randn(L_, B_, H_, dtype=torch.float64), TypeError),
    ("initial_state", torch.randn(B_ + 1, H_), ValueError),
    ("initial_state", torch.zeros(B_, H_, dtype=torch.int64), TypeError),
    ("mask_pad", torch.zeros(L_ + 1, B_, dtype=torch.bool), ValueError),
    ("mask_pad", torch.zeros(L_, B_), TypeError),
    ("dropout_mask", torch.ones(B_, H_ + 1), ValueError),
    ("initial_state", torch.randn(B_, H_, device="meta"), ValueError),
]


@pytest.mark.parametrize("name,value,error", BAD, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(BAD)])
def test_input_errors(name, value, error):
    args = good_args()
    args[name] = value
    expected_word = "device" if isinstance(value, torch.Tensor) and value.device.type == "meta" else name
    with pytest.raises(error, match=expected_word):
        sru_recurrence(**args)


def test_input_errors_name_bidirectional_shapes():
    args = good_args()
    with pytest.raises(ValueError, match=r"v must have shape \(2, 2, H\)"):
        sru_recurrence(**args, bidirectional=True)


def test_k4_needs_no_x():
    args = good_args(k=4)
    h, c = sru_recurrence(**args)
    assert h.shape == (L_, B_, H_) and c.shape == (B_, H_)


# ---- backend dispatch --------------------------------------------------------------------------------


@needs_cpu
def test_cpu_is_chosen_on_cpu(monkeypatch):
    monkeypatch.setattr(recurrence, "ENV_BACKEND", None)
    assert select_backend(torch.zeros(1)) == "cpu"
    assert select_backend(torch.zeros(1), "reference") == "reference"
    monkeypatch.setattr(recurrence, "ENV_BACKEND", "reference")  # SRU_LM_BACKEND, as read at import
    assert select_backend(torch.zeros(1)) == "reference"
    with pytest.raises(ValueError, match="backend"):
        select_backend(torch.zeros(1), "fast")
    monkeypatch.setattr(recurrence, "ENV_BACKEND", None)
    for dtype in (torch.float64, torch.float16, torch.bfloat16):  # the kernel takes every dtype on CPU
        assert select_backend(torch.zeros(1, dtype=dtype)) == "cpu"


def test_explicit_backends_are_honoured_or_fall_back_logged(monkeypatch):
    monkeypatch.setattr(recurrence, "ENV_BACKEND", None)
    assert select_backend(torch.zeros(1), "torch") == "torch"
    assert select_backend(torch.zeros(1, dtype=torch.float64), "reference") == "reference"
    if cpu.available():  # Triton cannot compute fp64 (CPU tensors reach Triton under TRITON_INTERPRET=1)
        assert select_backend(torch.zeros(1, dtype=torch.float64), "triton") == "cpu"
    monkeypatch.setattr(cpu, "available", lambda: False)
    assert select_backend(torch.zeros(1), "cpu") == "torch"  # e.g. a config saved with "cpu", no compiler here
    assert select_backend(torch.zeros(1, dtype=torch.float64), "triton") == "torch"


def test_fallback_is_logged_once(monkeypatch, caplog):
    monkeypatch.setattr(recurrence, "ENV_BACKEND", None)
    monkeypatch.setattr(cpu, "available", lambda: False)
    monkeypatch.setattr(cpu, "why_unavailable", lambda: "no compiler (test)")
    monkeypatch.setattr(recurrence, "_warned", set())
    with caplog.at_level(logging.WARNING, logger=recurrence.logger.name):
        for _ in range(3):
            assert select_backend(torch.zeros(1)) == "torch"
    msgs = [r.getMessage() for r in caplog.records if "no compiler (test)" in r.getMessage()]
    assert len(msgs) == 1
    assert "install a C++ compiler" in msgs[0] and "ninja" in msgs[0]  # says how to get the fast path
    h, _ = sru_recurrence(**good_args())  # and the fallback computes
    assert h.shape == (L_, B_, H_)


def test_build_failure_is_reported(monkeypatch):
    monkeypatch.setattr(cpu, "_disabled", False)
    monkeypatch.setattr(cpu, "_ext", None)
    monkeypatch.setattr(cpu, "_error", "RuntimeError: Error building extension (test)")
    assert not cpu.available()
    assert "Error building extension" in cpu.why_unavailable()
    monkeypatch.setattr(cpu, "_disabled", True)
    assert not cpu.available() and "SRU_LM_NO_CPU_EXT" in cpu.why_unavailable()
