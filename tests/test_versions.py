"""The version-aware patch table: row selection per release, refusal of unknown releases, and the
list of tested releases that the version matrix, the docs and the README's range follow."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from packaging.version import Version

import sb3_tensorpatch
from sb3_tensorpatch.table import (
    CONTRIB,
    RELEASES,
    ROWS,
    SB3,
    TESTED_UP_TO,
    UnsupportedVersionError,
    installed_version,
    select_rows,
    supported_range,
)

SUPPORTED = [release for release in RELEASES if release.supported]
UNSUPPORTED = [release for release in RELEASES if not release.supported]
OLDEST = Version(SUPPORTED[0].sb3)
REPO = Path(__file__).resolve().parent.parent
MASKABLE = "sb3_contrib.common.maskable.policies:MaskableActorCriticPolicy.predict"
RECURRENT = "sb3_contrib.common.recurrent.policies:RecurrentActorCriticPolicy.predict"
REWARD = "stable_baselines3.common.vec_env.vec_normalize:VecNormalize.normalize_reward"


def _options(rows: Any, target: str) -> dict[str, Any]:
    (row,) = [row for row in rows if row.target == target]
    return row.options


def _next_minor_prerelease(version: str) -> str:
    """A pre-release of the minor release after ``version`` (``2.9.2`` -> ``2.10.0a1``)."""
    parsed = Version(version)
    return f"{parsed.major}.{parsed.minor + 1}.0a1"


@pytest.mark.parametrize("sb3, contrib", [(release.sb3, release.contrib) for release in SUPPORTED])
def test_every_supported_release_selects_one_row_per_target(sb3: str, contrib: str) -> None:
    selection = select_rows({SB3: sb3, CONTRIB: contrib})
    targets = [row.target for row in selection.rows]
    assert len(targets) == len(set(targets)) == len({row.target for row in ROWS})
    assert not selection.newer
    maskable = _options(selection.rows, MASKABLE)
    assert maskable["returns_state"] is (Version(contrib) >= Version("2.3.0"))
    assert maskable["reshape"] is (Version(contrib) >= Version("2.8.0"))
    assert _options(selection.rows, RECURRENT)["reshape"] is (Version(contrib) >= Version("2.8.0"))
    assert _options(selection.rows, REWARD)["float32"] is (Version(sb3) >= Version("2.5.0"))


def test_rows_for_one_target_never_overlap() -> None:
    between = ["2.3.0", "2.4.0", "2.7.0", "2.9.0", "2.9.1"]
    for target in {row.target for row in ROWS}:
        rows = [row for row in ROWS if row.target == target]
        tested = [getattr(release, "sb3" if rows[0].package == SB3 else "contrib") for release in SUPPORTED]
        for release in [*tested, *between]:
            assert sum(row.applies_to(Version(release)) for row in rows) == 1, (target, release)


def test_tested_releases_are_listed_oldest_first_and_the_unsupported_ones_come_first() -> None:
    for package in ("sb3", "contrib"):
        versions = [Version(getattr(release, package)) for release in RELEASES]
        assert versions == sorted(versions), package
    assert RELEASES[-1].supported
    assert all(Version(release.sb3) < OLDEST for release in UNSUPPORTED)
    assert TESTED_UP_TO == {SB3: RELEASES[-1].sb3, CONTRIB: RELEASES[-1].contrib}


def test_rows_span_exactly_the_supported_releases() -> None:
    for package, oldest in ((SB3, SUPPORTED[0].sb3), (CONTRIB, SUPPORTED[0].contrib)):
        own = [row for row in ROWS if row.package == package]
        assert min(Version(row.since) for row in own) == Version(oldest), package
        assert supported_range(package) == f"{oldest} to {TESTED_UP_TO[package]}"
    for target in {row.target for row in ROWS}:
        rows = [row for row in ROWS if row.target == target]
        starts = [Version(row.since) for row in rows]
        assert starts == sorted(set(starts)), target  # oldest first, one row per release
        assert starts[-1] <= Version(TESTED_UP_TO[rows[0].package]), target
        assert rows[-1].versions.endswith(f",<={TESTED_UP_TO[rows[0].package]}"), target
        for row, following in zip(rows, rows[1:]):
            assert row.versions == f">={row.since},<{following.since}", target


def test_readme_and_getting_started_name_the_tested_range() -> None:
    """The README and docs/getting-started.md cannot read the table: this keeps their range in step."""
    expected = (SUPPORTED[0].sb3, TESTED_UP_TO[SB3])
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    getting_started = (REPO / "docs" / "getting-started.md").read_text(encoding="utf-8")
    assert re.findall(r"Stable-Baselines3 \*\*(\S+) to (\S+)\*\*", readme) == [expected]
    assert re.findall(r"Stable-Baselines3 (\d\S*) to (\d\S*?)\s", getting_started) == [expected]


@pytest.mark.parametrize("old", [*(release.sb3 for release in UNSUPPORTED), "1.0", "0.11.1"])
def test_older_sb3_is_refused_naming_the_range(old: str) -> None:
    with pytest.raises(UnsupportedVersionError, match=rf"{re.escape(old)}.*{re.escape(supported_range(SB3))}"):
        select_rows({SB3: old, CONTRIB: None})


def test_newer_sb3_uses_the_newest_rows() -> None:
    newer = {SB3: _next_minor_prerelease(TESTED_UP_TO[SB3]), CONTRIB: "3.0.0"}
    selection = select_rows(newer)
    assert set(selection.newer) == {SB3, CONTRIB}
    assert _options(selection.rows, MASKABLE) == {"returns_state": True, "reshape": True}
    assert _options(selection.rows, REWARD) == {"float32": True}


def test_contrib_absent_skips_its_rows_and_says_so() -> None:
    selection = select_rows({SB3: TESTED_UP_TO[SB3], CONTRIB: None})
    assert all(row.package == SB3 for row in selection.rows)
    reasons = {why for row, why in selection.skipped if row.package == CONTRIB}
    assert reasons == {"sb3-contrib is not installed"}


def test_sb3_absent_is_refused() -> None:
    with pytest.raises(UnsupportedVersionError, match="not installed"):
        select_rows({SB3: None, CONTRIB: None})


def test_installed_release_matches_the_status() -> None:
    status = sb3_tensorpatch.status()
    assert status.versions[SB3] == installed_version(SB3)
    if Version(installed_version(SB3) or "0") < OLDEST:
        assert status.error and str(OLDEST) in status.error
    else:
        assert status.error is None
        assert {row.state for row in status.rows} <= {"selected", "skipped", "patched"}


@pytest.mark.skipif(Version(installed_version(SB3) or "0") >= OLDEST, reason="only where an unsupported SB3 is installed")
def test_real_unsupported_install_is_refused_and_nothing_is_patched() -> None:
    from stable_baselines3.common.policies import BasePolicy

    before = BasePolicy.__dict__["predict"]
    with pytest.raises(UnsupportedVersionError, match=installed_version(SB3) or ""):
        sb3_tensorpatch.enable()
    assert not sb3_tensorpatch.is_enabled()
    assert BasePolicy.__dict__["predict"] is before
