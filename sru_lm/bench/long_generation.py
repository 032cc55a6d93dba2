"""Long generation: ms/token and cache memory sampled along one long ``generate()`` run, for SRU++ with
sliding-window attention (``attention_window=W``), the same SRU++ with full attention, and a GPT-2 of the same
parameter count class (issue 16: with a window, cache bytes and ms/token stay flat while GPT-2's grow).

Each model generates N tokens greedily from a short random prompt in ONE ``generate()`` call (no EOS). A
streamer (:class:`CheckpointSampler`) timestamps every token; when the k-th new token arrives for k in the
checkpoints, it records the median ms/token of the ``block`` decode steps ending there, the bytes of the cache
passed in as ``generate(..., cache=...)`` (an :class:`~sru_lm.models.SRULMCache` or a transformers
``DynamicCache``) and how much the process RSS has grown since the call began. Random weights: speed and
memory do not depend on training. The models run one after another, in table order.

    python -m sru_lm.bench.long_generation --threads 1              # CPU, ~1M parameters, ~7 minutes on 2 EPYC cores
    python -m sru_lm.bench.long_generation --threads 1 --repeats 2 --out benchmarks/bench_generate_long.md  # + .png
    python -m sru_lm.bench.long_generation --size small --full-new-tokens 32768 --device cuda

``--full-new-tokens`` caps the two full-attention models, whose step time grows with the length (GPT-2's
``DynamicCache`` concatenates its keys/values every step); the windowed model always runs ``--new-tokens``.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from collections.abc import Callable

import torch
from transformers import DynamicCache

from sru_lm.models import SRULMCache, SRULMForCausalLM

from .generate import GPT2, SIZES, SRU, StepTimer, build_models, cache_bytes
from .machine import command_line, machine_description, now

# ~1M parameters each: per-token time is mostly per-layer overhead, so 32K tokens take minutes on one CPU
# thread. GPT-2 is counted with its usual 1024 positions (the longer position table a run needs is extra).
LONG_SIZES = {
    "tiny": dict(
        vocab=4096,
        gpt2=dict(n_embd=128, n_layer=2, n_head=2),
        sru=dict(hidden_size=192, num_hidden_layers=5, projection_size=48, num_attention_heads=1),
    ),
    **SIZES,
}
WINDOWED, FULL = "SRU++ windowed", "SRU++ full"
MODELS = (WINDOWED, FULL, GPT2)
CHECKPOINTS = (1024, 2048, 4096, 8192, 16384, 32768)
GOAL = 0.10  # the windowed model's ms/token and cache bytes stay within 10% of their first checkpoint
GPT2_POSITIONS = 1024


def build_long_models(spec: dict, window: int, max_len: int, device: torch.device,
                      dtype: torch.dtype) -> dict[str, torch.nn.Module]:
    """``{WINDOWED, FULL, GPT2}`` for one entry of :data:`LONG_SIZES`: :func:`~sru_lm.bench.generate.build_models`
    (GPT-2 with ``n_positions = max_len``) plus a copy of its SRU++ with ``attention_window=window`` and the same
    weights."""
    models = build_models(spec, max_len, device, dtype)
    full = models[SRU]
    config = copy.deepcopy(full.config)
    config.attention_window = window
    windowed = SRULMForCausalLM(config)
    windowed.load_state_dict(full.state_dict())
    windowed.to(device=device, dtype=dtype).eval()
    windowed.generation_config = copy.deepcopy(full.generation_config)
    return {WINDOWED: windowed, FULL: full, GPT2: models[GPT2]}


def new_cache(model: torch.nn.Module):
    """The cache ``generate()`` would build for ``model``, made here so the sampler can read it."""
    if isinstance(model, SRULMForCausalLM):
        return SRULMCache(model.config)
    return DynamicCache(config=model.config)


def rss_bytes() -> int | None:
    """Resident set size of this process (Linux ``/proc``), None where it cannot be read."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


