"""How saved DrQA readers miss on SQuAD v1.1 dev: exact answers, answers that overlap the gold one but are
too long, too short or reordered, and answers with no overlap (``sru_lm.eval.span_errors``).

A reader with a higher F1 but lower EM than another finds the right place as often but cuts the span worse;
this table says which way. Needs the SQuAD dev cache (``python scripts/train_qa.py`` fetches it).

    python scripts/squad_span_errors.py outputs/qa/sru-36min-scaled-drop0.1/final \
        outputs/qa/lstm-36min-scaled-drop0.15/final
"""

from __future__ import annotations

import argparse

import torch

from sru_lm.data.squad import load_squad_dev
from sru_lm.eval import span_errors, squad_scores
from sru_lm.tasks.qa_data import QACollator, featurize
from sru_lm.tasks.reader import DrQAReader
from sru_lm.tasks.training import append_results, predict_answers


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("readers", nargs="+", help="saved reader folders (DrQAReader.save_pretrained)")
    p.add_argument("--dev-subset", type=int, default=0, help="score the first N dev questions (0: all 10,565)")
    p.add_argument("--max-answer-len", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results", default="benchmarks/squad_span_errors.md")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    dev, _ = featurize(load_squad_dev())
    if args.dev_subset:
        dev = dev[: args.dev_subset]
    refs = {f.id: f.answers for f in dev}
    rows = []
    for path in args.readers:
        model, vocab = DrQAReader.from_pretrained(path)
        preds = predict_answers(model, dev, QACollator(vocab, None, with_answers=False), max_len=args.max_answer_len)
        s, e = squad_scores(preds, refs), span_errors(preds, refs)
        rows.append([f"`{path}`", s["exact_match"], s["f1"], e["exact"], e["longer"], e["shorter"], e["same_length"],
                     e["no_overlap"], f"{e['pred_words']:.2f}", f"{e['gold_words']:.2f}"])
        print(" | ".join(str(c) for c in rows[-1]))
    cols = ["reader", "EM", "F1", "exact %", "overlap, longer %", "overlap, shorter %", "overlap, same length %",
            "no overlap %", "pred words", "gold words"]
    notes = (f"SQuAD v1.1 dev, {len(dev)} questions. Percentages of all questions; 'overlap' = not exact but sharing "
             "a token with a gold answer, compared in normalized words with the gold answer it matches best.")
    print(f"appended to {append_results(args.results, 'SQuAD span errors', cols, rows, notes)}")


if __name__ == "__main__":
    main()
