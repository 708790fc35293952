"""Patch lifecycle tests, in the style of ddtrace's ``PatchTestCase``.

Every test starts and ends with the patch disabled. The invariant checked throughout is the one the
contract calls "undo is exact": after ``disable()`` each class's ``__dict__`` holds the very object
it held before ``enable()``.
"""

from __future__ import annotations

import dataclasses
import threading
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from helpers import (
    BASE_PREDICT,
    VALIDATE,
    assert_originals,
    assert_patched,
    takes_tensor_route,
)
from torch.distributions import Distribution

import sb3_tensorpatch
from sb3_tensorpatch import table, validation
from sb3_tensorpatch.patcher import Patcher
from sb3_tensorpatch.table import ROWS, select_rows

_POLICY_KWARGS = {"net_arch": [16]}

# SB3's own numpy path turns a CPU tensor into an array with np.array(), which numpy 2 warns about
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


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
