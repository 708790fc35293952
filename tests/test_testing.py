"""``sb3_tensorpatch.testing.assert_predict_parity``: the helper users run on their own models.

It must pass on SB3's policies and on custom ones, deterministic and stochastic, for single and
batched, array and dict observations; and it must catch a broken route with a message that names
the problem (values, dtype, shape or device).
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from helpers import SpaceEnv, action_space, build, observation_space, sample_observations, sb3_contrib, spaces, stack
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.preprocessing import get_flattened_obs_dim
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

import sb3_tensorpatch
from sb3_tensorpatch.actions import ActionPlan
from sb3_tensorpatch.testing import ParityError, assert_predict_parity, to_tensor

CASES = [
    ("PPO", "Box", "Box"),
    ("PPO", "Discrete", "Discrete"),
    ("PPO", "ImageLast", "MultiDiscrete"),
    ("A2C", "MultiBinary", "MultiBinary"),
    ("SAC", "Box", "Box"),
    ("TD3", "Box", "Box"),
    ("DQN", "Box", "Discrete"),
]


@pytest.fixture(autouse=True)
def _state_unchanged():
    """The helper patches for its own tensor calls only: the state around it never changes."""
    before = sb3_tensorpatch.is_enabled()
    yield
    assert sb3_tensorpatch.is_enabled() == before


def _observations(model: Any, count: int = 6, seed: int = 0) -> list[Any]:
    space = model.get_env().observation_space  # channel-last for images, as users see them
    return sample_observations(space, count, seed)


# -- SB3's own policies -----------------------------------------------------------------------


@pytest.mark.parametrize(("algo", "obs_kind", "act_kind"), CASES, ids=["-".join(case) for case in CASES])
def test_passes_on_sb3_policies(algo: str, obs_kind: str, act_kind: str) -> None:
    model = build(algo, obs_kind, act_kind)
    observations = _observations(model)
    assert_predict_parity(model, observations)  # one at a time, unbatched
    assert_predict_parity(model, stack(observations))  # one batch
    assert_predict_parity(model.policy, stack(observations))  # the policy's predict too


@pytest.mark.parametrize(("algo", "act_kind"), [("PPO", "Box"), ("PPO", "MultiDiscrete"), ("SAC", "Box")])
def test_stochastic_mode(algo: str, act_kind: str) -> None:
    """Stochastic: the samples differ, so shapes, dtypes, devices and bounds are compared."""
    model = build(algo, "Box", act_kind)
    observations = _observations(model, count=8)
    assert_predict_parity(model, observations, deterministic=False)
    assert_predict_parity(model, stack(observations), deterministic=False)


def test_dict_observations() -> None:
    model = build("PPO", "Dict", "Box")
    observations = _observations(model, count=4)
    assert isinstance(observations[0], dict)
    assert_predict_parity(model, observations)  # unbatched dicts, one by one
    assert_predict_parity(model, stack(observations))  # a dict of batched arrays
    assert_predict_parity(model, stack(observations), deterministic=False)


def test_dqn_exploration_is_stochastic_mode() -> None:
    """DQN's epsilon-greedy branch draws random actions: only the stochastic checks apply."""
    model = build("DQN", "Box", "Discrete", exploration_initial_eps=1.0, exploration_final_eps=1.0)
    model.exploration_rate = 1.0
    assert_predict_parity(model, stack(_observations(model, count=16)), deterministic=False)


@pytest.mark.skipif(sb3_contrib is None, reason="sb3-contrib is not installed")
def test_contrib_state_and_masks() -> None:
    recurrent = build("RecurrentPPO", "Box", "Box", policy="MlpLstmPolicy")
    observations = stack(_observations(recurrent, count=3))
    assert_predict_parity(recurrent, observations)  # states compared too
    states = tuple(
        np.full((recurrent.policy.lstm_hidden_state_shape[0], 3, 8), 0.5, dtype=np.float32) for _ in range(2)
    )
    assert_predict_parity(recurrent, observations, state=states, episode_start=np.array([1.0, 0.0, 0.0]))

    maskable = build("MaskablePPO", "Box", "Discrete")
    masks = np.array([[True, False, True, False]] * 3)
    assert_predict_parity(maskable, stack(_observations(maskable, count=3)), action_masks=masks)


