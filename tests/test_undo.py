"""Undo is exact, in the style of ddtrace's ``PatchTestCase``: after ``disable()`` each class's
``__dict__`` holds the very object it held before ``enable()``, however often and in whatever order
``enable()`` and ``disable()`` are called, whichever of SB3 and this package is imported first; and what
user subclasses and bound methods taken before or during the patch then call.

Every test starts and ends with the patch disabled.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from helpers import (
    BASE_PREDICT,
    assert_originals,
    assert_patched,
    snapshot,
    takes_tensor_route,
)
from stable_baselines3 import DQN, PPO
from stable_baselines3.common.policies import ActorCriticPolicy

import sb3_tensorpatch
from sb3_tensorpatch import wrappers

_POLICY_KWARGS = {"net_arch": [16]}

# SB3's own numpy path turns a CPU tensor into an array with np.array(), which numpy 2 warns about
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


# -- identity ---------------------------------------------------------------------------------


def test_enable_then_disable_restores_identity(originals: dict[str, Any]) -> None:
    assert_originals(originals)
    sb3_tensorpatch.enable()
    assert sb3_tensorpatch.is_enabled()
    assert_patched(originals)
    sb3_tensorpatch.disable()
    assert not sb3_tensorpatch.is_enabled()
    assert_originals(originals)


def test_disable_without_enable(originals: dict[str, Any]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = sb3_tensorpatch.disable()
    assert result.enabled is False
    assert result.patched == ()
    assert_originals(originals)


def test_double_enable_does_not_double_wrap(originals: dict[str, Any]) -> None:
    sb3_tensorpatch.enable()
    first = snapshot()
    sb3_tensorpatch.enable()
    second = snapshot()
    for target in originals:
        assert second[target] is first[target], f"{target} was re-wrapped by the second enable()"
    assert_patched(originals)  # __wrapped__ is the original function, not another wrapper
    sb3_tensorpatch.disable()
    assert_originals(originals)


def test_double_disable(originals: dict[str, Any]) -> None:
    sb3_tensorpatch.enable()
    sb3_tensorpatch.disable()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sb3_tensorpatch.disable().enabled is False
    assert_originals(originals)


def test_enable_disable_enable_again(originals: dict[str, Any], ppo: Any, ppo_obs: np.ndarray) -> None:
    for _ in range(3):
        sb3_tensorpatch.enable()
        assert_patched(originals)
        assert takes_tensor_route(ppo, ppo_obs)
        sb3_tensorpatch.disable()
        assert_originals(originals)
        assert not takes_tensor_route(ppo, ppo_obs)


# -- subclasses and bound methods -------------------------------------------------------------


def test_user_subclass_calling_super_routes_once(ppo_obs: np.ndarray) -> None:
    counts = {"predict": 0, "_predict": 0}

    class CountingPolicy(ActorCriticPolicy):
        def predict(self, observation: Any, state: Any = None, episode_start: Any = None, deterministic: bool = False) -> Any:
            counts["predict"] += 1
            return super().predict(observation, state, episode_start, deterministic)

        def _predict(self, observation: Any, deterministic: bool = False) -> Any:
            counts["_predict"] += 1
            return super()._predict(observation, deterministic)

    model = PPO(CountingPolicy, "CartPole-v1", device="cpu", policy_kwargs=_POLICY_KWARGS, seed=0)
    expected, _ = model.predict(ppo_obs, deterministic=True)
    assert counts == {"predict": 1, "_predict": 1}
    sb3_tensorpatch.enable()
    actions, _ = model.predict(torch.as_tensor(ppo_obs), deterministic=True)
    assert isinstance(actions, torch.Tensor)
    assert np.array_equal(actions.numpy(), expected)
    assert counts == {"predict": 2, "_predict": 2}  # routed once: one _predict for one predict


def test_dqn_calls_a_policy_subclass_override(originals: dict[str, Any]) -> None:
    from stable_baselines3.dqn.policies import DQNPolicy

    calls: list[int] = []

    class CountingDQNPolicy(DQNPolicy):
        def predict(self, observation: Any, state: Any = None, episode_start: Any = None, deterministic: bool = False) -> Any:
            calls.append(1)
            return super().predict(observation, state, episode_start, deterministic)

    model = DQN(CountingDQNPolicy, "CartPole-v1", device="cpu", policy_kwargs=_POLICY_KWARGS, seed=0)
    observation = np.zeros(4, dtype=np.float32)
    expected, _ = model.predict(observation, deterministic=True)
    sb3_tensorpatch.enable()
    assert wrappers.tensor_route(CountingDQNPolicy, "predict") is None
    actions, _ = model.predict(torch.as_tensor(observation), deterministic=True)
    assert isinstance(actions, torch.Tensor) and actions.shape == ()
    assert int(actions) == int(expected)
    assert calls == [1, 1]


def test_bound_method_taken_before_enable_keeps_the_original(
    originals: dict[str, Any], ppo: Any, ppo_obs: np.ndarray
) -> None:
    # enable() replaces the class attribute; a bound method made from the plain function earlier
    # holds that function itself, so it keeps calling SB3's original (numpy out).
    saved = ppo.policy.predict
    assert saved.__func__ is originals[BASE_PREDICT]
    sb3_tensorpatch.enable()
    actions, _ = saved(torch.as_tensor(ppo_obs), deterministic=True)
    assert not isinstance(actions, torch.Tensor)
    assert isinstance(actions, np.ndarray)
    fresh, _ = ppo.policy.predict(torch.as_tensor(ppo_obs), deterministic=True)
    assert isinstance(fresh, torch.Tensor)
    assert np.array_equal(fresh.numpy(), actions)


def test_bound_wrapper_taken_while_enabled_is_inert_after_disable(ppo: Any, ppo_obs: np.ndarray) -> None:
    sb3_tensorpatch.enable()
    saved = ppo.policy.predict
    actions, _ = saved(torch.as_tensor(ppo_obs), deterministic=True)
    assert isinstance(actions, torch.Tensor)
    sb3_tensorpatch.disable()
    actions, _ = saved(torch.as_tensor(ppo_obs), deterministic=True)
    assert isinstance(actions, np.ndarray)  # the stale wrapper passes straight to SB3's original


# -- import order (fresh interpreters) --------------------------------------------------------


_SUBPROCESS_CHECK = """
import numpy as np
import torch
from sb3_tensorpatch.wrappers import is_wrapper
from stable_baselines3 import PPO
from stable_baselines3.common.policies import BasePolicy
from sb3_contrib import MaskablePPO
from sb3_contrib.common.envs import InvalidActionEnvDiscrete
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy

