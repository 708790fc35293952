"""Box action post-processing: bounds that change after the first predict, and every bounds dtype.

SB3 reads ``action_space.low`` / ``high`` on every call and lets NumPy promote its float32 actions
with them (float64 for float64 bounds and for integer bounds of 32 bits or more), so the route must
see a new or edited bound at the next call and return NumPy's dtype and values, bit for bit.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import numpy as np
import pytest
import stable_baselines3 as sb3
import torch
from helpers import SpaceEnv, build, observation_space, sample_observations, saturate, spaces, stack

import sb3_tensorpatch
from sb3_tensorpatch.actions import ActionPlan
from sb3_tensorpatch.testing import assert_predict_parity

DTYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")


def _observations(count: int = 6, seed: int = 5) -> np.ndarray:
    return stack(sample_observations(observation_space("Box"), count, seed))


def _tensor_actions(model: Any, observations: np.ndarray) -> torch.Tensor:
    with sb3_tensorpatch.patched():
        actions, _ = model.predict(torch.as_tensor(observations), deterministic=True)
    return actions


def _assert_parity_and_bounds(model: Any, observations: np.ndarray) -> None:
    assert_predict_parity(model, observations)
    assert_predict_parity(model, list(observations))  # single observations too
    actions = _tensor_actions(model, observations).double()
    low = torch.as_tensor(np.asarray(model.policy.action_space.low, dtype=np.float64))
    high = torch.as_tensor(np.asarray(model.policy.action_space.high, dtype=np.float64))
    assert bool(((actions >= low) & (actions <= high)).all()), (actions, low, high)


# -- bounds changed after the first predict ------------------------------------------------------
# The tests keep the patch enabled throughout (``tensorpatch``), so the policy's plan, with its
# bound tensors, lives on from one predict to the next, as in a user's program.


def _same_plan(model: Any) -> Any:
    from sb3_tensorpatch import plans

    return plans.plan_for(model.policy)


@pytest.mark.parametrize("algo", ["PPO", "SAC", "TD3"])
@pytest.mark.parametrize("amount", [25.0, 0.5])
def test_assigned_bounds_are_used_at_the_next_call(algo: str, amount: float, tensorpatch: Any) -> None:
    model = saturate(build(algo, "Box", "Box"), amount)
    space = model.policy.action_space
    assert model.action_space is space  # what SB3's own predict reads
    observations = _observations()
    _assert_parity_and_bounds(model, observations)  # the bounds are now cached as tensors
    plan = _same_plan(model)
    space.low = np.array([-0.5, 1.0], dtype=np.float32)
    space.high = np.array([0.25, 1.5], dtype=np.float32)
    _assert_parity_and_bounds(model, observations)
    assert _same_plan(model) is plan  # the same plan, with fresh bounds


@pytest.mark.parametrize("algo", ["PPO", "SAC", "TD3"])
@pytest.mark.parametrize("amount", [25.0, 0.5])
def test_bounds_edited_in_place_are_used_at_the_next_call(algo: str, amount: float, tensorpatch: Any) -> None:
    model = saturate(build(algo, "Box", "Box"), amount)
    space = model.policy.action_space
    observations = _observations()
    _assert_parity_and_bounds(model, observations)
    plan = _same_plan(model)
    space.low[:] = [-0.5, 1.0]
    space.high[0] = 0.25
    _assert_parity_and_bounds(model, observations)
    space.high[1] = 1.5
    _assert_parity_and_bounds(model, observations)
    assert _same_plan(model) is plan


@pytest.mark.parametrize(
    ("before", "after"),
    [
        # power-of-two half-ranges (one fused op) to others (three ops), and back
        (([-2.0, 0.5, -3.0], [2.0, 2.5, 5.0]), ([-2.0, 0.4, -3.0], [2.0, 2.5, 5.0])),
        (([-2.0, 0.4, -3.0], [2.0, 2.5, 5.0]), ([-2.0, 0.5, -3.0], [2.0, 2.5, 5.0])),
    ],
)
def test_the_fused_decision_follows_edited_bounds(before: Any, after: Any, tensorpatch: Any) -> None:
    model = saturate(build("SAC", "Box", "BoxPow2"), 0.7)
    space = model.policy.action_space
    space.low[:], space.high[:] = before
    observations = _observations()
    _assert_parity_and_bounds(model, observations)
    space.low[:], space.high[:] = after
    _assert_parity_and_bounds(model, observations)


def test_bounds_of_another_dtype_assigned_to_a_float_box(tensorpatch: Any) -> None:
    """Integer arrays assigned to a float32 Box: SB3's NumPy arithmetic turns float64."""
    model = saturate(build("SAC", "Box", "Box"), 0.7)
    space = model.policy.action_space
    observations = _observations()
    _assert_parity_and_bounds(model, observations)
    space.low = np.array([-3, 1], dtype=np.int64)
    space.high = np.array([4, 2], dtype=np.int64)
    expected, _ = model.predict(observations, deterministic=True)
    assert expected.dtype == np.float64
    _assert_parity_and_bounds(model, observations)


def test_bounds_assigned_as_lists(tensorpatch: Any) -> None:
    """Not arrays (a Box never makes these, but SB3's NumPy path takes them): still fresh."""
    model = saturate(build("PPO", "Box", "Box"), 25.0)
    space = model.policy.action_space
    observations = _observations()
    space.low = [-0.5, 1.0]
    space.high = [0.25, 1.5]
    assert_predict_parity(model, observations)
    space.low[0] = -0.125  # a list edited in place
    assert_predict_parity(model, observations)


