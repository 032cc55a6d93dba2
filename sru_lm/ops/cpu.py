"""CPU fast path for the SRU recurrence: a C++ kernel compiled at first use, registered as torch.library ops.

Why a C++ kernel. The recurrence is elementwise but serial in time, so anything that dispatches
torch ops per step pays their overhead L times. One layer at L=128 B=16 H=256, one thread, ms:

    one elementwise pass over U (torch.sigmoid(U), the floor's unit)     0.70-0.79
    this kernel, forward                                                 0.57
    TorchScript-compiled loop of fused torch ops, forward                3.8
    the reference loop (the spec), forward                               11.6
    this kernel, forward + backward                                      2.8

so the kernel costs about one elementwise pass: the recurrence is no longer visible next to the
projection matmul (see benchmarks/bench_sru.md for whole models). How it gets there (csrc/sru_cpu.cpp):
state in L1, units vectorized with `omp simd` (a branch-free exp, so the sigmoids vectorize), columns
of (batch, direction, units) split over torch's threads, and time as the outer loop within a thread.
Backward is a reverse-time loop that recomputes f and r from the saved states c_t (one fp32 tensor
of h's size) rather than storing them. fp16 inputs run through the fp32 kernel (no vectorized fp16
conversions in gcc without AVX512-FP16); the spec computes in fp32 too, so results agree.

The build: ``csrc/sru_cpu.cpp`` ships in the wheel; the first use on a machine compiles it with the
system's C++ compiler and ninja (~30 s, logged) into ``$SRU_LM_CACHE`` (default ``~/.cache/sru_lm``),
one folder per torch version, vector ISA and source, and later processes load it from there. Where the
build fails, :func:`available` is False, :func:`why_unavailable` says why, and
:func:`sru_lm.ops.select_backend` runs the scripted ``"torch"`` backend instead, logging once how to get
this one.

torch.compile and torch.export: forward, backward and step are custom ops (``sru_lm::cpu_scan_fwd``,
``sru_lm::cpu_scan_bwd``, ``sru_lm::cpu_step``) with fake implementations and a registered autograd
formula, so graphs trace through them. Eager calls without gradients skip the op layer (about 40 us of
Python dispatch per call, most of a decode step) and call the extension directly.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models.sru_backend import state_dtype
from .layout import grads_like

logger = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("csrc") / "sru_cpu.cpp"
_lock = threading.Lock()
_ext: ModuleType | None = None
_error: str | None = None
# Tests set this so the kernel pre-fills its outputs with NaN: an element it forgets to write fails.
poison_outputs = False
# SRU_LM_NO_CPU_EXT=1 keeps the kernel off (the scripted backend runs instead); read once, at import.
_disabled = bool(os.environ.get("SRU_LM_NO_CPU_EXT"))
HOW_TO_GET_IT = ("install a C++ compiler (e.g. `apt install g++`, Xcode command line tools on macOS) and "
                 "`pip install ninja`, then restart Python")


def _isa_flags() -> tuple[str, list[str]]:
    """Compiler flags for the vector ISA torch itself runs with on this CPU; the tag goes into the
    extension's name so a cache shared between different machines never loads a wrong binary."""
    cap = torch.backends.cpu.get_cpu_capability()
    if cap.startswith("AVX512"):
        return "avx512", ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq",
                          "-mprefer-vector-width=512"]
    if cap.startswith("AVX2"):
        return "avx2", ["-mavx2", "-mfma", "-mf16c"]
    return "generic", []


def build_dir(tag: str) -> str:
    """Where the kernel is built and cached: one folder per torch version, vector ISA and source (so two
    versions of sru_lm sharing a cache do not rebuild over each other)."""
    root = os.environ.get("SRU_LM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "sru_lm"
    )
    source = hashlib.sha256(_SOURCE.read_bytes()).hexdigest()[:10]
    path = os.path.join(root, f"cpu_ext_torch{torch.__version__.split('+')[0]}_{tag}_{source}")
    os.makedirs(path, exist_ok=True)
    return path


