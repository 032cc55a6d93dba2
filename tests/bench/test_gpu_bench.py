"""The GPU benchmarks' logic on CPU (no kernel timing is asserted): what they record for ahead-of-time
compilation, the AOT cache's round trip to another folder (as on the device), the correctness check, the
defaults table they print, and the model benchmark's tables at a tiny size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sru_lm.bench import gpu, gpu_model
from sru_lm.ops import triton_aot
from sru_lm.ops import triton_backend as tb

ROOT = Path(__file__).resolve().parents[2]


def test_record_kernels_lists_every_variant_without_running_one():
    """Recording runs the bench's own code paths on CPU: every swept config appears, widths that Triton
    specializes alike (64, 128: divisible by 16) collapse to one variant, and outputs are never written."""
    grid = gpu.sweep_grid()
    recs = gpu.record_kernels(sizes=[(2, 2, 64), (2, 2, 128)], dtypes={"bf16": torch.bfloat16}, decode=False)
    variants = triton_aot.unique_variants(recs)
    kernels = {v["kernel"] for v in variants}
    assert kernels == {"_sru_fwd_kernel", "_sru_bwd_kernel", "_sru_fwd_step_kernel", "_sru_bwd_step_kernel"}
    step_cfgs = {(v["meta"]["BLOCK_H"], v["meta"]["VEC"], v["meta"]["STAGES"]) for v in variants
                 if v["kernel"] == "_sru_bwd_step_kernel"}
    assert step_cfgs == {(c.block_h, c.vec, c.stages) for c in grid if c.sched == "step"}
    assert all(v["args"][0][1] == "torch.bfloat16" for v in variants)
    assert len(variants) < len(recs) // 2  # both sizes and repeated launches share variants
    with tb.recording():
        h = torch.full((2, 1, 16), float("nan"))
        tb._fwd_into(torch.randn(2, 1, 48), torch.randn(2, 1, 16), torch.randn(1, 2, 16), torch.randn(1, 2, 16),
                     None, None, None, False, 1.0, h, torch.empty(1, 16), None, 0, tb.KernelConfig())
    assert h.isnan().all()


def _ptxas() -> bool:
    import triton

    return (Path(triton.__file__).parent / "backends/nvidia/bin/ptxas").exists()


@pytest.mark.skipif(not _ptxas(), reason="this triton wheel ships no ptxas (compiling for sm_90 needs it)")
def test_aot_cache_is_found_from_another_folder():
    """Compile one variant for sm_90 with no GPU, bundle it, install it elsewhere (group files name files by
    absolute path, so the device must re-write them), and load it through the JIT: a cache hit, no compile."""
    with tb.recording() as recs:
        c = torch.zeros(2, 64)
        tb._fwd_into(torch.zeros(3, 2, 192), torch.zeros(3, 2, 64), torch.zeros(1, 2, 64), torch.zeros(1, 2, 64),
                     None, None, None, False, 1.0, torch.empty(3, 2, 64), c, torch.empty(3, 2, 64), 1,
                     tb.KernelConfig(sched="step", block_h=64, stages=2))
    code = f"""
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("aot", {str(ROOT / "sru_lm/ops/triton_aot.py")!r})
aot = importlib.util.module_from_spec(spec); spec.loader.exec_module(aot)
aot.compile_variants(json.loads(sys.argv[1]), "full", 90, log=lambda s: None)
aot.bundle("full", "travel")
report = aot.install("travel", "device", offline_arch=90, log=lambda s: None)
print(json.dumps(dict(report, hits=aot.probe("device", offline_arch=90))))
"""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "TRITON_CACHE_DIR")}
    with pytest.MonkeyPatch.context() as mp:
        tmp = Path(__import__("tempfile").mkdtemp())
        mp.chdir(tmp)
        out = subprocess.run([sys.executable, "-c", code, json.dumps(triton_aot.unique_variants(recs))], env=env,
                             capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["installed"] == report["same_key"] == 1 and report["differs_in"] == []
    assert report["hits"] == [["_sru_fwd_step_kernel", True]]
    assert not any(p.suffix in (".ttgir", ".ptx", ".llir") for p in (tmp / "travel").rglob("*"))  # binaries only
    group = next((tmp / "device").glob("*/__grp__*.json"))
    assert all(p.startswith(str(tmp / "device")) for p in json.loads(group.read_text())["child_paths"].values())


def test_sass_counts_find_the_time_loop():
    sass = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   LDG.E R2, desc[UR4][R2.64] ;
        /*0020*/                   LDGSTS.E [R0], desc[UR4][R4.64] ;
        /*0030*/                   MUFU.EX2 R5, R5 ;
        /*0040*/                   STG.E desc[UR4][R6.64], R5 ;
        /*0050*/               @P0 BRA 0x20 ;
        /*0060*/                   EXIT ;
        /*0070*/                   BRA 0x70;
    """
    c = triton_aot.sass_counts(sass)
    assert (c["sass"], c["loop"], c["loop_ldg"], c["loop_ldgsts"], c["loop_mufu"], c["loop_stg"]) == (8, 4, 0, 1, 1, 1)


