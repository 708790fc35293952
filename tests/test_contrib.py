"""sb3-contrib parity: every algorithm, and the predict overrides with their own routes
(QRDQN epsilon-greedy, MaskablePPO with masks, RecurrentPPO with LSTM states)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from helpers import (
    action_space,
    algorithm_class,
    assert_same_bits,
    build,
    observation_space,
    sample_observations,
    stack,
)

import sb3_tensorpatch
from sb3_tensorpatch.routes import _mask_width
from sb3_tensorpatch.testing import assert_predict_parity, to_tensor

pytest.importorskip("sb3_contrib")

SHAPES = ("single", "batch1", "batch5")


def _needs(algo: str) -> None:
    if algorithm_class(algo) is None:
        pytest.skip(f"{algo} is not in the installed sb3-contrib")


def _observations(obs_kind: str, shape: str, seed: int) -> Any:
    space = observation_space(obs_kind)
    if shape == "single":
        return sample_observations(space, 3, seed)
    return [stack(sample_observations(space, 1 if shape == "batch1" else 5, seed))]


CASES = [
    ("QRDQN", "MlpPolicy", "Box", "Discrete"),
    ("QRDQN", "CnnPolicy", "ImageLast", "Discrete"),
    ("TQC", "MlpPolicy", "Box", "Box"),
    ("TQC", "MultiInputPolicy", "Dict", "Box"),
    ("TRPO", "MlpPolicy", "Box", "Box"),
    ("TRPO", "MlpPolicy", "Discrete", "MultiDiscrete"),
    ("TRPO", "MlpPolicy", "MultiBinary", "MultiBinary"),
    ("ARS", "MlpPolicy", "Box", "Box"),
    ("ARS", "LinearPolicy", "Box", "Discrete"),
    ("CrossQ", "MlpPolicy", "Box", "Box"),
    ("RecurrentPPO", "MlpLstmPolicy", "Box", "Box"),
    ("RecurrentPPO", "MlpLstmPolicy", "Discrete", "Discrete"),
    ("RecurrentPPO", "MlpLstmPolicy", "MultiBinary", "MultiBinary"),
    ("RecurrentPPO", "MultiInputLstmPolicy", "Dict", "MultiDiscrete"),
    ("MaskablePPO", "MlpPolicy", "Box", "Discrete"),
    ("MaskablePPO", "MultiInputPolicy", "Dict", "MultiDiscrete"),
    ("MaskablePPO", "MlpPolicy", "Box", "MultiBinary"),
]


@pytest.mark.parametrize("deterministic", [True, False], ids=["det", "stoch"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("algo,policy,obs_kind,act_kind", CASES, ids=["-".join(case) for case in CASES])
def test_contrib_parity(algo: str, policy: str, obs_kind: str, act_kind: str, shape: str, deterministic: bool) -> None:
    _needs(algo)
    model = build(algo, obs_kind, act_kind, policy)
    observations = _observations(obs_kind, shape, seed=7)
    assert_predict_parity(model, observations, deterministic=deterministic)
    assert_predict_parity(model.policy, observations, deterministic=deterministic)


def test_qrdqn_exploration_draws_random_actions_on_the_device() -> None:
    _needs("QRDQN")
    model = build("QRDQN", "Box", "Discrete", "MlpPolicy")
    model.exploration_rate = 1.0
    obs = to_tensor(stack(sample_observations(observation_space("Box"), 64, seed=1)))
    with sb3_tensorpatch.patched():
        actions, state = model.predict(obs, deterministic=False)
        single, _ = model.predict(obs[0], deterministic=False)
    numpy_actions, _ = model.predict(obs.numpy(), deterministic=False)
    assert isinstance(actions, torch.Tensor) and actions.device == obs.device
    assert actions.shape == numpy_actions.shape == (64,)
    assert actions.dtype == torch.int64 and numpy_actions.dtype == np.int64
    assert single.shape == () and single.dtype == torch.int64
    assert bool(((actions >= 0) & (actions < 4)).all())
    assert len(torch.unique(actions)) > 1  # really random
    assert state is None
    # deterministic never explores
    assert_predict_parity(model, obs.numpy(), deterministic=True)


@pytest.mark.parametrize("act_kind", ["Discrete", "MultiDiscrete", "MultiBinary"])
def test_maskable_masks_as_tensors(act_kind: str) -> None:
    _needs("MaskablePPO")
    model = build("MaskablePPO", "Box", act_kind, "MlpPolicy")
    width = _mask_width(action_space(act_kind))
    rng = np.random.default_rng(0)
    obs = stack(sample_observations(observation_space("Box"), 6, seed=2))
    masks = rng.random((6, width)) < 0.6
    if act_kind == "Discrete":
        masks[:, 1] = True  # at least one valid action per row
    else:
        # every sub-action keeps at least one valid choice
        masks[:, 0] = True
        masks[:, -1] = True
        if act_kind == "MultiDiscrete":
            masks[:, 2] = True
    for target in (model, model.policy):
        assert_predict_parity(target, obs, action_masks=masks, deterministic=True)
        assert_predict_parity(target, obs[0], action_masks=masks[0], deterministic=True)
        assert_predict_parity(target, obs, action_masks=masks, deterministic=False)
    # stochastic actions never pick a masked action
    if act_kind == "Discrete":
        many = np.repeat(obs[:1], 400, axis=0)
        row = masks[:1].repeat(400, axis=0)
        with sb3_tensorpatch.patched():
            actions, _ = model.predict(torch.as_tensor(many), action_masks=torch.as_tensor(row), deterministic=False)
        allowed = torch.as_tensor(row)[torch.arange(400), actions]
        assert bool(allowed.all())
        assert len(torch.unique(actions)) == int(row[0].sum())  # and it does sample each valid one


def _valid_masks(act_kind: str, rows: int, seed: int) -> np.ndarray:
    """Random masks that keep at least one valid choice for every (sub-)action of every row."""
    space = action_space(act_kind)
    masks = np.random.default_rng(seed).random((rows, _mask_width(space))) < 0.5
    if act_kind == "Discrete":
        sizes = [int(space.n)]
    else:  # MultiDiscrete, or MultiBinary: two choices per binary action
        sizes = [int(size) for size in space.nvec] if hasattr(space, "nvec") else [2] * int(space.n)
    for start in np.cumsum([0, *sizes[:-1]]):
        masks[:, start + 1] = True  # its second choice (so that a masked first choice matters)
    return masks


@pytest.mark.parametrize("deterministic", [True, False], ids=["det", "stoch"])
@pytest.mark.parametrize("act_kind", ["Discrete", "MultiDiscrete", "MultiBinary"])
def test_maskable_bit_identical_with_the_same_seed(act_kind: str, deterministic: bool) -> None:
    # the route masks the logits itself (no per-call upload of contrib's -1e8): with the same torch
    # seed it must draw exactly the actions SB3's NumPy path draws, for a batch and for one observation
    _needs("MaskablePPO")
    model = build("MaskablePPO", "Box", act_kind, "MlpPolicy")
    obs = stack(sample_observations(observation_space("Box"), 64, seed=5))
    masks = _valid_masks(act_kind, 64, seed=6)
    for target in (model, model.policy):
        for observation, mask in ((obs, masks), (obs[0], masks[0])):
            with torch.random.fork_rng():
                torch.manual_seed(7)
                expected, _ = target.predict(observation, action_masks=mask, deterministic=deterministic)
                torch.manual_seed(7)
                with sb3_tensorpatch.patched():
                    actual, _ = target.predict(
                        torch.as_tensor(observation), action_masks=torch.as_tensor(mask), deterministic=deterministic
                    )
                    if not deterministic and observation is obs:
                        # the comparison can fail: another seed draws other actions
                        torch.manual_seed(8)
                        other, _ = target.predict(torch.as_tensor(observation), action_masks=torch.as_tensor(mask))
                        assert not torch.equal(other, actual)
            assert isinstance(actual, torch.Tensor) and actual.dtype == torch.as_tensor(expected).dtype
            assert torch.equal(actual, torch.as_tensor(expected))


def test_maskable_return_value_follows_the_release() -> None:
    _needs("MaskablePPO")
    model = build("MaskablePPO", "Box", "Discrete", "MlpPolicy")
    obs = stack(sample_observations(observation_space("Box"), 2, seed=3))
    state = (np.zeros(1),)
    _, expected_state = model.policy.predict(obs, state=state, deterministic=True)
    with sb3_tensorpatch.patched():
        _, actual_state = model.policy.predict(torch.as_tensor(obs), state=state, deterministic=True)
    assert (expected_state is None) == (actual_state is None)


@pytest.mark.parametrize("policy,obs_kind,act_kind", [("MlpLstmPolicy", "Box", "Box"), ("MlpLstmPolicy", "Box", "Discrete")])
def test_recurrent_two_steps_with_states_and_episode_starts(policy: str, obs_kind: str, act_kind: str) -> None:
    _needs("RecurrentPPO")
    model = build("RecurrentPPO", obs_kind, act_kind, policy)
    space = observation_space(obs_kind)
    first = stack(sample_observations(space, 4, seed=8))
    second = stack(sample_observations(space, 4, seed=9))
    starts_first = np.array([True, False, True, False])
    starts_second = np.array([False, True, False, False])
    # NumPy path: two steps, states passed back
    a1, s1 = model.predict(first, episode_start=starts_first, deterministic=True)
    a2, s2 = model.predict(second, state=s1, episode_start=starts_second, deterministic=True)
    with sb3_tensorpatch.patched():
        t1, ts1 = model.predict(torch.as_tensor(first), episode_start=torch.as_tensor(starts_first), deterministic=True)
        t2, ts2 = model.predict(torch.as_tensor(second), state=ts1, episode_start=torch.as_tensor(starts_second), deterministic=True)
    for expected, actual in ((a1, t1), (a2, t2), (s1[0], ts1[0]), (s1[1], ts1[1]), (s2[0], ts2[0]), (s2[1], ts2[1])):
        assert isinstance(actual, torch.Tensor)
        assert tuple(actual.shape) == expected.shape
        assert_same_bits(actual, expected)
    assert ts1[0].dtype == torch.float32
    # the states carry over: env 0 continued its episode, env 1 started a new one
    _, fresh = model.predict(second, deterministic=True)
    assert not np.allclose(fresh[0][:, 0], s2[0][:, 0])
    assert_same_bits(fresh[0][:, 1], s2[0][:, 1])


def test_recurrent_single_observation_keeps_state_layout() -> None:
    _needs("RecurrentPPO")
    model = build("RecurrentPPO", "Box", "Box", "MlpLstmPolicy")
    obs = sample_observations(observation_space("Box"), 1, seed=4)[0]
    actions, states = model.predict(obs, deterministic=True)
    with sb3_tensorpatch.patched():
        t_actions, t_states = model.predict(torch.as_tensor(obs), deterministic=True)
    assert tuple(t_actions.shape) == actions.shape
    assert tuple(t_states[0].shape) == states[0].shape == (1, 1, 8)
    assert_same_bits(t_states[1], states[1])
