"""sru_lm.bench.assisted on tiny models: a draft identical to the target has every token accepted, a different
draft keeps greedy's tokens with fewer accepted, the acceptance arithmetic matches the target's forward calls,
prompts come from the books, and the command writes its report."""

from __future__ import annotations

import argparse
import copy

import pytest
import torch

from sru_lm import SRULMConfig, SRULMForCausalLM
from sru_lm.bench import assisted as bench
from sru_lm.data.tokenizer import save_tokenizer, train_tokenizer

TEXT = ("It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
        "foolishness, it was the epoch of belief, it was the epoch of incredulity. ") * 6
VOCAB = 300


def tiny(seed: int, **kw) -> SRULMForCausalLM:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, projection_size=8, num_attention_heads=2,
               attention_every_n_layers=2, pad_token_id=0)
    return SRULMForCausalLM(SRULMConfig(**{**cfg, **kw})).eval()


@pytest.fixture(scope="module")
def target():
    return tiny(0)


@pytest.fixture(scope="module")
def prompts():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(1, VOCAB, (1, n), generator=g) for n in (5, 9)]


def test_identical_draft_has_every_draft_token_accepted(target, prompts):
    modes = bench.modes([3], heuristic=False, lookup=[], with_draft=True)
    totals = bench.run_modes(target, copy.deepcopy(target), modes, prompts, new_tokens=17, repeats=1)
    rows = {r["mode"]: r for r in bench.summary(totals)}
    g, d = rows[bench.GREEDY], rows["draft k=3"]
    assert g["tokens"] == d["tokens"] == 2 * 17
    assert g["tokens_per_forward"] == pytest.approx(1.0)  # plain greedy: one forward per token
    assert g["acceptance"] is None
    assert d["acceptance"] == pytest.approx(1.0)
    # every verification emits 3 drafts + 1 token of its own; the last one is cut to what is left of 17
    assert totals["draft k=3"].forwards == 2 * 5
    assert d["same"]


def test_different_draft_and_prompt_lookup_keep_greedy_tokens(target, prompts):
    modes = bench.modes([1, 4], heuristic=True, lookup=[2], with_draft=True, generic_lengths=[4], vocab_sizes=[9])
    assert [m.name for m in modes] == [bench.GREEDY, "draft k=1", "draft k=4", "draft k=1, draft vocab 9",
                                       "draft k=4, draft vocab 9", "draft, heuristic k",
                                       "draft k=4, transformers' generator", "prompt lookup k=2"]
    draft = tiny(7)
    totals = bench.run_modes(target, draft, modes, prompts, new_tokens=12, repeats=2)
    rows = bench.summary(totals)
    assert all(r["same"] and r["tokens"] == 24 for r in rows)
    for r in rows[1:3]:
        assert 0.0 <= r["acceptance"] < 1.0  # a random draft cannot agree everywhere
        assert totals[r["mode"]].drafted > 0
    # both generators draft the same greedy tokens from the same draft: same verifications
    assert totals["draft k=4"].forwards == totals["draft k=4, transformers' generator"].forwards
    assert totals["draft k=4"].drafted == totals["draft k=4, transformers' generator"].drafted
    assert not hasattr(draft, "draft_directly")  # the switch is put back
    assert getattr(draft.generation_config, "draft_vocab_size", None) is None  # and the draft's config
    assert bench.verdict(rows).startswith(("MET", "NOT met"))


def test_a_changed_output_is_reported(target, prompts, monkeypatch):
    real = bench._generate

    def wrong(target, draft, mode, ids, new_tokens):
        out = real(target, draft, mode, ids, new_tokens)
        return out if mode.kind == "greedy" else (out + 1) % VOCAB

    monkeypatch.setattr(bench, "_generate", wrong)
    modes = bench.modes([], heuristic=False, lookup=[2], with_draft=False)
    rows = bench.summary(bench.run_modes(target, None, modes, prompts[:1], new_tokens=6, repeats=1))
    assert rows[1]["same"] is False
    assert "| NO |" in bench.table(rows)[-1]


def test_greedy_must_come_first(target, prompts):
    with pytest.raises(ValueError, match="first mode must be greedy"):
        bench.run_modes(target, None, [bench.Mode("lookup", "lookup", 2)], prompts, 4, 1)


def test_prompts_are_cut_evenly_from_the_books():
    tok = train_tokenizer([TEXT], vocab_size=VOCAB, min_frequency=1, show_progress=False)
    books = [TEXT, TEXT[::-1], "too short"]
    prompts = bench.prompts_from_books(books, tok, n=5, length=10)
    assert len(prompts) == 5 and all(p.shape == (1, 10) for p in prompts)
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    first = prompts[0][0].tolist()
    assert any(ids[i:i + 10] == first for i in range(len(ids) - 9))
    assert prompts[0].tolist() != prompts[2].tolist()  # the same book, another place
    with pytest.raises(ValueError, match="no book has"):
        bench.prompts_from_books(["short"], tok, n=1, length=50)


def test_command_writes_the_report(tmp_path, target):
    tok = train_tokenizer([TEXT], vocab_size=VOCAB, min_frequency=1, show_progress=False)
    for name, model in (("target", target), ("draft", tiny(3, num_hidden_layers=1, attention_every_n_layers=1))):
        model.save_pretrained(tmp_path / name)
        save_tokenizer(tok, tmp_path / name)
    (tmp_path / "book.txt").write_text(TEXT)
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    out = tmp_path / "report.md"
    args = parser.parse_args(["--target", str(tmp_path / "target"), "--draft", str(tmp_path / "draft"),
                              "--text-files", str(tmp_path / "book.txt"), "--prompts", "2", "--prompt-tokens", "8",
                              "--new-tokens", "6", "--repeats", "1", "--draft-lengths", "2", "--out", str(out)])
    rows = bench.run(args)
    text = out.read_text()
    assert [r["mode"] for r in rows] == [bench.GREEDY, "draft k=2", "draft, heuristic k", "prompt lookup k=4"]
    assert all(r["same"] for r in rows)
    assert "**Goal**" in text and "| draft k=2 | 12 |" in text


def test_bad_arguments_are_refused(tmp_path):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    with pytest.raises(ValueError, match="--new-tokens must be >= 1"):
        bench.run(parser.parse_args(["--target", str(tmp_path), "--new-tokens", "0"]))
    with pytest.raises(ValueError, match="--draft-lengths values must be >= 1"):
        bench.run(parser.parse_args(["--target", str(tmp_path), "--draft-lengths", "0"]))
