"""One torch thread for the task tests: these models are tiny, and on a shared 2-core machine oneDNN's
multi-threaded LSTM spins for cores that other processes hold (a 2-thread LSTM step ran 10x slower)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
