"""The untrained DrQA readers on one real training batch: span loss, logit scale and gradient norms.

Shows why the reader's start/end scores are scaled by 1/sqrt(d): without the scale the SRU reader starts
saturated (its outputs are unit-scale; the LSTM's are small), with it both start near the uniform loss
2 log(Lc). Needs the SQuADShifts and GloVe caches (``python scripts/train_qa.py`` fetches them).

    python scripts/reader_init_stats.py --batch-size 32 --seed 0
"""

from __future__ import annotations

import argparse
import math
import random

import torch

from sru_lm.data.squad import load_squad_shifts
from sru_lm.tasks.qa_data import QACollator, build_vocab, featurize
from sru_lm.tasks.reader import DrQAReader, DrQAReaderConfig
from sru_lm.tasks.vectors import embedding_matrix, load_glove


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--questions", type=int, default=2000, help="random training questions to build the vocab from")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    ds = load_squad_shifts()
    ds = ds.select(sorted(random.Random(args.seed).sample(range(len(ds)), args.questions)))
    train, _ = featurize(ds, 400)
    train = [f for f in train if f.start is not None]
    vocab = build_vocab(train, 1000, [])
    embeddings, _ = embedding_matrix(vocab, 50, load_glove())
    batch = QACollator(vocab, 400)(train[: args.batch_size])
    cm = batch["context_mask"]
    uniform = 2 * torch.log(cm.sum(1).float()).mean().item()
    print(f"batch of {args.batch_size}, mean context {cm.sum(1).float().mean():.0f} tokens; uniform span loss "
          f"2 log(Lc) = {uniform:.2f}")
    head = f"{'reader':<6} {'scores':<9} {'loss':>6} {'logit std':>9} {'doc out std':>11} {'grad norm':>9}"
    print(head + "  largest grads")
    for rnn_type in ("sru", "lstm"):
        for scaled in (False, True):
            torch.manual_seed(args.seed)
            model = DrQAReader(DrQAReaderConfig(vocab_size=len(vocab), rnn_type=rnn_type, scaled_scores=scaled),
                               embeddings).train()
            seen = []
            model.doc_rnn.register_forward_hook(lambda m, i, o, seen=seen: seen.append(o.std().item()))
            out = model(**batch)
            out.loss.backward()
            norm = math.sqrt(sum(float(q.grad.pow(2).sum()) for q in model.parameters() if q.grad is not None))
            top = sorted(((float(q.grad.norm()), n) for n, q in model.named_parameters() if q.grad is not None),
                         reverse=True)[:3]
            print(f"{rnn_type:<6} {'scaled' if scaled else 'unscaled':<9} {out.loss.item():>6.2f} "
                  f"{out.start_logits[cm].std().item():>9.3f} {seen[0]:>11.3f} {norm:>9.2f}  "
                  + ", ".join(f"{n} {g:.2f}" for g, n in top))


if __name__ == "__main__":
    main()
