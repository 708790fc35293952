"""The version-aware patch table: which SB3 / sb3-contrib methods are patched, for which releases.

Every row names one patch target, the releases it applies to, the route that handles tensor
input for it, the route options that mirror per-release behaviour, and the parameters the target
is expected to have. :func:`select_rows` picks the rows that fit the installed packages; the
patcher then checks each target's signature against its row before it patches anything.

Adding a new SB3 release is a change to this file only: widen the newest rows' ranges, or add a
row where a release changed a target's behaviour.

This module imports neither torch nor SB3, so that ``status()``, the documentation and the pytest
plugin can read the table cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

SB3 = "stable-baselines3"
CONTRIB = "sb3-contrib"

#: The SB3 releases this version of the package was built and tested against.
OLDEST_SUPPORTED = "1.8.0"
NEWEST_SUPPORTED = "2.9.2"

_PREDICT = ("observation", "state", "episode_start", "deterministic")
_MASKABLE_PREDICT = (*_PREDICT, "action_masks")


@dataclass(frozen=True)
class Row:
    """One patch target for a range of releases.

    :param package: the distribution that owns the target (``stable-baselines3`` or ``sb3-contrib``)
    :param versions: the releases of ``package`` this row applies to, as a PEP 440 specifier set
    :param target: ``"module:Class.method"``; the method must be defined in that class's ``__dict__``
    :param route: the name of the tensor route in :mod:`sb3_tensorpatch.routes`
    :param params: the parameter names the target must have, ``self`` excluded, in order
    :param options: route options that mirror a behaviour of these releases
    """

    package: str
    versions: str
    target: str
    route: str
    params: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def module(self) -> str:
        return self.target.partition(":")[0]

    @property
    def owner(self) -> str:
        return self.target.partition(":")[2].rpartition(".")[0]

    @property
    def attribute(self) -> str:
        return self.target.rpartition(".")[2]

    def applies_to(self, version: Version) -> bool:
        return SpecifierSet(self.versions).contains(version, prereleases=True)


_SB3_ALL = ">=1.8.0,<=2.9.2"
_CONTRIB_ALL = ">=1.8.0,<=2.9.2"

#: The patch table. Rows for one target must not overlap in their version ranges, and are listed
#: oldest first: a release newer than every row gets the last one.
ROWS: tuple[Row, ...] = (
    # BasePolicy.predict serves every policy that does not override predict: PPO, A2C, SAC, TD3,
    # DDPG, DQN's greedy branch, and contrib's QRDQN, TQC, TRPO, ARS and CrossQ.
    Row(SB3, _SB3_ALL, "stable_baselines3.common.policies:BasePolicy.predict", "policy", _PREDICT),
    # DQN.predict draws epsilon-greedy random actions itself, without reaching the policy.
    Row(SB3, _SB3_ALL, "stable_baselines3.dqn.dqn:DQN.predict", "epsilon_greedy", _PREDICT),
    # VecNormalize is numpy-only; these rows let a whole inference step stay on the device.
    Row(SB3, _SB3_ALL, "stable_baselines3.common.vec_env.vec_normalize:VecNormalize.normalize_obs",
        "normalize_obs", ("obs",)),
    Row(SB3, _SB3_ALL, "stable_baselines3.common.vec_env.vec_normalize:VecNormalize.unnormalize_obs",
        "unnormalize_obs", ("obs",)),
    # normalize_reward casts its result to float32 from 2.5.0 on
    Row(SB3, ">=1.8.0,<2.5.0", "stable_baselines3.common.vec_env.vec_normalize:VecNormalize.normalize_reward",
        "normalize_reward", ("reward",), {"float32": False}),
    Row(SB3, ">=2.5.0,<=2.9.2", "stable_baselines3.common.vec_env.vec_normalize:VecNormalize.normalize_reward",
        "normalize_reward", ("reward",), {"float32": True}),
    Row(SB3, _SB3_ALL, "stable_baselines3.common.vec_env.vec_normalize:VecNormalize.unnormalize_reward",
        "unnormalize_reward", ("reward",)),
    # sb3-contrib
    Row(CONTRIB, _CONTRIB_ALL, "sb3_contrib.qrdqn.qrdqn:QRDQN.predict", "epsilon_greedy", _PREDICT),
    # MaskableActorCriticPolicy.predict: returns (actions, None) up to 2.2.1, (actions, state) after;
    # reshapes the actions to the action shape before clipping from 2.8.0.
    Row(CONTRIB, ">=1.8.0,<2.3.0", "sb3_contrib.common.maskable.policies:MaskableActorCriticPolicy.predict",
        "maskable", _MASKABLE_PREDICT, {"returns_state": False, "reshape": False}),
    Row(CONTRIB, ">=2.3.0,<2.8.0", "sb3_contrib.common.maskable.policies:MaskableActorCriticPolicy.predict",
        "maskable", _MASKABLE_PREDICT, {"returns_state": True, "reshape": False}),
    Row(CONTRIB, ">=2.8.0,<=2.9.2", "sb3_contrib.common.maskable.policies:MaskableActorCriticPolicy.predict",
        "maskable", _MASKABLE_PREDICT, {"returns_state": True, "reshape": True}),
    # RecurrentActorCriticPolicy.predict: LSTM states in and out; reshape before clip from 2.8.0.
    Row(CONTRIB, ">=1.8.0,<2.8.0", "sb3_contrib.common.recurrent.policies:RecurrentActorCriticPolicy.predict",
        "recurrent", _PREDICT, {"reshape": False}),
    Row(CONTRIB, ">=2.8.0,<=2.9.2", "sb3_contrib.common.recurrent.policies:RecurrentActorCriticPolicy.predict",
        "recurrent", _PREDICT, {"reshape": True}),
)


class UnsupportedVersionError(RuntimeError):
    """Raised by :func:`sb3_tensorpatch.enable` when the installed SB3 is outside the patch table.

    Nothing is patched when it is raised.
    """


@dataclass(frozen=True)
class Selection:
    """The outcome of matching the table against the installed packages.

    :param versions: installed version string per package (``None`` when not installed)
    :param rows: the rows that apply, in table order
    :param skipped: a reason per row that does not apply
    :param newer: packages newer than the newest row, patched with their newest rows
    """

    versions: dict[str, str | None]
    rows: tuple[Row, ...]
    skipped: tuple[tuple[Row, str], ...]
    newer: tuple[str, ...]


def installed_version(package: str) -> str | None:
    """Return the installed version of ``package``, or ``None`` when it is not installed."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _bound(rows: list[Row], operators: tuple[str, ...], pick: Callable[[list[Version]], Version]) -> Version:
    """The ``pick`` (``min`` or ``max``) of the rows' version bounds written with ``operators``."""
    return pick(
        [Version(spec.version) for row in rows for spec in SpecifierSet(row.versions) if spec.operator in operators]
    )