def test_check_catches_a_wrong_kernel(monkeypatch):
    """The bench's correctness check fails when the 'triton' result is off by a little (the reference
    stands in for the kernel, so no interpreter is needed)."""
    real = gpu.sru_recurrence

    def fake(*args, backend=None):
        h, c = real(*args, backend="reference")
        return (h * 1.01, c) if backend == "triton" else (h, c)

    monkeypatch.setattr(gpu, "sru_recurrence", fake)
    ok, err = gpu.check(6, 2, 16, torch.float32, torch.device("cpu"))
    assert not ok and err > 1e-3
    monkeypatch.setattr(gpu, "sru_recurrence", lambda *a, backend=None: real(*a, backend="reference"))
    assert gpu.check(6, 2, 16, torch.float32, torch.device("cpu")) == (True, 0.0)


def test_defaults_table_text_is_the_chosen_configs():
    chosen = tb.KernelConfig(sched="step", block_h=32, vec=2, stages=4)
    text = gpu.defaults_table({"medium": chosen})
    ns = {"KernelConfig": tb.KernelConfig}
    exec(text, ns)  # the text is pasted into triton_backend.py: it must be valid Python
    assert ns["DEFAULTS"]["medium"] == chosen
    assert {k: v for k, v in ns["DEFAULTS"].items() if k != "medium"} == {
        k: v for k, v in tb.DEFAULTS.items() if k != "medium"}


def test_model_bench_tables_and_kernels_at_a_tiny_size():
    report = gpu_model.run("tiny", "cpu", train=[(8, 2)], decode=[(1, 8)], compiled=False, steps=1, new_tokens=2,
                           repeats=1)
    rows = [line for line in report.splitlines() if line.startswith("| 8 x 2 |") or line.startswith("| 1, 8 |")]
    assert len(rows) == 3, report  # one training row, SRU++ and GPT-2 decode rows
    assert "machine:" in report and "command:" in report
    recs = gpu_model.record_kernels("tiny", train=[(8, 3)], decode=[(2, 8)])
    kernels = {r["kernel"] for r in recs}
    assert {"_sru_fwd_kernel", "_sru_bwd_kernel", "_sru_step_kernel"} <= kernels
    assert {r["args"][0][1] for r in recs if r["kernel"] == "_sru_step_kernel"} == {"torch.bfloat16"}