class CheckpointSampler(StepTimer):
    """A ``generate()`` streamer: timestamps every token (``times[0]``: the prompt, ``times[k]``: the k-th new
    token), in wall-clock and in process CPU time, and, when the k-th new token arrives for k in
    ``checkpoints``, appends to ``rows`` ``{"tokens": k, "ms": median wall ms of decode steps
    max(2, k - block + 1) .. k, "cpu_ms": the same in CPU time, "cache_mib": the cache's bytes, "rss_mib": RSS
    growth since the sampler was made (None if unknown)}``. Step 1 (prefill) is never timed. At checkpoint k the
    cache holds the prompt and k - 1 new tokens (the k-th is fed by the next step).

    CPU time is what the process spent computing: on a shared machine it stays put while other processes
    stretch the wall-clock steps."""

    def __init__(self, cache, checkpoints, block: int, log: Callable[[dict], None] | None = None,
                 snapshot: bool = False) -> None:
        super().__init__()
        self.cache, self.checkpoints, self.block, self.log = cache, set(checkpoints), block, log
        self.cpu_times: list[float] = []
        self.rows: list[dict] = []
        # with ``snapshot``: {k: (copy of the cache, the k-th token)} at each checkpoint, to step from later
        self.snapshot = snapshot
        self.snapshots: dict[int, tuple] = {}
        self._rss0 = rss_bytes()

    def put(self, value) -> None:
        super().put(value)
        self.cpu_times.append(time.process_time())
        k = len(self.times) - 1
        if k not in self.checkpoints:
            return
        rss = rss_bytes()
        steps = range(max(2, k - self.block + 1), k + 1)
        t, c = self.times, self.cpu_times
        row = dict(
            tokens=k,
            ms=statistics.median(t[i] - t[i - 1] for i in steps) * 1e3,
            cpu_ms=statistics.median(c[i] - c[i - 1] for i in steps) * 1e3,
            cache_mib=cache_bytes(self.cache) / 2**20,
            rss_mib=None if rss is None or self._rss0 is None else (rss - self._rss0) / 2**20,
        )
        self.rows.append(row)
        if self.snapshot:  # after the row: the copy delays only the next step, outside every block's median
            self.snapshots[k] = (copy.deepcopy(self.cache), value.detach().reshape(1, 1).clone())
        if self.log is not None:
            self.log(row)


def sample_generation(model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int, checkpoints, block: int,
                      log: Callable[[dict], None] | None = None, snapshots: dict | None = None) -> list[dict]:
    """One greedy ``generate()`` of exactly ``new_tokens`` tokens after ``prompt`` (1, P); one row of
    :class:`CheckpointSampler` per checkpoint <= ``new_tokens``, in order. Given a dict ``snapshots``, it is
    filled with ``{k: (copy of the cache, k-th token)}`` per checkpoint (for :func:`paired_step_times`)."""
    if prompt.ndim != 2 or prompt.shape[0] != 1:
        raise ValueError(f"prompt must be (1, P) token ids (a streamer takes one sequence), got {tuple(prompt.shape)}")
    cache = new_cache(model)
    sampler = CheckpointSampler(cache, [k for k in checkpoints if 2 <= k <= new_tokens], block, log,
                                snapshot=snapshots is not None)
    model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                   streamer=sampler, cache=cache)
    if cache.get_seq_length() != prompt.shape[1] + new_tokens - 1:  # generate() must have used our cache
        raise RuntimeError(
            f"the cache passed to generate() holds {cache.get_seq_length()} tokens, expected the prompt and all but "
            f"the last new token ({prompt.shape[1] + new_tokens - 1}): generate() built its own"
        )
    if snapshots is not None:
        snapshots.update(sampler.snapshots)
    return sampler.rows


