"""The version gate as ``enable()`` applies it: a release older than the table's is refused and nothing
is patched; a newer one is patched with a warning while the signatures match and refused when they do
not; a row naming a target, a parameter or an option that does not fit is refused before anything is
patched. And ``status()``, which reports the versions and what is patched.

(``test_versions.py`` checks the table's row selection per release, and runs in the version matrix;
these tests pretend other versions on the installed one.)
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import numpy as np
import pytest
from helpers import (
    BASE_PREDICT,
    assert_originals,
    assert_patched,
    takes_tensor_route,
)

import sb3_tensorpatch
from sb3_tensorpatch import table
from sb3_tensorpatch.patcher import Patcher
from sb3_tensorpatch.table import ROWS, select_rows

# SB3's own numpy path turns a CPU tensor into an array with np.array(), which numpy 2 warns about
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


# -- status -----------------------------------------------------------------------------------


def test_status_reports_versions_and_patched_targets() -> None:
    import sb3_contrib
    import stable_baselines3

    from sb3_tensorpatch import validation

    # the table's rows, and one more per name quietened for distribution validation
    quiet = {name.target for name in validation.NAMES}
    assert len(quiet) == 4
    expected_targets = {row.target for row in select_rows().rows} | quiet
    disabled = sb3_tensorpatch.status()
    text = str(disabled)
    assert text.splitlines()[0] == "sb3-tensorpatch: disabled"
    assert stable_baselines3.__version__ in text
    assert sb3_contrib.__version__ in text
    assert disabled.enabled is False
    assert disabled.patched == ()
    assert disabled.supported
    assert {row.target for row in disabled.rows if row.state == "selected"} == expected_targets
    assert [row.target for row in disabled.rows[-4:]] == [name.target for name in validation.NAMES]

    enabled = sb3_tensorpatch.enable()
    assert enabled.enabled is True
    assert set(enabled.patched) == expected_targets - quiet  # armed, installed on first need
    assert {row.target for row in enabled.rows if row.state == "armed"} == quiet
    for target in quiet:
        assert f"[   armed] {target}" in str(enabled)
    assert {(row.package, row.versions, row.route) for row in enabled.rows if row.target in quiet} == {
        (table.SB3, "any", "validation"),
        (table.CONTRIB, "any", "validation"),
    }
    validation.install()
    assert set(sb3_tensorpatch.status().patched) == expected_targets
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


# -- rows that do not fit ---------------------------------------------------------------------


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
