"""One training loop for every model in the package: the language models, the word-level task models
(sentence classifiers, DrQA readers) and the LM's classification and QA heads.

The loop owns what every run needs and nothing task-specific:

- ``accelerate`` for devices, processes (``accelerate launch --num_processes N``) and mixed precision
  (``auto``: bf16 on GPUs that have it, fp16 with a grad scaler on older GPUs, fp32 on CPU; bf16
  autocast on CPU when asked for);
- AdamW or RAdam with weight-decay groups, gradient accumulation, gradient clipping;
- linear warmup then cosine decay, driven by *progress*: the largest used fraction of the budgets
  ``max_steps``, ``max_tokens``, ``max_minutes``, so a time-budgeted run decays to its floor exactly
  when time runs out;
- a tqdm bar with loss, learning rate and tokens/s; a periodic validation callback;
- atomic checkpoints (see :mod:`sru_lm.training.checkpoint`) that a new run resumes from, so its loss
  curve continues where the killed run's last checkpoint left it (bit-for-bit when the budget is in
  steps or tokens; a time budget resumes its clock but time itself is not reproducible);
- a NaN/inf loss or gradient stops the run with :class:`NonFiniteLossError`, before the optimizer
  touches the weights and without writing a checkpoint, so the last good one stays the latest.

What is task-specific comes in as three objects:

- ``batches``: an iterator of micro-batches; if it has ``state_dict``/``load_state_dict`` its
  position is checkpointed (see :mod:`sru_lm.training.batches`);
- ``step_fn(model, batch) -> StepOutput``: runs the model and returns the loss to minimise and the
  number of tokens it covered (default :func:`causal_lm_step`: ``model(**batch).loss``); it may keep
  state between calls (the carried SRU state of an LM) and expose it through
  ``state_dict``/``load_state_dict`` to be checkpointed;
- ``eval_fn(model) -> dict[str, float]``: validation, run every ``eval_every`` steps or
  ``eval_every_minutes`` of training time, and at the end; its time is not counted as training time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast, send_to_device, set_seed
from torch import nn
from tqdm.auto import tqdm

from . import checkpoint as ckpt

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The loss (or gradient norm) became NaN or inf; the run stopped before updating the weights."""


@dataclass
class StepOutput:
    """What a step function returns for one micro-batch.

    Attributes:
        loss: scalar tensor with grad, the mean loss over the micro-batch's targets.
        num_tokens: input tokens the micro-batch covered (for tokens/s and the ``max_tokens`` budget).
    """

    loss: torch.Tensor
    num_tokens: int | torch.Tensor


StepFn = Callable[[nn.Module, Any], StepOutput]
EvalFn = Callable[[nn.Module], dict[str, float]]


@dataclass
class TrainConfig:
    """Everything the loop needs to know; stored in every checkpoint.

    At least one of ``max_steps``, ``max_tokens``, ``max_minutes`` must be set. ``max_minutes`` counts
    training time only (forward, backward, optimizer), not validation or checkpoint writing, so
    models compared at equal budgets get equal training time whatever their evaluation costs.
    """

    output_dir: str | None = None  # checkpoints and history.json; None: no checkpoints
    # optimizer
    optimizer: str = "adamw"  # "adamw" or "radam" (SRU++ used RAdam)
    lr: float = 1e-3
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    no_decay: tuple[str, ...] = ("bias", "norm", "weight_c")  # name patterns kept out of decay
    # schedule
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # the cosine ends at lr * min_lr_ratio
    # step
    grad_accum: int = 1
    clip_grad_norm: float | None = 1.0
    mixed_precision: str = "auto"  # "auto", "no", "bf16", "fp16"
    # budgets
    max_steps: int | None = None
    max_tokens: int | None = None
    max_minutes: float | None = None
    # periodic work
    eval_every: int = 0  # optimizer steps; 0: by time or only at the end
    eval_every_minutes: float | None = None
    checkpoint_every: int = 0
    checkpoint_every_minutes: float | None = 5.0
    keep_checkpoints: int = 1
    resume: bool = True  # continue from output_dir's latest checkpoint if there is one
    seed: int = 0
    progress_bar: bool = True
    # "wall": time.perf_counter; "process": this process's CPU time (time.process_time), which on a
    # shared machine with one thread per process counts only the compute this run received
    clock: str = "wall"

    def __post_init__(self) -> None:
        if self.optimizer not in ("adamw", "radam"):
            raise ValueError(f"optimizer must be 'adamw' or 'radam', got {self.optimizer!r}")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be auto/no/bf16/fp16, got {self.mixed_precision!r}")
        if self.clock not in ("wall", "process"):
            raise ValueError(f"clock must be 'wall' or 'process', got {self.clock!r}")
        if self.grad_accum < 1:
            raise ValueError(f"grad_accum must be >= 1, got {self.grad_accum}")
        if self.max_steps is None and self.max_tokens is None and self.max_minutes is None:
            raise ValueError("set at least one budget: max_steps, max_tokens or max_minutes")
        self.betas = tuple(self.betas)
        self.no_decay = tuple(self.no_decay)


