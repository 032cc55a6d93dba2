"""CPU time of one DrQA-reader training step, SRU against LSTM, and where it goes (torch.profiler).

Random word ids on a batch shaped like a bucketed SQuADShifts batch (32 paragraphs of 142 tokens, questions of
12), the readers' real sizes (hidden 128, 3+3 bidirectional layers), dropout on, AdamW. Prints the step time,
the paragraph encoder's share and the top operators by self CPU time.

    python scripts/reader_step_profile.py --threads 1
    python scripts/reader_step_profile.py --threads 1 --bf16   # under CPU bf16 autocast (AMX where the CPU has it)
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
from torch.profiler import ProfilerActivity, profile

from sru_lm.tasks.reader import DrQAReader, DrQAReaderConfig


def cpu_ms(fn, repeats: int) -> float:
    t0 = time.process_time()
    for _ in range(repeats):
        fn()
    return (time.process_time() - t0) / repeats * 1000


def profile_reader(rnn: str, batch: dict, vocab_size: int, repeats: int, top: int, bf16: bool = False) -> float:
    """Print the reader's step time, its paragraph encoder's share and top operators; return ms per step."""
    torch.manual_seed(0)
    model = DrQAReader(DrQAReaderConfig(vocab_size=vocab_size, rnn_type=rnn, dropout=0.1)).train()
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-3)

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def step() -> None:
        with autocast():
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()

    for _ in range(3):
        step()
    ms = cpu_ms(step, repeats)
    B, Lc = batch["context_ids"].shape
    x = torch.randn(B, Lc, 2 * model.config.embed_dim + model.config.num_features, requires_grad=True)

    def doc_step() -> None:
        with autocast():
            out = model.doc_rnn(x, batch["context_mask"]).float().sum()
        out.backward()

    doc = cpu_ms(doc_step, repeats)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step()
    print(f"{rnn}: {ms:.0f} ms per training step; paragraph encoder forward+backward {doc:.0f} ms")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top))
    return ms


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--context-len", type=int, default=142)
    p.add_argument("--question-len", type=int, default=12)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--top", type=int, default=8, help="operators to list per reader")
    p.add_argument("--bf16", action="store_true", help="run forward passes under torch.autocast('cpu', bfloat16)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    B, Lc, Lq, V = args.batch_size, args.context_len, args.question_len, 50_000
    g = torch.Generator().manual_seed(0)
    batch = {
        "context_ids": torch.randint(2, V, (B, Lc), generator=g),
        "context_mask": torch.ones(B, Lc, dtype=torch.bool),
        "context_features": torch.rand(B, Lc, 3, generator=g),
        "question_ids": torch.randint(2, V, (B, Lq), generator=g),
        "question_mask": torch.ones(B, Lq, dtype=torch.bool),
        "start_positions": torch.randint(0, Lc, (B,), generator=g),
        "end_positions": torch.randint(0, Lc, (B,), generator=g),
    }
    times = {rnn: profile_reader(rnn, batch, V, args.repeats, args.top, args.bf16) for rnn in ("sru", "lstm")}
    print(f"LSTM / SRU step time: {times['lstm'] / times['sru']:.2f}x")


if __name__ == "__main__":
    main()
