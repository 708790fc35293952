"""``Distribution._validate_args`` while the patch is on: cheap for every thread, same semantics.

Every distribution built anywhere in the process reads it (training too), so a read must not raise
and swallow an exception in a thread that never used the tensor route; the per-thread switch the
routes use (``validation._local.off``) keeps its interface and meaning.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import pytest
import torch
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


def test_descriptor_reads_the_default_off_the_route(default: Any) -> None:
    sb3_tensorpatch.enable()
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
    try:
        Distribution.set_default_validate_args(not default)
        assert _in_new_thread(lambda: Distribution._validate_args) is (not default)
        sb3_tensorpatch.disable()
        assert Distribution.__dict__["_validate_args"] is (not default)  # left alone by disable()
    finally:
        Distribution._validate_args = default
