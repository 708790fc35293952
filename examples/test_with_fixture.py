"""A user's test file: the ``tensorpatch`` pytest fixture and marker.

Installing sb3-tensorpatch registers its pytest plugin, so nothing needs importing or configuring:
ask for the ``tensorpatch`` fixture (it yields the :class:`sb3_tensorpatch.Status`) or mark a test
with ``@pytest.mark.tensorpatch``, and the patch is on for that test only. Tests that ask for
neither see SB3 unpatched.

Run it::

    python -m pytest examples/test_with_fixture.py -v
    python examples/test_with_fixture.py
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
import torch

import sb3_tensorpatch
from sb3_tensorpatch.testing import assert_predict_parity

N_ENVS = 8


@pytest.fixture(scope="module")
def model():
    """A small PPO agent; any SB3 model of yours would do (``PPO.load(...)`` in real tests)."""
    from stable_baselines3 import PPO

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PPO("MlpPolicy", "Pendulum-v1", policy_kwargs={"net_arch": [32]}, device="cpu", seed=0)


@pytest.fixture
def observations(model) -> torch.Tensor:
    """A batch of observations as a torch-native vectorised env would hand them over."""
    model.observation_space.seed(0)
    return torch.as_tensor(np.stack([model.observation_space.sample() for _ in range(N_ENVS)]))


def test_actions_stay_tensors(tensorpatch, model, observations):
    """The fixture: ``predict(tensor)`` returns a tensor on the observation's device."""
    assert tensorpatch.enabled  # the fixture yields the Status after enabling
    actions, _ = model.predict(observations, deterministic=True)
    assert isinstance(actions, torch.Tensor)
    assert actions.device == observations.device
    assert actions.shape == (N_ENVS, *model.action_space.shape)


@pytest.mark.tensorpatch
def test_actions_within_bounds(model, observations):
    """The marker does the same as the fixture, for tests that do not need the Status."""
    assert sb3_tensorpatch.is_enabled()
    actions, _ = model.predict(observations, deterministic=False)  # stochastic: clipped like SB3's
    low = torch.as_tensor(model.action_space.low)
    high = torch.as_tensor(model.action_space.high)
    assert bool(((actions >= low) & (actions <= high)).all())


def test_same_actions_as_numpy(tensorpatch, model, observations):
    """Tensor and NumPy input give the same actions: NumPy still goes to SB3's own code."""
    from_tensor, _ = model.predict(observations, deterministic=True)
    from_numpy, _ = model.predict(observations.numpy(), deterministic=True)
    assert isinstance(from_numpy, np.ndarray)
    np.testing.assert_allclose(from_tensor.numpy(), from_numpy, atol=1e-6)


def test_parity_helper(model):
    """``assert_predict_parity`` patches for its own calls only; no fixture needed."""
    model.observation_space.seed(1)
    assert_predict_parity(model, [model.observation_space.sample() for _ in range(4)])
    assert_predict_parity(model, np.stack([model.observation_space.sample() for _ in range(4)]))


def test_unpatched_elsewhere():
    """A test without the fixture or the marker sees SB3 as it is."""
    assert not sb3_tensorpatch.is_enabled()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v", *sys.argv[1:]]))
