"""Batch sources the training loop can checkpoint and resume.

The loop asks a source for one micro-batch at a time with ``next(source)``. A source that also has
``state_dict()`` / ``load_state_dict(state)`` is saved with each checkpoint, so a resumed run sees
exactly the batches the uninterrupted run would have seen. :class:`EpochBatches` gives any
deterministic per-epoch iterable (a ``DataLoader`` with a seeded generator, a list) that property.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class ResumableBatches(Protocol):
    def __next__(self) -> Any: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class EpochBatches:
    """Endless batches from ``make_epoch(epoch)``, one epoch after another, resumable by position.

    Args:
        make_epoch: returns the batches of epoch ``epoch`` (0, 1, ...); it must return the same
            batches in the same order when called again with the same epoch, e.g. a
            ``DataLoader(..., shuffle=True, generator=torch.Generator().manual_seed(seed + epoch))``.

    Resuming re-creates the interrupted epoch and skips the batches already used (cheap for index
    batches; the skipped batches are built but not run through a model).

    Example::

        batches = EpochBatches(lambda e: DataLoader(ds, 32, shuffle=True,
                                                    generator=torch.Generator().manual_seed(e)))
        batch = next(batches)
    """

    def __init__(self, make_epoch: Callable[[int], Iterable[Any]]) -> None:
        self.make_epoch = make_epoch
        self.epoch = 0
        self.position = 0  # batches already taken from the current epoch
        self._it: Iterator[Any] | None = None

    def __iter__(self) -> EpochBatches:
        return self

    def __next__(self) -> Any:
        for _ in range(2):
            if self._it is None:
                self._it = iter(self.make_epoch(self.epoch))
                for _ in range(self.position):
                    next(self._it)
            try:
                batch = next(self._it)
            except StopIteration:
                self.epoch, self.position, self._it = self.epoch + 1, 0, None
                continue
            self.position += 1
            return batch
        raise ValueError(f"make_epoch({self.epoch}) returned no batches")

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.position, self._it = int(state["epoch"]), int(state["position"]), None
