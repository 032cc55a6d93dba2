"""Train a hybrid SRU-Transformer LM with the shared training loop.

    python scripts/train_lm.py --max-minutes 10 --output-dir outputs/train_lm
    accelerate launch --multi_gpu --num_processes 2 scripts/train_lm.py --max-steps 50   # 2 processes (CPU: gloo)
    python scripts/train_lm.py --text-files my_books/ --vocab-size 4096 --max-tokens 2000000
    python scripts/train_lm.py --tokenizer-type word --vocab-size 10000 --task-words mr --init-vectors glove \
        --layers 3 --attention-every 1 --max-minutes 20 --output-dir outputs/word_lm   # for word tasks (MR)

A killed run resumes from ``<output-dir>/checkpoints`` when started again with the same command
(``--no-resume`` starts over). At the end the model and tokenizer are saved to ``<output-dir>/model``
(``AutoModelForCausalLM/AutoTokenizer.from_pretrained`` load it) and the numbers to ``result.json``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from sru_lm.data.sentiment import load_mr
from sru_lm.tasks.text import tokenize
from sru_lm.tasks.vectors import init_embeddings_from_vectors, load_glove
from sru_lm.training.cli import (
    add_data_args,
    add_model_args,
    add_train_args,
    apply_threads,
    lm_model_kwargs,
    lm_train_kwargs,
    train_config,
)
from sru_lm.training.pipeline import build_sru_lm, prepare_lm_data, save_lm, train_language_model, write_json


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(p)
    g = p.add_argument_group("word-level model (for fine-tuning on word tasks)")
    g.add_argument("--tokenizer-type", choices=["bpe", "word"], default="bpe",
                   help="train a byte-level BPE or a lower-cased word vocabulary of --vocab-size words")
    g.add_argument("--task-words", choices=["none", "mr"], default="none",
                   help="word: also add every word of this task's texts that GloVe covers (no labels are read)")
    g.add_argument("--init-vectors", choices=["none", "glove"], default="none",
                   help="start the token embeddings from GloVe 6B 50d through a random orthonormal map")
    g.add_argument("--vector-std", type=float, default=0.1, help="per-coordinate std of the initialized rows")
    g.add_argument("--untie-embeddings", action="store_true",
                   help="a separate LM head, so only the input side shapes the (vector-initialized) embeddings")
    add_model_args(p)
    add_train_args(p)
    p.add_argument("--output-dir", default="outputs/train_lm")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    apply_threads(args)
    if not (args.max_minutes or args.max_steps or args.max_tokens):
        args.max_minutes = 10.0

    glove = load_glove() if args.init_vectors == "glove" or args.task_words != "none" else None
    extra = task_words(args.task_words, set(glove[0])) if args.task_words != "none" else []
    if extra and args.tokenizer_type != "word":
        raise SystemExit("--task-words needs --tokenizer-type word")
    data = prepare_lm_data(args.data, paths=args.text_files, vocab_size=args.vocab_size, tokenizer=args.tokenizer,
                           cache=args.cache_dir, tokenizer_type=args.tokenizer_type, extra_words=extra)
    model = build_sru_lm(data.tokenizer, **lm_model_kwargs(args), tie_word_embeddings=not args.untie_embeddings)
    if args.init_vectors == "glove":
        hits = init_embeddings_from_vectors(model.get_input_embeddings(), data.tokenizer, glove,
                                            std=args.vector_std, seed=args.seed)
        print(f"embeddings: {hits} of {len(data.tokenizer)} tokens start from GloVe")
    config = train_config(args, args.output_dir)
    trainer, result = train_language_model(model, data, config, **lm_train_kwargs(args))
    if trainer.accelerator.is_main_process:
        out = Path(args.output_dir)
        save_lm(trainer.unwrapped_model, data.tokenizer, out / "model")
        write_json(out / "result.json", {
            "args": vars(args), "data": data.summary(), "parameters": trainer.unwrapped_model.num_parameters(),
            "step": result.step, "tokens": result.tokens, "train_seconds": result.train_seconds,
            "stop_reason": result.stop_reason, "validation": result.last_eval,
            "processes": trainer.accelerator.num_processes,
        })
        print(f"saved {out / 'model'}; {result.step} steps, {result.tokens} tokens, "
              f"{result.train_seconds:.0f} s; validation {result.last_eval}")


def task_words(task: str, known: set[str]) -> list[str]:
    """The lower-cased words of a task's texts (every split, no labels) that ``known`` holds, sorted."""
    if task != "mr":
        raise ValueError(f"unknown task {task!r}")
    ds = load_mr()
    words = {t.lower() for split in ds.values() for text in split["text"] for t in tokenize(text)[0]}
    return sorted(words & known)


if __name__ == "__main__":
    main()