def _load() -> ModuleType | None:
    global _ext, _error
    if _ext is not None or _error is not None or _disabled:
        return _ext
    with _lock:
        if _ext is None and _error is None:
            try:
                from torch.utils.cpp_extension import load

                _ninja_on_path()
                tag, isa = _isa_flags()
                name, folder = f"sru_lm_cpu_{tag}", build_dir(tag)
                if not os.path.exists(os.path.join(folder, f"{name}.so")):
                    logger.warning(f"building the SRU CPU kernel (once per machine and torch version, ~30 s) "
                                   f"into {folder}")
                _ext = load(
                    name=name,
                    sources=[str(_SOURCE)],
                    extra_cflags=["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", *isa],
                    extra_ldflags=["-fopenmp"],
                    build_directory=folder,
                    verbose=False,
                )
            except Exception as e:  # no compiler, no ninja, no headers: fall back, say why
                lines = str(e).strip().splitlines() or [""]
                compiler_error = next((ln.strip() for ln in lines if "error:" in ln), "")
                _error = f"{type(e).__name__}: {lines[0].split(': [')[0][:200]}" + (
                    f" ({compiler_error[:300]})" if compiler_error else "")
    return _ext


def _ninja_on_path() -> None:
    """torch runs ``ninja`` from PATH; the ninja wheel (a dependency) puts it in the environment's bin
    folder, which is not on PATH when Python runs without the environment activated."""
    if shutil.which("ninja") is None:
        try:
            import ninja

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        except ImportError:
            pass


@torch.compiler.assume_constant_result
def available() -> bool:
    """True when the C++ kernel is built (compiling it on the first call, ~30 s, then cached).
    Called on every decode step, so it costs a global lookup once the kernel is loaded; torch.compile
    runs it once, while tracing, and keeps the answer."""
    if _ext is not None:
        return True
    return not _disabled and _load() is not None


def why_unavailable() -> str:
    if _ext is not None:
        return ""
    if _disabled:
        return "disabled by SRU_LM_NO_CPU_EXT"
    _load()
    return _error or ""


# ---- small-batch linear ------------------------------------------------------------------------------------
# Decoding's matmuls have 1 row (a step) or a few (a speculative verification: the last token and k drafts).
# On CPUs where MKL's sgemm costs about M GEMVs for M rows (this EPYC: 1 row of the (8192, 768) LM head takes
# ~2 ms, 3 rows ~3x that), csrc's small_linear streams each weight once for all rows, keeping 8-12 FMA chains
# in registers (the blocking per row count is in csrc), so 1 to 4 rows cost about one weight read; measure
# with scripts/bench_linear.py. Row m of its output does not depend on the other rows, bit for bit, so
# verifying k draft tokens in one forward gives exactly the logits of k decode steps.

