"""Atomic training checkpoints.

A checkpoint is a directory ``<output_dir>/checkpoints/step-0000123/`` holding

- ``model.pt``, ``optimizer.pt``: state dicts (written by the main process),
- ``trainer_state.json``: step, tokens, training seconds, the loss/eval history, the config,
- ``rank{r}.pt``: each process's RNG states, batch-source position and step-function state
  (e.g. the carried SRU state), written by that process.

It is written under a ``.tmp`` name and renamed into place with ``os.replace``; then the ``latest``
file (also replaced atomically) is pointed at it. A reader follows ``latest``, so a kill at any
moment leaves either the previous checkpoint or the new one, never a half-written one. Older
checkpoints beyond the newest ``keep`` (``TrainConfig.keep_checkpoints``, default 1) are then deleted.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

LATEST = "latest"


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_root(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "checkpoints"


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The directory of the newest complete checkpoint under ``output_dir``, or None."""
    root = checkpoint_root(output_dir)
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    return path if (path / "trainer_state.json").is_file() else None


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def staging_dir(output_dir: str | os.PathLike, step: int) -> Path:
    """Where every process writes its part of the checkpoint for ``step`` before it is published."""
    return checkpoint_root(output_dir) / f"step-{step:07d}.tmp"


def write_shared(
    staging: Path, model_state: dict, optimizer_state: dict, trainer_state: dict[str, Any]
) -> None:
    """The main process's part: model, optimizer and trainer state."""
    staging.mkdir(parents=True, exist_ok=True)
    torch.save(model_state, staging / "model.pt")
    torch.save(optimizer_state, staging / "optimizer.pt")
    (staging / "trainer_state.json").write_text(json.dumps(trainer_state))


def write_rank(staging: Path, rank: int, state: dict[str, Any]) -> None:
    """One process's part: its RNG states, data position and step-function state."""
    staging.mkdir(parents=True, exist_ok=True)
    torch.save(state, staging / f"rank{rank}.pt")


def publish(output_dir: str | os.PathLike, step: int, keep: int = 1) -> Path:
    """Move the staged checkpoint into place, point ``latest`` at it and drop all but ``keep`` newest.

    Called by the main process after every process has written its part.
    """
    root = checkpoint_root(output_dir)
    staging = staging_dir(output_dir, step)
    final = root / f"step-{step:07d}"
    if final.exists():  # a rerun of the same step after a resume: the new one wins
        shutil.rmtree(final)
    os.replace(staging, final)
    _write_text_atomic(root / LATEST, final.name)
    done = sorted(p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
    for old in done[: max(0, len(done) - keep)]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob("step-*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


def load(path: Path, rank: int) -> dict[str, Any]:
    """Everything process ``rank`` needs to resume from the checkpoint directory ``path``."""
    state = json.loads((path / "trainer_state.json").read_text())
    rank_file = path / f"rank{rank}.pt"
    if not rank_file.is_file():
        raise FileNotFoundError(
            f"{rank_file} is missing: the checkpoint was written by fewer processes than are resuming it; "
            "resume with the same number of processes"
        )
    return {
        "trainer_state": state,
        "model": torch.load(path / "model.pt", map_location="cpu", weights_only=True),
        "optimizer": torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True),
        # our own file with numpy RNG arrays: not loadable with weights_only
        "rank": torch.load(rank_file, map_location="cpu", weights_only=False),
    }
