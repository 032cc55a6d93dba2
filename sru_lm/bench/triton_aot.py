"""Build the compiled-kernel cache a device run uses, with no GPU: record, compile for sm_90, bundle, read.

``scripts/triton_aot.py`` is the command line; :mod:`sru_lm.ops.triton_aot` holds the mechanism (how
Triton 3.6 keys its cache and how the device finds the kernels) and runs under the device image's
Triton in its own venv, so this module drives it through a subprocess.

1. :func:`record_device_run`: every launch of the device stages that time kernels, without launching:
   :func:`sru_lm.bench.gpu.record_kernels` (checks, sweep, timings, decode),
   :func:`sru_lm.bench.gpu_model.record_kernels` (the ~125M SRU++ LM's training step and ``generate``),
   and ``tests/ops/test_triton.py`` run with ``SRU_LM_TRITON_RECORD`` (its tests fail there, on
   unwritten outputs, after recording most launches).
2. ``compile`` in the Triton 3.6 venv, keyed as the device's cp312 wheel (its ``libtriton.so``).
3. :func:`sru_lm.ops.triton_aot.bundle`: binaries and metadata only, into ``.gpu/triton_cache``.
4. :func:`static_markdown`: registers, spills and SASS counts per variant, for ``benchmarks/``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from sru_lm.ops import triton_aot

from . import gpu, gpu_model

ROOT = Path(__file__).resolve().parents[2]


def record_tests(test_file: str = "tests/ops/test_triton.py", python: str = sys.executable) -> list[dict]:
    """The launches of a pytest run of ``test_file`` (kernels recorded, not run)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    env = dict(os.environ, SRU_LM_TRITON_RECORD=path, TRITON_INTERPRET="1")
    subprocess.run([python, "-m", "pytest", test_file, "-q", "-p", "no:cacheprovider"],
                   cwd=ROOT, env=env, capture_output=True, text=True)
    try:
        return json.loads(Path(path).read_text())
    finally:
        os.unlink(path)


def record_device_run(model: bool = True, tests: bool = True, log=print) -> list[dict]:
    """Distinct kernel variants of the device stages (see the module docstring)."""
    records = gpu.record_kernels()
    log(f"kernel bench: {len(triton_aot.unique_variants(records))} variants")
    if model:
        more = gpu_model.record_kernels()
        log(f"model bench: {len(triton_aot.unique_variants(more))} variants")
        records += more
    if tests:
        more = record_tests()
        log(f"tests/ops/test_triton.py: {len(triton_aot.unique_variants(more))} variants")
        records += more
    return triton_aot.unique_variants(records)


def compile_in(python: str, variants: list[dict], full_dir: Path, libtriton: str | None) -> None:
    """Compile ``variants`` for sm_90 with another interpreter's Triton (the device's version)."""
    full_dir.mkdir(parents=True, exist_ok=True)
    vfile = full_dir.parent / "variants.json"
    vfile.write_text(json.dumps(variants))
    cmd = [python, str(ROOT / "sru_lm/ops/triton_aot.py"), "compile", str(vfile), "--cache-dir", str(full_dir)]
    if libtriton:
        cmd += ["--libtriton", libtriton]
    subprocess.run(cmd, check=True, env={k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"})


def static_rows(python: str, full_dir: Path) -> list[dict]:
    out = subprocess.run([python, str(ROOT / "sru_lm/ops/triton_aot.py"), "static", "--cache-dir", str(full_dir)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def _cfg(meta: dict) -> str:
    keys = ("BLOCK_H", "VEC", "num_warps", "T", "STAGES", "SAVE_EVERY", "SAVE", "RECOMPUTE", "HAS_PAD", "HAS_M",
            "D", "K")
    return " ".join(f"{k}={int(meta[k]) if isinstance(meta[k], bool) else meta[k]}" for k in keys if k in meta)


def static_markdown(rows: list[dict]) -> str:
    """One table row per variant: registers, spills (local-memory instructions and stack bytes), shared
    memory, SASS instructions in all and per time step of the time loop, and what the loop holds per step."""
    lines = [
        "| kernel | dtype | config | regs | stack B | LDL/STL | shared B | SASS | loop | per step | "
        "LDG / LDGSTS / STG per step | MUFU per step | cp.async in TTGIR |",
        "|" + "---|" * 13,
    ]
    for r in sorted(rows, key=lambda r: (r["kernel"], r["dtype"], _cfg(r["meta"]))):
        tile = r["kernel"] in ("_sru_fwd_kernel", "_sru_bwd_kernel")
        t = r["meta"]["T"] if tile else 1
        loop = r["sass"] if r["kernel"] == "_sru_step_kernel" else r["loop"]
        ldg, lds, stg, mufu = (f"{r[k] / t:.1f}" for k in ("loop_ldg", "loop_ldgsts", "loop_stg", "loop_mufu"))
        lines.append(
            f"| {r['kernel']} | {r['dtype']} | {_cfg(r['meta'])} | {r.get('regs', '?')} | {r.get('stack', '?')} | "
            f"{r['ldl_stl']} | {r.get('shared') or 0} | {r['sass']} | {loop} | {loop / t:.0f} | "
            f"{ldg} / {lds} / {stg} | {mufu} | {r['async_copies']} |")
    return "\n".join(lines)
