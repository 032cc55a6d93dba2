"""The side-by-side LM comparison behind ``scripts/compare_lm.py``: size-matched peers, the time each
needs to reach a loss, and the report (markdown table + PNG of validation bits per byte vs time).

The quality goal (../shared/ANCHORS.md, the SRU++ claim) is checked on validation bits per byte
measured during training, against training time on the trainer's clock:
- at equal time the hybrid ends lower than GPT-2 and the LSTM;
- the hybrid reaches GPT-2's final value in at most 1/2.5 of GPT-2's time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from .baselines import LSTMLanguageModel, build_gpt2, gpt2_config, match_width

METRIC = "val_bits_per_byte"


def embedding_parameters(model: nn.Module) -> int:
    """Parameters of the input embeddings (the output layer is tied to them in every family here)."""
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else model.embed
    n = emb.weight.numel()
    wpe = getattr(getattr(model, "transformer", None), "wpe", None)  # GPT-2's position table
    return n + (wpe.weight.numel() if wpe is not None else 0)


def size_matched_peers(
    target: int, vocab_size: int, context: int, *, gpt2_layers: int = 4, gpt2_heads: int = 4, lstm_layers: int = 2
) -> dict[str, tuple[nn.Module, str]]:
    """A GPT-2 and an LSTM LM with total parameter counts as close as possible to ``target``.

    Returns ``{"gpt2": (model, description), "lstm": (model, description)}``.
    """
    step = 2 * gpt2_heads  # even head size
    w_gpt2, _ = match_width(
        target, lambda w: build_gpt2(gpt2_config(vocab_size, w, gpt2_layers, gpt2_heads, context)),
        range(step, 2049, step),
    )
    w_lstm, _ = match_width(target, lambda w: LSTMLanguageModel(vocab_size, w, lstm_layers), range(8, 2049, 4))
    return {
        "gpt2": (build_gpt2(gpt2_config(vocab_size, w_gpt2, gpt2_layers, gpt2_heads, context)),
                 f"GPT2LMHeadModel (sdpa), d={w_gpt2}, {gpt2_layers} layers, {gpt2_heads} heads"),
        "lstm": (LSTMLanguageModel(vocab_size, w_lstm, lstm_layers), f"nn.LSTM LM, d={w_lstm}, {lstm_layers} layers"),
    }


def time_to_reach(evals: list[dict[str, float]], target: float, key: str = METRIC) -> float | None:
    """Training seconds at which the validation curve first reaches ``target`` (linear between evaluations)."""
    prev_t, prev_v = 0.0, math.inf
    for e in evals:
        t, v = e["seconds"], e[key]
        if v <= target:
            if math.isinf(prev_v):
                return t
            return prev_t + (t - prev_t) * (prev_v - target) / (prev_v - v)
        prev_t, prev_v = t, v
    return None


@dataclass
class Run:
    name: str
    description: str
    params: int
    embedding_params: int
    lr: float
    step: int = 0
    tokens: int = 0
    seconds: float = 0.0
    evals: list[dict[str, float]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)  # full-split evaluations

    @property
    def last(self) -> float:
        return self.evals[-1][METRIC] if self.evals else math.nan


def goals(runs: dict[str, Run], hybrid: str = "hybrid", gpt2: str = "gpt2", lstm: str = "lstm") -> dict[str, Any]:
    """The two quality goals, measured (empty without the hybrid)."""
    if hybrid not in runs:
        return {}
    h = runs[hybrid]
    out: dict[str, Any] = {}
    peers = [n for n in (gpt2, lstm) if n in runs]
    out["lower_at_equal_time"] = all(h.last < runs[n].last for n in peers)
    if gpt2 in runs:
        g = runs[gpt2]
        t = time_to_reach(h.evals, g.last)
        out["hybrid_seconds_to_gpt2_final"] = t
        out["fraction_of_gpt2_time"] = None if t is None else t / g.seconds
        out["reaches_gpt2_final_in_0.4"] = t is not None and t <= g.seconds / 2.5
    return out


def _fmt(v: float | None, spec: str = ".4f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def write_report(
    runs: dict[str, Run], prefix: str | Path, *, command: str, machine: str, date: str, notes: list[str]
) -> tuple[Path, Path]:
    """Write ``<prefix>.md`` (table, goals, command) and ``<prefix>.png`` (validation bpb vs time)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in runs.values():
        ax.plot([e["seconds"] / 60 for e in r.evals], [e[METRIC] for e in r.evals], marker="o", ms=3,
                label=f"{r.name} ({r.params / 1e6:.2f}M)")
    ax.set_xlabel("training time (minutes, trainer clock)")
    ax.set_ylabel("validation bits per byte")
    ax.set_title("Same data, tokenizer, parameter count and time budget")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png = prefix.with_suffix(".png")
    fig.savefig(png, dpi=120)
    plt.close(fig)

    g = goals(runs)
    lines = [
        f"# Hybrid SRU++ LM vs GPT-2 vs LSTM at equal training time ({date})",
        "",
        f"Machine: {machine}.",
        "",
        "Command:",
        "",
        "```",
        command,
        "```",
        "",
        "| model | params (embedding) | lr | steps | tokens | train s | tokens/s | val bpb during training "
        "(subset, last) | val bpb, full split, sliding window | val bpb, full split, streaming state |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs.values():
        lines.append(
            f"| {r.name}: {r.description} | {r.params:,} ({r.embedding_params:,}) | {r.lr:g} | {r.step} | "
            f"{r.tokens:,} | {r.seconds:.0f} | {r.tokens / max(r.seconds, 1e-9):.0f} | {_fmt(r.last)} | "
            f"{_fmt(r.final.get('sliding_bits_per_byte'))} | {_fmt(r.final.get('streaming_bits_per_byte'))} |"
        )
    frac = g.get("fraction_of_gpt2_time")
    if g:
        lines += [
            "",
            "Goals (validation bits per byte during training, on the trainer clock):",
            "",
            f"- hybrid lower than every peer at equal time: **{'yes' if g['lower_at_equal_time'] else 'no'}** "
            f"({', '.join(f'{r.name} {_fmt(r.last)}' for r in runs.values())})",
        ]
    if "fraction_of_gpt2_time" in g:
        reached = (
            "never reached" if frac is None
            else f"{_fmt(g['hybrid_seconds_to_gpt2_final'], '.0f')} s = {frac:.2f} of GPT-2's time"
        )
        ok = "yes" if g["reaches_gpt2_final_in_0.4"] else "no"
        lines.append(f"- hybrid reaches GPT-2's final value in <= 1/2.5 of GPT-2's time: **{ok}** ({reached})")
    lines += ["", "Notes:", ""] + [f"- {n}" for n in notes] + ["", f"![validation bpb vs time]({png.name})", ""]
    md = prefix.with_suffix(".md")
    md.write_text("\n".join(lines))
    return md, png