def test_unchanged_bounds_keep_their_tensors() -> None:
    """The freshness check does not rebuild anything while the bounds stay the same."""
    model = copy.deepcopy(build("SAC", "Box", "Box"))
    plan = ActionPlan(model.policy.action_space, squash_output=True)
    cpu = torch.device("cpu")
    first = plan.bounds(cpu)
    actions = torch.zeros((3, 2))
    plan.finish(actions, vectorized=True)
    assert plan.bounds(cpu)[0] is first[0]
    model.policy.action_space.high[1] = 7.0
    plan.finish(actions, vectorized=True)
    assert plan.bounds(cpu)[0] is not first[0]
    assert float(plan.bounds(cpu)[1][1]) == 3.5  # 0.5 * (7 - 0)


# -- point 5: every dtype a Box's bounds can have ------------------------------------------------


def _space(dtype: str) -> Any:
    if dtype.startswith("u"):
        return spaces.Box(low=np.array([1, 0], dtype=dtype), high=np.array([3, 5], dtype=dtype), dtype=dtype)
    return spaces.Box(low=np.array([-2, 0], dtype=dtype), high=np.array([2, 5], dtype=dtype), dtype=dtype)


def _model(algo: str, space: Any) -> Any:
    kwargs: dict[str, Any] = {"buffer_size": 16} if algo in ("SAC", "TD3", "DDPG") else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(sb3, algo)(
            "MlpPolicy",
            SpaceEnv(observation_space("Box"), space),
            policy_kwargs={"net_arch": [16]},
            device="cpu",
            seed=0,
            **kwargs,
        )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("algo", ["PPO", "A2C", "SAC", "TD3"])
def test_every_bounds_dtype(algo: str, dtype: str) -> None:
    model = _model(algo, _space(dtype))
    observations = _observations()
    expected, _ = model.predict(observations, deterministic=True)
    wide = dtype in ("float64", "int32", "int64", "uint32", "uint64")
    assert expected.dtype == (np.float64 if wide else np.float32)  # NumPy's promotion, as SB3 returns it
    for amount in (None, 25.0, -25.0):
        _assert_parity_and_bounds(model if amount is None else saturate(model, amount), observations)


def _edge_actions(count: int) -> np.ndarray:
    """float32 policy outputs: inside, on and outside [-1, 1], tiny, huge, signed zeros."""
    values = np.array(
        [-1.0, 1.0, 0.0, -0.0, 0.5, -0.999999, 0.3333333, 1e-30, -1e-30, 1.5, -7.25, 3e38, -3e38, 1 - 2**-24],
        dtype=np.float32,
    )
    rng = np.random.default_rng(0)
    values = np.concatenate([values, rng.uniform(-1.2, 1.2, 64).astype(np.float32)])
    return np.stack([np.roll(values, shift) for shift in range(count)], axis=1)


@pytest.mark.parametrize(
    ("dtype", "low", "high"),
    [(dtype, [-2, 0], [2, 5]) for dtype in DTYPES if not dtype.startswith("u")]
    + [(dtype, [1, 0], [3, 255]) for dtype in DTYPES if dtype.startswith("u")]
    + [
        ("int8", [-100, -128], [100, 127]),  # high - low wraps around in int8, as NumPy computes it
        ("int64", [-(2**62) - 1, 3], [2**62 + 7, 2**53 + 1]),  # rounded on the way to float64
        ("uint64", [0, 2**63], [2**64 - 1, 2**64 - 2]),
        ("float16", [-0.1, 1e-3], [0.3, 60000.0]),
        ("float64", [-0.1, 1e-300], [0.3, 1e300]),
        # zero bounds of either sign: numpy's clip returns the bound's bits on a tie, clamp the action's
        ("float32", [-0.0, -1.0], [1.0, -0.0]),
        ("float32", [-0.0, 0.0], [0.0, 0.0]),
        ("float64", [0.0, -3.0], [2.0, 0.0]),
    ],
)
@pytest.mark.parametrize("squash", [False, True], ids=["clip", "unscale"])
def test_clip_and_unscale_follow_numpy_promotion(dtype: str, low: list[int], high: list[int], squash: bool) -> None:
    """The plan against SB3's own NumPy expressions, on edge-case actions, bit for bit."""
    space = spaces.Box(low=np.array(low, dtype=dtype), high=np.array(high, dtype=dtype), dtype=dtype)
    plan = ActionPlan(space, squash_output=squash)
    actions = _edge_actions(2)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        if squash:  # SB3's BasePolicy.unscale_action
            expected = space.low + (0.5 * (actions + 1.0) * (space.high - space.low))
        else:  # SB3's BasePolicy.predict
            expected = np.clip(actions, space.low, space.high)
    actual = plan.finish(torch.as_tensor(actions), vectorized=True).numpy()
    assert actual.dtype == expected.dtype
    np.testing.assert_array_equal(actual.view(f"u{actual.itemsize}"), expected.view(f"u{expected.itemsize}"))


def test_box_of_shape_0d() -> None:
    """A Box of shape (): its 0-d bounds must still promote the actions as NumPy's do."""
    space = spaces.Box(low=np.int64(-2), high=np.int64(3), shape=(), dtype=np.int64)
    for squash in (False, True):
        plan = ActionPlan(space, squash_output=squash)
        actions = torch.tensor([-3.0, 0.25, 0.5, 2.0])
        with np.errstate(all="ignore"):
            expected = (
                space.low + (0.5 * (actions.numpy() + 1.0) * (space.high - space.low))
                if squash
                else np.clip(actions.numpy(), space.low, space.high)
            )
        actual = plan.finish(actions, vectorized=True).numpy()
        assert actual.dtype == expected.dtype == np.float64
        np.testing.assert_array_equal(actual, expected)
