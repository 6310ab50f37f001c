"""One intra-op thread per test: these tensors are tiny, and on a loaded machine two threads
spend most of their time waiting at OpenMP barriers."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