@dataclass
class TrainResult:
    step: int
    tokens: int
    train_seconds: float
    stop_reason: str
    history: dict[str, list[dict[str, float]]]
    checkpoint: Path | None = None
    last_eval: dict[str, float] = field(default_factory=dict)


def resolve_mixed_precision(requested: str) -> str:
    """``auto`` -> bf16 on GPUs that support it, fp16 on older GPUs, ``no`` (fp32) on CPU.

    ``bf16`` also works on a CPU (autocast; fast where the CPU has AMX or AVX512-BF16). ``fp16`` needs CUDA:
    without it accelerate would quietly train in fp32, so it is refused here.
    """
    if requested == "fp16" and not torch.cuda.is_available():
        raise ValueError("mixed_precision='fp16' needs a CUDA GPU (accelerate ignores it on a CPU); "
                         "use 'bf16' for mixed precision on a CPU, or 'no'")
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def precision_note(requested: str) -> str:
    """How a results table names the precision a ``mixed_precision`` setting trains in on this machine."""
    resolved = resolve_mixed_precision(requested)
    return "fp32" if resolved == "no" else f"{resolved} autocast (fp32 weights)"


def make_accelerator(config: TrainConfig) -> Accelerator:
    """The ``Accelerator`` a :class:`Trainer` uses; build it first when data must be sharded by rank.

    Several processes without CUDA (``accelerate launch --multi_gpu --num_processes 2`` or ``torchrun``
    on a CPU machine) train on the CPU over gloo: accelerate only picks multi-CPU when told ``cpu=True``.
    """
    multi_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    return Accelerator(mixed_precision=resolve_mixed_precision(config.mixed_precision), cpu=multi_cpu)


