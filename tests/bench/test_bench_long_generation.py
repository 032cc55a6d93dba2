"""sru_lm.bench.long_generation on tiny models: one row per checkpoint, a windowed SRU++ cache that stays the
same size while full attention's and GPT-2's grow, the medians over the right steps, and the command line."""

from __future__ import annotations

import argparse
import copy
import time

import pytest
import torch

from sru_lm.bench import long_generation as bench

TINY = dict(
    vocab=32,
    gpt2=dict(n_embd=16, n_layer=2, n_head=2),
    sru=dict(hidden_size=32, num_hidden_layers=2, projection_size=8, num_attention_heads=2),
)
WINDOW, PROMPT, NEW = 8, 3, 160
CHECKPOINTS = [16, 80, 160, 320]  # 320: past the run, dropped


@pytest.fixture(scope="module")
def tiny_models():
    torch.manual_seed(0)
    return bench.build_long_models(TINY, WINDOW, max_len=PROMPT + NEW + 8, device=torch.device("cpu"),
                                   dtype=torch.float32)


@pytest.fixture(scope="module")
def tiny_results(tiny_models):
    prompt = torch.randint(1, TINY["vocab"], (1, PROMPT))
    with torch.no_grad():
        return {name: bench.sample_generation(m, prompt, NEW, CHECKPOINTS, block=4)
                for name, m in tiny_models.items()}


