"""The generic training loop on a tiny stateful toy model: learning, exact resume, NaN stop, schedule."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from accelerate.state import AcceleratorState
from torch import nn

from sru_lm.training import (
    EpochBatches,
    NonFiniteLossError,
    StepOutput,
    TrainConfig,
    Trainer,
    latest_checkpoint,
    lr_multiplier,
    param_groups,
)

V, D = 23, 16


class ToyLM(nn.Module):
    """Embedding -> GRU -> dropout -> linear: has RNG use (dropout) and a carried state."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(V, D)
        self.rnn = nn.GRU(D, D, batch_first=True)
        self.norm = nn.LayerNorm(D)
        self.drop = nn.Dropout(0.1)
        self.head = nn.Linear(D, V)

    def forward(self, x, h=None):
        y, h = self.rnn(self.embed(x), h)
        return self.head(self.drop(self.norm(y))), h


class CarryStep:
    """A step function with state (the detached GRU state), checkpointed through state_dict."""

    def __init__(self) -> None:
        self.h = None

    def __call__(self, model, batch):
        x = batch[:, :-1]
        logits, h = model(x, self.h)
        self.h = h.detach()
        return StepOutput(F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten()), x.numel())

    def state_dict(self):
        return {"h": self.h}

    def load_state_dict(self, state):
        self.h = state["h"]


def toy_batches(poison_at: int | None = None) -> EpochBatches:
    g = torch.Generator().manual_seed(1)
    data = (torch.arange(40 * 9).view(40, 9) * 7 + torch.randint(0, 3, (40, 9), generator=g)) % V

    def epoch(e: int):
        perm = torch.randperm(40, generator=torch.Generator().manual_seed(e))
        for i in range(0, 40, 8):
            yield data[perm[i : i + 8]]

    return EpochBatches(epoch)


def run(tmp_path, *, callbacks=(), resume=True, step_fn=None, **overrides):
    torch.manual_seed(0)
    model = ToyLM()
    settings = dict(output_dir=str(tmp_path), lr=1e-2, warmup_steps=3, max_steps=12, checkpoint_every=4,
                    checkpoint_every_minutes=None, progress_bar=False, resume=resume)
    settings.update(overrides)
    trainer = Trainer(model, toy_batches(), TrainConfig(**settings), step_fn=step_fn or CarryStep(),
                      callbacks=callbacks)
    return trainer, trainer.fit()


def losses(result):
    return [h["loss"] for h in result.history["train"]]


def test_few_steps_lower_the_loss(tmp_path):
    _, result = run(tmp_path, max_steps=30, lr=3e-2)
    curve = losses(result)
    assert len(curve) == 30 and result.stop_reason == "max_steps"
    assert sum(curve[-5:]) / 5 < sum(curve[:5]) / 5 - 0.3



