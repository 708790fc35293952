"""``Distribution._validate_args`` while the patch is on: cheap for every thread, same semantics.

Every distribution built anywhere in the process reads it (training too). ``enable()`` only arms the
descriptor: until a tensor predict needs it, the class attribute is torch's own object. Once installed,
a read must not raise and swallow an exception in a thread that never used the tensor route; the
per-thread switch the routes use (``validation._local.off``) keeps its interface and meaning.
Validation is off only inside the tensor route, for the thread running it; a default the user sets
wins, and ``disable()`` leaves it.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import numpy as np
import pytest
import torch
from helpers import VALIDATE, takes_tensor_route
from torch.distributions import Distribution, Normal

import sb3_tensorpatch
from sb3_tensorpatch import validation


def _in_new_thread(function: Callable[[], Any]) -> Any:
    """Run ``function`` in a thread that never touched the switch; return its result or raise its error."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = function()
        except BaseException as exc:  # handed to the caller
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@pytest.fixture
def default() -> Any:
    sb3_tensorpatch.disable()
    return Distribution.__dict__["_validate_args"]


# -- the switch and the descriptor ------------------------------------------------------------


def test_switch_reads_off_in_a_thread_that_never_set_it() -> None:
    # a plain attribute read: no AttributeError to raise (and swallow, as getattr(..., False) did)
    assert _in_new_thread(lambda: validation._local.off) is False
    sb3_tensorpatch.enable()
    assert _in_new_thread(lambda: validation._local.off) is False


def test_switch_keeps_the_routes_interface() -> None:
    def use_like_a_route() -> list[Any]:
        seen = [getattr(validation._local, "off", False)]
        validation._local.off = True
        seen.append(getattr(validation._local, "off", False))
        seen.append(_in_new_thread(lambda: validation._local.off))  # per thread
        validation._local.off = False
        seen.append(validation._local.off)
        return seen

    assert _in_new_thread(use_like_a_route) == [False, True, False, False]


def _row() -> Any:
    (row,) = [row for row in sb3_tensorpatch.status().rows if row.target == validation.TARGET]
    return row


