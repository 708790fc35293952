"""Parity: predict(tensor) against predict(numpy), over algorithms x observation spaces x action
spaces x single / batch of 1 / batch of several x model.predict / policy.predict.

Deterministic: values (bit for bit), shape, dtype and device agree. Stochastic: shape, dtype,
device agree and every action lies inside the action space.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from helpers import ACTIONS, OBS_KINDS, build, observation_space, sample_observations, saturate, stack

import sb3_tensorpatch
from sb3_tensorpatch.testing import assert_predict_parity, to_tensor

GRID = [(algo, obs, act) for algo, acts in ACTIONS.items() for obs in OBS_KINDS for act in acts]
SHAPES = ("single", "batch1", "batch5")


def _observations(obs_kind: str, shape: str, seed: int) -> list[Any]:
    space = observation_space(obs_kind)
    if shape == "single":
        return sample_observations(space, 3, seed)
    size = 1 if shape == "batch1" else 5
    return [stack(sample_observations(space, size, seed + index)) for index in range(2)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("algo,obs_kind,act_kind", GRID, ids=["-".join(case) for case in GRID])
def test_deterministic_parity(algo: str, obs_kind: str, act_kind: str, shape: str) -> None:
    model = build(algo, obs_kind, act_kind)
    observations = _observations(obs_kind, shape, seed=11)
    assert_predict_parity(model, observations, deterministic=True)
    assert_predict_parity(model.policy, observations, deterministic=True)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("algo,obs_kind,act_kind", GRID, ids=["-".join(case) for case in GRID])
def test_stochastic_shapes_and_bounds(algo: str, obs_kind: str, act_kind: str, shape: str) -> None:
    model = build(algo, obs_kind, act_kind)
    observations = _observations(obs_kind, shape, seed=23)
    assert_predict_parity(model, observations, deterministic=False)
    assert_predict_parity(model.policy, observations, deterministic=False)


@pytest.mark.parametrize("act_kind", ["Box", "BoxInt"])
@pytest.mark.parametrize("amount", [25.0, -25.0])
@pytest.mark.parametrize("algo", ["PPO", "A2C", "SAC", "TD3", "DDPG"])
def test_box_bounds_are_exercised(algo: str, amount: float, act_kind: str) -> None:
    model = saturate(build(algo, "Box", act_kind), amount)
    observations = stack(sample_observations(observation_space("Box"), 6, seed=5))
    expected, _ = model.predict(observations, deterministic=True)
    low, high = model.action_space.low, model.action_space.high
    # the NumPy path really clips / unscales to the bounds here
    assert np.all(expected[:, 0] == (high[0] if amount > 0 else low[0]))
    assert np.all(expected[:, 1] == (low[1] if amount > 0 else high[1]))
    assert_predict_parity(model, observations, deterministic=True)
    assert_predict_parity(model, observations, deterministic=False)


@pytest.mark.parametrize("algo", ["PPO", "SAC"])
def test_stochastic_box_actions_stay_in_bounds(algo: str) -> None:
    model = saturate(build(algo, "Box", "Box"), 3.0)
    obs = to_tensor(stack(sample_observations(observation_space("Box"), 512, seed=1)))
    with sb3_tensorpatch.patched():
        actions, _ = model.predict(obs, deterministic=False)
    low = torch.as_tensor(model.action_space.low)
    high = torch.as_tensor(model.action_space.high)
    assert actions.shape == (512, 2)
    assert bool(((actions >= low) & (actions <= high)).all())
    # and the samples are not all on the bounds: stochastic really samples
    assert bool(((actions > low) & (actions < high)).any())


def test_returned_tensors_have_no_graph_and_work_in_autograd() -> None:
    model = build("SAC", "Box", "Box")
    obs = torch.tensor(stack(sample_observations(observation_space("Box"), 4, seed=2)), requires_grad=True)
    with sb3_tensorpatch.patched():
        actions, _ = model.predict(obs, deterministic=True)
    assert actions.grad_fn is None and not actions.requires_grad
    assert not actions.is_inference()
    weight = torch.ones(2, requires_grad=True)
    (actions * weight).sum().backward()
    assert weight.grad is not None


def test_single_discrete_observation_as_0d_tensor() -> None:
    model = build("PPO", "Discrete", "Discrete")
    for value in range(5):
        assert_predict_parity(model, [np.int64(value)])
        with sb3_tensorpatch.patched():
            actions, _ = model.predict(torch.tensor(value), deterministic=True)
        assert actions.shape == ()


hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra.numpy import arrays  # noqa: E402

_FLOATS = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, width=32)


# too_slow: on a loaded 2-core machine one draw once took 37 s (SB3 1.8.0, version matrix); the
# test's subject is parity, not the draws' speed
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    algo=st.sampled_from(["PPO", "A2C", "SAC", "TD3", "DDPG"]),
    batch=st.integers(min_value=0, max_value=6),
    data=st.data(),
)
def test_parity_on_arbitrary_box_observations(algo: str, batch: int, data: Any) -> None:
    """Any finite float32 observation, single or batched, any Box-action algorithm."""
    model = build(algo, "Box", "Box")
    shape = (3,) if batch == 0 else (batch, 3)
    obs = data.draw(arrays(np.float32, shape, elements=_FLOATS))
    assert_predict_parity(model, obs, deterministic=True)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    algo=st.sampled_from(["PPO", "A2C", "DQN"]),
    obs_kind=st.sampled_from(["Discrete", "MultiDiscrete", "MultiBinary"]),
    batch=st.integers(min_value=1, max_value=6),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_parity_on_random_discrete_observations(algo: str, obs_kind: str, batch: int, seed: int) -> None:
    model = build(algo, obs_kind, "Discrete")
    obs = stack(sample_observations(observation_space(obs_kind), batch, seed))
    assert_predict_parity(model, obs, deterministic=True)