SMALL_LINEAR_MAX_ROWS = 8
# False sends every call to F.linear (benchmarks compare the two in one process); SRU_LM_NO_SMALL_LINEAR=1 at
# import does the same, and so does SRU_LM_NO_CPU_EXT=1 (no kernel at all).
small_linear_enabled = not os.environ.get("SRU_LM_NO_SMALL_LINEAR")


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``, on the small-batch kernel where it applies, ``F.linear`` elsewhere.

    x (..., in), weight (out, in), bias (out,) or None -> (..., out). The kernel runs when x, weight and bias are
    plain fp32 CPU tensors, x has 1 to :data:`SMALL_LINEAR_MAX_ROWS` rows (``x.numel() // in``), no autograd
    (grad mode off, or none of them requires grad), not while compiling, tracing, under autocast, a Python
    dispatch mode or a functorch transform, the kernel built and not switched off. Everything else (training,
    prefill, other dtypes and devices) is ``F.linear``. Called ~20 times per decode step, so after the two
    checks here one C++ call (``csrc`` ``linear``) makes the rest of the decision and runs the matmul.

    Example::

        y = linear(torch.randn(3, 768), torch.randn(8192, 768))  # (3, 8192), each row as if computed alone
    """
    if torch.compiler.is_compiling() or not small_linear_enabled:  # a traced graph gets plain F.linear
        return F.linear(x, weight, bias)
    if _ext is None and not available():
        return F.linear(x, weight, bias)
    return _ext.linear(x, weight, bias, poison_outputs)


# ---- custom ops ----------------------------------------------------------------------------------------
# Arguments arrive normalized (see sru_recurrence_cpu): U, x contiguous in fp32/bf16/fp64; v, b, c0 and
# dropout_mask contiguous in the state dtype, which is v's dtype.


def _dims(U: Tensor, v: Tensor, bidirectional: bool) -> tuple[int, int, int]:
    """(L, B, D*H)"""
    return U.shape[0], U.shape[1], (2 if bidirectional else 1) * v.shape[-1]


@torch.library.custom_op("sru_lm::cpu_scan_fwd", mutates_args=(), device_types="cpu")
def _scan_fwd(
    U: Tensor, x: Tensor | None, v: Tensor, b: Tensor, c0: Tensor | None, mask_pad: Tensor | None,
    dropout_mask: Tensor | None, bidirectional: bool, scale_x: float, save: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """-> h (L, B, D*H) in U's dtype, c_last (B, D*H), and c after every step (L, B, D*H) when ``save``,
    else (0, B, D*H)."""
    h, c_last, c_all = _ext.forward(U, x, v, b, c0, mask_pad, dropout_mask, bidirectional, scale_x, save,
                                    poison_outputs)
    return h, c_last, c_all


@_scan_fwd.register_fake
def _(U, x, v, b, c0, mask_pad, dropout_mask, bidirectional, scale_x, save):
    L, B, DH = _dims(U, v, bidirectional)
    return U.new_empty(L, B, DH), v.new_empty(B, DH), v.new_empty(L if save else 0, B, DH)


@torch.library.custom_op("sru_lm::cpu_scan_bwd", mutates_args=(), device_types="cpu")
def _scan_bwd(
    U: Tensor, x: Tensor | None, v: Tensor, b: Tensor, c0: Tensor | None, mask_pad: Tensor | None,
    dropout_mask: Tensor | None, bidirectional: bool, scale_x: float, c_all: Tensor, grad_h: Tensor,
    grad_c_last: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> grads of U, x ((0, B, D*H) when U holds U_h), v, b, c0 (zeros when c0 is None)."""
    args = (U, x, v, b, c0, mask_pad, dropout_mask, bidirectional, scale_x)
    if c_all.shape[0] != U.shape[0]:  # the forward saved nothing: recompute the states
        c_all = _ext.forward(*args, True, poison_outputs)[2]
    return tuple(_ext.backward(*args, c_all, grad_h, grad_c_last, poison_outputs))


@_scan_bwd.register_fake
def _(U, x, v, b, c0, mask_pad, dropout_mask, bidirectional, scale_x, c_all, grad_h, grad_c_last):
    L, B, DH = _dims(U, v, bidirectional)
    k3 = U.shape[-1] == 3 * DH
    return U.new_empty(U.shape), U.new_empty(L if k3 else 0, B, DH), v.new_empty(v.shape), b.new_empty(b.shape), \
        v.new_empty(B, DH)


def _setup_context(ctx, inputs, output):
    U, x, v, b, c0, mask_pad, dropout_mask, bidirectional, scale_x, save = inputs
    ctx.save_for_backward(U, x, v, b, c0, mask_pad, dropout_mask, output[2])
    ctx.bidirectional, ctx.scale_x = bidirectional, scale_x
    ctx.mark_non_differentiable(output[2])


def _backward(ctx, grad_h, grad_c_last, _grad_c_all):
    U, x, v, b, c0, mask_pad, dropout_mask, c_all = ctx.saved_tensors
    if grad_h is None:  # only c_last was used
        grad_h = U.new_zeros(_dims(U, v, ctx.bidirectional))
    gU, gx, gv, gb, gc0 = torch.ops.sru_lm.cpu_scan_bwd(
        U, x, v, b, c0, mask_pad, dropout_mask, ctx.bidirectional, ctx.scale_x, c_all,
        grad_h.to(U.dtype).contiguous(), None if grad_c_last is None else grad_c_last.contiguous(),
    )
    grads = grads_like((gU, gx if x is not None else None, gv, gb, gc0), (U, x, v, b, c0))
    return (*grads, None, None, None, None, None)


torch.library.register_autograd("sru_lm::cpu_scan_fwd", _backward, setup_context=_setup_context)


@torch.library.custom_op("sru_lm::cpu_step", mutates_args=(), device_types="cpu")
def _step(
    U: Tensor, x: Tensor | None, v: Tensor, b: Tensor, c: Tensor, mask_pad: Tensor | None,
    dropout_mask: Tensor | None, scale_x: float,
) -> tuple[Tensor, Tensor]:
    """One decode step, no autograd (see sru_step_cpu); takes its inputs in any float dtype and layout."""
    h, c_new = _ext.step(U, x, v, b, c, mask_pad, dropout_mask, scale_x)
    return h, c_new


@_step.register_fake
def _(U, x, v, b, c, mask_pad, dropout_mask, scale_x):
    return U.new_empty(c.shape), c.new_empty(c.shape, dtype=state_dtype(U.dtype))


# ---- entry points (called by sru_lm.ops.recurrence, arguments checked there) --------------------------


def _kernel_args(U, x, v, b, initial_state, mask_pad, dropout_mask, bidirectional, scale_x) -> tuple:
    """The kernel's arguments in its layout: contiguous, v, b, c0 and the dropout mask in the state dtype, x
    only when U holds three projections (k == 3)."""
    acc = state_dtype(U.dtype)
    D = 2 if bidirectional else 1
    k3 = U.shape[-1] == 3 * D * v.shape[-1]
    return (
        U.contiguous(),
        x.contiguous() if k3 else None,
        v.to(acc).contiguous(),
        b.to(acc).contiguous(),
        None if initial_state is None else initial_state.to(acc).contiguous(),
        None if mask_pad is None else mask_pad.contiguous(),
        None if dropout_mask is None else dropout_mask.to(acc).contiguous(),
        bidirectional,
        float(scale_x),
    )


def sru_recurrence_cpu(U, x, v, b, initial_state, mask_pad, dropout_mask, bidirectional, scale_x):
    """:func:`sru_lm.ops.sru_recurrence` on the C++ kernel."""
    if U.dtype == torch.float16:  # the fp32 kernel (see the module docstring); h back in fp16
        h, c_last = sru_recurrence_cpu(U.float(), None if x is None else x.float(), v, b, initial_state, mask_pad,
                                       dropout_mask, bidirectional, scale_x)
        return h.half(), c_last
    # Casts happen outside the op so autograd routes the gradients back through them.
    args = _kernel_args(U, x, v, b, initial_state, mask_pad, dropout_mask, bidirectional, scale_x)
    save = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in args[:5])
    if save or torch.compiler.is_compiling():
        h, c_last, _ = torch.ops.sru_lm.cpu_scan_fwd(*args, save)
    else:  # eager inference: no graph, no saved states, no op dispatch
        h, c_last, _ = _ext.forward(*args, False, poison_outputs)
    return h, c_last