# -- a custom policy with its own features extractor ------------------------------------------


class TwoTowerExtractor(BaseFeaturesExtractor):
    """A user's features extractor: separate towers for the position and the velocity halves."""

    def __init__(self, observation_space: Any, features_dim: int = 12) -> None:
        super().__init__(observation_space, features_dim)
        half = observation_space.shape[0] // 2
        self.half = half
        self.position = torch.nn.Sequential(torch.nn.Linear(half, features_dim // 2), torch.nn.Tanh())
        self.velocity = torch.nn.Sequential(
            torch.nn.Linear(observation_space.shape[0] - half, features_dim // 2), torch.nn.ReLU()
        )

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            (self.position(observations[:, : self.half]), self.velocity(observations[:, self.half :])), dim=1
        )


class DictSumExtractor(BaseFeaturesExtractor):
    """A features extractor for a Dict space: one linear layer per (preprocessed) key, summed."""

    def __init__(self, observation_space: Any, features_dim: int = 8) -> None:
        super().__init__(observation_space, features_dim)
        self.layers = torch.nn.ModuleDict(
            {
                key: torch.nn.Linear(get_flattened_obs_dim(space), features_dim)
                for key, space in observation_space.spaces.items()
            }
        )

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(layer(observations[key].flatten(1).float()) for key, layer in self.layers.items())  # type: ignore[return-value]


def _custom(algo: type, obs_space: Any, act_space: Any, policy: str, extractor: type, **kwargs: Any) -> Any:
    env = SpaceEnv(obs_space, act_space)
    policy_kwargs = {"features_extractor_class": extractor, "net_arch": [16]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return algo(policy, env, policy_kwargs=policy_kwargs, device="cpu", seed=0, **kwargs)


@pytest.fixture(scope="module")
def custom_ppo() -> Any:
    box = spaces.Box(low=-5.0, high=5.0, shape=(6,), dtype=np.float32)
    return _custom(PPO, box, action_space("Box"), "MlpPolicy", TwoTowerExtractor)


def test_custom_features_extractor(custom_ppo: Any) -> None:
    assert isinstance(custom_ppo.policy.features_extractor, TwoTowerExtractor)
    observations = _observations(custom_ppo, count=6)
    assert_predict_parity(custom_ppo, observations)
    assert_predict_parity(custom_ppo, stack(observations))
    assert_predict_parity(custom_ppo, stack(observations), deterministic=False)


def test_custom_extractor_squashed_output() -> None:
    box = spaces.Box(low=-5.0, high=5.0, shape=(6,), dtype=np.float32)
    model = _custom(SAC, box, action_space("Box"), "MlpPolicy", TwoTowerExtractor, buffer_size=16)
    assert_predict_parity(model, stack(_observations(model, count=5)))


def test_custom_dict_extractor() -> None:
    model = _custom(PPO, observation_space("Dict"), action_space("Discrete"), "MultiInputPolicy", DictSumExtractor)
    observations = _observations(model, count=4)
    assert_predict_parity(model, observations)
    assert_predict_parity(model, stack(observations))


# -- a deliberately broken route is caught ------------------------------------------------------


_finish = ActionPlan.finish


def _break(monkeypatch: pytest.MonkeyPatch, change: Any) -> None:
    def broken(self: ActionPlan, actions: torch.Tensor, vectorized: bool, reshape: bool = True) -> torch.Tensor:
        return change(self, actions, vectorized, reshape)

    monkeypatch.setattr(ActionPlan, "finish", broken)


def _no_clip(self: ActionPlan, actions: torch.Tensor, vectorized: bool, reshape: bool) -> torch.Tensor:
    """The route without its clipping / unscaling: what ``policy._predict`` gives."""
    if reshape:
        actions = actions.reshape(self.batched_shape)
    return actions if vectorized else actions.squeeze(0)


def _message(excinfo: pytest.ExceptionInfo[ParityError]) -> str:
    return str(excinfo.value)


@pytest.mark.parametrize("algo", ["PPO", "SAC"])
def test_catches_missing_clip_or_unscale(monkeypatch: pytest.MonkeyPatch, algo: str) -> None:
    model = build(algo, "Box", "Box")
    observations = stack(_observations(model, count=8))
    assert_predict_parity(model, observations)  # sound before
    _break(monkeypatch, _no_clip)
    with pytest.raises(ParityError) as excinfo:
        assert_predict_parity(model, observations)
    message = _message(excinfo)
    assert message.startswith(f"predict parity failed for {algo}:")
    # PPO's unclipped actions differ where they lie outside the bounds, SAC's everywhere
    assert re.search(r"observation #0 actions: values differ in \d+ of 16 element\(s\) \(max abs difference", message)
    assert "not bit-identical)" in message
    assert "NumPy path:" in message and "tensor route:" in message
    assert "dtype" not in message and "shape" not in message and "device" not in message


def _one_ulp_in(self: ActionPlan, actions: torch.Tensor, vectorized: bool, reshape: bool) -> torch.Tensor:
    """The route, off by one unit in the last place towards zero (so clipped actions stay in
    bounds): far inside any tolerance."""
    actions = _finish(self, actions, vectorized, reshape)
    return torch.nextafter(actions, torch.zeros_like(actions))


@pytest.mark.parametrize("algo", ["PPO", "SAC"])
def test_values_must_agree_bit_for_bit_by_default(monkeypatch: pytest.MonkeyPatch, algo: str) -> None:
    model = build(algo, "Box", "Box")
    observations = stack(_observations(model, count=4))
    _break(monkeypatch, _one_ulp_in)
    with pytest.raises(ParityError) as excinfo:
        assert_predict_parity(model, observations)
    message = _message(excinfo)
    # every action but those clipped to the bound 0.0 (where nextafter towards zero is a no-op)
    assert re.search(r"observation #0 actions: values differ in [1-8] of 8 element\(s\)", message)
    assert "not bit-identical)" in message
    # a tolerance stays available for users who ask for one
    assert_predict_parity(model, observations, atol=1e-5)
    with pytest.raises(ParityError, match=re.escape("> 1e-12)")):
        assert_predict_parity(model, observations, atol=1e-12)


def test_negative_zero_is_not_zero_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """-0.0 and 0.0 are the same number but not the same bits (``1 / x`` tells them apart)."""
    from helpers import saturate

    model = saturate(build("PPO", "Box", "Box"), 25.0)  # the second action is clipped to its low, 0.0
    observations = stack(_observations(model, count=3))
    expected, _ = model.predict(observations, deterministic=True)
    assert np.all(expected[:, 1] == 0.0) and not np.any(np.signbit(expected[:, 1]))
    assert_predict_parity(model, observations)

    def negative_zeros(self: ActionPlan, actions: torch.Tensor, vectorized: bool, reshape: bool) -> torch.Tensor:
        actions = _finish(self, actions, vectorized, reshape)
        return torch.where(actions == 0, torch.tensor(-0.0), actions)

    _break(monkeypatch, negative_zeros)
    with pytest.raises(ParityError, match=r"values differ in 3 of 6 element\(s\) \(max abs difference 0, not bit-identical\)"):
        assert_predict_parity(model, observations)
    assert_predict_parity(model, observations, atol=0.0)  # equal as numbers


def test_nan_matches_nan() -> None:
    """NaN observations give NaN actions on both paths: a match, whatever the NaN's bits (TD3: no
    distribution, whose argument validation would refuse NaN on SB3's path)."""
    model = build("TD3", "Box", "Box")
    observations = stack(_observations(model, count=3))
    observations[1] = np.nan
    expected, _ = model.predict(observations, deterministic=True)
    assert np.isnan(expected[1]).all() and not np.isnan(expected[0]).any()
    assert_predict_parity(model, observations)


def test_catches_unclipped_stochastic_actions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stochastic samples cannot be compared by value: out-of-bounds actions are caught instead."""
    model = build("PPO", "Box", "Box")
    observations = stack(_observations(model, count=64))
    _break(monkeypatch, _no_clip)
    with pytest.raises(ParityError, match=r"outside the action space Box\("):
        assert_predict_parity(model, observations, deterministic=False)


def test_catches_wrong_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    model = build("PPO", "Box", "Discrete")
    _break(
        monkeypatch,
        lambda self, actions, vectorized, reshape: _finish(self, actions, vectorized, reshape).to(torch.int32),
    )
    with pytest.raises(ParityError) as excinfo:
        assert_predict_parity(model, _observations(model, count=2))
    message = _message(excinfo)
    assert "observation #0 actions: dtype torch.int32, NumPy path gives int64" in message
    assert "observation #1 actions: dtype torch.int32, NumPy path gives int64" in message


def test_catches_wrong_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    """A route that forgets to drop the batch dimension for a single observation."""
    model = build("PPO", "Box", "Box")
    _break(monkeypatch, lambda self, actions, vectorized, reshape: _finish(self, actions, True, reshape))
    with pytest.raises(ParityError, match=re.escape("observation #0 actions: shape (1, 2), NumPy path gives (2,)")):
        assert_predict_parity(model, _observations(model, count=1))
    assert_predict_parity(model, stack(_observations(model, count=3)))  # batched input is unaffected


def test_catches_wrong_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """Actions that end up elsewhere than the input's device ("meta" stands in for another device)."""
    model = build("PPO", "Box", "Box")
    _break(
        monkeypatch, lambda self, actions, vectorized, reshape: _finish(self, actions, vectorized, reshape).to("meta")
    )
    with pytest.raises(ParityError, match="observation #0 actions: on device meta, expected the input's device cpu"):
        assert_predict_parity(model, stack(_observations(model, count=2)))


def test_catches_numpy_instead_of_tensor(monkeypatch: pytest.MonkeyPatch) -> None:
    model = build("PPO", "Box", "Discrete")
    _break(monkeypatch, lambda self, actions, vectorized, reshape: _finish(self, actions, vectorized, reshape).numpy())
    with pytest.raises(ParityError, match=re.escape("tensor route returned ndarray, expected a torch.Tensor")):
        assert_predict_parity(model, _observations(model, count=1))


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_catches_unpatched_predict(monkeypatch: pytest.MonkeyPatch) -> None:
    """If the patch did not route tensors at all, SB3's NumPy path would return arrays."""
    model = build("PPO", "Box", "Box")
    monkeypatch.setattr(sb3_tensorpatch, "patched", lambda: _NullScope())
    with pytest.raises(ParityError, match=re.escape("expected a torch.Tensor")):
        assert_predict_parity(model, stack(_observations(model, count=2)))


class _NullScope:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def test_lists_every_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    model = build("PPO", "Box", "Box")
    _break(monkeypatch, lambda self, actions, vectorized, reshape: _finish(self, actions, True, reshape).double())
    with pytest.raises(ParityError) as excinfo:
        assert_predict_parity(model, _observations(model, count=3))
    lines = _message(excinfo).splitlines()[1:]
    assert len(lines) == 6, lines  # shape and dtype, for each of the three observations
    assert all(line.startswith("  observation #") for line in lines)


def test_is_an_assertion_error() -> None:
    assert issubclass(ParityError, AssertionError)  # pytest shows it as a failed assertion


def test_to_tensor() -> None:
    converted = to_tensor({"a": np.zeros((2, 3), dtype=np.float32), "b": np.int64(4)})
    assert isinstance(converted["a"], torch.Tensor) and converted["a"].dtype == torch.float32
    assert converted["b"].dtype == torch.int64 and converted["b"].shape == ()
    assert to_tensor(None) is None
    pair = to_tensor((np.ones(2), torch.zeros(1)))
    assert isinstance(pair, tuple) and all(isinstance(item, torch.Tensor) for item in pair)