def test_official_source_patch_removes_every_type_call():
    """torch >= 2.10 has no ``Tensor.type()``: the official sources get ``scalar_type()`` / ``is_cuda()``, the
    rest untouched; on the installed package's own sources when ``sru`` is there."""
    text = ('AT_ASSERTM(x.type().is_cuda(), "cuda");\nAT_ASSERTM(x.type().scalarType() == at::kFloat, "f");\n'
            'AT_DISPATCH_FLOATING_TYPES_AND_HALF(U.type(), "fwd", ([&] { run(); }));\nint type = 3;\n')
    assert gpu.patch_official_source(text) == (
        'AT_ASSERTM(x.is_cuda(), "cuda");\nAT_ASSERTM(x.scalar_type() == at::kFloat, "f");\n'
        'AT_DISPATCH_FLOATING_TYPES_AND_HALF(U.scalar_type(), "fwd", ([&] { run(); }));\nint type = 3;\n')
    import importlib.util

    spec = importlib.util.find_spec("sru")
    if spec is None:
        pytest.skip("sru is not installed: only the sample text was checked")
    csrc = Path(spec.origin).parent / "csrc"
    for name in gpu.OFFICIAL_SOURCES:
        text = (csrc / name).read_text()
        patched = gpu.patch_official_source(text)
        assert ".type()" in text and ".type()" not in patched, name


def test_official_peer_is_skipped_with_its_reason(monkeypatch):
    """No ``sru`` installed: nothing is built, ``ready()`` is False and the reason is kept for the report."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.delitem(sys.modules, "sru", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sru" else real(name, *a))
    peer = gpu.OfficialSRU.start()
    assert not peer.ready() and peer.sru is None and "not installed" in peer.error


def _results(official: bool) -> dict:
    r = {"floor fwd": 0.1, "ours fwd": 0.2, "floor fwd+bwd": 0.3, "ours fwd+bwd": 0.5, "projection fwd+bwd": 1.0,
         "our layer fwd+bwd": 2.0}
    fp32, bf16 = dict(r), dict(r)
    if official:
        fp32 |= {"official kernel fwd (fp32)": 0.8, "official layer fwd+bwd (fp32)": 8.0,
                 "official vs ours max |h diff|": 3e-7}
        bf16 |= {"official kernel fwd (fp32)": 0.8, "official layer fwd+bwd (amp fp16)": 4.0,
                 "official vs ours max |h diff|": 2e-7}
    return {((8, 2, 16), "fp32"): fp32, ((8, 2, 16), "bf16"): bf16}


def _official_rows(text: str) -> list[list[str]]:
    start = text.index("Against the official `sru`")
    rows = [line for line in text[start:].splitlines() if line.startswith("| L=")]
    return [[c.strip() for c in row.strip("|").split("|")] for row in rows]


def test_report_puts_ours_beside_the_official_sru():
    checks = {k: "ok 0.0e+00" for k in _results(True)}
    text = gpu.report(_results(True), checks, {}, {}, 1.0)
    rows = _official_rows(text)
    assert rows[0] == ["L=8 B=2 d=16 fp32", "0.200", "0.800", "0.25 (4.0x faster)", "2.000", "8.000 (fp32)",
                       "0.25 (4.0x faster)", "3.0e-07"]
    assert rows[1][5:7] == ["4.000 (amp fp16)", "0.50 (2.0x faster)"]  # bf16 against the official amp fp16
    assert "| official kernel fwd (fp32) | 0.800 (8.00x floor) |" in text
    assert "4.0x faster than the official kernel (goal >= 3x)" in text
    assert "2.0x faster than the official layer (amp fp16)" in text
    assert "Official sru:" not in text


def test_report_without_the_official_sru_has_dashes_and_the_reason():
    checks = {k: "ok 0.0e+00" for k in _results(False)}
    text = gpu.report(_results(False), checks, {}, {}, 1.0, official_note="sru is not installed")
    for row in _official_rows(text):
        assert row[2:4] == ["-", "-"] and row[5:8] == ["-", "-", "-"] and row[1] == "0.200"
    assert "Official sru: sru is not installed" in text
    assert "official kernel fwd" not in text.split("Against the official")[0]  # no empty rows in the main table
    assert "faster than the official" not in text


def test_dry_run_reports_why_the_official_sru_was_not_timed():
    """The CPU run goes through the official peer's path and skips it with a reason (no CUDA)."""
    text, ok = gpu.run([(6, 2, 16)], {"fp32": torch.float32}, "cpu", do_sweep=False, decode=False, log=lambda s: None)
    assert ok and "Official sru: its kernel needs a CUDA device" in text
    assert _official_rows(text)[0][2] == "-"
