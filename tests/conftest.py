from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest
import torch

import sb3_tensorpatch

sys.path.insert(0, os.path.dirname(__file__))

# the tests use tiny tensors: one intra-op thread is faster and does not fight the other workers
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _patch_off() -> Iterator[None]:
    """Every test starts and ends with the patch disabled (tests enable it themselves)."""
    sb3_tensorpatch.disable()
    assert not sb3_tensorpatch.is_enabled()
    yield
    sb3_tensorpatch.disable()
