"""sru_lm.bench.generate on tiny models: the table's rows follow from the measured times and cache sizes,
the cache sizes are what the caches hold, and the named sizes match the two models' parameter counts."""

from __future__ import annotations

import pytest
import torch

from sru_lm.bench import generate as bench

TINY = dict(
    vocab=32,
    gpt2=dict(n_embd=16, n_layer=2, n_head=2),
    sru=dict(hidden_size=32, num_hidden_layers=2, projection_size=8, num_attention_heads=2),
)


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


@pytest.fixture(scope="module")
def tiny_models():
    torch.manual_seed(0)
    return bench.build_models(TINY, max_len=64, device=torch.device("cpu"), dtype=torch.float32)


@pytest.mark.parametrize("size", sorted(bench.SIZES))
def test_sizes_have_equal_parameter_counts(size):
    with torch.device("meta"):  # counts only: no memory, no init
        models = bench.build_models(bench.SIZES[size], bench.POSITIONS, torch.device("meta"), torch.float32)
    n = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    assert abs(n[bench.SRU] / n[bench.GPT2] - 1) < 0.03, n


def test_decode_step_times_leave_out_the_prefill(tiny_models):
    ids = torch.randint(1, TINY["vocab"], (1, 5))
    times = bench.decode_step_times(tiny_models[bench.SRU], ids, new_tokens=4)
    assert len(times) == 4 and all(t >= 0 for t in times)


def test_bench_context_row_and_cache_sizes(tiny_models):
    ctx, batch, new = 6, 2, 3
    row = bench.bench_context(tiny_models, ctx, batch, new, repeats=1, vocab=TINY["vocab"], device="cpu")
    assert set(row) == {bench.SRU, bench.GPT2}
    for r in row.values():
        assert r["ms"] > 0 and r["tok_s"] == pytest.approx(batch * 1e3 / r["ms"])
    # GPT-2 caches keys and values of every token it was fed: the prompt and all but the last new token
    g = TINY["gpt2"]
    gpt2_bytes = 2 * g["n_layer"] * batch * (ctx + new) * g["n_embd"] * 4
    assert row[bench.GPT2]["mib"] * 2**20 == gpt2_bytes
    # SRU++: an fp32 state per layer, plus keys/values (of projection_size) of the one attention layer
    s = TINY["sru"]
    states = s["num_hidden_layers"] * batch * s["hidden_size"] * 4
    at_least = states + 2 * batch * (ctx + new) * s["projection_size"] * 4
    assert row[bench.SRU]["mib"] * 2**20 >= at_least

    got = cells(bench.format_row(ctx, row))
    assert len(got) == len(cells(bench.HEADER)) == 9
    sru, gpt2 = row[bench.SRU], row[bench.GPT2]
    assert got[0] == str(ctx)
    assert got[5] == f"{gpt2['ms'] / sru['ms']:.2f}x"
    assert got[8] == f"{sru['mib'] / gpt2['mib']:.3f}"


def test_format_row():
    row = {bench.SRU: dict(ms=20.0, tok_s=50.0, mib=1.0), bench.GPT2: dict(ms=30.0, tok_s=100 / 3, mib=4.0)}
    assert bench.format_row(512, row) == "| 512 | 20.00 | 30.00 | 50.0 | 33.3 | 1.50x | 1.00 | 4.00 | 0.250 |"


def test_report():
    rows = ["| 16 | 1.00 | 2.00 | 1000.0 | 500.0 | 2.00x | 0.10 | 0.20 | 0.500 |"]
    params = {bench.SRU: 18.7, bench.GPT2: 18.5}
    text = bench.report("small", bench.SIZES["small"], params, torch.float32, 1, 32, 3, rows, "the machine")
    lines = text.splitlines()
    assert lines[0] == "# generate() decode benchmark: SRU++ vs GPT-2 (small)"
    assert "- machine: the machine" in lines
    assert any(line.startswith("- SRU++: 18.7M parameters, hidden_size=768") for line in lines)
    i = lines.index(bench.HEADER)
    assert lines[i + 1] == "|" + "---|" * 9 and lines[i + 2:i + 3] == rows
