"""Assisted (speculative) decoding: a trained target model decoding greedily alone, with a smaller trained SRU++
draft (``assistant_model=``) at several draft lengths, and with prompt lookup (``prompt_lookup_num_tokens=``).

Every mode generates the same number of new tokens from the same prompts (``min_new_tokens =
max_new_tokens``), and every output is compared with plain greedy's: assisted greedy decoding must give exactly
its tokens, so tokens/s compare work at equal output. Prompts are slices of the held-out test books, encoded with
the target's tokenizer (the draft must share it). Per prompt the modes take turns, ``--repeats`` times, and the
fastest run of each (prompt, mode) counts, so a burst of load on a shared machine hits every mode alike.

Acceptance is read from the target's forward calls: the first verification sees the prompt and k_1 draft tokens,
each later one the last accepted token and k_i draft tokens, and each emits the accepted drafts plus one token of
its own. So with F target forwards over N new tokens, the drafted tokens are D = sum(L_i) - prompt - (F - 1),
the accepted ones N - F, and the acceptance rate (N - F) / D.

    python -m sru_lm.bench.assisted --target outputs/target/model --draft outputs/main_lm/model --threads 1
    python scripts/bench_generate.py --mode assisted --target T --draft D --out benchmarks/bench_generate_assisted.md
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from .machine import command_line, emit_report, machine_description, now

GREEDY = "greedy"


@dataclass(frozen=True)
class Mode:
    """One way to decode: plain greedy, a draft model proposing ``k`` tokens per step (``k=None``: the draft's
    own generation config, transformers' heuristic schedule), or prompt lookup proposing up to ``k``."""

    name: str
    kind: str  # "greedy" | "assistant" | "lookup"
    k: int | None = None
    generic: bool = False  # an assistant drafting through transformers' generator (a generate() per round)
    vocab: int | None = None  # the draft's generation_config.draft_vocab_size (None: the whole vocabulary)


@dataclass
class Tally:
    """What one (prompt, mode) run costs and yields; the fastest of the repeats is kept."""

    seconds: float = float("inf")
    cpu_seconds: float = float("inf")
    new_tokens: int = 0
    forwards: int = 0
    drafted: int = 0
    same_as_greedy: bool = True
    outputs: list = field(default_factory=list)


def modes(draft_lengths: Sequence[int], heuristic: bool, lookup: Sequence[int], with_draft: bool,
          generic_lengths: Sequence[int] = (), vocab_sizes: Sequence[int] = ()) -> list[Mode]:
    """Greedy first, then the draft at each length, at each length again drafting among the first ``n`` token
    ids for each n in ``vocab_sizes``, with its own generation config, through transformers' generator at
    ``generic_lengths``, then prompt lookup."""
    out = [Mode(GREEDY, "greedy")]
    if with_draft:
        out += [Mode(f"draft k={k}", "assistant", k) for k in draft_lengths]
        out += [Mode(f"draft k={k}, draft vocab {n}", "assistant", k, vocab=n)
                for n in vocab_sizes for k in draft_lengths]
        if heuristic:
            out.append(Mode("draft, heuristic k", "assistant", None))
        out += [Mode(f"draft k={k}, transformers' generator", "assistant", k, generic=True) for k in generic_lengths]
    out += [Mode(f"prompt lookup k={k}", "lookup", k) for k in lookup]
    return out


class ForwardCounter:
    """Counts a model's forward calls and the positions they take (``input_ids`` or ``inputs_embeds`` length)."""

    def __init__(self, model: torch.nn.Module):
        self.calls = 0
        self.positions = 0
        self._handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        x = kwargs.get("input_ids")
        if x is None:
            x = args[0] if args else kwargs.get("inputs_embeds")
        self.calls += 1
        self.positions += x.shape[1]

    def reset(self) -> None:
        self.calls = self.positions = 0

    def remove(self) -> None:
        self._handle.remove()


def prompts_from_books(texts: Sequence[str], tokenizer, n: int, length: int) -> list[torch.Tensor]:
    """``n`` prompts of ``length`` tokens, spread evenly over the books (each book encoded once)."""
    if n < 1 or length < 1:
        raise ValueError(f"need n >= 1 prompts of length >= 1, got n={n}, length={length}")
    books = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    books = [b for b in books if len(b) >= 2 * length]
    if not books:
        raise ValueError(f"no book has {2 * length} tokens to cut prompts of {length} from")
    out = []
    for i in range(n):
        book = books[i % len(books)]
        slot, slots = i // len(books), -(-n // len(books))
        start = (len(book) - length) * (2 * slot + 1) // (2 * slots)
        out.append(torch.tensor([book[start:start + length]]))
    return out


def _generate(target: PreTrainedModel, draft: PreTrainedModel | None, mode: Mode, ids: torch.Tensor,
              new_tokens: int) -> torch.Tensor:
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
              attention_mask=torch.ones_like(ids))
    if mode.kind == "assistant":
        kw["assistant_model"] = draft
        draft.draft_directly = not mode.generic  # see sru_lm.models.drafting.can_draft_directly
    elif mode.kind == "lookup":
        kw["prompt_lookup_num_tokens"] = mode.k
    try:
        with torch.inference_mode():
            return target.generate(ids, **kw)[0, ids.shape[1]:]
    finally:
        if mode.kind == "assistant":
            del draft.draft_directly