def paired_step_times(model: torch.nn.Module, snapshots: dict[int, tuple], rounds: int, burst: int,
                      log: Callable[[dict], None] | None = None) -> list[dict]:
    """ms per greedy decode step at each checkpoint's position, measured so that drift cannot bias them: every
    round runs one burst of ``burst`` steps from a fresh copy of each checkpoint's cache (the order rotating
    from round to round), so a slow stretch of the machine hits every position alike. Rows ``{"tokens": k,
    "ms": median wall ms/step over all bursts at k, "cpu_ms": the same in CPU time}``, in checkpoint order.

    The step is the model's own forward with the cache (what ``generate()`` runs per token, without its
    position-independent bookkeeping)."""
    if rounds < 1 or burst < 1:
        raise ValueError(f"rounds and burst must be >= 1, got rounds={rounds}, burst={burst}")
    order = sorted(snapshots)
    wall: dict[int, list[float]] = {k: [] for k in order}
    cpu: dict[int, list[float]] = {k: [] for k in order}
    sync = torch.cuda.synchronize if next(model.parameters()).is_cuda else (lambda: None)
    with torch.inference_mode():
        for r in range(rounds):
            for k in order[r % len(order):] + order[:r % len(order)]:
                cache, token = snapshots[k]
                cache = copy.deepcopy(cache)
                sync()
                t, c = time.perf_counter(), time.process_time()
                for _ in range(burst):
                    token = model(token, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1:].argmax(-1)
                    sync()
                    t1, c1 = time.perf_counter(), time.process_time()
                    wall[k].append(t1 - t)
                    cpu[k].append(c1 - c)
                    t, c = t1, c1
    rows = [dict(tokens=k, ms=statistics.median(wall[k]) * 1e3, cpu_ms=statistics.median(cpu[k]) * 1e3)
            for k in order]
    if log is not None:
        for row in rows:
            log(row)
    return rows


def paired_verdict(rows: list[dict], tolerance: float = GOAL) -> str:
    """Whether the paired ms/step (wall and CPU) at every checkpoint is within ``tolerance`` of the first."""
    first = rows[0]
    dev = max(abs(r[key] / first[key] - 1) for r in rows for key in ("ms", "cpu_ms"))
    ok = dev <= tolerance
    return (f"{'flat' if ok else 'NOT flat'} from {rows[0]['tokens']} to {rows[-1]['tokens']} generated tokens "
            f"(goal: {tolerance:.0%}): interleaved ms/step within {dev:.1%} of the first checkpoint's, wall and CPU")


def paired_table(rows: list[dict]) -> list[str]:
    lines = ["| cache position (generated tokens) | ms/step | CPU ms/step | vs first (wall) | vs first (CPU) |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['tokens']} | {r['ms']:.3f} | {r['cpu_ms']:.3f} | {r['ms'] / rows[0]['ms']:.3f}x "
                     f"| {r['cpu_ms'] / rows[0]['cpu_ms']:.3f}x |")
    return lines


def best_of(runs: list[list[dict]]) -> list[dict]:
    """Rows of repeated runs of one model combined per checkpoint: the least disturbed time (min of the
    medians, wall and CPU apart), the largest cache and RSS growth."""
    if any([r["tokens"] for r in rows] != [r["tokens"] for r in runs[0]] for rows in runs):
        raise ValueError("every run must sample the same checkpoints")
    out = []
    for rows in zip(*runs, strict=True):
        rss = [r["rss_mib"] for r in rows if r["rss_mib"] is not None]
        out.append(dict(tokens=rows[0]["tokens"], ms=min(r["ms"] for r in rows), cpu_ms=min(r["cpu_ms"] for r in rows),
                        cache_mib=max(r["cache_mib"] for r in rows), rss_mib=max(rss) if rss else None))
    return out


def flatness(rows: list[dict]) -> dict:
    """Last checkpoint / first for wall ms/token, CPU ms/token and cache MiB (``ms_ratio``, ``cpu_ratio``,
    ``mib_ratio``), and the largest ``|value / first - 1|`` over all checkpoints (``ms_dev``, ``cpu_dev``,
    ``mib_dev``)."""
    out = {}
    for key, name in (("ms", "ms"), ("cpu_ms", "cpu"), ("cache_mib", "mib")):
        first = rows[0][key]
        out[f"{name}_ratio"] = rows[-1][key] / first
        out[f"{name}_dev"] = max(abs(r[key] / first - 1) for r in rows)
    return out


