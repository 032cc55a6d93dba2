"""sru_lm.bench.linear: both paths timed on checked outputs, one table line per shape, the command's report."""

from __future__ import annotations

import pytest

from sru_lm.bench import linear as bench
from sru_lm.ops import cpu

pytestmark = pytest.mark.skipif(not cpu.available(), reason=f"CPU kernel unavailable: {cpu.why_unavailable()}")


def test_run_all_and_table():
    results = bench.run_all({"tiny": (10, 12), "odd": (3, 7)}, (1, 3), calls=2, repeats=1)
    assert [(r["shape"], r["rows"]) for r in results] == [("tiny", 1), ("tiny", 3), ("odd", 1), ("odd", 3)]
    assert all(r["f_linear_us"] > 0 and r["kernel_us"] > 0 for r in results)
    lines = bench.table(results)
    assert lines[0] == "| weight (out, in) | 1 row | 3 rows |"
    assert lines[2].startswith("| tiny (10, 12) | ") and lines[3].startswith("| odd (3, 7) | ")


def test_command_writes_the_report(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "SHAPES", {"tiny": (10, 12)})
    monkeypatch.setattr(bench, "ROWS", (1, 2))
    out = tmp_path / "linear.md"
    bench.main(["--calls", "2", "--repeats", "1", "--out", str(out)])
    text = out.read_text()
    assert text.startswith("# Few-row CPU matmuls") and "| tiny (10, 12) |" in text
    with pytest.raises(ValueError):
        bench.main(["--calls", "0"])
