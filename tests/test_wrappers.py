"""Our wrappers among others': a foreign wrapper set on top of ours or underneath it (by hand, with
``functools.wraps`` or with wrapt, as ddtrace or OpenTelemetry do) keeps working, and ``disable()``
leaves it in place; our wrappers look like the originals and take exactly their parameters.

Foreign wrappers are set with ``monkeypatch.setattr``: pytest puts back what the class held, also when
a test fails.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import numpy as np
import pytest
import torch
import wrapt
from helpers import (
    BASE_PREDICT,
    MISSING,
    VALIDATE,
    assert_originals,
    patch_targets,
    quiet_targets,
    takes_tensor_route,
)
from stable_baselines3 import DQN
from stable_baselines3.common.policies import BasePolicy

import sb3_tensorpatch
from sb3_tensorpatch import wrappers

_POLICY_KWARGS = {"net_arch": [16]}

# SB3's own numpy path turns a CPU tensor into an array with np.array(), which numpy 2 warns about
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


# -- foreign wrappers -------------------------------------------------------------------------


def test_foreign_wrapper_on_top_of_ours_is_left_in_place(
    originals: dict[str, Any], ppo: Any, ppo_obs: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pytest undoes setattr calls in reverse order: pinning SB3's original (already in place) before
    # enable() makes the undo end on it, not on our wrapper that the foreign one replaced
    monkeypatch.setattr(BasePolicy, "predict", originals[BASE_PREDICT])
    sb3_tensorpatch.enable()
    current = BasePolicy.predict
    foreign_calls: list[int] = []

    def foreign(self: Any, *args: Any, **kwargs: Any) -> Any:
        foreign_calls.append(1)
        return current(self, *args, **kwargs)

    monkeypatch.setattr(BasePolicy, "predict", foreign)
    assert takes_tensor_route(ppo, ppo_obs)  # foreign -> ours -> tensor route
    assert foreign_calls == [1]
    with pytest.warns(UserWarning, match="wrapped again"):
        sb3_tensorpatch.disable()
    assert not sb3_tensorpatch.is_enabled()
    assert BasePolicy.__dict__["predict"] is foreign
    for target, (owner, name) in patch_targets().items():
        if target != BASE_PREDICT:
            assert owner.__dict__.get(name, MISSING) is originals[target], target
    # ours, under the foreign wrapper, is inert: a tensor reaches SB3's original code
    try:
        actions, _ = ppo.predict(torch.as_tensor(ppo_obs), deterministic=True)
    except Exception:
        pass
    else:
        assert not isinstance(actions, torch.Tensor)
        assert isinstance(actions, np.ndarray)
    assert len(foreign_calls) == 2
    monkeypatch.undo()
    assert_originals(originals)


def test_ours_on_top_of_a_foreign_wrapper(
    originals: dict[str, Any], ppo: Any, ppo_obs: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = originals[BASE_PREDICT]
    foreign_calls: list[int] = []

    @functools.wraps(original)
    def foreign(self: Any, *args: Any, **kwargs: Any) -> Any:
        foreign_calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(BasePolicy, "predict", foreign)
    sb3_tensorpatch.enable()
    entry = BasePolicy.__dict__["predict"]
    assert wrappers.is_wrapper(entry)
    assert entry.__wrapped__ is foreign
    actions, _ = ppo.predict(ppo_obs, deterministic=True)  # numpy goes through the foreign wrapper
    assert isinstance(actions, np.ndarray)
    assert foreign_calls == [1]
    assert takes_tensor_route(ppo, ppo_obs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sb3_tensorpatch.disable()
    assert BasePolicy.__dict__["predict"] is foreign
    monkeypatch.undo()
    assert_originals(originals)


def _recording_wrapper(seen: list[tuple[Any, tuple[Any, ...]]]) -> Any:
    """A wrapt wrapper function that records the instance and arguments of each call."""

    def foreign(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        seen.append((instance, args))
        return wrapped(*args, **kwargs)

    return foreign


def test_wrapt_wrapper_on_top_of_ours(
    originals: dict[str, Any], ppo: Any, ppo_obs: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    # what ddtrace or OpenTelemetry would do after our enable(): wrap the class attribute with wrapt
    seen: list[tuple[Any, tuple[Any, ...]]] = []
    foreign = _recording_wrapper(seen)
    # pytest undoes setattr calls in reverse order: pinning SB3's original (already in place) before
    # enable() makes the undo end on it, not on our wrapper that the foreign one replaced
    monkeypatch.setattr(BasePolicy, "predict", originals[BASE_PREDICT])
    sb3_tensorpatch.enable()
    # what wrapt.wrap_function_wrapper(BasePolicy, "predict", foreign) sets: a FunctionWrapper around
    # the class's own __dict__ entry
    monkeypatch.setattr(BasePolicy, "predict", wrapt.FunctionWrapper(BasePolicy.__dict__["predict"], foreign))
    assert takes_tensor_route(ppo, ppo_obs)  # theirs -> ours -> tensor route
    assert seen[-1][0] is ppo.policy and isinstance(seen[-1][1][0], torch.Tensor)
    with pytest.warns(UserWarning, match="wrapped again"):
        sb3_tensorpatch.disable()
    assert isinstance(BasePolicy.__dict__["predict"], wrapt.FunctionWrapper)
    assert not takes_tensor_route(ppo, ppo_obs)  # ours, inside theirs, now passes everything to SB3's original
    assert len(seen) == 2
    monkeypatch.undo()
    assert_originals(originals)


def test_ours_on_top_of_a_wrapt_wrapper_binds_it(
    originals: dict[str, Any], ppo: Any, ppo_obs: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    # theirs was there before enable(): numpy calls reach it bound to the instance, as before
    seen: list[tuple[Any, tuple[Any, ...]]] = []
    foreign = _recording_wrapper(seen)
    # what wrapt.wrap_function_wrapper(BasePolicy, "predict", foreign) sets
    monkeypatch.setattr(BasePolicy, "predict", wrapt.FunctionWrapper(originals[BASE_PREDICT], foreign))
    theirs = BasePolicy.__dict__["predict"]
    expected, _ = ppo.predict(ppo_obs, deterministic=True)
    sb3_tensorpatch.enable()
    assert BasePolicy.__dict__["predict"].__wrapped__ is theirs
    actions, _ = ppo.predict(ppo_obs, deterministic=True)
    assert isinstance(actions, np.ndarray) and np.array_equal(actions, expected)
    assert seen[-1][0] is ppo.policy and seen[-1][1][0] is ppo_obs  # instance bound, args without self
    assert takes_tensor_route(ppo, ppo_obs)
    sb3_tensorpatch.disable()
    assert BasePolicy.__dict__["predict"] is theirs
    monkeypatch.undo()
    assert_originals(originals)


def test_dqn_goes_through_a_foreign_wrapper_of_the_policy(
    originals: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # DQN.predict's route calls the policy's tensor route directly only while nobody wrapped it
    model = DQN("MlpPolicy", "CartPole-v1", device="cpu", policy_kwargs=_POLICY_KWARGS, seed=0)
    observation = torch.zeros(4)
    sb3_tensorpatch.enable()
    assert wrappers.tensor_route(type(model.policy), "predict") is not None
    current = BasePolicy.predict
    calls: list[int] = []

    def foreign(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return current(self, *args, **kwargs)

    monkeypatch.setattr(BasePolicy, "predict", foreign)
    assert wrappers.tensor_route(type(model.policy), "predict") is None
    actions, _ = model.predict(observation, deterministic=True)
    assert isinstance(actions, torch.Tensor)
    assert calls == [1]
    monkeypatch.undo()  # ours again, as before the foreign wrapper
    sb3_tensorpatch.disable()
    assert_originals(originals)


def test_foreign_wrapper_with_another_signature_is_refused(
    originals: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    original = originals[BASE_PREDICT]

    def foreign(self: Any, *args: Any, **kwargs: Any) -> Any:
        return original(self, *args, **kwargs)

    monkeypatch.setattr(BasePolicy, "predict", foreign)
    with pytest.raises(sb3_tensorpatch.UnsupportedVersionError, match="parameters"):
        sb3_tensorpatch.enable()
    assert not sb3_tensorpatch.is_enabled()
    assert BasePolicy.__dict__["predict"] is foreign
    for target, (owner, name) in patch_targets().items():
        if target != BASE_PREDICT:
            assert owner.__dict__.get(name, MISSING) is originals[target], target
    monkeypatch.undo()
    assert_originals(originals)


# -- what our wrappers look like --------------------------------------------------------------


def test_wrappers_look_like_the_originals(originals: dict[str, Any]) -> None:
    import inspect
    import pickle

    sb3_tensorpatch.enable()
    for target, (owner, name) in patch_targets().items():
        if target == VALIDATE or target in quiet_targets():  # no wrapper there
            continue
        entry = owner.__dict__[name]
        original = originals[target]
        for attribute in ("__name__", "__qualname__", "__module__", "__doc__"):
            assert getattr(entry, attribute) == getattr(original, attribute), (target, attribute)
        assert inspect.signature(entry) == inspect.signature(original), target
        # functions pickle by reference: while patched the name resolves to the wrapper itself
        assert pickle.loads(pickle.dumps(entry)) is entry, target


def test_wrappers_take_exactly_the_originals_parameters(originals: dict[str, Any], ppo: Any, ppo_obs: np.ndarray) -> None:
    import inspect

    def message(call: Any) -> str:
        with pytest.raises(TypeError) as info:
            call()
        return str(info.value)

    bad_calls = [
        lambda: ppo.policy.predict(),
        lambda: ppo.policy.predict(ppo_obs, unknown=1),
        lambda: ppo.policy.predict(ppo_obs, None, None, True, "one too many"),
    ]
    expected = [message(call) for call in bad_calls]
    sb3_tensorpatch.enable()
    for target, (owner, name) in patch_targets().items():
        if target != VALIDATE and target not in quiet_targets():
            # the wrapper's own parameters (not only the ones inspect finds through __wrapped__)
            own = inspect.signature(owner.__dict__[name], follow_wrapped=False)
            assert own == inspect.signature(originals[target]), target
    assert [message(call) for call in bad_calls] == expected  # Python's own messages, as before


def test_wrapper_for_a_signature_it_cannot_restate(ppo: Any) -> None:
    # keyword-only parameters take the (*args, **kwargs) wrapper, which decides the same way
    calls: list[str] = []

    def original(self: Any, observation: Any, *, deterministic: bool = False) -> str:
        calls.append("original")
        return "numpy"

    def route(self: Any, observation: Any, *, deterministic: bool = False) -> str:
        calls.append("route")
        return "tensor"

    record = wrappers.Record(None, BasePolicy, "predict", original)
    wrapper = wrappers.make_wrapper(original, route, "observation", record)
    record.wrapper = wrapper
    assert wrapper.__code__.co_flags & 0x04 and wrapper.__code__.co_flags & 0x08  # *args and **kwargs
    assert wrapper(ppo.policy, np.zeros(4)) == "numpy"
    assert wrapper(ppo.policy, torch.zeros(4), deterministic=True) == "tensor"
    assert wrapper(ppo.policy, observation={"key": torch.zeros(4)}) == "tensor"
    record.active = False
    assert wrapper(ppo.policy, torch.zeros(4)) == "numpy"
    assert calls == ["original", "route", "route", "original"]


@pytest.mark.parametrize("name", ["_route", "isinstance"])
def test_wrapper_for_parameter_names_the_generated_code_uses(name: str) -> None:
    namespace: dict[str, Any] = {}
    exec(f"def original(self, observation, {name}=None):\n    return 'numpy'\n", namespace)
    record = wrappers.Record(None, BasePolicy, "predict", namespace["original"])
    wrapper = wrappers.make_wrapper(namespace["original"], lambda *args, **kwargs: "tensor", "observation", record)
    record.wrapper = wrapper
    assert wrapper.__code__.co_flags & 0x04  # the (*args, **kwargs) form
    assert wrapper(None, np.zeros(2), **{name: 1}) == "numpy"
    assert wrapper(None, torch.zeros(2), **{name: 1}) == "tensor"