def verdict(rows: list[dict], tolerance: float = GOAL) -> str:
    """Whether CPU ms/token and cache bytes stay within ``tolerance`` of the first checkpoint at every checkpoint
    (CPU time: wall-clock time on a shared machine also measures the other processes; it is reported beside)."""
    f = flatness(rows)
    span = f"from {rows[0]['tokens']} to {rows[-1]['tokens']} generated tokens"
    within = (f"at every checkpoint CPU ms/token within {f['cpu_dev']:.1%} and cache within {f['mib_dev']:.1%} "
              f"of the first (wall ms/token within {f['ms_dev']:.1%})")
    ok = f["cpu_dev"] <= tolerance and f["mib_dev"] <= tolerance
    return f"{'flat' if ok else 'NOT flat'} {span} (goal: {tolerance:.0%}): {within}"


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(results: dict[str, list[dict]]) -> list[str]:
    """Markdown: one line per checkpoint, per model wall and CPU ms/token, cache MiB and RSS growth MiB ('-' past
    a model's run), then the last/first ratios per model."""
    names = list(results)
    header = "| generated tokens | " + " | ".join(
        f"{n} ms/token | {n} CPU ms/token | {n} cache MiB | {n} RSS +MiB" for n in names) + " |"
    lines = [header, "|" + "---|" * (1 + 4 * len(names))]
    tokens = sorted({r["tokens"] for rows in results.values() for r in rows})
    for k in tokens:
        cells = [str(k)]
        for n in names:
            r = next((r for r in results[n] if r["tokens"] == k), None)
            cells += ["-"] * 4 if r is None else [
                f"{r['ms']:.2f}", f"{r['cpu_ms']:.2f}", f"{r['cache_mib']:.3f}", _fmt(r["rss_mib"], ".1f")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| model | tokens | ms/token last/first | CPU ms/token last/first | cache last/first |",
              "|---|---|---|---|---|"]
    for n in names:
        rows = results[n]
        f = flatness(rows)
        lines.append(f"| {n} | {rows[0]['tokens']} -> {rows[-1]['tokens']} | {f['ms_ratio']:.2f}x "
                     f"| {f['cpu_ratio']:.2f}x | {f['mib_ratio']:.2f}x |")
    return lines


def plot(results: dict[str, list[dict]], path: str) -> bool:
    """ms/token and cache MiB against generated tokens, one line per model, written to ``path``; False (and
    nothing written) without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return False
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax_ms, ax_mib = fig.subplots(1, 2)
    for name, rows in results.items():
        x = [r["tokens"] for r in rows]
        line, = ax_ms.plot(x, [r["ms"] for r in rows], marker="o", label=name)
        ax_ms.plot(x, [r["cpu_ms"] for r in rows], linestyle="--", color=line.get_color())
        ax_mib.plot(x, [r["cache_mib"] for r in rows], marker="o", label=name)
    ticks = sorted({r["tokens"] for rows in results.values() for r in rows})
    labels = [f"{k // 1024}K" if k % 1024 == 0 else str(k) for k in ticks]
    for ax, ylabel in ((ax_ms, "ms/token, median of the block (dashed: CPU time)"), (ax_mib, "cache MiB (allocated)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, labels)
        ax.set_xlabel("generated tokens")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    ax_mib.set_yscale("log")
    fig.savefig(path, dpi=110)
    return True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options :func:`run` reads."""
    parser.add_argument("--size", choices=sorted(LONG_SIZES), default="tiny")
    parser.add_argument("--window", type=int, default=512, help="attention_window of the windowed SRU++")
    parser.add_argument("--new-tokens", type=int, default=32768, help="tokens the windowed SRU++ generates")
    parser.add_argument("--full-new-tokens", type=int, default=16384,
                        help="tokens SRU++ full and GPT-2 generate (their step time grows; 0: --new-tokens)")
    parser.add_argument("--checkpoints", type=int, nargs="+", default=list(CHECKPOINTS),
                        help="generated-token counts at which to sample")
    parser.add_argument("--block", type=int, default=128, help="decode steps whose median ms/token is reported")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs per model, the models taking turns; per checkpoint the fastest median is kept")
    parser.add_argument("--paired-rounds", type=int, default=8,
                        help="rounds of interleaved bursts from each checkpoint of the windowed model (0: none)")
    parser.add_argument("--paired-burst", type=int, default=128, help="decode steps per burst")
    parser.add_argument("--prompt", type=int, default=16, help="prompt length (random tokens)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                        help="default: bf16 on CUDA, else fp32")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the markdown report here, and the plot beside it (.png)")