def _set_draft_length(draft: PreTrainedModel, base_config, k: int | None, vocab: int | None = None) -> None:
    """A fixed k: constant schedule and no confidence cut-off; None: the draft's own configuration. ``vocab``:
    draft among the first ``vocab`` token ids (``draft_vocab_size``)."""
    draft.generation_config = copy.deepcopy(base_config)
    if vocab is not None:
        draft.generation_config.draft_vocab_size = vocab
    if k is not None:
        draft.generation_config.num_assistant_tokens = k
        draft.generation_config.num_assistant_tokens_schedule = "constant"
        draft.generation_config.assistant_confidence_threshold = 0.0


def run_modes(target: PreTrainedModel, draft: PreTrainedModel | None, mode_list: Sequence[Mode],
              prompts: Sequence[torch.Tensor], new_tokens: int, repeats: int, progress=None) -> dict[str, Tally]:
    """Time every mode on every prompt, the modes taking turns; the totals over prompts of the fastest runs."""
    if mode_list[0].kind != "greedy":
        raise ValueError("the first mode must be greedy: the others are checked against its tokens")
    counter = ForwardCounter(target)
    base = copy.deepcopy(draft.generation_config) if draft is not None else None
    totals = {m.name: Tally(seconds=0.0, cpu_seconds=0.0) for m in mode_list}
    try:
        for p, ids in enumerate(prompts):
            best: dict[str, Tally] = {m.name: Tally() for m in mode_list}
            for _ in range(repeats):
                for mode in mode_list:
                    if mode.kind == "assistant":
                        _set_draft_length(draft, base, mode.k, mode.vocab)
                    counter.reset()
                    t0, c0 = time.perf_counter(), time.process_time()
                    out = _generate(target, draft, mode, ids, new_tokens)
                    t, c = time.perf_counter() - t0, time.process_time() - c0
                    b = best[mode.name]
                    b.seconds, b.cpu_seconds = min(b.seconds, t), min(b.cpu_seconds, c)
                    b.new_tokens, b.forwards, b.outputs = out.numel(), counter.calls, out
                    b.drafted = counter.positions - ids.shape[1] - (counter.calls - 1)
                    b.same_as_greedy &= bool(torch.equal(out, best[GREEDY].outputs))
            for name, b in best.items():
                tot = totals[name]
                tot.seconds += b.seconds
                tot.cpu_seconds += b.cpu_seconds
                tot.new_tokens += b.new_tokens
                tot.forwards += b.forwards
                tot.drafted += b.drafted
                tot.same_as_greedy &= b.same_as_greedy
            if progress is not None:
                progress(p, totals)
    finally:
        counter.remove()
        if draft is not None:
            draft.generation_config = base
    return totals


