"""Hybrid SRU++ LM vs GPT-2 (transformers, SDPA) vs an LSTM LM: same data, tokenizer, parameter count
(within 5%) and training-time budget; validation bits per byte against time.

    python scripts/compare_lm.py --minutes 12 --threads 1 --clock process

On a machine shared with other jobs, ``--threads 1 --clock process`` gives every model the same CPU
time whatever the others run (a wall clock would charge one model for its neighbours' load).
Writes ``benchmarks/compare_lm.{md,png,json}`` (change with ``--out``) and keeps checkpoints under
``outputs/compare_lm/<model>`` (change with ``--work-dir``; a killed comparison resumes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

import torch

from sru_lm.training.baselines import count_parameters
from sru_lm.training.cli import (
    add_data_args,
    add_model_args,
    add_train_args,
    apply_threads,
    command_line,
    lm_train_kwargs,
    machine_description,
    now,
    train_config,
)
from sru_lm.training.compare import Run, embedding_parameters, goals, size_matched_peers, write_report
from sru_lm.training.lm import adapter_for, evaluate_sliding, evaluate_streaming
from sru_lm.training.pipeline import build_sru_lm, prepare_lm_data, train_language_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(p)
    add_model_args(p)
    add_train_args(p)
    p.add_argument("--minutes", type=float, default=12.0, help="training-time budget per model")
    p.add_argument("--models", default="hybrid,gpt2,lstm")
    p.add_argument("--lrs", default="hybrid=8e-3,gpt2=4e-3,lstm=1.6e-2",
                   help="per-model peak learning rate (defaults: best of the sweep in compare_lm_lr_sweep.md)")
    p.add_argument("--gpt2-layers", type=int, default=4)
    p.add_argument("--gpt2-heads", type=int, default=4)
    p.add_argument("--lstm-layers", type=int, default=2)
    p.add_argument("--tolerance", type=float, default=0.05, help="allowed relative parameter-count difference")
    p.add_argument("--final-eval", action=argparse.BooleanOptionalAction, default=True,
                   help="evaluate each model on the full validation split at the end")
    p.add_argument("--out", default="benchmarks/compare_lm")
    p.add_argument("--work-dir", default="outputs/compare_lm")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    apply_threads(args)
    lrs = {k: float(v) for k, v in (kv.split("=") for kv in args.lrs.split(","))}
    names = args.models.split(",")

    data = prepare_lm_data(args.data, paths=args.text_files, vocab_size=args.vocab_size, tokenizer=args.tokenizer,
                           cache=args.cache_dir)
    V = len(data.tokenizer)
    hybrid_kwargs = dict(hidden_size=args.hidden_size, num_layers=args.layers, attention_every=args.attention_every,
                         projection_size=args.projection_size, num_heads=args.heads, dropout=args.dropout)
    target = count_parameters(build_sru_lm(data.tokenizer, **hybrid_kwargs))
    peers = size_matched_peers(target, V, args.seq_len, gpt2_layers=args.gpt2_layers, gpt2_heads=args.gpt2_heads,
                               lstm_layers=args.lstm_layers)
    descriptions = {
        "hybrid": f"SRU++ d={args.hidden_size}, {args.layers} layers, attention every {args.attention_every}",
        **{k: d for k, (_, d) in peers.items()},
    }
    for k, (m, _) in peers.items():
        gap = abs(count_parameters(m) - target) / target
        if gap > args.tolerance:
            raise SystemExit(f"{k} has {count_parameters(m):,} parameters, {gap:.1%} away from the hybrid's {target:,}")

    runs: dict[str, Run] = {}
    for name in names:
        torch.manual_seed(args.seed)  # same init stream, data order and seed for every model
        model = build_sru_lm(data.tokenizer, **hybrid_kwargs) if name == "hybrid" else peers[name][0]
        config = train_config(args, str(Path(args.work_dir) / name), lr=lrs[name], max_minutes=args.minutes)
        print(f"== {name}: {descriptions[name]}, {count_parameters(model):,} parameters, lr {lrs[name]:g}", flush=True)
        trainer, result = train_language_model(model, data, config, **lm_train_kwargs(args))
        model = trainer.unwrapped_model
        run = Run(name, descriptions[name], count_parameters(model), embedding_parameters(model), lrs[name],
                  result.step, result.tokens, result.train_seconds, result.history["eval"])
        if args.final_eval:
            val, nbytes = data.streams["validation"], data.num_bytes["validation"]
            score = evaluate_sliding(model, val, nbytes, context=args.seq_len, stride=args.seq_len // 2)
            run.final.update(score.as_dict("sliding_"))
            if adapter_for(model).stateful:
                run.final.update(evaluate_streaming(model, val, nbytes, window=args.seq_len).as_dict("streaming_"))
        runs[name] = run
        print(f"== {name}: {run.step} steps, {run.tokens:,} tokens, val bpb {run.last:.4f}, {run.final}", flush=True)

    notes = [
        f"Data: {data.source}, split by book; tokenizer: byte-level BPE, {V} tokens, trained on the train split. "
        f"Train {data.summary()['train']['tokens']:,} tokens; validation {data.summary()['validation']['tokens']:,}.",
        f"Batches: {args.batch_size} rows x {args.seq_len} tokens; the books are cut into {args.piece_tokens}-token "
        "pieces dealt to the rows in a seeded random order, a row reads its piece segment by segment; recurrent "
        f"state carried across a piece's segments: {args.carry_state} (hybrid SRU state, LSTM (h, c)), zero at "
        "each piece start. Same batches in the same order for every model.",
        f"Every model: AdamW, weight decay {args.weight_decay}, {args.warmup_steps} warmup steps, cosine to "
        f"{args.min_lr_ratio} x lr over its {args.minutes:g}-minute budget, clip {args.clip}, no dropout, fp32; "
        "peak lr per model from the sweep in compare_lm_lr_sweep.md.",
        f"Budget clock: {args.clock} ({'CPU time of the training process' if args.clock == 'process' else 'wall'}); "
        "evaluation time excluded.",
        f"'During training': first {args.val_tokens_per_book} tokens of each validation book, {args.eval_mode} "
        f"evaluation with {args.seq_len}-token windows (sliding: stride {args.seq_len // 2}, no state crosses "
        f"windows), every {args.eval_every_minutes:g} min. 'Full split': all validation tokens; sliding window "
        f"context {args.seq_len}, stride {args.seq_len // 2}; streaming = {args.seq_len}-token windows with the "
        "recurrent state carried through each book.",
    ]
    md, png = write_report(runs, args.out, command=command_line(), machine=machine_description(), date=now(),
                           notes=notes)
    Path(args.out).with_suffix(".json").write_text(json.dumps(
        {"date": now(), "command": command_line(), "goals": goals(runs),
         "runs": {k: dataclasses.asdict(r) for k, r in runs.items()}}, indent=1))
    print(md.read_text())


if __name__ == "__main__":
    main()
