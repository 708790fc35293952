"""The version-aware patch table: row selection per release, refusal of unknown releases."""

from __future__ import annotations

from typing import Any

import pytest
from packaging.version import Version

import sb3_tensorpatch
from sb3_tensorpatch.table import CONTRIB, ROWS, SB3, UnsupportedVersionError, installed_version, select_rows

RELEASES = ["1.8.0", "2.0.0", "2.1.0", "2.2.1", "2.3.2", "2.4.1", "2.5.0", "2.6.0", "2.7.1", "2.8.0", "2.9.2"]
MASKABLE = "sb3_contrib.common.maskable.policies:MaskableActorCriticPolicy.predict"
RECURRENT = "sb3_contrib.common.recurrent.policies:RecurrentActorCriticPolicy.predict"
REWARD = "stable_baselines3.common.vec_env.vec_normalize:VecNormalize.normalize_reward"


def _options(rows: Any, target: str) -> dict[str, Any]:
    (row,) = [row for row in rows if row.target == target]
    return row.options


@pytest.mark.parametrize("release", RELEASES)
def test_every_supported_release_selects_one_row_per_target(release: str) -> None:
    selection = select_rows({SB3: release, CONTRIB: release})
    targets = [row.target for row in selection.rows]
    assert len(targets) == len(set(targets)) == len({row.target for row in ROWS})
    assert not selection.newer
    version = Version(release)
    maskable = _options(selection.rows, MASKABLE)
    assert maskable["returns_state"] is (version >= Version("2.3.0"))
    assert maskable["reshape"] is (version >= Version("2.8.0"))
    assert _options(selection.rows, RECURRENT)["reshape"] is (version >= Version("2.8.0"))
    assert _options(selection.rows, REWARD)["float32"] is (version >= Version("2.5.0"))


def test_rows_for_one_target_never_overlap() -> None:
    for target in {row.target for row in ROWS}:
        rows = [row for row in ROWS if row.target == target]
        for release in [*RELEASES, "2.3.0", "2.4.0", "2.7.0", "2.9.0", "2.9.1"]:
            assert sum(row.applies_to(Version(release)) for row in rows) == 1, (target, release)


@pytest.mark.parametrize("old", ["1.7.0", "1.0", "0.11.1"])
def test_older_sb3_is_refused_naming_the_range(old: str) -> None:
    with pytest.raises(UnsupportedVersionError, match=rf"{old}.*1\.8\.0 to 2\.9\.2"):
        select_rows({SB3: old, CONTRIB: None})


def test_newer_sb3_uses_the_newest_rows() -> None:
    selection = select_rows({SB3: "2.10.0a1", CONTRIB: "3.0.0"})
    assert set(selection.newer) == {SB3, CONTRIB}
    assert _options(selection.rows, MASKABLE) == {"returns_state": True, "reshape": True}
    assert _options(selection.rows, REWARD) == {"float32": True}


def test_contrib_absent_skips_its_rows_and_says_so() -> None:
    selection = select_rows({SB3: "2.9.2", CONTRIB: None})
    assert all(row.package == SB3 for row in selection.rows)
    reasons = {why for row, why in selection.skipped if row.package == CONTRIB}
    assert reasons == {"sb3-contrib is not installed"}


def test_sb3_absent_is_refused() -> None:
    with pytest.raises(UnsupportedVersionError, match="not installed"):
        select_rows({SB3: None, CONTRIB: None})


def test_installed_release_matches_the_status() -> None:
    status = sb3_tensorpatch.status()
    assert status.versions[SB3] == installed_version(SB3)
    if Version(installed_version(SB3) or "0") < Version("1.8.0"):
        assert status.error and "1.8.0" in status.error
    else:
        assert status.error is None
        assert {row.state for row in status.rows} <= {"selected", "skipped", "patched"}


@pytest.mark.skipif(
    Version(installed_version(SB3) or "0") >= Version("1.8.0"), reason="only where an unsupported SB3 is installed"
)
def test_real_unsupported_install_is_refused_and_nothing_is_patched() -> None:
    from stable_baselines3.common.policies import BasePolicy

    before = BasePolicy.__dict__["predict"]
    with pytest.raises(UnsupportedVersionError, match=installed_version(SB3) or ""):
        sb3_tensorpatch.enable()
    assert not sb3_tensorpatch.is_enabled()
    assert BasePolicy.__dict__["predict"] is before
