"""Bad input: the route's own clear error is also an instance of the class SB3's NumPy path raises.

Each case runs the same bad input through SB3's path (NumPy) and the tensor route; the route's error
must be an instance of SB3's exception class, so ``except`` clauses written against SB3 keep working,
and must keep its own message. The patch stays as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pytest
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
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

import sb3_tensorpatch
from sb3_tensorpatch import errors
from sb3_tensorpatch.testing import to_tensor


@dataclass(frozen=True)
class Case:
    name: str
    target: Callable[[], Any]  # the model, policy or VecNormalize
    call: Callable[[Any, Callable[[Any], Any]], Any]  # (target, convert) -> call with converted input
    ours: type[Exception]
    match: str


def _dict_batch(size: int = 2) -> dict[str, np.ndarray]:
    return stack(sample_observations(observation_space("Dict"), size, seed=0))  # type: ignore[no-any-return]


def _box_batch(size: int = 2) -> np.ndarray:
    return stack(sample_observations(observation_space("Box"), size, seed=0))  # type: ignore[no-any-return]


def _dict_model() -> Any:
    return build("PPO", "Dict", "Discrete")


def _box_model() -> Any:
    return build("PPO", "Box", "Box")


def _contrib(algo: str, act_kind: str, policy: str) -> Callable[[], Any]:
    def make() -> Any:
        if algorithm_class(algo) is None:
            pytest.skip(f"{algo} is not in the installed sb3-contrib")
        return build(algo, "Box", act_kind, policy)

    return make


def _vecnormalize(kind: str) -> Callable[[], Any]:
    def make() -> Any:
        if kind == "Dict":
            space = spaces.Dict({"vec": observation_space("Box"), "other": observation_space("Box")})
            return VecNormalize(DummyVecEnv([lambda: SpaceEnv(space, action_space("Box"))]), norm_obs_keys=["vec"])
        return VecNormalize(DummyVecEnv([lambda: SpaceEnv(observation_space("Box"), action_space("Box"))]))

    return make


def _without(obs: dict[str, Any], key: str) -> dict[str, Any]:
    return {name: value for name, value in obs.items() if name != key}


CASES = [
    Case("dict-missing-key", _dict_model, lambda m, c: m.predict(c(_without(_dict_batch(), "vec"))),
         errors.DictKeyError, r"wrong keys \(missing: \['vec'\]"),
    Case("dict-extra-key", _dict_model, lambda m, c: m.predict(c({**_dict_batch(), "extra": np.zeros(2)})),
         errors.DictKeyError, r"unexpected: \['extra'\]"),
    Case("dict-keys-with-different-batch-sizes", _dict_model,
         lambda m, c: m.predict(c({**_dict_batch(), "vec": _dict_batch(3)["vec"]})),
         errors.SizeMismatchError, r"different batch sizes"),
    Case("dict-for-box-policy", _box_model, lambda m, c: m.predict(c({"obs": _box_batch()})),
         errors.ObservationTypeError, r"observation is a dict but the observation space is Box"),
    Case("array-for-dict-policy", _dict_model, lambda m, c: m.predict(c(_box_batch())),
         errors.DictExpectedError, r"pass a dict of tensors"),
    Case("maskable-wrong-mask-size", _contrib("MaskablePPO", "Discrete", "MlpPolicy"),
         lambda m, c: m.predict(c(_box_batch()), action_masks=c(np.ones(5, dtype=bool))),
         errors.SizeMismatchError, r"Unexpected action_masks shape \(5,\)"),
    Case("lstm-state-of-wrong-shape", _contrib("RecurrentPPO", "Box", "MlpLstmPolicy"),
         lambda m, c: m.predict(c(_box_batch()), state=c((np.zeros((1, 3, 8)), np.zeros((1, 3, 8))))),
         errors.SizeMismatchError, r"Unexpected LSTM state shape \(1, 3, 8\)"),
    Case("lstm-state-not-a-pair", _contrib("RecurrentPPO", "Box", "MlpLstmPolicy"),
         lambda m, c: m.predict(c(_box_batch()), state=c(np.zeros((1, 2, 8)))),
         errors.StatePairError, r"expected a tuple \(hidden, cell\)"),
    Case("episode-start-of-wrong-size", _contrib("RecurrentPPO", "Box", "MlpLstmPolicy"),
         lambda m, c: m.predict(c(_box_batch()), episode_start=c(np.zeros(3))),
         errors.SizeMismatchError, r"Unexpected episode_start shape \(3,\)"),
    Case("vecnormalize-array-for-dict", _vecnormalize("Dict"), lambda v, c: v.normalize_obs(c(_box_batch())),
         errors.ObservationTypeError, r"pass a dict of tensors"),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_error_is_also_sb3s_class(case: Case) -> None:
    target = case.target()
    with pytest.raises(Exception) as raised_by_sb3:  # any class: which one SB3 raises is what is learnt here
        case.call(target, lambda value: value)
    sb3_class = type(raised_by_sb3.value)
    assert sb3_class is not case.ours
    sb3_tensorpatch.enable()
    patched = sb3_tensorpatch.status().patched
    with pytest.raises(case.ours, match=case.match) as raised:
        case.call(target, to_tensor)
    assert isinstance(raised.value, sb3_class), f"SB3 raises {sb3_class.__name__}, the route {type(raised.value).__mro__}"
    assert sb3_tensorpatch.status().patched == patched


def test_key_error_message_is_not_quoted() -> None:
    # KeyError's str() quotes its argument as a key; ours reads as a sentence
    error = errors.DictKeyError("Error: wrong keys")
    assert str(error) == "Error: wrong keys"
