"""Benchmarks of the package, importable and tested on tiny sizes; ``scripts/bench_*.py`` parse arguments and
call them. :mod:`.machine` is the one description of the machine a result was measured on."""

from __future__ import annotations

from .machine import command_line, machine_description, now

__all__ = ["command_line", "machine_description", "now"]