def args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_models_share_weights_and_differ_in_window(tiny_models):
    windowed, full = tiny_models[bench.WINDOWED], tiny_models[bench.FULL]
    assert windowed.config.attention_window == WINDOW and full.config.attention_window is None
    for (name, a), b in zip(windowed.state_dict().items(), full.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_one_row_per_checkpoint(tiny_results):
    for rows in tiny_results.values():
        assert [r["tokens"] for r in rows] == [16, 80, 160]
        assert all(r["ms"] > 0 and r["cpu_ms"] >= 0 and r["cache_mib"] > 0 for r in rows)


def test_windowed_cache_is_constant_past_the_window_and_full_attention_grows(tiny_results):
    windowed = [r["cache_mib"] for r in tiny_results[bench.WINDOWED]]
    full = [r["cache_mib"] for r in tiny_results[bench.FULL]]
    assert PROMPT + CHECKPOINTS[0] - 1 > WINDOW
    assert windowed == [windowed[0]] * len(windowed)
    assert full[-1] > full[0] and full == sorted(full)  # grows in chunks, never shrinks
    assert windowed[-1] < full[-1]


def test_gpt2_cache_holds_every_fed_token(tiny_results):
    g = TINY["gpt2"]
    for r in tiny_results[bench.GPT2]:
        fed = PROMPT + r["tokens"] - 1  # the checkpoint's own token is fed by the next step
        assert r["cache_mib"] * 2**20 == 2 * g["n_layer"] * fed * g["n_embd"] * 4


def test_sampler_medians_cover_the_block_before_each_checkpoint(monkeypatch):
    ticks = {}

    def fake():  # the i-th put sees time i^2 in both clocks: step i takes 2i - 1
        return ticks.setdefault("t", 0) ** 2

    monkeypatch.setattr(time, "perf_counter", fake)
    monkeypatch.setattr(time, "process_time", fake)

    class Cache:
        def nbytes(self):
            return 2**20

    sampler = bench.CheckpointSampler(Cache(), [3, 10], block=4)
    for i in range(12):
        ticks["t"] = i
        sampler.put(None)
    assert [r["tokens"] for r in sampler.rows] == [3, 10]
    # checkpoint 3: steps 2..3 (step 1, the prefill, is never timed) = 3, 5 ms * 1e-3; checkpoint 10: steps 7..10
    assert sampler.rows[0]["ms"] == pytest.approx(4e3) and sampler.rows[0]["cpu_ms"] == pytest.approx(4e3)
    assert sampler.rows[1]["ms"] == pytest.approx(16e3)
    assert sampler.rows[1]["cache_mib"] == 1.0


def test_flatness_and_verdict():
    rows = [dict(tokens=1024, ms=2.0, cpu_ms=2.0, cache_mib=1.0),
            dict(tokens=2048, ms=2.3, cpu_ms=2.1, cache_mib=1.0),
            dict(tokens=4096, ms=2.1, cpu_ms=1.9, cache_mib=1.0)]
    f = bench.flatness(rows)
    assert f["ms_ratio"] == pytest.approx(1.05) and f["ms_dev"] == pytest.approx(0.15)
    assert f["cpu_dev"] == pytest.approx(0.05) and f["mib_ratio"] == 1.0 and f["mib_dev"] == 0.0
    assert bench.verdict(rows).startswith("flat from 1024 to 4096 generated tokens")
    rows[-1]["cache_mib"] = 1.2
    assert bench.verdict(rows).startswith("NOT flat")


def test_best_of_keeps_the_fastest_median_and_the_largest_memory():
    a = [dict(tokens=8, ms=3.0, cpu_ms=2.0, cache_mib=1.0, rss_mib=None), dict(tokens=16, ms=2.0, cpu_ms=2.0,
                                                                             cache_mib=2.0, rss_mib=1.0)]
    b = [dict(tokens=8, ms=2.5, cpu_ms=2.4, cache_mib=1.0, rss_mib=0.5), dict(tokens=16, ms=4.0, cpu_ms=1.5,
                                                                             cache_mib=2.0, rss_mib=3.0)]
    assert bench.best_of([a, b]) == [dict(tokens=8, ms=2.5, cpu_ms=2.0, cache_mib=1.0, rss_mib=0.5),
                                     dict(tokens=16, ms=2.0, cpu_ms=1.5, cache_mib=2.0, rss_mib=3.0)]
    assert bench.best_of([a]) == a
    with pytest.raises(ValueError):
        bench.best_of([a, b[:1]])


def test_table_marks_checkpoints_past_a_run(tiny_results):
    results = dict(tiny_results)
    results[bench.GPT2] = results[bench.GPT2][:2]
    lines = bench.table(results)
    assert lines[0].count("|") == 1 + 1 + 4 * 3
    last = [c.strip() for c in lines[4].strip("|").split("|")]
    assert last[0] == "160" and last[-4:] == ["-"] * 4
    assert any(line.startswith(f"| {bench.GPT2} | 16 -> 80 |") for line in lines)


def test_snapshots_continue_the_run_exactly(tiny_models):
    """A checkpoint's snapshot (a copy of the cache and the k-th token) steps on to greedy's next tokens: it is
    the run's state at k, not a view of the cache that the rest of the run moved on."""
    model = tiny_models[bench.WINDOWED]
    prompt = torch.randint(1, TINY["vocab"], (1, PROMPT), generator=torch.Generator().manual_seed(3))
    snapshots = {}
    with torch.no_grad():
        bench.sample_generation(model, prompt, 40, [16, 30], block=4, snapshots=snapshots)
        whole = model.generate(prompt, max_new_tokens=40, min_new_tokens=40, do_sample=False)[0, PROMPT:]
    assert sorted(snapshots) == [16, 30]
    for k, (cache, token) in snapshots.items():
        assert cache.get_seq_length() == PROMPT + k - 1 and token.item() == whole[k - 1].item()
        cache = copy.deepcopy(cache)
        with torch.no_grad():
            for i in range(3):
                token = model(token, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)
                assert token.item() == whole[k + i].item()


def test_paired_bursts_take_turns_from_fresh_copies(tiny_models, monkeypatch):
    model = tiny_models[bench.WINDOWED]
    prompt = torch.randint(1, TINY["vocab"], (1, PROMPT))
    snapshots = {}
    with torch.no_grad():
        bench.sample_generation(model, prompt, 160, CHECKPOINTS, block=4, snapshots=snapshots)
    starts = []
    handle = model.register_forward_pre_hook(
        lambda mod, a, kw: starts.append(kw["cache"].get_seq_length()), with_kwargs=True)
    try:
        rows = bench.paired_step_times(model, snapshots, rounds=2, burst=2)
    finally:
        handle.remove()
    at = {k: PROMPT + k - 1 for k in (16, 80, 160)}
    bursts = [[at[16], at[16] + 1], [at[80], at[80] + 1], [at[160], at[160] + 1]]
    assert starts == [p for b in bursts + bursts[1:] + bursts[:1] for p in b]  # round 2 starts one later
    assert [r["tokens"] for r in rows] == [16, 80, 160] and all(r["ms"] > 0 for r in rows)
    assert all(snapshots[k][0].get_seq_length() == at[k] for k in at)  # the snapshots were not stepped
    with pytest.raises(ValueError):
        bench.paired_step_times(model, snapshots, rounds=0, burst=2)


def test_paired_verdict_reads_wall_and_cpu():
    rows = [dict(tokens=1024, ms=2.0, cpu_ms=2.0), dict(tokens=32768, ms=2.1, cpu_ms=2.1)]
    assert bench.paired_verdict(rows).startswith("flat from 1024 to 32768")
    rows[1]["cpu_ms"] = 2.3  # 15% slower in CPU time
    assert bench.paired_verdict(rows).startswith("NOT flat") and "15.0%" in bench.paired_verdict(rows)
    assert bench.paired_table(rows)[-1] == "| 32768 | 2.100 | 2.300 | 1.050x | 1.150x |"


def test_arguments():
    a = args()
    assert (a.size, a.window, a.new_tokens, a.full_new_tokens, a.block, a.repeats) == (
        "tiny", 512, 32768, 16384, 128, 1)
    assert a.checkpoints == list(bench.CHECKPOINTS)
    assert bench._check_args(a) == {bench.WINDOWED: 32768, bench.FULL: 16384, bench.GPT2: 16384}
    a = args("--size", "small", "--new-tokens", "100", "--full-new-tokens", "0", "--checkpoints", "10", "100")
    assert a.size == "small" and bench._check_args(a) == dict.fromkeys(bench.MODELS, 100)
    for bad in (["--checkpoints", "20", "10"], ["--checkpoints", "1", "8"], ["--window", "0"], ["--repeats", "0"],
                ["--new-tokens", "64", "--checkpoints", "128"], ["--paired-rounds", "-1"], ["--paired-burst", "0"]):
        with pytest.raises(ValueError):
            bench._check_args(args(*bad))
    with pytest.raises(SystemExit):
        args("--size", "huge")


def test_run_writes_report_and_plot(tmp_path, monkeypatch):
    monkeypatch.setitem(bench.LONG_SIZES, "test", TINY)
    out = tmp_path / "long.md"
    bench.main(["--size", "test", "--window", "4", "--new-tokens", "24", "--full-new-tokens", "12",
                "--checkpoints", "6", "12", "24", "--block", "4", "--prompt", "2", "--repeats", "2",
                "--paired-rounds", "2", "--paired-burst", "4", "--out", str(out)])
    text = out.read_text()
    assert text.startswith("# Long generation: SRU++ windowed vs full attention vs GPT-2 (test)")
    assert "n_positions=1024" in text and "the lower of 2 runs" in text and "SRU++ windowed is " in text
    assert "**Interleaved:** SRU++ windowed is " in text and "| 24 |" in text
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "No plot" in text
    else:
        assert "![" in text and (tmp_path / "long.png").stat().st_size > 0
