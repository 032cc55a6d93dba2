"""The wheel as a user gets it: built from the sources, installed into a fresh virtual environment that
cannot see this checkout, run from another folder with an empty kernel cache.

- With a C++ compiler and ninja, the first call builds the CPU kernel into the cache and the recurrence
  runs on it, equal to the spec.
- Without them (PATH holding neither), the scripted ``"torch"`` backend runs, logs how to get the fast
  path once, and gives the spec's numbers, forward and backward.

The fresh environment reuses this environment's packages (torch, ...) through a ``.pth`` file naming its
site-packages folder: a plain path entry, so the editable install's import hook there is not run and the
checkout's ``sru_lm`` stays invisible (the test checks ``sru_lm.__file__``). No network is used.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

CHECK = textwrap.dedent(
    """
    import logging, os, sys
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    import torch
    import sru_lm
    from sru_lm.ops import cpu, select_backend, sru_recurrence, sru_recurrence_ref, sru_step, sru_step_ref

    venv, expect = sys.argv[1], sys.argv[2]
    assert sru_lm.__file__.startswith(venv), f"sru_lm imported from {sru_lm.__file__}, not the new environment"
    which = select_backend(torch.zeros(1))
    assert which == expect, (which, cpu.why_unavailable())
    if expect == "cpu":
        assert cpu._ext.__file__.startswith(os.environ["SRU_LM_CACHE"]), cpu._ext.__file__

    g = torch.Generator().manual_seed(0)
    L, B, H = 63, 3, 100
    U, x = torch.randn(L, B, 3 * H, generator=g), torch.randn(L, B, H, generator=g)
    v, b, c0 = torch.rand(1, 2, H, generator=g) - 0.5, torch.randn(1, 2, H, generator=g), torch.randn(B, H, generator=g)
    mask = torch.zeros(L, B, dtype=torch.bool)
    mask[40:, 1] = True
    drop = (torch.rand(B, H, generator=g) < 0.7).float() / 0.7
    gh, gc = torch.randn(L, B, H, generator=g), torch.randn(B, H, generator=g)

    def run(fn):
        ts = [t.clone().requires_grad_() for t in (U, x, v, b, c0)]
        h, c = fn(*ts, mask, drop, False, 1.3)
        return [h, c, *torch.autograd.grad((h, c), ts, (gh, gc))]

    for got, want in zip(run(sru_recurrence), run(sru_recurrence_ref)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        for got, want in zip(sru_step(U[0], x[0], v, b, c0, mask[0], drop, 1.3),
                             sru_step_ref(U[0], x[0], v, b, c0, mask[0], drop, 1.3)):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    print("checked", which)
    """
)


def copy_sources(dest: Path) -> Path:
    """What an sdist is built from, copied (building in the checkout would leave build/ and egg-info there)."""
    shutil.copytree(ROOT / "sru_lm", dest / "sru_lm", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, dest / name)
    return dest


def test_sdist_carries_the_kernel_source(tmp_path):
    src = copy_sources(tmp_path / "src")
    subprocess.run([sys.executable, "-c", "from setuptools import build_meta; build_meta.build_sdist('dist')"],
                   cwd=src, check=True, capture_output=True)
    sdist, = (src / "dist").glob("sru_lm-*.tar.gz")
    with tarfile.open(sdist) as tar:
        assert any(name.endswith("sru_lm/ops/csrc/sru_cpu.cpp") for name in tar.getnames())


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(the fresh environment's python, its root): the wheel built from a copy of the sources, installed."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = copy_sources(tmp / "src")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp / "dist"), str(src)], check=True, cwd=tmp)
    wheel, = (tmp / "dist").glob("sru_lm-*.whl")
    assert "sru_lm/ops/csrc/sru_cpu.cpp" in zipfile.ZipFile(wheel).namelist()

    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                    "-q", str(wheel)], check=True)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (Path(site) / "project_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python, venv


def run_check(python: Path, venv: Path, tmp: Path, expect: str, path: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SRU_LM_BACKEND", "SRU_LM_NO_CPU_EXT")}
    env.update(SRU_LM_CACHE=str(tmp / "cache"), PATH=path)
    (tmp / "check.py").write_text(CHECK)
    out = subprocess.run([str(python), "check.py", str(venv), expect], cwd=tmp, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    return out


@pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler here to build the kernel with")
def test_wheel_builds_and_runs_the_cpu_kernel(installed, tmp_path):
    python, venv = installed
    out = run_check(python, venv, tmp_path, "cpu", os.environ.get("PATH", ""))
    assert "building the SRU CPU kernel" in out.stderr and str(tmp_path / "cache") in out.stderr
    assert "checked cpu" in out.stdout
    out = run_check(python, venv, tmp_path, "cpu", os.environ.get("PATH", ""))  # the second process loads it
    assert "building" not in out.stderr


def test_wheel_without_a_compiler_runs_the_scripted_loops(installed, tmp_path):
    python, venv = installed
    empty = tmp_path / "bin"  # a PATH with no c++, g++, cc or ninja on it
    empty.mkdir()
    out = run_check(python, venv, tmp_path, "torch", str(empty))
    assert "checked torch" in out.stdout
    warnings = [ln for ln in out.stderr.splitlines() if "C++ CPU kernel" in ln]
    assert len(warnings) == 1 and "install a C++ compiler" in warnings[0], out.stderr
