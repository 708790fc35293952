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
from sb3_tensorpatch import plans

pytestmark = pytest.mark.usefixtures("enabled")


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
    plan = plans.plan_for(model.policy)
    assert plans.plan_for(model.policy) is plan
    assert plan.actions.bounds(torch.device("cpu"))[0] is plan.actions.bounds(torch.device("cpu"))[0]
    original = model.policy.action_space
    try:
        model.policy.action_space = type(original)(low=-0.5, high=0.5, shape=original.shape, dtype=original.dtype)
        assert plans.plan_for(model.policy) is not plan
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
    assert plans._plans.get(model.policy) is not None
    del model
    gc.collect()
    assert ref() is None
    assert key not in plans._plans._entries


def test_device_is_read_from_a_parameter_not_by_walking() -> None:
    model = build("SAC", "Box", "Box")
    plan = plans.plan_for(model.policy)
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


# -- unscaling: the two-op path is exact only where it is taken --------------------------------


def _numpy_unscale(actions: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    # SB3's BasePolicy.unscale_action, as predict(numpy) applies it
    return low + (0.5 * (actions + 1.0) * (high - low))


def _edge_actions(dtype: Any, width: int) -> np.ndarray:
    """Random actions in [-1, 1] plus the values next to -1, 0 and 1, where ``a + 1`` rounds."""
    rng = np.random.default_rng(0)
    values = [rng.uniform(-1.0, 1.0, size=20000).astype(dtype)]
    for point in (-1.0, 0.0, 1.0):
        around = [np.array(point, dtype=dtype)]
        for direction in (-np.inf, np.inf):
            step = np.array(point, dtype=dtype)
            for _ in range(64):
                step = np.nextafter(step, np.array(direction, dtype=dtype))
                around.append(step)
        values.append(np.clip(np.array(around, dtype=dtype), -1, 1))
    flat = np.concatenate(values)
    flat = flat[: len(flat) // width * width]
    return flat.reshape(-1, width)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "low,high,fused",
    [
        ([-1.0], [1.0], True),
        ([-2.0, 0.5, -3.0], [2.0, 2.5, 5.0], True),
        ([0.0, -0.25], [0.5, 0.25], True),
        ([-2.0, 0.0], [2.0, 5.0], False),  # half-range 2.5
        ([-0.4], [1.2], False),
        ([-np.inf, -1.0], [np.inf, 1.0], False),
    ],
)
def test_unscale_matches_numpy_bit_for_bit(low: list[float], high: list[float], fused: bool, dtype: Any) -> None:
    from helpers import spaces

    from sb3_tensorpatch.actions import ActionPlan

    space = spaces.Box(low=np.array(low, dtype=dtype), high=np.array(high, dtype=dtype), dtype=dtype)
    plan = ActionPlan(space, squash_output=True)
    assert plan.fused is fused
    actions = _edge_actions(dtype, len(low))
    with np.errstate(all="ignore"):
        expected = _numpy_unscale(actions, space.low, space.high)
    actual = plan.finish(torch.as_tensor(actions), vectorized=True).numpy()
    assert actual.dtype == expected.dtype
    np.testing.assert_array_equal(actual, expected)


def test_the_parity_grid_covers_both_unscale_paths() -> None:
    from helpers import action_space

    from sb3_tensorpatch.actions import ActionPlan

    assert not ActionPlan(action_space("Box"), squash_output=True).fused
    assert ActionPlan(action_space("BoxPow2"), squash_output=True).fused


def test_eval_check_reads_a_training_property_as_an_attribute() -> None:
    class PropertyFlag(torch.nn.Module):
        """A module whose ``training`` is a property, not an entry of its ``__dict__``."""

        def __init__(self) -> None:
            self._mode = True
            super().__init__()

        @property  # type: ignore[override]
        def training(self) -> bool:
            return self._mode

        @training.setter
        def training(self, value: bool) -> None:
            self._mode = value

    model = build("PPO", "Box", "Box", seed=1)  # not the cached model: a module is added to it
    model.policy.extra = PropertyFlag()
    model.policy.set_training_mode(False)
    plan = plans.plan_for(model.policy)
    assert plan.flag is plans._training and plan.flags == plan.modules
    obs = torch.as_tensor(stack(sample_observations(observation_space("Box"), 2, seed=0)))
    model.policy.extra._mode = True
    model.predict(obs, deterministic=True)
    assert model.policy.extra.training is False


# -- the eval check reads exactly the flags set_training_mode(False) sets ---------------------

_EVAL_CASES = [
    ("PPO", "MlpPolicy", "Box", "Box"),
    ("A2C", "MlpPolicy", "Box", "Discrete"),
    ("SAC", "MlpPolicy", "Box", "Box"),
    ("TD3", "MlpPolicy", "Box", "Box"),
    ("DDPG", "MultiInputPolicy", "Dict", "Box"),
    ("DQN", "MlpPolicy", "Box", "Discrete"),
    ("DQN", "CnnPolicy", "ImageLast", "Discrete"),
    ("QRDQN", "MlpPolicy", "Box", "Discrete"),
    ("TQC", "MlpPolicy", "Box", "Box"),
    ("CrossQ", "MlpPolicy", "Box", "Box"),
    ("TRPO", "MlpPolicy", "Box", "Box"),
    ("ARS", "MlpPolicy", "Box", "Box"),
    ("MaskablePPO", "MlpPolicy", "Box", "Discrete"),
    ("RecurrentPPO", "MlpLstmPolicy", "Box", "Box"),
]


def _switched_off(policy: Any) -> set[int]:
    """The modules (by id) that policy.set_training_mode(False) sets, seen from all-training."""
    saved = [(module, module.training) for module in policy.modules()]
    try:
        policy.train(True)
        policy.set_training_mode(False)
        return {id(module) for module in policy.modules() if module is not policy and not module.training}
    finally:
        for module, mode in saved:
            module.training = mode


@pytest.mark.parametrize("algo,policy_name,obs_kind,act_kind", _EVAL_CASES, ids=["-".join(c) for c in _EVAL_CASES])
def test_eval_check_reads_exactly_the_flags_sb3_sets(algo: str, policy_name: str, obs_kind: str, act_kind: str) -> None:
    from helpers import algorithm_class

    if algorithm_class(algo) is None:
        pytest.skip(f"{algo} is not installed")
    policy = build(algo, obs_kind, act_kind, policy_name).policy
    checked = {id(module) for module in plans.eval_modules(policy)}
    assert checked == _switched_off(policy)
    if algo in {"SAC", "TD3", "DQN", "QRDQN", "TQC"}:  # CrossQ has no target networks
        assert len(checked) < len(list(policy.modules())) - 1  # target networks are left out


def test_eval_check_of_a_subclass_that_overrides_set_training_mode_reads_every_flag() -> None:
    from stable_baselines3.dqn.policies import DQNPolicy

    class OwnMode(DQNPolicy):
        def set_training_mode(self, mode: bool) -> None:
            self.train(mode)

    model = build("DQN", "Box", "Discrete", OwnMode)
    modules = plans.eval_modules(model.policy)
    assert len(modules) == len(list(model.policy.modules())) - 1
    model.policy.q_net_target.train(True)  # SB3's predict would switch it back through OwnMode
    obs = torch.as_tensor(stack(sample_observations(observation_space("Box"), 2, seed=0)))
    model.predict(obs, deterministic=True)
    assert not model.policy.q_net_target.training


def test_a_target_network_in_training_mode_is_left_as_sb3_leaves_it() -> None:
    model = build("DQN", "Box", "Discrete", seed=2)
    model.policy.q_net_target.train(True)  # DQNPolicy.set_training_mode does not touch it
    obs = stack(sample_observations(observation_space("Box"), 2, seed=0))
    sb3_tensorpatch.disable()
    model.predict(obs, deterministic=True)
    assert model.policy.q_net_target.training  # SB3 leaves it...
    sb3_tensorpatch.enable()
    calls: list[bool] = []
    original = model.policy.set_training_mode
    model.policy.set_training_mode = lambda mode: (calls.append(mode), original(mode))  # type: ignore[method-assign]
    try:
        model.predict(torch.as_tensor(obs), deterministic=True)
    finally:
        del model.policy.set_training_mode
    assert model.policy.q_net_target.training  # ...and so does the tensor route,
    assert calls == []  # without calling set_training_mode on every predict to find that out
