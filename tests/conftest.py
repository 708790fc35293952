from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

import sb3_tensorpatch

sys.path.insert(0, os.path.dirname(__file__))

# the tests use tiny tensors: one intra-op thread is faster and does not fight the other workers
torch.set_num_threads(1)


def pytest_report_header() -> str:
    """Say which path the tensor predicts take: ``SB3_TENSORPATCH_LOWERING=0`` runs every test
    without the lowered fast path (the parity grid is run both ways)."""
    from sb3_tensorpatch import lowering

    return f"sb3-tensorpatch lowering: {'on' if lowering.enabled else 'off (SB3_TENSORPATCH_LOWERING)'}"


@pytest.fixture(autouse=True)
def _patch_off() -> Iterator[None]:
    """Every test starts and ends with the patch disabled (tests enable it themselves)."""
    sb3_tensorpatch.disable()
    assert not sb3_tensorpatch.is_enabled()
    yield
    sb3_tensorpatch.disable()


@pytest.fixture
def enabled() -> Iterator[sb3_tensorpatch.Status]:
    """The patch on for one test (``pytestmark = pytest.mark.usefixtures("enabled")`` for a whole
    file), off again after it; set up after ``_patch_off``, so the test starts from a fresh enable."""
    status = sb3_tensorpatch.enable()
    assert sb3_tensorpatch.is_enabled()
    yield status
    sb3_tensorpatch.disable()


@pytest.fixture(scope="module")
def originals() -> dict[str, Any]:
    """What SB3's and torch's classes hold for every target before this module enables anything:
    undo is exact when each holds the very same object again (``helpers.assert_originals``)."""
    from helpers import BASE_PREDICT, snapshot

    from sb3_tensorpatch import table

    sb3_tensorpatch.disable()
    found = snapshot()
    assert BASE_PREDICT in found
    if table.installed_version(table.CONTRIB) is not None:
        assert "sb3_contrib.common.maskable.policies:MaskableActorCriticPolicy.predict" in found
    return found


@pytest.fixture(scope="module")
def ppo() -> Any:
    """A small PPO on CartPole (one per module: tests must not change it)."""
    from stable_baselines3 import PPO

    return PPO("MlpPolicy", "CartPole-v1", device="cpu", policy_kwargs={"net_arch": [16]}, seed=0)


@pytest.fixture(scope="module")
def ppo_obs(ppo: Any) -> np.ndarray:
    """A batch of 4 NumPy observations for :func:`ppo`."""
    rng = np.random.default_rng(0)
    return rng.uniform(-0.2, 0.2, size=(4, *ppo.observation_space.shape)).astype(np.float32)
