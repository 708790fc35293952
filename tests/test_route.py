"""Details of the tensor route: eval mode, cached per-policy facts, epsilon-greedy decisions."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import numpy as np
import pytest
import torch
from helpers import build, observation_space, sample_observations, stack

import sb3_tensorpatch
from sb3_tensorpatch import cache


@pytest.fixture(autouse=True)
def _enabled() -> Any:
    sb3_tensorpatch.enable()
    yield
    sb3_tensorpatch.disable()


def _modes(policy: Any) -> list[bool]:
    return [module.training for module in policy.modules()]


@pytest.mark.parametrize("algo,act", [("PPO", "Box"), ("SAC", "Box"), ("DQN", "Discrete")])
def test_eval_mode_as_sb3_leaves_it(algo: str, act: str) -> None:
    model = build(algo, "Box", act)
    obs = stack(sample_observations(observation_space("Box"), 2, seed=0))
    # SB3's own path from training mode
    model.policy.set_training_mode(True)
    model.policy.predict(obs, deterministic=True)
    expected = _modes(model.policy)
    # tensor route from training mode
    model.policy.set_training_mode(True)
    model.policy.predict(torch.as_tensor(obs), deterministic=True)
    assert _modes(model.policy) == expected
    # a single submodule switched back to training is noticed too
    next(iter(model.policy.children())).train(True)
    model.policy.predict(torch.as_tensor(obs), deterministic=True)
    assert _modes(model.policy) == expected


def test_eval_mode_is_not_switched_when_already_in_eval(monkeypatch: pytest.MonkeyPatch) -> None:
    model = build("PPO", "Box", "Box")
    obs = torch.as_tensor(stack(sample_observations(observation_space("Box"), 2, seed=0)))
    model.policy.set_training_mode(False)
    calls = []
    original = model.policy.set_training_mode
    monkeypatch.setattr(model.policy, "set_training_mode", lambda mode: (calls.append(mode), original(mode)))
    model.predict(obs, deterministic=True)
    assert calls == []
    model.policy.train(True)
    model.predict(obs, deterministic=True)
    assert calls == [False]


def test_plan_is_cached_and_rebuilt_when_spaces_change() -> None:
    model = build("PPO", "Box", "Box")
    obs = torch.as_tensor(stack(sample_observations(observation_space("Box"), 2, seed=0)))
    model.predict(obs)
    plan = cache.plan_for(model.policy)
    assert cache.plan_for(model.policy) is plan
    assert plan.actions.bounds(torch.device("cpu"))[0] is plan.actions.bounds(torch.device("cpu"))[0]
    original = model.policy.action_space
    try:
        model.policy.action_space = type(original)(low=-0.5, high=0.5, shape=original.shape, dtype=original.dtype)
        assert cache.plan_for(model.policy) is not plan
        actions, _ = model.policy.predict(obs, deterministic=False)
        assert bool((actions.abs() <= 0.5).all())
    finally:
        model.policy.action_space = original


def test_plans_do_not_keep_policies_alive() -> None:
    model = build("PPO", "Box", "Discrete", learning_rate=1e-3)  # a model of its own
    model = type(model)("MlpPolicy", model.get_env(), policy_kwargs={"net_arch": [8]}, device="cpu")
    model.predict(torch.zeros(3))
    ref = weakref.ref(model.policy)
    key = id(model.policy)
    assert cache._plans.get(model.policy) is not None
    del model
    gc.collect()
    assert ref() is None
    assert key not in cache._plans._entries


def test_device_is_read_from_a_parameter_not_by_walking() -> None:
    model = build("SAC", "Box", "Box")
    plan = cache.plan_for(model.policy)
    assert plan.device() == model.policy.device
    assert plan.param is next(model.policy.parameters())


@pytest.mark.parametrize("algo", ["DQN", "QRDQN"])
def test_epsilon_greedy_explores_exactly_when_sb3_would(algo: str) -> None:
    from helpers import algorithm_class

    if algorithm_class(algo) is None:
        pytest.skip(f"{algo} is not installed")
    model = build(algo, "Box", "Discrete")
    model.exploration_rate = 0.5
    obs = stack(sample_observations(observation_space("Box"), 3, seed=1))
    greedy, _ = model.predict(obs, deterministic=True)
    np.random.seed(123)
    numpy_explored = [not np.array_equal(model.predict(obs)[0], greedy) for _ in range(40)]
    np.random.seed(123)
    tensor_greedy = torch.as_tensor(greedy)
    tensor_explored = [not torch.equal(model.predict(torch.as_tensor(obs))[0], tensor_greedy) for _ in range(40)]
    # the same draws from numpy's generator decide; a random batch can equal the greedy one by chance
    disagreements = sum(a != b for a, b in zip(numpy_explored, tensor_explored))
    assert sum(numpy_explored) > 5
    assert disagreements <= 3
