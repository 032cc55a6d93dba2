"""Training: one accelerate-based loop for every model in the package, plus the language-model pieces.

The loop (:class:`Trainer`) takes a model, an iterator of micro-batches and a step function, and
handles devices and processes, mixed precision, accumulation, clipping, the warmup + cosine
schedule, budgets, validation, atomic checkpoints and exact resume. A fine-tuning script needs only::

    from sru_lm.training import EpochBatches, StepOutput, TrainConfig, Trainer

    def step(model, batch):                       # batch: whatever the batch source yields
        out = model(**batch)
        return StepOutput(out.loss, batch["input_ids"].numel())

    batches = EpochBatches(lambda epoch: DataLoader(train_ds, 32, shuffle=True, collate_fn=collate,
                                                    generator=torch.Generator().manual_seed(epoch)))
    config = TrainConfig(output_dir="outputs/mr", lr=1e-3, max_minutes=5, eval_every=100)
    result = Trainer(model, batches, config, step_fn=step, eval_fn=lambda m: {"acc": accuracy(m)}).fit()

The language-model pieces (:mod:`sru_lm.training.lm`) add the step that carries recurrent state
across segments and the sliding-window / streaming evaluation; :mod:`sru_lm.training.baselines`
holds the GPT-2 and LSTM peers; :mod:`sru_lm.training.pipeline` the end-to-end recipe the scripts run;
:mod:`sru_lm.training.compare` the size-matched comparison behind ``scripts/compare_lm.py``;
:mod:`sru_lm.training.cli` the command-line flags the LM scripts share.
"""

from __future__ import annotations

from .batches import EpochBatches, ResumableBatches
from .checkpoint import latest_checkpoint
from .trainer import (
    NonFiniteLossError,
    StepOutput,
    TrainConfig,
    Trainer,
    TrainResult,
    build_optimizer,
    causal_lm_step,
    lr_multiplier,
    make_accelerator,
    param_groups,
    precision_note,
    resolve_mixed_precision,
)

__all__ = [
    "EpochBatches",
    "NonFiniteLossError",
    "ResumableBatches",
    "StepOutput",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "build_optimizer",
    "causal_lm_step",
    "latest_checkpoint",
    "lr_multiplier",
    "make_accelerator",
    "param_groups",
    "precision_note",
    "resolve_mixed_precision",
]
