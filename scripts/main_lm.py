"""The main job, end to end on a fresh CPU machine: fetch the corpus, train the tokenizer, train a small
hybrid SRU++ LM for a bounded time, save it, reload it with the Auto classes, evaluate the reloaded model
on the held-out test books and print a generated sample.

    python scripts/main_lm.py                       # ~10 minutes on 2 cores: 8 of them training
    python scripts/main_lm.py --max-minutes 2       # a quicker look

Everything lands in ``--output-dir`` (default ``outputs/main_lm``): ``model/`` (weights, config,
tokenizer: ``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained`` load it),
``checkpoints/`` (a killed run resumes), ``history.json`` and ``result.json``.
The model card for the default model is ``model_cards/sru-lm-gutenberg-small.md``.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import sru_lm  # noqa: F401  (registers the SRU++ model with the Auto classes)
from sru_lm.training.cli import (
    add_data_args,
    add_model_args,
    add_train_args,
    apply_threads,
    lm_model_kwargs,
    lm_train_kwargs,
    train_config,
)
from sru_lm.training.lm import evaluate_sliding, evaluate_streaming
from sru_lm.training.pipeline import (
    build_sru_lm,
    generate_sample,
    prepare_lm_data,
    save_lm,
    train_language_model,
    write_json,
)


def main() -> None:
    t_start = time.perf_counter()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(p)
    add_model_args(p)
    add_train_args(p, minutes=8.0)
    p.add_argument("--output-dir", default="outputs/main_lm")
    p.add_argument("--eval-context", type=int, default=128)
    p.add_argument("--eval-stride", type=int, default=64)
    p.add_argument("--prompt", default="It was a dark and stormy night; the")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    apply_threads(args)
    out = Path(args.output_dir)

    print("1/5 corpus and tokenizer", flush=True)
    data = prepare_lm_data(args.data, paths=args.text_files, vocab_size=args.vocab_size, tokenizer=args.tokenizer,
                           cache=args.cache_dir)
    print(f"    {data.summary()}", flush=True)

    print(f"2/5 training for {args.max_minutes} minutes", flush=True)
    model = build_sru_lm(data.tokenizer, **lm_model_kwargs(args))
    trainer, result = train_language_model(model, data, train_config(args, str(out)), **lm_train_kwargs(args))
    model = trainer.unwrapped_model

    print("3/5 saving and reloading with the Auto classes", flush=True)
    save_lm(model, data.tokenizer, out / "model")
    model = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(out / "model")

    print("4/5 test-split evaluation", flush=True)
    test, nbytes = data.streams["test"], data.num_bytes["test"]
    sliding = evaluate_sliding(model, test, nbytes, context=args.eval_context, stride=args.eval_stride)
    streaming = evaluate_streaming(model, test, nbytes, window=args.eval_context)  # SRU state carried
    cached = evaluate_streaming(model, test, nbytes, window=args.eval_context, carry="cache",
                                progress=not args.no_progress)  # and attention keys/values
    for name, s in (("sliding", sliding), ("streaming", streaming), ("cache", cached)):
        print(f"    test {name:9s}: loss {s.loss:.4f}  ppl {s.perplexity:.2f}  bits/byte {s.bits_per_byte:.4f}")

    print("5/5 sample", flush=True)
    sample = generate_sample(model, tokenizer, args.prompt)
    print(f"    {sample!r}")

    total = time.perf_counter() - t_start
    write_json(out / "result.json", {
        "args": vars(args), "data": data.summary(), "parameters": model.num_parameters(),
        "steps": result.step, "tokens": result.tokens, "train_seconds": result.train_seconds,
        "validation": result.last_eval, "test_sliding": sliding.as_dict(), "test_streaming": streaming.as_dict(),
        "test_streaming_cache": cached.as_dict(),
        "sample": sample, "total_seconds": total, "threads": torch.get_num_threads(),
    })
    print(f"done in {total / 60:.1f} minutes; model in {out / 'model'}")


if __name__ == "__main__":
    main()
