"""sru_lm.bench.sru on tiny sizes: which rows and columns the table has and that its ratios are the
ratios of the measured times (never the times themselves)."""

from __future__ import annotations

import pytest

from sru_lm.bench import sru as bench

TINY = dict(L=8, B=2, d=8)
HEADER = ["model", "inference ms", "x floor", "x LSTM", "x sru", "fwd+bwd ms", "x floor", "x LSTM", "x sru",
          "decode us", "x LSTM", "x sru"]


def rows(table: str) -> dict[str, list[str]]:
    """The table's body as {model: cells after the name}, checking the heading and the header."""
    lines = table.splitlines()
    assert lines[0].startswith("### L=") and lines[1] == ""
    assert [c.strip() for c in lines[2].strip("|").split("|")] == HEADER
    assert lines[3] == "|" + "---|" * len(HEADER)
    body = [[c.strip() for c in line.strip("|").split("|")] for line in lines[4:]]
    assert all(len(cells) == len(HEADER) for cells in body)
    return {cells[0]: cells[1:] for cells in body}


def expected_cells(res: bench.Results, name: str, decode_steps: int) -> list[str]:
    r, floor, lstm = res[name], res[bench.FLOOR], res[bench.LSTM]
    off = res.get(bench.OFFICIAL)

    def rat(task: str, peer: dict | None) -> str:
        return "-" if peer is None else f"{r[task] / peer[task]:.2f}"

    return [
        f"{r['infer'] * 1e3:.1f}", rat("infer", floor), rat("infer", lstm), rat("infer", off),
        f"{r['train'] * 1e3:.1f}", rat("train", floor), rat("train", lstm), rat("train", off),
        f"{r['decode'] * 1e6 / decode_steps:.0f}", rat("decode", lstm), rat("decode", off),
    ]


def test_parse_size():
    assert bench.parse_size("128x16x256") == (128, 16, 256)
    for bad in ("128x16", "128x16x0", "ax2x3", "1x2x3x4"):
        with pytest.raises(ValueError, match="LxBxd"):
            bench.parse_size(bad)


def test_table_ratios_are_those_of_the_times():
    res: bench.Results = {
        bench.FLOOR: {"infer": 0.002, "train": 0.010, "decode": 0.0001},
        bench.OFFICIAL: {"infer": 0.004, "train": 0.080, "decode": 0.0010},
        bench.LSTM: {"infer": 0.008, "train": 0.040, "decode": 0.0040},
        bench.GRU: {"infer": 0.010, "train": 0.050, "decode": 0.0020},
        bench.FAST: {"infer": 0.003, "train": 0.012, "decode": 0.0005},
    }
    got = rows(bench.table(64, 4, 32, res, decode_steps=10))
    assert list(got) == list(res)
    for name in res:
        assert got[name] == expected_cells(res, name, 10)
    assert got[bench.FAST] == ["3.0", "1.50", "0.38", "0.75", "12.0", "1.20", "0.30", "0.15", "50", "0.12", "0.50"]
    assert got[bench.FLOOR][1] == got[bench.FLOOR][5] == "1.00"  # x floor of the floor


def test_table_without_the_official_sru():
    res: bench.Results = {
        bench.FLOOR: {"infer": 0.002, "train": 0.010, "decode": 0.0001},
        bench.LSTM: {"infer": 0.008, "train": 0.040, "decode": 0.0040},
        bench.FAST: {"infer": 0.003, "train": 0.012, "decode": 0.0005},
    }
    got = rows(bench.table(64, 4, 32, res, decode_steps=10))
    for cells in got.values():
        assert [cells[i] for i in (3, 7, 10)] == ["-", "-", "-"]  # the x sru columns
        assert cells[2] != "-"


@pytest.mark.parametrize("reference", [True, False])
def test_bench_size_rows_and_ratios(reference):
    decode_steps = 3
    res = bench.bench_size(**TINY, repeats=1, decode_steps=decode_steps, reference=reference)
    want = [bench.FLOOR]
    if bench.official_sru(TINY["d"]) is not None:
        want.append(bench.OFFICIAL)
    want += [bench.LSTM, bench.GRU] + ([bench.REFERENCE] if reference else []) + [bench.FAST]
    assert list(res) == want  # the reference is listed before the fast path
    for r in res.values():
        assert set(r) == set(bench.TASKS) and all(t > 0 for t in r.values())
    got = rows(bench.table(*TINY.values(), res, decode_steps))
    for name in res:
        assert got[name] == expected_cells(res, name, decode_steps)


def test_bench_size_without_the_official_sru(monkeypatch):
    monkeypatch.setattr(bench, "official_sru", lambda d: None)
    res = bench.bench_size(**TINY, repeats=1, decode_steps=2, reference=False)
    assert list(res) == [bench.FLOOR, bench.LSTM, bench.GRU, bench.FAST]


def test_measure_runs_warmup_then_rounds_in_turn():
    calls = []
    t = bench.measure({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=2)
    assert calls == ["a", "a", "b", "b"] + ["a", "b"] * 3
    assert set(t) == {"a", "b"} and all(v >= 0 for v in t.values())


@pytest.mark.parametrize("load, busy", [(0.5, False), (3.0, True)])
def test_report(load, busy):
    text = bench.report(["### one", "### two"], "the machine", threads=2, load_at_start=load)
    lines = text.splitlines()
    assert lines[0].startswith("# SRU on CPU")
    assert "- machine: the machine" in lines
    assert any(line.startswith("- command: `python ") for line in lines)
    assert ("busy machine" in text) == busy
    assert text.index("### one") < text.index("### two")