def test_enable_only_arms_it(default: Any, ppo: Any, ppo_obs: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    from sb3_tensorpatch import lowering

    assert _row().state == "selected"
    sb3_tensorpatch.enable()
    # the class attribute stays torch's own object, so a read costs what it costs unpatched
    assert Distribution.__dict__["_validate_args"] is default
    assert (_row().state, _row().route, _row().package) == ("armed", "validation", "torch")
    assert validation.TARGET not in sb3_tensorpatch.status().patched
    ppo.predict(ppo_obs)  # NumPy: SB3's path, builds a distribution and leaves it armed
    assert Distribution.__dict__["_validate_args"] is default
    # a lowered predict (SB3's standard policy) builds no distribution: still armed
    assert lowering.enabled and takes_tensor_route(ppo, ppo_obs)
    assert Distribution.__dict__["_validate_args"] is default and _row().state == "armed"
    # a predict through the policy's own _predict builds one: installed
    monkeypatch.setattr(lowering, "enabled", False)
    sb3_tensorpatch.disable()
    sb3_tensorpatch.enable()
    assert takes_tensor_route(ppo, ppo_obs)
    descriptor = Distribution.__dict__["_validate_args"]
    assert isinstance(descriptor, validation.ValidationDefault) and descriptor.default is default
    assert _row().state == "patched" and validation.TARGET in sb3_tensorpatch.status().patched
    assert takes_tensor_route(ppo, ppo_obs)
    assert Distribution.__dict__["_validate_args"] is descriptor  # installed once, not per call
    sb3_tensorpatch.disable()
    assert Distribution.__dict__["_validate_args"] is default and _row().state == "selected"
    sb3_tensorpatch.enable()
    assert Distribution.__dict__["_validate_args"] is default  # armed again, not installed
    sb3_tensorpatch.disable()
    assert Distribution.__dict__["_validate_args"] is default


def test_armed_and_never_needed_leaves_the_class_alone(default: Any) -> None:
    sb3_tensorpatch.enable()
    sb3_tensorpatch.disable()
    assert Distribution.__dict__["_validate_args"] is default
    validation.install()  # a late install after disable() does nothing
    assert Distribution.__dict__["_validate_args"] is default and validation.state() == "off"


def test_installed_once_by_threads_racing(default: Any) -> None:
    sb3_tensorpatch.enable()
    start = threading.Barrier(8)
    seen: list[Any] = []

    def race() -> None:
        start.wait(timeout=30)
        validation.install()
        seen.append(Distribution.__dict__["_validate_args"])

    threads = [threading.Thread(target=race) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(seen) == 8 and all(entry is seen[0] for entry in seen)
    assert isinstance(seen[0], validation.ValidationDefault)
    sb3_tensorpatch.disable()
    assert Distribution.__dict__["_validate_args"] is default


def test_user_default_set_before_the_first_predict_is_kept(default: Any, ppo: Any, ppo_obs: np.ndarray) -> None:
    sb3_tensorpatch.enable()
    try:
        Distribution.set_default_validate_args(not default)
        validation.install()  # what the first predict through _predict does: over the user's value
        assert isinstance(Distribution.__dict__["_validate_args"], validation.ValidationDefault)
        assert Distribution._validate_args is (not default)  # recorded as the default
        assert takes_tensor_route(ppo, ppo_obs)
        sb3_tensorpatch.disable()
        assert Distribution.__dict__["_validate_args"] is (not default)
    finally:
        Distribution._validate_args = default


def test_descriptor_reads_the_default_off_the_route(default: Any) -> None:
    sb3_tensorpatch.enable()
    validation.install()  # what the first tensor predict does
    assert isinstance(Distribution.__dict__["_validate_args"], validation.ValidationDefault)
    assert _in_new_thread(lambda: Distribution._validate_args) is default
    assert Distribution._validate_args is default

    def inside_the_route() -> tuple[Any, Any]:
        validation._local.off = True
        try:
            return Distribution._validate_args, Normal(torch.zeros(2), torch.ones(2))._validate_args
        finally:
            validation._local.off = False

    assert _in_new_thread(inside_the_route) == (False, False)
    assert Distribution._validate_args is default
    # an instance given validate_args= keeps its own value (the descriptor is a non-data one)
    assert Normal(torch.zeros(2), torch.ones(2), validate_args=not default)._validate_args is (not default)
    sb3_tensorpatch.disable()
    assert Distribution.__dict__["_validate_args"] is default


def test_validation_still_raises_off_the_route(default: Any) -> None:
    if not default:
        pytest.skip("argument validation is off by default here (python -O)")
    sb3_tensorpatch.enable()

    def build_invalid() -> None:
        Normal(torch.zeros(2), -torch.ones(2))  # scale must be positive

    with pytest.raises(ValueError):
        _in_new_thread(build_invalid)
    with pytest.raises(ValueError):
        build_invalid()
    with validation.no_validation():
        build_invalid()  # this thread's switch is off: no check
        with validation.no_validation():
            pass
        build_invalid()  # nested: still off after the inner one
    with pytest.raises(ValueError):
        build_invalid()


def test_user_default_set_while_enabled_wins(default: Any) -> None:
    sb3_tensorpatch.enable()
    validation.install()
    try:
        Distribution.set_default_validate_args(not default)
        assert _in_new_thread(lambda: Distribution._validate_args) is (not default)
        sb3_tensorpatch.disable()
        assert Distribution.__dict__["_validate_args"] is (not default)  # left alone by disable()
    finally:
        Distribution._validate_args = default


# -- around the tensor route ------------------------------------------------------------------


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
    validation.install()
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


def test_user_default_set_while_enabled_is_applied(originals: dict[str, Any]) -> None:
    sb3_tensorpatch.enable()
    validation.install()
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