def summary(totals: dict[str, Tally]) -> list[dict]:
    """One row per mode: tokens/s (wall and CPU), speedup over greedy, target forwards per token, acceptance."""
    g = totals[GREEDY]
    rows = []
    for name, t in totals.items():
        accepted = t.new_tokens - t.forwards
        rows.append(dict(
            mode=name, tokens=t.new_tokens, seconds=t.seconds,
            tokens_per_s=t.new_tokens / t.seconds, cpu_tokens_per_s=t.new_tokens / t.cpu_seconds,
            speedup=g.seconds / t.seconds, cpu_speedup=g.cpu_seconds / t.cpu_seconds,
            tokens_per_forward=t.new_tokens / t.forwards,
            acceptance=(accepted / t.drafted) if name != GREEDY and t.drafted > 0 else None,
            same=t.same_as_greedy,
        ))
    return rows


def table(rows: list[dict]) -> list[str]:
    lines = ["| mode | new tokens | tokens/s | CPU tokens/s | speedup vs greedy | CPU speedup | tokens per target "
             "forward | acceptance rate | tokens = greedy's |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = "-" if r["acceptance"] is None else f"{r['acceptance']:.0%}"
        lines.append(f"| {r['mode']} | {r['tokens']} | {r['tokens_per_s']:.1f} | {r['cpu_tokens_per_s']:.1f} | "
                     f"{r['speedup']:.2f}x | {r['cpu_speedup']:.2f}x | {r['tokens_per_forward']:.2f} | {acc} | "
                     f"{'yes' if r['same'] else 'NO'} |")
    return lines


def verdict(rows: list[dict]) -> str:
    """The issue's goal: some draft mode faster than greedy, side by side, with greedy's exact tokens."""
    drafts = [r for r in rows if r["mode"].startswith("draft")]
    if not drafts:
        return "not measured (no draft model)"
    best = max(drafts, key=lambda r: r["cpu_speedup"])
    ok = best["cpu_speedup"] > 1.0 and best["speedup"] > 1.0 and all(r["same"] for r in rows)
    return (f"{'MET' if ok else 'NOT met'}: best draft mode '{best['mode']}' at {best['speedup']:.2f}x greedy's "
            f"tokens/s ({best['cpu_speedup']:.2f}x in CPU time), acceptance {best['acceptance']:.0%}; "
            f"outputs equal to greedy's in {'every' if all(r['same'] for r in rows) else 'NOT every'} mode")


def _describe(model: PreTrainedModel, path: str) -> str:
    c = model.config
    n = sum(p.numel() for p in model.parameters()) / 1e6
    window = f", attention_window={c.attention_window}" if getattr(c, "attention_window", None) else ""
    return (f"`{path}`: {n:.2f}M parameters, hidden_size={c.hidden_size}, layers={c.num_hidden_layers}, "
            f"attention every {c.attention_every_n_layers}, projection_size={c.projection_size}{window}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options :func:`run` reads."""
    parser.add_argument("--target", required=True, help="saved model directory (weights, config, tokenizer)")
    parser.add_argument("--draft", default=None, help="saved smaller model sharing the target's tokenizer")
    parser.add_argument("--draft-lengths", type=int, nargs="*", default=[2, 4, 8],
                        help="draft tokens per verification (constant schedule)")
    parser.add_argument("--heuristic", action=argparse.BooleanOptionalAction, default=True,
                        help="also run the draft with its own generation config (transformers' heuristic k)")
    parser.add_argument("--generic-draft-lengths", type=int, nargs="*", default=[],
                        help="also run the draft through transformers' AssistedCandidateGenerator (a generate() "
                             "per round) at these lengths, for comparison")
    parser.add_argument("--draft-vocab-sizes", type=int, nargs="*", default=[],
                        help="also run each draft length drafting only among the first n token ids "
                             "(generation_config.draft_vocab_size), for each n")
    parser.add_argument("--prompt-lookup", type=int, nargs="*", default=[4], help="prompt_lookup_num_tokens values")
    parser.add_argument("--prompts", type=int, default=8, help="prompts cut from the test books")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2, help="runs per (prompt, mode); the fastest counts")
    parser.add_argument("--data", default="auto", help="corpus of the test books (sru_lm.data.load_lm_corpus)")
    parser.add_argument("--text-files", nargs="+", default=None, help="cut prompts from these files instead")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    parser.add_argument("--out", default=None, help="write the markdown report here")


def _check_args(args: argparse.Namespace) -> None:
    for name in ("prompts", "prompt_tokens", "new_tokens", "repeats"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("draft_lengths", "generic_draft_lengths", "prompt_lookup", "draft_vocab_sizes"):
        if any(k < 1 for k in getattr(args, name)):
            raise ValueError(f"--{name.replace('_', '-')} values must be >= 1, got {getattr(args, name)}")


def load(path: str) -> PreTrainedModel:
    import sru_lm  # noqa: F401  (registers the Auto classes)

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model.eval()


def run(args: argparse.Namespace) -> list[dict]:
    """Load the models, cut the prompts, time every mode, print (and with ``--out`` write) the report."""
    _check_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = machine_description()
    target = load(args.target)
    draft = load(args.draft) if args.draft else None
    tokenizer = AutoTokenizer.from_pretrained(args.target)
    if draft is not None and draft.config.vocab_size != target.config.vocab_size:
        raise ValueError(f"--draft has vocab_size {draft.config.vocab_size}, the target "
                         f"{target.config.vocab_size}: the draft must share the target's tokenizer")
    if args.text_files:
        from ..data.lm import read_text

        texts = [read_text(p) for p in args.text_files]
    else:
        from ..data.lm import load_lm_corpus

        texts = list(load_lm_corpus(args.data)["test"]["text"])
    prompts = prompts_from_books(texts, tokenizer, args.prompts, args.prompt_tokens)
    mode_list = modes(args.draft_lengths, args.heuristic, args.prompt_lookup, draft is not None,
                      args.generic_draft_lengths, args.draft_vocab_sizes)
    _generate(target, draft, mode_list[0], prompts[0], 4)  # warm-up: lazy imports, allocator

    def progress(p, totals):
        print(f"prompt {p + 1}/{len(prompts)}: " + ", ".join(
            f"{n} {t.new_tokens / t.seconds:.1f} tok/s" for n, t in totals.items()), flush=True)

    rows = summary(run_modes(target, draft, mode_list, prompts, args.new_tokens, args.repeats, progress))
    lines = [
        "# Assisted decoding: a trained SRU++ draft and prompt lookup against plain greedy decoding",
        "",
        f"- date: {now()}",
        f"- machine: {machine}",
        f"- command: `{command_line()}`",
        f"- target: {_describe(target, args.target)}",
        f"- draft: {_describe(draft, args.draft) if draft is not None else 'none'}",
        f"- {len(prompts)} prompts of {args.prompt_tokens} tokens cut evenly from the test books, "
        f"{args.new_tokens} new tokens each (min_new_tokens = max_new_tokens), float32, batch 1; per prompt the "
        f"modes take turns {args.repeats} times and the fastest run of each counts; tokens/s = all new tokens / "
        "summed time (wall, and process CPU time)",
        "- acceptance rate = accepted draft tokens / drafted tokens, read from the target's forward calls (see "
        "`sru_lm/bench/assisted.py`); 'tokens = greedy's': every prompt's output equals plain greedy's",
        "",
        *table(rows),
        "",
        f"**Goal** (issue 16: with a trained draft, assisted greedy decoding faster than plain greedy at equal "
        f"output on CPU, side by side): {verdict(rows)}.",
    ]
    emit_report("\n".join(lines) + "\n", args.out)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
