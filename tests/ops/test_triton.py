"""The Triton kernels against the reference recurrence.

Without a GPU the kernels run in Triton's interpreter on CPU tensors (TRITON_INTERPRET=1, set here
before triton is imported), at small awkward sizes: L of 7-13 steps cut into chunks of 4 or 8 (so the
last chunk is partial), H of 20-40 units in blocks of 16 (so the last block is partial). Tolerances:
fp32 outputs and gradients to 1e-5 absolute / 1e-4 relative (the kernel and the reference do the same
fp32 math in a different order); bf16 and fp16 outputs and gradients to 2 units in the last place of
the 16-bit result (both paths compute in fp32 and round once at the end). With CUDA the same tests run
compiled on the GPU, and the tests marked at real sizes run too.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
triton = pytest.importorskip("triton")

from sru_lm.ops import sru_recurrence, sru_step  # noqa: E402
from sru_lm.ops import triton_backend as tb  # noqa: E402
from sru_lm.ops.naive import sru_recurrence_ref, sru_step_ref  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _interpreter_problem() -> str:
    """Triton decides at import whether its own library runs interpreted: importing sru_lm imports
    torch._dynamo, which imports triton, so the variable must be set before anything imports sru_lm."""
    if DEVICE == "cuda":
        return ""
    from triton.runtime.interpreter import InterpretedFunction

    if isinstance(triton.language.zeros, InterpretedFunction):
        return ""
    return ("triton was imported before TRITON_INTERPRET=1 was set, so its kernels cannot run on CPU "
            "tensors: run `TRITON_INTERPRET=1 pytest ...` (scripts/run_tests.sh does)")


INTERPRETER_PROBLEM = _interpreter_problem()

TOL = {
    torch.float32: dict(atol=1e-5, rtol=1e-4),
    torch.bfloat16: dict(atol=2e-2, rtol=1.6e-2),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
}
SMALL = dict(block_h=16, t_fwd=4, t_bwd=4)


@pytest.fixture(autouse=True)
def _reset_config(request):
    if INTERPRETER_PROBLEM and request.node.originalname != "test_interpreter_is_on":
        pytest.skip(INTERPRETER_PROBLEM)
    yield
    tb.set_kernel_config()


def test_interpreter_is_on():
    """Without a GPU the kernels need the interpreter; this fails (the others skip) when it is off."""
    assert not INTERPRETER_PROBLEM, INTERPRETER_PROBLEM


def make_inputs(L, B, H, bidirectional, k, c0, pad, drop, dtype, device=DEVICE, seed=0):
    g = torch.Generator().manual_seed(seed)
    D = 2 if bidirectional else 1

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device)

    inp = dict(
        U=rnd(L, B, D * k * H).to(dtype).requires_grad_(),
        x=rnd(L, B, D * H).to(dtype).requires_grad_() if k == 3 else None,
        v=rnd(D, 2, H, scale=0.5).requires_grad_(),
        b=rnd(D, 2, H, scale=0.5).requires_grad_(),
        initial_state=rnd(B, D * H).requires_grad_() if c0 else None,
        mask_pad=None,
        dropout_mask=None,
        bidirectional=bidirectional,
        scale_x=1.3 if k == 3 else 1.0,
    )
    if pad:
        mask = torch.rand(L, B, generator=g) < 0.3
        mask[-3:, 0] = True  # right padding on row 0
        mask[:2, 1] = True  # left padding on row 1
        inp["mask_pad"] = mask.to(device)
    if drop:
        inp["dropout_mask"] = ((torch.rand(B, D * H, generator=g) < 0.7).float() / 0.7).to(device)
    return inp


def grads_of(fn, inp, seed=1):
    """Outputs of ``fn(**inp)`` and the gradients of a random projection of them w.r.t. every input."""
    h, c = fn(**inp)
    g = torch.Generator().manual_seed(seed)
    gh = torch.randn(h.shape, generator=g).to(h)
    gc = torch.randn(c.shape, generator=g).to(c)
    names = [n for n in ("U", "x", "v", "b", "initial_state") if inp[n] is not None]
    grads = torch.autograd.grad((h.float() * gh.float()).sum() + (c * gc).sum(), [inp[n] for n in names])
    return h, c, dict(zip(names, grads, strict=True))


def assert_close(actual, expected, dtype, what):
    torch.testing.assert_close(actual, expected, **TOL[dtype], msg=lambda m: f"{what}: {m}")


CASES = {
    # id: (L, B, H, bidirectional, k, initial_state, mask_pad, dropout_mask, dtype, config)
    "uni-k3-plain": (7, 3, 20, False, 3, False, False, False, torch.float32, dict(SMALL)),
    "uni-k3-all": (13, 3, 24, False, 3, True, True, True, torch.float32, dict(SMALL, t_bwd=8)),
    "uni-k4-saved-c": (11, 3, 20, False, 4, True, True, False, torch.float32, dict(SMALL, recompute=False)),
    "bi-k3-all-saved-c": (10, 3, 20, True, 3, True, True, True, torch.float32, dict(SMALL, recompute=False)),
    "bi-k4-dropout": (9, 2, 21, True, 4, False, False, True, torch.float32, dict(SMALL, t_fwd=8)),
    "uni-k3-all-bf16": (12, 3, 24, False, 3, True, True, True, torch.bfloat16, dict(SMALL)),
    "bi-k4-all-bf16": (8, 3, 20, True, 4, True, True, True, torch.bfloat16, dict(SMALL, recompute=False)),
    "uni-k3-pad-fp16": (9, 3, 20, False, 3, False, True, False, torch.float16, dict(SMALL, t_fwd=8, t_bwd=4)),
    # awkward sizes: 63 steps (partial last chunk of 16 and of 8), 100 units (partial last block of 32)
    "uni-k4-T63-H100": (63, 1, 100, False, 4, False, False, False, torch.float32,
                        dict(block_h=128, t_fwd=16, t_bwd=8)),
    # the "step" schedule: one step per tl.range iteration, pipelined STAGES deep; c saved per step
    "step-uni-k3-all-T63-H100": (63, 2, 100, False, 3, True, True, True, torch.float32,
                                 dict(sched="step", block_h=64, stages=3)),
    "step-bi-k4-all-bf16": (9, 2, 20, True, 4, True, True, True, torch.bfloat16,
                            dict(sched="step", block_h=16, stages=4)),
    "step-bi-k3-drop-fp16": (8, 3, 20, True, 3, False, False, True, torch.float16,
                             dict(sched="step", block_h=16, stages=1)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_scan_matches_reference(case):
    L, B, H, bi, k, c0, pad, drop, dtype, cfg = CASES[case]
    tb.set_kernel_config(**cfg)
    inp = make_inputs(L, B, H, bi, k, c0, pad, drop, dtype)
    h, c, grads = grads_of(lambda **kw: sru_recurrence(**kw, backend="triton"), inp)
    h_ref, c_ref, grads_ref = grads_of(sru_recurrence_ref, inp)
    assert h.dtype == dtype and c.dtype == torch.float32
    assert_close(h, h_ref, dtype, "h")
    assert_close(c, c_ref, dtype, "c_last")
    for name, g in grads_ref.items():
        assert grads[name].dtype == g.dtype, name
        assert_close(grads[name], g, dtype, f"d{name}")
    if pad:
        assert (h[inp["mask_pad"]] == 0).all(), "padded steps must output exactly zero"


@pytest.mark.parametrize("k, bidirectional, sched", [(3, True, "tile"), (4, False, "tile"), (3, True, "step")])
def test_every_output_element_is_written(k, bidirectional, sched):
    """Outputs start as NaN: an element a kernel forgets to write fails the comparison."""
    L, B, H, D = 7, 2, 20, 2 if bidirectional else 1
    inp = make_inputs(L, B, H, bidirectional, k, True, True, True, torch.float32)
    inp = {n: t.detach() if isinstance(t, torch.Tensor) else t for n, t in inp.items()}
    args = [inp[n] for n in ("U", "x", "v", "b", "initial_state", "mask_pad", "dropout_mask")]
    cfg = tb.KernelConfig(**SMALL, sched=sched, stages=2)
    h_ref, c_ref = sru_recurrence_ref(*args, bidirectional, inp["scale_x"])

    def nans(*shape, dtype=torch.float32):
        return torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)

    for save_every in (1, 4) if sched == "tile" else (1,):
        h, c_last, c_saved = nans(L, B, D * H), nans(B, D * H), nans(-(-L // save_every), B, D * H)
        tb._fwd_into(*args, bidirectional, inp["scale_x"], h, c_last, c_saved, save_every, cfg)
        for name, t in (("h", h), ("c_last", c_last), ("c_saved", c_saved)):
            assert not t.isnan().any(), f"{name} has unwritten elements (save_every={save_every})"
        assert_close(h, h_ref, torch.float32, "h")
        assert_close(c_last, c_ref, torch.float32, "c_last")

        dh, dc_last = torch.randn(L, B, D * H, device=DEVICE), torch.randn(B, D * H, device=DEVICE)
        dU, dx = nans(*inp["U"].shape), nans(L, B, D * H) if k == 3 else None
        partial, dc0 = nans(B, D, 4, H), nans(B, D * H)
        tb._bwd_into(dh, dc_last, inp["U"], inp["x"], inp["v"], inp["b"], inp["mask_pad"],
                     inp["dropout_mask"], c_saved, bidirectional, inp["scale_x"], save_every,
                     dU, dx, partial, dc0, cfg)
        for name, t in (("dU", dU), ("dx", dx), ("dv/db partials", partial), ("dc0", dc0)):
            assert t is None or not t.isnan().any(), f"{name} has unwritten elements (save_every={save_every})"


def test_backward_without_saved_state():
    """The backward op checkpoints the forward itself when the forward ran without saving c."""
    inp = make_inputs(6, 2, 16, False, 3, True, True, False, torch.float32)
    inp = {n: t.detach() if isinstance(t, torch.Tensor) else t for n, t in inp.items()}
    tb.set_kernel_config(**SMALL)
    args = (inp["U"], inp["x"], inp["v"], inp["b"], inp["initial_state"], inp["mask_pad"], inp["dropout_mask"])
    _, _, saved = torch.ops.sru_lm.sru_scan_fwd(*args, False, 1.3, 4)
    dh, dc = torch.randn(6, 2, 16, device=DEVICE), torch.randn(2, 16, device=DEVICE)
    a = torch.ops.sru_lm.sru_scan_bwd(dh, dc, *args, saved, False, 1.3, 4)
    b = torch.ops.sru_lm.sru_scan_bwd(dh, dc, *args, saved.new_empty(0, 0, 0), False, 1.3, 0)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y)


def test_gradient_through_final_state_only():
    """When only c_last is used, the autograd formula gets no gradient for h."""
    inp = make_inputs(6, 2, 16, True, 4, True, True, False, torch.float32)
    tb.set_kernel_config(**SMALL)
    names = ["U", "v", "b", "initial_state"]
    grads = torch.autograd.grad(sru_recurrence(**inp, backend="triton")[1].sum(), [inp[n] for n in names])
    grads_ref = torch.autograd.grad(sru_recurrence_ref(**inp)[1].sum(), [inp[n] for n in names])
    for name, g, r in zip(names, grads, grads_ref, strict=True):
        assert_close(g, r, torch.float32, f"d{name}")


def test_empty_sequence_passes_the_state_through():
    inp = make_inputs(0, 2, 20, True, 3, True, False, False, torch.float32)
    h, c = sru_recurrence(**inp, backend="triton")
    assert h.shape == (0, 2, 40) and torch.equal(c, inp["initial_state"])
    (dc0,) = torch.autograd.grad(c.sum(), [inp["initial_state"]])
    assert (dc0 == 1).all()


def test_inference_saves_nothing_and_matches():
    inp = make_inputs(8, 2, 20, False, 3, True, False, False, torch.float32)
    with torch.no_grad():
        h, c = sru_recurrence(**inp, backend="triton")
        h_ref, c_ref = sru_recurrence_ref(**inp)
    assert not h.requires_grad
    assert_close(h, h_ref, torch.float32, "h")
    assert_close(c, c_ref, torch.float32, "c")


def test_torch_compile_keeps_one_graph():
    """fullgraph=True fails on a graph break; aot_eager traces the backward through the fake kernels."""
    tb.set_kernel_config(**SMALL)
    inp = make_inputs(7, 2, 20, False, 3, True, True, False, torch.float32)

    def layer(U, x, v, b, c0, mask):
        h, c = sru_recurrence(U, x, v, b, c0, mask, None, False, 1.3, backend="triton")
        return (h * h).sum() + c.sum()

    args = [inp[n] for n in ("U", "x", "v", "b", "initial_state", "mask_pad")]
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    loss = compiled(*args)
    grads = torch.autograd.grad(loss, args[:5])
    loss_e = layer(*args)
    grads_e = torch.autograd.grad(loss_e, args[:5])
    torch.testing.assert_close(loss, loss_e)
    for g, ge in zip(grads, grads_e, strict=True):
        torch.testing.assert_close(g, ge)


def test_opcheck():
    """torch.library's own checks: schema, fake tensors, autograd registration."""
    inp = make_inputs(5, 2, 8, True, 3, True, True, True, torch.float32)
    args = [inp[n] for n in ("U", "x", "v", "b", "initial_state", "mask_pad", "dropout_mask")]
    tb.set_kernel_config(block_h=8, t_fwd=4, t_bwd=4)
    torch.library.opcheck(torch.ops.sru_lm.sru_scan_fwd, (*args, True, 1.3, 4),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


@pytest.mark.parametrize("k, pad, drop, dtype", [(3, True, True, torch.float32), (4, True, False, torch.bfloat16)])
def test_step_matches_reference(k, pad, drop, dtype):
    B, H = 3, 40
    g = torch.Generator().manual_seed(0)
    U = torch.randn(B, k * H, generator=g).to(dtype).to(DEVICE)
    x = torch.randn(B, H, generator=g).to(dtype).to(DEVICE) if k == 3 else None
    v, b = torch.randn(1, 2, H, generator=g).to(DEVICE), torch.randn(1, 2, H, generator=g).to(DEVICE)
    c = torch.randn(B, H, generator=g).to(DEVICE)
    mask = torch.tensor([False, True, False], device=DEVICE) if pad else None
    m = ((torch.rand(B, H, generator=g) < 0.7).float() / 0.7).to(DEVICE) if drop else None

    h_ref, c_ref = sru_step_ref(U, x, v, b, c, dropout_mask=m, scale_x=1.3)
    if pad:
        h_ref[1], c_ref[1] = 0, c[1]
    h, c_new = sru_step(U, x, v, b, c, mask, m, 1.3, backend="triton")
    assert_close(h, h_ref, dtype, "h")
    assert_close(c_new, c_ref, dtype, "c")

    # the in-place form, as used inside a CUDA graph: c updated where it lies, h into a given buffer
    c_inplace, h_out = c.clone(), torch.full((B, H), float("nan"), dtype=dtype, device=DEVICE)
    ptr = c_inplace.data_ptr()
    tb.sru_step_triton_(U, x, v, b, c_inplace, h_out, mask, m, 1.3)
    assert c_inplace.data_ptr() == ptr
    torch.testing.assert_close(h_out, h)
    torch.testing.assert_close(c_inplace, c_new)


def test_step_is_differentiable_when_inputs_need_grad():
    inp = make_inputs(1, 3, 20, False, 3, True, True, True, torch.float32)
    tb.set_kernel_config(**SMALL)
    names = ["U", "x", "v", "b", "initial_state"]
    args = (inp["U"][0], inp["x"][0], inp["v"], inp["b"], inp["initial_state"], inp["mask_pad"][0],
            inp["dropout_mask"], 1.3)
    h, c = sru_step(*args, backend="triton")
    h_ref, c_ref = sru_step(*args, backend="reference")
    grads = torch.autograd.grad(h.sum() + c.sum(), [inp[n] for n in names])
    grads_ref = torch.autograd.grad(h_ref.sum() + c_ref.sum(), [inp[n] for n in names])
    for name, g, r in zip(names, grads, grads_ref, strict=True):
        assert_close(g, r, torch.float32, f"d{name}")


def test_step_chain_equals_scan():
    """Decoding token by token carries the same state as one scan over the sequence."""
    L, B, H = 6, 2, 20
    inp = make_inputs(L, B, H, False, 3, True, False, False, torch.float32)
    inp = {n: t.detach() if isinstance(t, torch.Tensor) else t for n, t in inp.items()}
    h_scan, c_scan = sru_recurrence(**inp, backend="triton")
    c, h_out = inp["initial_state"].clone(), torch.empty(B, H, device=DEVICE)
    for t in range(L):
        tb.sru_step_triton_(inp["U"][t], inp["x"][t], inp["v"], inp["b"], c, h_out, scale_x=inp["scale_x"])
        assert_close(h_out, h_scan[t], torch.float32, f"h[{t}]")
    assert_close(c, c_scan, torch.float32, "c")


@pytest.mark.parametrize("sched", ["tile", "step"])
def test_parameter_gradients_are_laid_out_like_parameters(sched):
    """DDP copies (and warns about) a gradient whose strides differ from its parameter's. With D = 1 a
    slice of the (D, 4, H) partial sums has strides (4H, H, 1) where v has (2H, H, 1)."""
    tb.set_kernel_config(block_h=8, t_fwd=4, t_bwd=4, sched=sched)
    inp = make_inputs(5, 2, 8, False, 3, True, False, False, torch.float32)
    # b as a dense but transposed view (a parameter stored (1, H, 2)): its gradient must follow it
    inp["b"] = inp["b"].detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
    names = ["v", "b", "initial_state"]
    h, c = sru_recurrence(**inp, backend="triton")
    grads = torch.autograd.grad(h.sum() + c.sum(), [inp[n] for n in names])
    for name, g in zip(names, grads, strict=True):
        assert g.stride() == inp[name].stride(), f"d{name}: strides {g.stride()} vs {inp[name].stride()}"
    assert inp["b"].stride() == (16, 1, 2)


def test_defaults_come_from_one_table_by_size_class(monkeypatch):
    """On a GPU the config is DEFAULTS[size_class] with the overrides on top; the benchmark sizes
    (L=128 B=32 d=512, L=1024 B=16 d=2048) and a decoding batch fall in classes of their own."""
    cuda = torch.device("cuda")  # kernel_config reads shapes only: no device is touched
    classes = {tb.size_class(B, 1, d) for B, d in ((32, 512), (16, 2048), (1, 2048))}
    assert len(classes) == 3, classes
    for name, cfg in tb.DEFAULTS.items():
        assert isinstance(cfg, tb.KernelConfig), name
    assert {name for name, _ in tb.SIZE_CLASSES} == set(tb.DEFAULTS)
    assert tb.kernel_config(16, 1, 2048, cuda) == tb.DEFAULTS[tb.size_class(16, 1, 2048)]
    tb.set_kernel_config(sched="step", stages=2)
    cfg = tb.kernel_config(32, 1, 512, cuda)
    assert (cfg.sched, cfg.stages, cfg.block_h) == ("step", 2, tb.DEFAULTS[tb.size_class(32, 1, 512)].block_h)
    with pytest.raises(ValueError, match="sched"):
        tb.set_kernel_config(sched="scan")


def test_availability_and_config_override(monkeypatch):
    assert tb.available() and tb.why_unavailable() == ""
    monkeypatch.setenv("SRU_LM_TRITON_CONFIG", "block_h=32, t_fwd=16, recompute=0, sched=step, stages=4")
    cfg = tb.kernel_config(4, 1, 100, torch.device(DEVICE))
    assert (cfg.block_h, cfg.t_fwd, cfg.recompute, cfg.sched, cfg.stages) == (32, 16, False, "step", 4)
    with pytest.raises(ValueError, match="power of 2"):
        tb.set_kernel_config(block_h=48)


# ------------------------------------------------------------------------------------------------------
# Real sizes, compiled, on a GPU
# ------------------------------------------------------------------------------------------------------


@cuda_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "L, B, H, bi, k, opts",
    [(128, 32, 512, False, 3, False), (256, 8, 1024, True, 4, True), (1000, 4, 2048, False, 3, True)],
)
def test_real_sizes_on_gpu(L, B, H, bi, k, opts, dtype):
    inp = make_inputs(L, B, H, bi, k, opts, opts, opts, dtype, device="cuda")
    h, c, grads = grads_of(lambda **kw: sru_recurrence(**kw, backend="triton"), inp)
    h_ref, c_ref, grads_ref = grads_of(sru_recurrence_ref, inp)
    # long sequences accumulate rounding differences in the state; compare at a looser scale
    tol = dict(atol=1e-4, rtol=1e-3) if dtype == torch.float32 else TOL[dtype]
    torch.testing.assert_close(h, h_ref, **tol)
    torch.testing.assert_close(c, c_ref, **tol)
    for name, g in grads_ref.items():
        scale = g.abs().max().clamp_min(1.0)
        torch.testing.assert_close(grads[name] / scale, g / scale, **tol, msg=lambda m, n=name: f"d{n}: {m}")


@cuda_only
@pytest.mark.parametrize("recompute", [True, False])
def test_configs_agree_on_gpu(recompute):
    inp = make_inputs(300, 8, 768, True, 3, True, True, True, torch.bfloat16, device="cuda")
    outs = []
    for cfg in (dict(block_h=32, t_fwd=4, t_bwd=4), dict(block_h=128, t_fwd=8, t_bwd=8, vec=2)):
        tb.set_kernel_config(**cfg, recompute=recompute)
        outs.append(grads_of(lambda **kw: sru_recurrence(**kw, backend="triton"), inp))
    torch.testing.assert_close(outs[0][0], outs[1][0], **TOL[torch.bfloat16])
    for name in outs[0][2]:
        torch.testing.assert_close(outs[0][2][name], outs[1][2][name], **TOL[torch.bfloat16])