def _newest_upper_bound(rows: list[Row]) -> Version:
    return _bound(rows, ("<=", "=="), max)


def _oldest_lower_bound(rows: list[Row]) -> Version:
    return _bound(rows, (">=", "=="), min)


def supported_range(package: str, rows: tuple[Row, ...] = ROWS) -> str:
    """Return the supported releases of ``package`` as ``"OLDEST to NEWEST"``."""
    own = [row for row in rows if row.package == package]
    return f"{_oldest_lower_bound(own)} to {_newest_upper_bound(own)}"


def select_rows(
    versions: dict[str, str | None] | None = None,
    rows: tuple[Row, ...] = ROWS,
) -> Selection:
    """Pick the rows of the table that fit the installed packages.

    A package older than its oldest row is refused. A package newer than its newest row gets its
    newest row per target (the patcher then refuses it if a signature differs). A package that is
    not installed has its rows skipped.

    :param versions: package name to installed version; read from the environment when ``None``
    :param rows: the table to select from
    :return: the selected and the skipped rows
    :raises UnsupportedVersionError: when SB3 is missing, unparsable or older than supported
    """
    if versions is None:
        versions = {SB3: installed_version(SB3), CONTRIB: installed_version(CONTRIB)}
    selected: list[Row] = []
    skipped: list[tuple[Row, str]] = []
    newer: list[str] = []
    for package in dict.fromkeys(row.package for row in rows):
        own = [row for row in rows if row.package == package]
        raw = versions.get(package)
        if raw is None:
            if package == SB3:
                raise UnsupportedVersionError(
                    f"{SB3} is not installed; sb3-tensorpatch supports {SB3} {supported_range(SB3, rows)}."
                )
            skipped.extend((row, f"{package} is not installed") for row in own)
            continue
        try:
            version = Version(raw)
        except InvalidVersion as exc:
            raise UnsupportedVersionError(f"{package} {raw!r} is not a valid version string.") from exc
        newest = _newest_upper_bound(own)
        oldest = _oldest_lower_bound(own)
        if version < oldest:
            raise UnsupportedVersionError(
                f"{package} {raw} is not supported by sb3-tensorpatch: "
                f"the supported range is {oldest} to {newest}. Nothing was patched."
            )
        is_newer = version > newest
        if is_newer:
            newer.append(package)
        for target in dict.fromkeys(row.target for row in own):
            candidates = [row for row in own if row.target == target]
            chosen: Row | None
            if is_newer:
                chosen = candidates[-1]  # rows of one target are listed oldest first
            else:
                matching = [row for row in candidates if row.applies_to(version)]
                chosen = matching[0] if matching else None
            for row in candidates:
                if row is chosen:
                    selected.append(row)
                elif is_newer:
                    skipped.append((row, f"{package} {raw} is newer than {newest}: newest row used"))
                else:
                    skipped.append((row, f"{package} {raw} is outside {row.versions}"))
    return Selection(dict(versions), tuple(selected), tuple(skipped), tuple(newer))
