"""Where and how a result was measured: the one machine description every benchmark table and report prints."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from datetime import datetime, timezone

import torch


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine_description() -> str:
    """One line: CPU model and cores, the GPU (with CUDA version) or "no GPU", torch and its threads,
    Python, and the load average when this was called (a loaded machine times slower)."""
    if torch.cuda.is_available():
        gpu = f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"
    else:
        gpu = "no GPU"
    load = f"; load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return (f"{_cpu_model()}, {os.cpu_count()} logical CPUs, {gpu}; torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads; Python {platform.python_version()}{load}")


def command_line() -> str:
    """How this process was started, quoted for a shell."""
    return "python " + shlex.join(sys.argv)


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


__all__ = ["command_line", "machine_description", "now"]


def emit_report(text: str, out: str | None) -> None:
    """Print a benchmark's markdown report and, given ``out``, also write it there (making the folder)."""
    print(text)
    if out:
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        with open(out, "w") as f:
            f.write(text)