@pytest.fixture
def fresh_accelerator_state():
    """accelerate keeps one process-wide state; a test that changes the precision must start and leave it clean."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_bf16_on_a_cpu_autocasts_the_model_and_still_learns(tmp_path, fresh_accelerator_state):
    """``mixed_precision="bf16"`` without a GPU: accelerate's autocast reaches the model's projections (the head
    computes in bf16) and training still lowers the loss."""
    torch.manual_seed(0)
    model = ToyLM()
    seen = set()
    model.head.register_forward_hook(lambda mod, inputs, out: seen.add(out.dtype))
    config = TrainConfig(output_dir=str(tmp_path), lr=3e-2, warmup_steps=3, max_steps=30, checkpoint_every=None,
                         checkpoint_every_minutes=None, progress_bar=False, mixed_precision="bf16")
    curve = losses(Trainer(model, toy_batches(), config, step_fn=CarryStep()).fit())
    assert seen == {torch.bfloat16}
    assert sum(curve[-5:]) / 5 < sum(curve[:5]) / 5 - 0.3


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is valid where CUDA is")
def test_fp16_without_a_gpu_is_refused(tmp_path):
    """accelerate would silently train in fp32 (and the results table would say fp16): refuse it up front."""
    config = TrainConfig(output_dir=str(tmp_path), lr=1e-2, max_steps=2, progress_bar=False, mixed_precision="fp16")
    with pytest.raises(ValueError, match="fp16.*bf16"):
        Trainer(ToyLM(), toy_batches(), config, step_fn=CarryStep())

def test_killed_run_resumes_with_the_same_losses(tmp_path):
    _, full = run(tmp_path / "full")

    def kill_at_10(trainer):
        if trainer.step == 10:
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "killed", callbacks=[kill_at_10])
    assert latest_checkpoint(tmp_path / "killed").name == "step-0000008"  # steps 9, 10 were lost
    _, resumed = run(tmp_path / "killed")
    assert len(losses(resumed)) == 12
    assert losses(resumed) == pytest.approx(losses(full), abs=1e-6, rel=0)
    assert [h["lr"] for h in resumed.history["train"]] == [h["lr"] for h in full.history["train"]]


def test_stopped_run_resumes_with_the_same_losses(tmp_path):
    _, full = run(tmp_path / "full")
    _, first = run(tmp_path / "split", callbacks=[lambda t: t.step == 5])  # a clean stop, checkpoint at 5
    assert first.stop_reason == "callback" and first.step == 5
    _, second = run(tmp_path / "split")
    assert second.step == 12
    assert losses(second) == pytest.approx(losses(full), abs=1e-6, rel=0)


def test_without_step_state_the_resume_differs(tmp_path):
    """The exact-resume test can fail: drop the carried state from the checkpoint and it does."""

    class Forgetful(CarryStep):
        def load_state_dict(self, state):
            self.h = None

    _, full = run(tmp_path / "full", step_fn=Forgetful())
    run(tmp_path / "split", step_fn=Forgetful(), callbacks=[lambda t: t.step == 5])
    _, second = run(tmp_path / "split", step_fn=Forgetful())
    assert abs(losses(second)[5] - losses(full)[5]) > 1e-6


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    class PoisonedAt7(CarryStep):
        calls = 0

        def __call__(self, model, batch):
            out = super().__call__(model, batch)
            PoisonedAt7.calls += 1
            return StepOutput(out.loss * float("nan"), out.num_tokens) if PoisonedAt7.calls == 7 else out

    holder = {}

    def keep(trainer):
        holder["trainer"] = trainer

    with pytest.raises(NonFiniteLossError, match=r"loss is nan at optimizer step 7.*step-0000006.*intact"):
        run(tmp_path, step_fn=PoisonedAt7(), checkpoint_every=3, callbacks=[keep])
    path = latest_checkpoint(tmp_path)
    assert path.name == "step-0000006"
    saved = torch.load(path / "model.pt", weights_only=True)
    live = holder["trainer"].unwrapped_model.state_dict()
    for k, v in saved.items():  # the failed step left the weights as checkpointed
        assert torch.equal(v, live[k]), k
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))


def test_time_budget_stops_and_drives_the_schedule(tmp_path):
    _, result = run(tmp_path, max_steps=None, max_minutes=0.04, checkpoint_every=0, output_dir=None)
    assert result.stop_reason == "max_minutes" and result.train_seconds >= 2.4
    lrs = [h["lr"] for h in result.history["train"]]
    after_peak = lrs[lrs.index(max(lrs)):]
    # Time drives the cosine: past its peak the rate only falls, and by the last step it is far below the peak
    # (1e-2). How far depends on how long the last step took (a loaded machine ends further from the floor, and
    # takes fewer steps), so no tighter bound.
    assert len(after_peak) >= 2 and all(b <= a for a, b in zip(after_peak[:-1], after_peak[1:], strict=True))
    assert after_peak[-1] < 0.6e-2


def test_lr_schedule_shape():
    assert lr_multiplier(0, 0.0, 10, 0.1) == pytest.approx(0.1)
    assert lr_multiplier(9, 0.0, 10, 0.1) == pytest.approx(1.0)
    assert lr_multiplier(100, 0.5, 10, 0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_multiplier(100, 1.0, 10, 0.1) == pytest.approx(0.1)
    assert lr_multiplier(100, 1.5, 10, 0.0) == pytest.approx(0.0)


def test_weight_decay_groups():
    class WithC(ToyLM):
        def __init__(self):
            super().__init__()
            self.weight_c = nn.Parameter(torch.zeros(1, 2, D))

    model = WithC()
    decay, keep = param_groups(model, 0.1, ("bias", "norm", "weight_c"))
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decayed == {"embed.weight", "rnn.weight_ih_l0", "rnn.weight_hh_l0", "head.weight"}
    assert {names[id(p)] for p in keep["params"]} >= {"weight_c", "norm.weight", "head.bias"}
    assert keep["weight_decay"] == 0.0 and decay["weight_decay"] == 0.1


def test_config_needs_a_budget():
    with pytest.raises(ValueError, match="budget"):
        TrainConfig()
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(max_steps=1, optimizer="sgd")


def test_epoch_batches_resume_position():
    a = EpochBatches(lambda e: [(e, i) for i in range(3)])
    seen = [next(a) for _ in range(5)]
    assert seen == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    b = EpochBatches(lambda e: [(e, i) for i in range(3)])
    b.load_state_dict(a.state_dict())
    assert [next(b) for _ in range(3)] == [next(a) for _ in range(3)] == [(1, 2), (2, 0), (2, 1)]