def _check_args(args: argparse.Namespace) -> dict[str, int]:
    """Tokens per model; ValueError for arguments the run cannot use."""
    for name in ("window", "new_tokens", "block", "prompt", "repeats", "paired_burst"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.paired_rounds < 0:
        raise ValueError(f"--paired-rounds must be >= 0 (0: no interleaved measurement), got {args.paired_rounds}")
    if args.full_new_tokens < 0:
        raise ValueError(f"--full-new-tokens must be >= 0 (0: --new-tokens), got {args.full_new_tokens}")
    tokens = {WINDOWED: args.new_tokens}
    tokens[FULL] = tokens[GPT2] = args.full_new_tokens or args.new_tokens
    if sorted(set(args.checkpoints)) != list(args.checkpoints) or args.checkpoints[0] < 2:
        raise ValueError(f"--checkpoints must be increasing and >= 2 (step 1 is the prefill), got {args.checkpoints}")
    if args.checkpoints[0] > min(tokens.values()):
        raise ValueError(
            f"the first checkpoint ({args.checkpoints[0]}) must be reached by every model, but one generates only "
            f"{min(tokens.values())} tokens"
        )
    return tokens


def _params(models: dict[str, torch.nn.Module]) -> dict[str, float]:
    """Millions of parameters, GPT-2's counted with :data:`GPT2_POSITIONS` positions."""
    n = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    g = models[GPT2].config
    n[GPT2] -= (g.n_positions - GPT2_POSITIONS) * g.n_embd
    return {name: v / 1e6 for name, v in n.items()}


def _kw(d: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items())


def report(args: argparse.Namespace, spec: dict, params: dict[str, float], n_positions: int, dtype: torch.dtype,
           tokens: dict[str, int], results: dict[str, list[dict]], machine: str, plot_name: str | None,
           paired: list[dict] | None = None) -> str:
    """The markdown file: when, where, the command, the models, the table, the ratios and the verdict."""
    g = spec["gpt2"]
    extra = (n_positions - GPT2_POSITIONS) * g["n_embd"] / 1e6
    best = f", the lower of {args.repeats} runs per model (the models taking turns)" if args.repeats > 1 else ""
    lines = [
        f"# Long generation: SRU++ windowed vs full attention vs GPT-2 ({args.size})",
        "",
        f"- date: {now()}",
        f"- machine: {machine}",
        f"- load average at the end: {_load()}",
        f"- command: `{command_line()}`",
        f"- {WINDOWED}: SRU++ with attention_window={args.window}, {params[WINDOWED]:.2f}M parameters, "
        f"{_kw(spec['sru'])}, vocab {spec['vocab']}; {FULL}: the same weights with full attention",
        f"- {GPT2} (transformers GPT2LMHeadModel, SDPA, DynamicCache): {params[GPT2]:.2f}M parameters at GPT-2's "
        f"{GPT2_POSITIONS} positions, {_kw(g)}, vocab {spec['vocab']}. Real GPT-2 stops at {GPT2_POSITIONS} tokens: "
        f"this one has n_positions={n_positions} (prompt + new tokens + margin, {extra:.2f}M more parameters, "
        "only looked up per step)",
        f"- {dtype}, batch 1, greedy from a {args.prompt}-token random prompt, one generate() call per model "
        "(min_new_tokens = max_new_tokens, no EOS), random weights; generated tokens: "
        + ", ".join(f"{n} {tokens[n]}" for n in results),
        f"- ms/token: median of the {args.block} decode steps ending at the checkpoint (streamer timestamps), "
        f"in wall-clock and in process CPU time (what the model costs, whatever else runs on the machine){best}; "
        "cache MiB: bytes allocated by the cache passed to generate() at that moment (SRULMCache.nbytes(); "
        "DynamicCache keys+values); RSS +MiB: process RSS growth since that model's generate() began",
        "",
        *table(results),
        "",
        f"**Goal** (issue 16, with attention_window set, cache bytes and ms/token flat within {GOAL:.0%} from 1K "
        f"to 32K generated tokens while GPT-2's grow): {WINDOWED} is {verdict(results[WINDOWED])}.",
        "",
    ]
    if paired:
        lines += [
            f"## {WINDOWED}: interleaved steps at each checkpoint's position",
            "",
            f"The medians above come from one run, so each checkpoint's block ran at a different time: on a machine "
            f"whose speed drifts over minutes they measure the drift too. Here the run's cache was copied at every "
            f"checkpoint and then, for {args.paired_rounds} rounds, a burst of {args.paired_burst} greedy steps ran "
            f"from a fresh copy of each checkpoint's cache in turn (the order rotating), so every position saw the "
            f"same machine; median ms per step (model forward + argmax):",
            "",
            *paired_table(paired),
            "",
            f"**Interleaved:** {WINDOWED} is {paired_verdict(paired)}; its cache stays within "
            f"{flatness(results[WINDOWED])['mib_dev']:.1%} of its first size at every checkpoint.",
            "",
        ]
    for name in (FULL, GPT2):
        f = flatness(results[name])
        lines.append(f"- {name}: ms/token {f['ms_ratio']:.2f}x (CPU {f['cpu_ratio']:.2f}x), cache "
                     f"{f['mib_ratio']:.2f}x from {results[name][0]['tokens']} to {results[name][-1]['tokens']} tokens")
    if plot_name:
        lines += ["", f"![ms/token and cache MiB vs generated tokens]({plot_name})"]
    elif args.out:
        lines += ["", "No plot: matplotlib is not installed."]
    return "\n".join(lines) + "\n"


def _load() -> str:
    return f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "unknown"


def run(args: argparse.Namespace) -> None:
    """Build the three models, sample each one's long generation (printing rows as they come), print the report
    and, with ``--out``, write it and the plot."""
    tokens = _check_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = machine_description()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    spec = LONG_SIZES[args.size]
    n_positions = max(GPT2_POSITIONS, args.prompt + max(tokens.values()) + 8)
    torch.manual_seed(args.seed)
    models = build_long_models(spec, args.window, n_positions, device, dtype)
    params = _params(models)
    prompt = torch.randint(1, spec["vocab"], (1, args.prompt), device=device)
    print(", ".join(f"{n} {p:.2f}M" for n, p in params.items()) + f" parameters; {dtype}; {machine}", flush=True)

    for model in models.values():
        model.generate(prompt, max_new_tokens=4, min_new_tokens=4, do_sample=False)  # warm-up: lazy imports, allocator
    runs = {name: [] for name in models}
    snapshots: dict | None = {} if args.paired_rounds else None
    for repeat in range(args.repeats):
        for name, model in models.items():
            def log(row, name=name, repeat=repeat):
                print(f"{name} (run {repeat + 1}): {row['tokens']} tokens, {row['ms']:.2f} ms/token (CPU "
                      f"{row['cpu_ms']:.2f}), cache {row['cache_mib']:.3f} MiB, RSS +{_fmt(row['rss_mib'], '.1f')} MiB",
                      flush=True)
            keep = snapshots if name == WINDOWED and repeat == 0 else None
            runs[name].append(sample_generation(model, prompt, tokens[name], args.checkpoints, args.block, log, keep))
    results = {name: best_of(r) for name, r in runs.items()}
    paired = None
    if snapshots:
        print(f"{WINDOWED}: {args.paired_rounds} rounds of interleaved {args.paired_burst}-step bursts", flush=True)
        paired = paired_step_times(models[WINDOWED], snapshots, args.paired_rounds, args.paired_burst,
                                   lambda r: print(f"  {r['tokens']} tokens: {r['ms']:.3f} ms/step "
                                                   f"(CPU {r['cpu_ms']:.3f})", flush=True))

    plot_name = None
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        png = os.path.splitext(args.out)[0] + ".png"
        if plot(results, png):
            plot_name = os.path.basename(png)
    text = report(args, spec, params, n_positions, dtype, tokens, results, machine, plot_name, paired)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
