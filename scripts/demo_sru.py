"""Train a 2-layer SRU next to nn.LSTM for a few seconds on a toy sequence task; print loss and speed.

The task: a stream of random symbols; at each step predict the symbol seen ``--delay`` steps ago
(a delayed copy), which needs memory across time steps. Both models see the same batches, have the same
hidden size and train for the same wall-clock budget.

    python scripts/demo_sru.py --seconds 10
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn

from sru_lm import SRU


class Tagger(nn.Module):
    def __init__(self, rnn: nn.Module, vocab: int, d: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.rnn = rnn
        self.head = nn.Linear(d, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embed(tokens))  # (L, B, d)
        return self.head(out)


def batch(gen: torch.Generator, L: int, B: int, vocab: int, delay: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randint(0, vocab, (L, B), generator=gen)
    y = torch.roll(x, delay, dims=0)
    y[:delay] = -100  # nothing to recall yet
    return x, y


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0, help="training budget per model")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--length", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--vocab", type=int, default=16)
    p.add_argument("--delay", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    d = args.hidden
    models = {
        "SRU (sru_lm)": Tagger(SRU(d, d, num_layers=2), args.vocab, d),
        "nn.LSTM": Tagger(nn.LSTM(d, d, num_layers=2), args.vocab, d),
    }
    chance = math.log(args.vocab)
    print(f"delayed copy (delay={args.delay}, vocab={args.vocab}), L={args.length} B={args.batch} d={d}, "
          f"{args.seconds:.0f}s each, {torch.get_num_threads()} threads; chance loss = {chance:.3f}")
    print(f"{'model':<14} {'params':>9} {'steps':>6} {'tokens/s':>10} {'first loss':>11} {'final loss':>11} "
          f"{'accuracy':>9}")
    for name, model in models.items():
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(0)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        loss_fn = nn.CrossEntropyLoss(ignore_index=-100)
        steps, first, recent, start = 0, None, [], time.perf_counter()
        while time.perf_counter() - start < args.seconds:
            x, y = batch(gen, args.length, args.batch, args.vocab, args.delay)
            loss = loss_fn(model(x).flatten(0, 1), y.flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            first = loss.item() if first is None else first
            recent = (recent + [loss.item()])[-10:]
            steps += 1
        elapsed = time.perf_counter() - start
        with torch.no_grad():
            x, y = batch(torch.Generator().manual_seed(123), args.length, 256, args.vocab, args.delay)
            pred = model.eval()(x).argmax(-1)
            acc = (pred == y)[args.delay :].float().mean().item()
        n_params = sum(p.numel() for p in model.parameters())
        tok_s = steps * args.length * args.batch / elapsed
        print(f"{name:<14} {n_params:>9,} {steps:>6} {tok_s:>10,.0f} {first:>11.3f} {sum(recent) / len(recent):>11.3f} "
              f"{acc:>9.1%}")


if __name__ == "__main__":
    main()