def sru_recurrence_states_cpu(U, x, v, b, initial_state, mask_pad, dropout_mask, scale_x):
    """Unidirectional :func:`sru_recurrence_cpu` without autograd that also returns the state after every
    position, (L, B, H) in the state dtype (a padded position keeps the state before it): the kernel writes them
    as it goes (they are what its backward saves), so a recording cache gets them from the same pass."""
    if U.dtype == torch.float16:
        h, c_last, states = sru_recurrence_states_cpu(U.float(), None if x is None else x.float(), v, b,
                                                      initial_state, mask_pad, dropout_mask, scale_x)
        return h.half(), c_last, states
    args = _kernel_args(U, x, v, b, initial_state, mask_pad, dropout_mask, False, scale_x)
    return tuple(_ext.forward(*args, True, poison_outputs))


def sru_step_cpu(U, x, v, b, c, mask_pad, dropout_mask, scale_x):
    """:func:`sru_lm.ops.sru_step` without gradients, in one C++ call."""
    if torch.compiler.is_compiling():
        return torch.ops.sru_lm.cpu_step(U, x, v, b, c, mask_pad, dropout_mask, scale_x)
    h, c_new = _ext.step(U, x, v, b, c, mask_pad, dropout_mask, scale_x)  # x is not read when k == 4
    return h, c_new


def sru_step_cpu_(U, x, v, b, c, h_out, mask_pad, dropout_mask, scale_x) -> None:
    """The in-place step on the C++ kernel (see :func:`sru_lm.ops.sru_step_`)."""
    _ext.step_(U, x, v, b, c, h_out, mask_pad, dropout_mask, scale_x)