def param_groups(model: nn.Module, weight_decay: float, no_decay: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Two optimizer groups: matrices decay; vectors (biases, norms), scalars and ``no_decay`` names don't.

    Tied parameters appear once (``named_parameters`` deduplicates them).
    """
    no_decay = tuple(no_decay)
    decay, keep = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim >= 2 and not any(pattern in name for pattern in no_decay):
            decay.append(p)
        else:
            keep.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, config.weight_decay, config.no_decay)
    if config.optimizer == "radam":
        return torch.optim.RAdam(groups, lr=config.lr, betas=config.betas, eps=config.eps, decoupled_weight_decay=True)
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps)


def lr_multiplier(step: int, progress: float, warmup_steps: int, min_lr_ratio: float) -> float:
    """Linear warmup over ``warmup_steps`` optimizer steps times a cosine over ``progress`` in [0, 1].

    A pure function of the checkpointed counters, so the schedule needs no state of its own.
    """
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
    return warm * (min_lr_ratio + (1.0 - min_lr_ratio) * cosine)


def causal_lm_step(model: nn.Module, batch: dict[str, torch.Tensor]) -> StepOutput:
    """The plain step for a Hugging Face causal LM: ``model(**batch).loss`` (batch holds ``labels``)."""
    out = model(**batch)
    return StepOutput(out.loss, batch["input_ids"].numel())


class Trainer:
    """Trains ``model`` on ``batches`` with ``step_fn`` under ``config``; see the module docstring.

    Args:
        model: any ``nn.Module``; ``step_fn`` decides how it is called.
        batches: iterator of micro-batches (dicts/tuples of tensors; moved to the device here).
        config: a :class:`TrainConfig`.
        step_fn: ``(model, batch) -> StepOutput``; defaults to :func:`causal_lm_step`.
        eval_fn: ``(model) -> dict`` of validation metrics, called with the unwrapped model in eval
            mode under ``torch.no_grad`` on every process.
        callbacks: called after every optimizer step with the trainer; one returning True stops the
            run cleanly (with a checkpoint) as a budget would.
        accelerator: reuse one made by :func:`make_accelerator` (to shard data by its process index).
        optimizer: replace the default AdamW/RAdam built from ``config``.

    Example::

        config = TrainConfig(output_dir="outputs/run", lr=3e-4, max_minutes=10, eval_every=200)
        result = Trainer(model, batches, config, step_fn=step, eval_fn=validate).fit()
        result.history["eval"][-1]
    """

    def __init__(
        self,
        model: nn.Module,
        batches: Iterable[Any],
        config: TrainConfig,
        *,
        step_fn: StepFn | None = None,
        eval_fn: EvalFn | None = None,
        callbacks: Iterable[Callable[[Trainer], bool | None]] = (),
        accelerator: Accelerator | None = None,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        self.config = config
        self.accelerator = accelerator or make_accelerator(config)
        set_seed(config.seed)
        optimizer = optimizer or build_optimizer(model, config)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.batches = batches if hasattr(batches, "__next__") else iter(batches)
        self.step_fn = step_fn or causal_lm_step
        self.eval_fn = eval_fn
        self.callbacks = list(callbacks)
        self.step = 0
        self.tokens = 0
        self.train_seconds = 0.0
        self.history: dict[str, list[dict[str, float]]] = {"train": [], "eval": []}
        self.last_checkpoint: Path | None = None
        self._last_eval_step = -1
        self._next_eval_seconds = self._period(config.eval_every_minutes)
        self._next_ckpt_seconds = self._period(config.checkpoint_every_minutes)

    # -- public helpers ---------------------------------------------------------------------------

    @property
    def unwrapped_model(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def progress(self) -> float:
        """The largest used fraction of the budgets (1.0 = done)."""
        c = self.config
        fractions = [
            self.step / c.max_steps if c.max_steps else 0.0,
            self.tokens / c.max_tokens if c.max_tokens else 0.0,
            self.train_seconds / (60.0 * c.max_minutes) if c.max_minutes else 0.0,
        ]
        return max(fractions)

    def evaluate(self) -> dict[str, float]:
        if self.eval_fn is None:
            return {}
        model = self.unwrapped_model
        model.eval()
        with torch.no_grad():
            metrics = {k: float(v) for k, v in self.eval_fn(model).items()}
        model.train()
        entry = {"step": self.step, "tokens": self.tokens, "seconds": self.train_seconds, **metrics}
        self.history["eval"].append(entry)
        self._last_eval_step = self.step
        if self.accelerator.is_main_process:
            shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
            tqdm.write(f"[eval] step {self.step} tokens {self.tokens} train {self.train_seconds:.0f}s {shown}")
        return metrics

    # -- the loop ---------------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        c, acc = self.config, self.accelerator
        self._maybe_resume()
        self.model.train()
        bar = tqdm(
            total=c.max_steps,
            initial=self.step,
            desc="train",
            dynamic_ncols=True,
            disable=not (c.progress_bar and acc.is_main_process),
        )
        stop = self._budget_reason()
        rate = 0.0
        while stop is None:
            lr = c.lr * lr_multiplier(self.step, self.progress(), c.warmup_steps, c.min_lr_ratio)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            clock = time.process_time if c.clock == "process" else time.perf_counter
            t0 = clock()
            loss, tokens, grad_norm = self._optimizer_step()
            dt = clock() - t0
            if acc.num_processes > 1:  # one clock for all processes: rank 0's
                dt = float(broadcast(torch.tensor([dt], dtype=torch.float64, device=acc.device), from_process=0)[0])
            self.step += 1
            self.tokens += tokens
            self.train_seconds += dt
            self.history["train"].append(
                {"step": self.step, "tokens": self.tokens, "seconds": self.train_seconds, "loss": loss, "lr": lr,
                 "grad_norm": grad_norm}
            )
            rate = 0.9 * rate + 0.1 * tokens / max(dt, 1e-9) if rate else tokens / max(dt, 1e-9)  # smoothed
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{rate:.0f}", refresh=False)
            requested = any(bool(cb(self)) for cb in self.callbacks)
            stop = "callback" if requested else self._budget_reason()
            if stop is None and self._due_eval():
                self._untimed(self.evaluate)
            if stop is None and self._due_checkpoint():
                self._untimed(self.save_checkpoint)
        bar.close()
        last_eval = self.evaluate() if self.eval_fn is not None and self._last_eval_step != self.step else {}
        if not last_eval and self.history["eval"]:
            last_eval = {k: v for k, v in self.history["eval"][-1].items() if k not in ("step", "tokens", "seconds")}
        self.save_checkpoint()
        return TrainResult(
            self.step, self.tokens, self.train_seconds, stop, self.history, self.last_checkpoint, last_eval
        )

    def _optimizer_step(self) -> tuple[float, int, float | None]:
        c, acc = self.config, self.accelerator
        loss_sum = torch.zeros((), device=acc.device, dtype=torch.float64)
        tokens = 0
        for i in range(c.grad_accum):
            batch = send_to_device(next(self.batches), acc.device)
            # only the last micro-batch all-reduces gradients
            sync = contextlib.nullcontext() if i == c.grad_accum - 1 else acc.no_sync(self.model)
            with sync:
                out = self.step_fn(self.model, batch)
                acc.backward(out.loss / c.grad_accum)
            loss_sum += out.loss.detach().double()
            tokens += int(out.num_tokens)
        stats = torch.stack([loss_sum / c.grad_accum, torch.tensor(float(tokens), device=acc.device).double()])
        stats = acc.reduce(stats, reduction="sum")
        loss, tokens = float(stats[0]) / acc.num_processes, int(stats[1])
        if not math.isfinite(loss):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(self._nonfinite_message("loss", loss))
        grad_norm = None
        if c.clip_grad_norm:
            grad_norm = float(acc.clip_grad_norm_(self.model.parameters(), c.clip_grad_norm))
            # under fp16 an inf gradient is the grad scaler's business: it skips the step
            if not math.isfinite(grad_norm) and acc.mixed_precision != "fp16":
                self.optimizer.zero_grad(set_to_none=True)
                raise NonFiniteLossError(self._nonfinite_message("gradient norm", grad_norm))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss, tokens, grad_norm

    def _nonfinite_message(self, what: str, value: float) -> str:
        where = (
            f"the last good checkpoint, {self.last_checkpoint}, is intact and still the latest; "
            "resume from it with a lower --lr or a smaller --clip, or check the data"
            if self.last_checkpoint
            else "no checkpoint was written yet"
        )
        return f"{what} is {value} at optimizer step {self.step + 1}; stopped without updating the weights; {where}"

    # -- budgets and periodic work ----------------------------------------------------------------

    def _budget_reason(self) -> str | None:
        c = self.config
        if c.max_steps is not None and self.step >= c.max_steps:
            return "max_steps"
        if c.max_tokens is not None and self.tokens >= c.max_tokens:
            return "max_tokens"
        if c.max_minutes is not None and self.train_seconds >= 60.0 * c.max_minutes:
            return "max_minutes"
        return None

    @staticmethod
    def _period(minutes: float | None) -> float:
        return 60.0 * minutes if minutes else math.inf

    def _due_eval(self) -> bool:
        c = self.config
        if self.eval_fn is None:
            return False
        due = bool(c.eval_every and self.step % c.eval_every == 0)
        if self.train_seconds >= self._next_eval_seconds:
            due = True
            while self._next_eval_seconds <= self.train_seconds:
                self._next_eval_seconds += self._period(c.eval_every_minutes)
        return due

    def _due_checkpoint(self) -> bool:
        c = self.config
        if c.output_dir is None:
            return False
        due = bool(c.checkpoint_every and self.step % c.checkpoint_every == 0)
        if self.train_seconds >= self._next_ckpt_seconds:
            due = True
            while self._next_ckpt_seconds <= self.train_seconds:
                self._next_ckpt_seconds += self._period(c.checkpoint_every_minutes)
        return due

    def _untimed(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` outside the training clock and leave the model in training mode."""
        result = fn()
        self.model.train()
        return result

    # -- checkpoints ------------------------------------------------------------------------------

    def _trainer_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "tokens": self.tokens,
            "train_seconds": self.train_seconds,
            "num_processes": self.accelerator.num_processes,
            "next_eval_seconds": self._next_eval_seconds if math.isfinite(self._next_eval_seconds) else None,
            "next_ckpt_seconds": self._next_ckpt_seconds if math.isfinite(self._next_ckpt_seconds) else None,
            "last_eval_step": self._last_eval_step,
            "history": self.history,
            "config": dataclasses.asdict(self.config),
        }

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint of the current step (every process must call this)."""
        c, acc = self.config, self.accelerator
        if c.output_dir is None:
            return None
        staging = ckpt.staging_dir(c.output_dir, self.step)
        if acc.is_main_process:
            ckpt.write_shared(
                staging, self.unwrapped_model.state_dict(), self.optimizer.state_dict(), self._trainer_state()
            )
        acc.wait_for_everyone()
        rank_state: dict[str, Any] = {"rng": ckpt.rng_state()}
        if hasattr(self.batches, "state_dict"):
            rank_state["batches"] = self.batches.state_dict()
        if hasattr(self.step_fn, "state_dict"):
            rank_state["step_fn"] = self.step_fn.state_dict()
        ckpt.write_rank(staging, acc.process_index, rank_state)
        acc.wait_for_everyone()
        if acc.is_main_process:
            ckpt.publish(c.output_dir, self.step, c.keep_checkpoints)
            (Path(c.output_dir) / "history.json").write_text(json.dumps(self.history))
        acc.wait_for_everyone()
        self.last_checkpoint = ckpt.checkpoint_root(c.output_dir) / f"step-{self.step:07d}"
        return self.last_checkpoint

    def _maybe_resume(self) -> None:
        c, acc = self.config, self.accelerator
        if not (c.resume and c.output_dir):
            return
        path = ckpt.latest_checkpoint(c.output_dir)
        if path is None:
            return
        state = ckpt.load(path, acc.process_index)
        ts = state["trainer_state"]
        if ts["num_processes"] != acc.num_processes:
            raise ValueError(
                f"checkpoint {path} was written by {ts['num_processes']} processes, resuming with "
                f"{acc.num_processes}; resume with the same number of processes"
            )
        self.unwrapped_model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.tokens, self.train_seconds = ts["step"], ts["tokens"], ts["train_seconds"]
        self.history = ts["history"]
        self._last_eval_step = ts["last_eval_step"]
        self._next_eval_seconds = ts["next_eval_seconds"] if ts["next_eval_seconds"] is not None else math.inf
        self._next_ckpt_seconds = ts["next_ckpt_seconds"] if ts["next_ckpt_seconds"] is not None else math.inf
        rank = state["rank"]
        ckpt.set_rng_state(rank["rng"])
        if "batches" in rank and hasattr(self.batches, "load_state_dict"):
            self.batches.load_state_dict(rank["batches"])
        elif hasattr(self.batches, "load_state_dict") or "batches" in rank:
            logger.warning("the batch source changed kind since the checkpoint; data restarts from its beginning")
        else:
            logger.warning("the batch source has no state_dict; a resumed run restarts its data from the beginning")
        if "step_fn" in rank and hasattr(self.step_fn, "load_state_dict"):
            self.step_fn.load_state_dict(rank["step_fn"])
        self.last_checkpoint = path
        changed = {k: (v, getattr(c, k)) for k, v in ts["config"].items() if _differs(v, getattr(c, k, None))}
        if changed and acc.is_main_process:
            logger.warning("resuming %s with changed settings (checkpoint, now): %s", path, changed)
        if acc.is_main_process:
            logger.info("resumed from %s at step %d (%d tokens, %.0f s)", path, self.step, self.tokens,
                        self.train_seconds)


def _differs(saved: Any, now: Any) -> bool:
    if isinstance(saved, list):
        saved = tuple(saved)
    return saved != now