assert sb3_tensorpatch.is_enabled()
assert is_wrapper(BasePolicy.__dict__["predict"])
assert is_wrapper(MaskableActorCriticPolicy.__dict__["predict"])

model = PPO("MlpPolicy", "CartPole-v1", device="cpu", policy_kwargs={"net_arch": [16]}, seed=0)
obs = np.random.default_rng(0).uniform(-0.2, 0.2, size=(3, 4)).astype(np.float32)
expected, _ = model.predict(obs, deterministic=True)
actions, _ = model.predict(torch.as_tensor(obs), deterministic=True)
assert isinstance(actions, torch.Tensor), type(actions)
assert np.array_equal(actions.numpy(), expected), (actions, expected)

env = InvalidActionEnvDiscrete(dim=5, n_invalid_actions=2)
masked = MaskablePPO("MlpPolicy", env, device="cpu", policy_kwargs={"net_arch": [16]}, seed=0)
reset = env.reset()
observation = reset[0] if isinstance(reset, tuple) else reset  # gymnasium or gym 0.21
masks = env.action_masks()
expected, _ = masked.predict(observation, action_masks=masks, deterministic=True)
actions, _ = masked.predict(
    torch.as_tensor(observation), action_masks=torch.as_tensor(masks), deterministic=True
)
assert isinstance(actions, torch.Tensor), type(actions)
assert np.array_equal(actions.numpy(), expected), (actions, expected)
assert bool(masks[int(actions)]), "a masked-out action was chosen"
print("SUBPROCESS-OK")
"""


_ENABLE_FIRST = """
import sys
import sb3_tensorpatch
assert "stable_baselines3" not in sys.modules and "sb3_contrib" not in sys.modules
assert sb3_tensorpatch.enable().enabled
"""


_IMPORT_FIRST = """
import stable_baselines3, sb3_contrib
import sb3_tensorpatch
assert not sb3_tensorpatch.is_enabled()
assert sb3_tensorpatch.enable().enabled
"""


@pytest.mark.parametrize("prologue", [_ENABLE_FIRST, _IMPORT_FIRST], ids=["enable-before-import", "import-before-enable"])
def test_import_order_in_fresh_interpreter(prologue: str, tmp_path: Any) -> None:
    code = textwrap.dedent(prologue) + textwrap.dedent(_SUBPROCESS_CHECK)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "SUBPROCESS-OK" in result.stdout
