"""Patch lifecycle tests, in the style of ddtrace's ``PatchTestCase``.

Every test starts and ends with the patch disabled. The invariant checked throughout is the one the
contract calls "undo is exact": after ``disable()`` each class's ``__dict__`` holds the very object
it held before ``enable()``.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
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
    assert_patched,
    patch_targets,
    takes_tensor_route,
)
from stable_baselines3 import DQN
from stable_baselines3.common.policies import BasePolicy
from torch.distributions import Distribution

import sb3_tensorpatch
from sb3_tensorpatch import table, validation, wrappers
from sb3_tensorpatch.patcher import Patcher
from sb3_tensorpatch.table import ROWS, select_rows

_POLICY_KWARGS = {"net_arch": [16]}

# SB3's own numpy path turns a CPU tensor into an array with np.array(), which numpy 2 warns about
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


# -- foreign wrappers -------------------------------------------------------------------------


def test_foreign_wrapper_on_top_of_ours_is_left_in_place(
    originals: dict[str, Any], ppo: Any, ppo_obs: np.ndarray
) -> None:
    original = originals[BASE_PREDICT]
    sb3_tensorpatch.enable()
    current = BasePolicy.predict
    foreign_calls: list[int] = []

    def foreign(self: Any, *args: Any, **kwargs: Any) -> Any:
        foreign_calls.append(1)
        return current(self, *args, **kwargs)

    BasePolicy.predict = foreign  # type: ignore[method-assign]
    try:
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
    finally:
        BasePolicy.predict = original  # type: ignore[method-assign]
    assert_originals(originals)


def test_ours_on_top_of_a_foreign_wrapper(originals: dict[str, Any], ppo: Any, ppo_obs: np.ndarray) -> None:
    original = originals[BASE_PREDICT]
    foreign_calls: list[int] = []

    @functools.wraps(original)
    def foreign(self: Any, *args: Any, **kwargs: Any) -> Any:
        foreign_calls.append(1)
        return original(self, *args, **kwargs)

    BasePolicy.predict = foreign  # type: ignore[method-assign]
    try:
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
    finally:
        BasePolicy.predict = original  # type: ignore[method-assign]
    assert_originals(originals)


def _recording_wrapper(seen: list[tuple[Any, tuple[Any, ...]]]) -> Any:
    """A wrapt wrapper function that records the instance and arguments of each call."""

    def foreign(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        seen.append((instance, args))
        return wrapped(*args, **kwargs)

    return foreign


def test_wrapt_wrapper_on_top_of_ours(originals: dict[str, Any], ppo: Any, ppo_obs: np.ndarray) -> None:
    # what ddtrace or OpenTelemetry would do after our enable(): wrap the class attribute with wrapt
    seen: list[tuple[Any, tuple[Any, ...]]] = []
    foreign = _recording_wrapper(seen)
    sb3_tensorpatch.enable()
    wrapt.wrap_function_wrapper(BasePolicy, "predict", foreign)
    try:
        assert takes_tensor_route(ppo, ppo_obs)  # theirs -> ours -> tensor route
        assert seen[-1][0] is ppo.policy and isinstance(seen[-1][1][0], torch.Tensor)
        with pytest.warns(UserWarning, match="wrapped again"):
            sb3_tensorpatch.disable()
        assert isinstance(BasePolicy.__dict__["predict"], wrapt.FunctionWrapper)
        assert not takes_tensor_route(ppo, ppo_obs)  # ours, inside theirs, now passes everything to SB3's original
        assert len(seen) == 2
    finally:
        BasePolicy.predict = originals[BASE_PREDICT]  # type: ignore[method-assign]
    assert_originals(originals)


def test_ours_on_top_of_a_wrapt_wrapper_binds_it(originals: dict[str, Any], ppo: Any, ppo_obs: np.ndarray) -> None:
    # theirs was there before enable(): numpy calls reach it bound to the instance, as before
    seen: list[tuple[Any, tuple[Any, ...]]] = []
    foreign = _recording_wrapper(seen)
    wrapt.wrap_function_wrapper(BasePolicy, "predict", foreign)
    theirs = BasePolicy.__dict__["predict"]
    try:
        expected, _ = ppo.predict(ppo_obs, deterministic=True)
        sb3_tensorpatch.enable()
        assert BasePolicy.__dict__["predict"].__wrapped__ is theirs
        actions, _ = ppo.predict(ppo_obs, deterministic=True)
        assert isinstance(actions, np.ndarray) and np.array_equal(actions, expected)
        assert seen[-1][0] is ppo.policy and seen[-1][1][0] is ppo_obs  # instance bound, args without self
        assert takes_tensor_route(ppo, ppo_obs)
        sb3_tensorpatch.disable()
        assert BasePolicy.__dict__["predict"] is theirs
    finally:
        BasePolicy.predict = originals[BASE_PREDICT]  # type: ignore[method-assign]
    assert_originals(originals)


def test_dqn_goes_through_a_foreign_wrapper_of_the_policy(originals: dict[str, Any]) -> None:
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

    BasePolicy.predict = foreign  # type: ignore[method-assign]
    try:
        assert wrappers.tensor_route(type(model.policy), "predict") is None
        actions, _ = model.predict(observation, deterministic=True)
        assert isinstance(actions, torch.Tensor)
        assert calls == [1]
    finally:
        BasePolicy.predict = current  # type: ignore[method-assign]
    sb3_tensorpatch.disable()
    assert_originals(originals)


def test_wrappers_look_like_the_originals(originals: dict[str, Any]) -> None:
    import inspect
    import pickle

    sb3_tensorpatch.enable()
    for target, (owner, name) in patch_targets().items():
        if target == VALIDATE:
            continue
        entry = owner.__dict__[name]
        original = originals[target]
        for attribute in ("__name__", "__qualname__", "__module__", "__doc__"):
            assert getattr(entry, attribute) == getattr(original, attribute), (target, attribute)
        assert inspect.signature(entry) == inspect.signature(original), target
        # functions pickle by reference: while patched the name resolves to the wrapper itself
        assert pickle.loads(pickle.dumps(entry)) is entry, target


def test_foreign_wrapper_with_another_signature_is_refused(originals: dict[str, Any]) -> None:
    original = originals[BASE_PREDICT]

    def foreign(self: Any, *args: Any, **kwargs: Any) -> Any:
        return original(self, *args, **kwargs)

    BasePolicy.predict = foreign  # type: ignore[method-assign]
    try:
        with pytest.raises(sb3_tensorpatch.UnsupportedVersionError, match="parameters"):
            sb3_tensorpatch.enable()
        assert not sb3_tensorpatch.is_enabled()
        assert BasePolicy.__dict__["predict"] is foreign
        for target, (owner, name) in patch_targets().items():
            if target != BASE_PREDICT:
                assert owner.__dict__.get(name, MISSING) is originals[target], target
    finally:
        BasePolicy.predict = original  # type: ignore[method-assign]
    assert_originals(originals)


# -- status -----------------------------------------------------------------------------------


def test_status_reports_versions_and_patchedpatch_targets() -> None:
    import sb3_contrib
    import stable_baselines3

    expected_targets = {row.target for row in select_rows().rows}
    disabled = sb3_tensorpatch.status()
    text = str(disabled)
    assert text.splitlines()[0] == "sb3-tensorpatch: disabled"
    assert stable_baselines3.__version__ in text
    assert sb3_contrib.__version__ in text
    assert disabled.enabled is False
    assert disabled.patched == ()
    assert disabled.supported
    assert {row.target for row in disabled.rows if row.state == "selected"} == expected_targets

    enabled = sb3_tensorpatch.enable()
    assert enabled.enabled is True
    assert set(enabled.patched) == expected_targets
    assert len(enabled.patched) == len(expected_targets)
    text = str(sb3_tensorpatch.status())
    assert text.splitlines()[0] == "sb3-tensorpatch: enabled"
    assert stable_baselines3.__version__ in text
    assert sb3_tensorpatch.status().versions[table.SB3] == stable_baselines3.__version__

    after = sb3_tensorpatch.disable()
    assert after.enabled is False
    assert after.patched == ()
    assert sb3_tensorpatch.status().patched == ()


# -- versions ---------------------------------------------------------------------------------


def _pretend(monkeypatch: pytest.MonkeyPatch, **versions: str) -> None:
    real = table.installed_version
    names = {"sb3": table.SB3, "contrib": table.CONTRIB}
    fake = {names[key]: value for key, value in versions.items()}
    # select_rows() looks installed_version up in table's globals at call time, so this reaches enable()
    monkeypatch.setattr(table, "installed_version", lambda package: fake.get(package, real(package)))


def test_too_old_sb3_is_refused(originals: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    _pretend(monkeypatch, sb3="1.7.0")
    with pytest.raises(sb3_tensorpatch.UnsupportedVersionError) as info:
        sb3_tensorpatch.enable()
    assert "1.7.0" in str(info.value)
    assert "1.8.0" in str(info.value)
    assert not sb3_tensorpatch.is_enabled()
    assert_originals(originals)
    status = sb3_tensorpatch.status()
    assert not status.supported
    assert status.error is not None and "1.7.0" in status.error


def test_select_rows_refuses_too_old_versions() -> None:
    with pytest.raises(sb3_tensorpatch.UnsupportedVersionError, match=r"1\.7\.0.*1\.8\.0"):
        select_rows(versions={table.SB3: "1.7.0", table.CONTRIB: None})
    with pytest.raises(sb3_tensorpatch.UnsupportedVersionError, match="not installed"):
        select_rows(versions={table.SB3: None, table.CONTRIB: None})


def test_failed_enable_does_not_leak_into_a_later_scope(
    originals: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    _pretend(monkeypatch, sb3="1.7.0")
    with pytest.raises(sb3_tensorpatch.UnsupportedVersionError):
        sb3_tensorpatch.enable()
    monkeypatch.undo()
    assert not sb3_tensorpatch.is_enabled()
    with sb3_tensorpatch.patched():
        assert sb3_tensorpatch.is_enabled()
    assert not sb3_tensorpatch.is_enabled()
    assert_originals(originals)


def test_newer_sb3_with_matching_signatures_is_patched_with_a_warning(
    originals: dict[str, Any], monkeypatch: pytest.MonkeyPatch, ppo: Any, ppo_obs: np.ndarray
) -> None:
    _pretend(monkeypatch, sb3="3.0.0")
    with pytest.warns(UserWarning, match=r"stable-baselines3 3\.0\.0 is newer"):
        status = sb3_tensorpatch.enable()
    assert status.enabled
    assert status.newer == (table.SB3,)
    assert_patched(originals)
    assert takes_tensor_route(ppo, ppo_obs)
    sb3_tensorpatch.disable()
    assert_originals(originals)


def test_newer_sb3_contrib_with_matching_signatures_is_patched_with_a_warning(
    originals: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    _pretend(monkeypatch, contrib="3.0.0")
    with pytest.warns(UserWarning, match=r"sb3-contrib 3\.0\.0 is newer"):
        status = sb3_tensorpatch.enable()
    assert status.enabled
    assert status.newer == (table.CONTRIB,)
    assert_patched(originals)
    sb3_tensorpatch.disable()
    assert_originals(originals)


def test_newer_version_with_other_signatures_is_refused(
    originals: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    _pretend(monkeypatch, sb3="3.0.0", contrib="3.0.0")
    rows = tuple(
        dataclasses.replace(row, params=("obs", *row.params[1:])) if row.target == BASE_PREDICT else row for row in ROWS
    )
    patcher = Patcher(rows=rows)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the "newer" warning comes only if it were patched
            with pytest.raises(sb3_tensorpatch.UnsupportedVersionError, match="expects"):
                patcher.enable()
        assert not patcher.is_enabled()
        assert_originals(originals)
    finally:
        patcher.disable()
    assert_originals(originals)


@pytest.mark.parametrize("which", [0, -1], ids=["first-row", "last-row"])
def test_row_with_other_params_is_refused_and_nothing_patched(originals: dict[str, Any], which: int) -> None:
    target = select_rows().rows[which].target
    rows = tuple(
        dataclasses.replace(row, params=(*row.params, "unexpected")) if row.target == target else row for row in ROWS
    )
    patcher = Patcher(rows=rows)
    try:
        with pytest.raises(sb3_tensorpatch.UnsupportedVersionError, match="expects"):
            patcher.enable()
        assert not patcher.is_enabled()
        assert_originals(originals)  # every target is checked before any is patched
    finally:
        patcher.disable()
    assert_originals(originals)


def test_row_whose_target_is_not_defined_in_the_class_is_refused(originals: dict[str, Any]) -> None:
    bogus = dataclasses.replace(ROWS[0], target="stable_baselines3.ppo.ppo:PPO.predict")
    patcher = Patcher(rows=(*ROWS, bogus))
    try:
        with pytest.raises(sb3_tensorpatch.UnsupportedVersionError, match="not defined"):
            patcher.enable()
        assert not patcher.is_enabled()
        assert_originals(originals)
    finally:
        patcher.disable()


@pytest.mark.parametrize("options", [{"reshpae": True}, {"float32": True}], ids=["misspelt", "another-route's"])
def test_row_with_an_option_its_route_does_not_take_is_refused(originals: dict[str, Any], options: dict[str, Any]) -> None:
    # BasePolicy.predict's route takes only ``reshape``: a wrong option must not silently take a default
    rows = tuple(dataclasses.replace(row, options=options) if row.target == BASE_PREDICT else row for row in ROWS)
    patcher = Patcher(rows=rows)
    try:
        with pytest.raises(TypeError, match="unexpected keyword argument"):
            patcher.enable()
        assert not patcher.is_enabled()
        assert_originals(originals)
    finally:
        patcher.disable()


# -- distribution argument validation ---------------------------------------------------------


def _invalid_normal() -> Any:
    return torch.distributions.Normal(torch.zeros(1), -torch.ones(1))


def test_validation_untouched_outside_the_route(originals: dict[str, Any], ppo: Any, ppo_obs: np.ndarray) -> None:
    before = Distribution._validate_args
    assert before is True  # torch's default (``__debug__``)
    with pytest.raises(ValueError):
        _invalid_normal()
    sb3_tensorpatch.enable()
    assert Distribution._validate_args == before
    with pytest.raises(ValueError):
        _invalid_normal()
    assert takes_tensor_route(ppo, ppo_obs)  # the route switches validation off only for its own call
    assert Distribution._validate_args == before
    with pytest.raises(ValueError):
        _invalid_normal()
    sb3_tensorpatch.disable()
    assert Distribution.__dict__["_validate_args"] is originals[VALIDATE]
    with pytest.raises(ValueError):
        _invalid_normal()


def test_validation_off_in_one_thread_only(originals: dict[str, Any]) -> None:
    sb3_tensorpatch.enable()
    inside = threading.Event()
    release = threading.Event()
    seen: dict[str, Any] = {}

    def routed_thread() -> None:
        validation._local.off = True  # what the tensor route does for its own thread
        try:
            seen["validate_args"] = Distribution._validate_args
            try:
                _invalid_normal()
                seen["raised"] = False
            except ValueError:
                seen["raised"] = True
            inside.set()
            release.wait(timeout=30)
        finally:
            validation._local.off = False

    thread = threading.Thread(target=routed_thread)
    thread.start()
    try:
        assert inside.wait(timeout=30)
        assert seen == {"validate_args": False, "raised": False}
        # this thread, at the same moment, still validates
        assert Distribution._validate_args is True
        with pytest.raises(ValueError):
            _invalid_normal()
    finally:
        release.set()
        thread.join(timeout=30)
    sb3_tensorpatch.disable()
    assert Distribution.__dict__["_validate_args"] is originals[VALIDATE]


def test_thread_local_switch_has_no_effect_when_disabled() -> None:
    validation._local.off = True
    try:
        with pytest.raises(ValueError):
            _invalid_normal()
    finally:
        validation._local.off = False


def test_user_default_set_while_enabled_wins(originals: dict[str, Any]) -> None:
    sb3_tensorpatch.enable()
    try:
        Distribution.set_default_validate_args(False)
        _invalid_normal()  # the user's setting applies
        sb3_tensorpatch.disable()
        assert Distribution.__dict__["_validate_args"] is False  # disable() leaves the user's value alone
        _invalid_normal()
    finally:
        Distribution._validate_args = originals[VALIDATE]
    with pytest.raises(ValueError):
        _invalid_normal()


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
        if target != VALIDATE:
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
