"""Subclasses that override what SB3's own path calls, and networks that work in place.

SB3's ``predict`` calls ``set_training_mode``, ``obs_to_tensor`` and (for squashed Box actions)
``unscale_action``; ``VecNormalize.normalize_obs`` / ``unnormalize_obs`` call ``_normalize_obs`` /
``_unnormalize_obs``; DQN's random actions ask ``policy.is_vectorized_observation``. A subclass that
overrides one of them gets its override on the tensor route too: called where it takes no arrays
(``set_training_mode``), else through SB3's own path with one host round trip and a warning once per
class. Either way the values are SB3's, bit for bit.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch
from helpers import (
    SpaceEnv,
    action_space,
    algorithm_class,
    build,
    observation_space,
    sample_observations,
    spaces,
    stack,
)
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize
from stable_baselines3.dqn.policies import DQNPolicy
from stable_baselines3.sac.policies import SACPolicy

import sb3_tensorpatch
from sb3_tensorpatch import notices
from sb3_tensorpatch.plans import plan_for
from sb3_tensorpatch.testing import assert_predict_parity, to_tensor


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(notices, "_warned", set())  # warnings are once per class: start each test afresh


def _box_batch(count: int = 4, seed: int = 0) -> np.ndarray:
    return stack(sample_observations(observation_space("Box"), count, seed))  # type: ignore[no-any-return]


class DoublingObsPolicy(ActorCriticPolicy):
    """Custom preprocessing in obs_to_tensor, which takes NumPy arrays."""

    def obs_to_tensor(self, observation: Any) -> Any:
        return super().obs_to_tensor(np.asarray(observation) * 2.0)


class OffsetUnscaleSACPolicy(SACPolicy):
    """Custom scaling in unscale_action, which takes NumPy arrays."""

    def unscale_action(self, scaled_action: np.ndarray) -> np.ndarray:
        return super().unscale_action(scaled_action) + 0.25


class CountingTrainModePolicy(ActorCriticPolicy):
    """Counts the calls of set_training_mode (SB3 calls it on every predict)."""

    calls = 0

    def set_training_mode(self, mode: bool) -> None:
        type(self).calls += 1
        super().set_training_mode(mode)


def _predict_both(model: Any, obs: Any, **kwargs: Any) -> tuple[Any, Any]:
    expected, _ = model.predict(obs, **kwargs)
    with sb3_tensorpatch.patched():
        actual, _ = model.predict(to_tensor(obs), **kwargs)
    return expected, actual


def _assert_same(expected: np.ndarray, actual: torch.Tensor) -> None:
    assert isinstance(actual, torch.Tensor) and actual.device == torch.device("cpu")
    assert torch.equal(actual, torch.as_tensor(expected)), (expected, actual)
    assert actual.dtype == torch.as_tensor(expected).dtype and tuple(actual.shape) == expected.shape


@pytest.mark.parametrize(
    "algo,policy,act_kind,method",
    [
        ("PPO", DoublingObsPolicy, "Box", "obs_to_tensor"),
        ("PPO", DoublingObsPolicy, "Discrete", "obs_to_tensor"),
        ("SAC", OffsetUnscaleSACPolicy, "Box", "unscale_action"),
    ],
    ids=["ppo-obs_to_tensor-box", "ppo-obs_to_tensor-discrete", "sac-unscale_action"],
)
def test_numpy_override_takes_sb3_path_with_one_warning(algo: str, policy: type, act_kind: str, method: str) -> None:
    model = build(algo, "Box", act_kind, policy)
    for obs in (_box_batch(5), _box_batch(1)[0]):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            expected, actual = _predict_both(model, obs, deterministic=True)
        _assert_same(expected, actual)
    # the override really changes the result, so skipping it would be seen
    with sb3_tensorpatch.patched():
        plain_policy = build(algo, "Box", act_kind)
        plain_policy.policy.load_state_dict(model.policy.state_dict())
        plain, _ = plain_policy.predict(to_tensor(_box_batch(5)), deterministic=True)
    assert not torch.equal(plain, torch.as_tensor(model.predict(_box_batch(5), deterministic=True)[0]))
    # warned once for the class, naming it and the method, at the caller's line
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        notices._warned.clear()
        _predict_both(model, _box_batch(3), deterministic=True)
        _predict_both(model, _box_batch(3), deterministic=True)
    ours = [w for w in caught if "sb3-tensorpatch" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    assert policy.__qualname__ in str(ours[0].message) and f"{method}()" in str(ours[0].message)
    assert ours[0].filename == __file__


def test_numpy_override_stochastic_draws_as_sb3() -> None:
    model = build("SAC", "Box", "Box", OffsetUnscaleSACPolicy)
    obs = _box_batch(6)
    torch.manual_seed(3)
    expected, _ = model.predict(obs, deterministic=False)
    torch.manual_seed(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with sb3_tensorpatch.patched():
            actual, _ = model.predict(to_tensor(obs), deterministic=False)
    _assert_same(expected, actual)


def test_overridden_set_training_mode_is_called_on_every_predict() -> None:
    model = build("PPO", "Box", "Box", CountingTrainModePolicy)
    obs = _box_batch(2)
    CountingTrainModePolicy.calls = 0
    model.predict(obs, deterministic=True)
    model.predict(obs, deterministic=True)
    numpy_calls = CountingTrainModePolicy.calls
    assert numpy_calls == 2
    with sb3_tensorpatch.patched():
        CountingTrainModePolicy.calls = 0
        model.predict(to_tensor(obs), deterministic=True)
        model.predict(to_tensor(obs), deterministic=True)
        model.policy.predict(to_tensor(obs), deterministic=True)
    assert CountingTrainModePolicy.calls == 3
    assert plan_for(model.policy).host is None  # it takes no arrays: the tensor route calls it itself
    assert_predict_parity(model, [obs])


def test_sb3_own_policies_need_no_round_trip() -> None:
    for algo, act in (("PPO", "Box"), ("SAC", "Box"), ("TD3", "Box"), ("DQN", "Discrete"), ("A2C", "MultiDiscrete")):
        plan = plan_for(build(algo, "Box", act).policy)
        assert plan.host is None and plan.random_host is None, algo


@pytest.mark.parametrize("which", ["MaskablePPO", "RecurrentPPO"])
def test_contrib_policy_with_obs_to_tensor_override(which: str) -> None:
    if algorithm_class(which) is None:
        pytest.skip(f"{which} is not in the installed sb3-contrib")
    if which == "MaskablePPO":
        from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy as Base
    else:
        from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy as Base

    class Doubling(Base):  # type: ignore[misc, valid-type]
        def obs_to_tensor(self, observation: Any) -> Any:
            return super().obs_to_tensor(np.asarray(observation) * 2.0)

    model = build(which, "Box", "Discrete", Doubling)
    obs = _box_batch(3)
    extra: dict[str, Any] = {}
    if which == "MaskablePPO":
        extra["action_masks"] = np.array([[True, False, True, True]] * 3)
    else:
        extra["state"] = tuple(np.full((1, 3, 8), 0.5, dtype=np.float32) for _ in range(2))
        extra["episode_start"] = np.array([True, False, False])
    expected, expected_state = model.predict(obs, deterministic=True, **extra)
    with warnings.catch_warnings(record=True) as caught, sb3_tensorpatch.patched():
        warnings.simplefilter("always")
        actual, actual_state = model.predict(to_tensor(obs), deterministic=True, **{k: to_tensor(v) for k, v in extra.items()})
    _assert_same(expected, actual)
    assert any("overrides obs_to_tensor()" in str(w.message) for w in caught)
    if which == "RecurrentPPO":
        for one, other in zip(expected_state, actual_state):
            _assert_same(one, other)


def test_dqn_policy_overriding_is_vectorized_observation() -> None:
    class AlwaysBatched(DQNPolicy):
        def is_vectorized_observation(self, observation: Any) -> bool:
            return True

    model = build("DQN", "Box", "Discrete", AlwaysBatched)
    model.exploration_rate = 1.0
    obs = _box_batch(1)[0]  # one observation, that the override calls a batch
    np.random.seed(0)
    expected, _ = model.predict(obs, deterministic=False)
    assert expected.shape == (3,)  # SB3 takes the override's word: 3 "observations"
    with warnings.catch_warnings(record=True) as caught, sb3_tensorpatch.patched():
        warnings.simplefilter("always")
        actual, _ = model.predict(to_tensor(obs), deterministic=False)
    assert actual.shape == (3,) and isinstance(actual, torch.Tensor)
    assert any("overrides is_vectorized_observation()" in str(w.message) for w in caught)


class _ShiftedNormalize(VecNormalize):
    def _normalize_obs(self, obs: np.ndarray, obs_rms: Any) -> np.ndarray:
        return super()._normalize_obs(obs, obs_rms) + 1.0

    def _unnormalize_obs(self, obs: np.ndarray, obs_rms: Any) -> np.ndarray:
        return super()._unnormalize_obs(obs - 1.0, obs_rms)


@pytest.mark.parametrize("kind", ["Box", "Dict"])
@pytest.mark.parametrize("method", ["normalize_obs", "unnormalize_obs"])
def test_vecnormalize_subclass_override(kind: str, method: str) -> None:
    if kind == "Dict":
        space = spaces.Dict({"vec": observation_space("Box"), "other": observation_space("Box")})
        venv = _ShiftedNormalize(DummyVecEnv([lambda: SpaceEnv(space, action_space("Box"))]), norm_obs_keys=["vec"])
        batch = stack(sample_observations(space, 8, seed=1))
        venv.obs_rms["vec"].update(batch["vec"])
    else:
        space = observation_space("Box")
        venv = _ShiftedNormalize(DummyVecEnv([lambda: SpaceEnv(space, action_space("Box"))]))
        batch = stack(sample_observations(space, 8, seed=1))
        venv.obs_rms.update(batch)
    expected = getattr(venv, method)(batch)
    with warnings.catch_warnings(record=True) as caught, sb3_tensorpatch.patched():
        warnings.simplefilter("always")
        actual = getattr(venv, method)(to_tensor(batch))
    pairs = [(expected[key], actual[key]) for key in expected] if kind == "Dict" else [(expected, actual)]
    for one, other in pairs:
        _assert_same(np.asarray(one), other)
    helper = "_" + method
    assert any(f"_ShiftedNormalize overrides {helper}()" in str(w.message) for w in caught)


# -- networks that work in place -------------------------------------------------------------------


class InPlaceExtractor(BaseFeaturesExtractor):
    """Doubles its input in place: legitimate in a custom extractor, because SB3 hands it a copy."""

    def __init__(self, observation_space: Any) -> None:
        super().__init__(observation_space, features_dim=int(np.prod(observation_space.shape)))

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return observations.mul_(2.0).flatten(1)


@pytest.mark.parametrize("shape", ["single", "batch"])
@pytest.mark.parametrize("algo,act_kind", [("PPO", "Box"), ("SAC", "Box"), ("DQN", "Discrete")])
def test_in_place_extractor_never_changes_the_callers_tensor(algo: str, act_kind: str, shape: str) -> None:
    env = SpaceEnv(observation_space("Box"), action_space(act_kind))
    extra = {"buffer_size": 16} if algo != "PPO" else {}
    policy_kwargs = {"net_arch": [16], "features_extractor_class": InPlaceExtractor}
    model = algorithm_class(algo)("MlpPolicy", env, policy_kwargs=policy_kwargs, device="cpu", seed=0, **extra)
    with sb3_tensorpatch.patched():
        assert plan_for(model.policy).copy_input
    obs = _box_batch(4) if shape == "batch" else _box_batch(1)[0]
    tensor = to_tensor(obs)
    before = tensor.clone()
    expected, _ = model.predict(obs.copy(), deterministic=True)
    with sb3_tensorpatch.patched():
        actual, _ = model.predict(tensor, deterministic=True)
        model.policy.predict(tensor, deterministic=True)
    assert torch.equal(tensor, before)
    _assert_same(expected, actual)


def test_forward_hook_that_works_in_place_sees_a_copy() -> None:
    model = build("PPO", "Box", "Box")
    policy = model.policy
    handle = policy.features_extractor.register_forward_pre_hook(lambda module, args: args[0].add_(1.0))
    try:
        tensor = to_tensor(_box_batch(3))
        before = tensor.clone()
        with sb3_tensorpatch.patched():
            assert plan_for(policy).copy_input
            model.predict(tensor, deterministic=True)
        assert torch.equal(tensor, before)
    finally:
        handle.remove()


@pytest.mark.parametrize("algo,obs_kind,act_kind", [("PPO", "Box", "Box"), ("SAC", "Dict", "Box"), ("DQN", "ImageLast", "Discrete")])
def test_sb3_own_networks_are_not_copied_for(algo: str, obs_kind: str, act_kind: str) -> None:
    # the common path stays copy-free: SB3's own modules never work in place
    with sb3_tensorpatch.patched():
        assert not plan_for(build(algo, obs_kind, act_kind).policy).copy_input
