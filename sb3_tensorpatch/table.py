"""The version-aware patch table: which SB3 / sb3-contrib methods are patched, for which releases.

Every row names one patch target, the release it applies from, the route that handles tensor
input for it, the route options that mirror per-release behaviour, and the parameters the target
is expected to have. A row applies up to the next row for the same target, or, for the newest
row, up to the release the package was tested up to (:data:`TESTED_UP_TO`, the newest pair of
:data:`RELEASES`). :func:`select_rows` picks the rows that fit the installed packages; the patcher
then checks each target's signature against its row before it patches anything.

:data:`RELEASES` is the list of tested releases: the version matrix (``noxfile.py``), the version
tests and the documentation read it. Adding a new SB3 release is one line there; a row is added
only where a release changed a target's behaviour.

This module imports neither torch nor SB3, so that ``status()``, the documentation and the pytest
plugin can read the table cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from importlib import metadata
from typing import Any, Callable

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

SB3 = "stable-baselines3"
CONTRIB = "sb3-contrib"


@dataclass(frozen=True)
class Release:
    """One SB3 release of the version matrix, with what its test environment needs.

    :param sb3: the stable-baselines3 release
    :param contrib: the sb3-contrib release that goes with it
    :param pins: requirements installed next to them (gym or gymnasium, numpy)
    :param pre: ``pip install`` argument lists run, in order, before the main install
    :param supported: ``False`` for a release the package must refuse, with nothing patched
    """

    sb3: str
    contrib: str
    pins: tuple[str, ...]
    pre: tuple[tuple[str, ...], ...] = ()
    supported: bool = True


_NP1 = "numpy==1.26.4"  # SB3 <= 2.4, gym 0.21 and gymnasium < 1.0 need numpy 1.x
_NP2 = "numpy==2.4.6"
# gym 0.21's setup.py builds only with old setuptools and wheel, and without build isolation so that
# those are the ones used; pip >= 24.1 rejects its metadata ("opencv-python (>=3.)").
_GYM021 = (("pip<24.1", "setuptools==65.5.0", "wheel==0.38.4"), ("--no-build-isolation", "gym==0.21.0", _NP1))

#: The tested releases, oldest first: one line per SB3 release, the newest last.
RELEASES: tuple[Release, ...] = (
    Release("1.7.0", "1.7.0", ("gym==0.21.0", _NP1), _GYM021, supported=False),
    Release("1.8.0", "1.8.0", ("gym==0.21.0", _NP1), _GYM021),
    Release("2.0.0", "2.0.0", ("gymnasium==0.28.1", _NP1)),
    Release("2.1.0", "2.1.0", ("gymnasium==0.29.1", _NP1)),
    Release("2.2.1", "2.2.1", ("gymnasium==0.29.1", _NP1)),
    Release("2.3.2", "2.3.0", ("gymnasium==0.29.1", _NP1)),
    Release("2.4.1", "2.4.0", ("gymnasium==1.0.0", _NP1)),
    Release("2.5.0", "2.5.0", ("gymnasium==1.0.0", _NP2)),
    Release("2.6.0", "2.6.0", ("gymnasium==1.1.1", _NP2)),
    Release("2.7.1", "2.7.1", ("gymnasium==1.2.3", _NP2)),
    Release("2.8.0", "2.8.0", ("gymnasium==1.2.3", _NP2)),
    Release("2.9.2", "2.9.2", ("gymnasium==1.4.0", _NP2)),
)

#: The newest release of each package this version of the package was tested against: the upper
#: end of the newest rows. A newer release is patched with a warning when its signatures match.
TESTED_UP_TO: dict[str, str] = {SB3: RELEASES[-1].sb3, CONTRIB: RELEASES[-1].contrib}
NEWEST_SUPPORTED = TESTED_UP_TO[SB3]

_PREDICT = ("observation", "state", "episode_start", "deterministic")
_MASKABLE_PREDICT = (*_PREDICT, "action_masks")
_COLLECT = "stable_baselines3.common.on_policy_algorithm:OnPolicyAlgorithm.collect_rollouts"
_COLLECT_PARAMS = ("env", "callback", "rollout_buffer", "n_rollout_steps")


@dataclass(frozen=True)
class Row:
    """One patch target, from one release on.

    :param package: the distribution that owns the target (``stable-baselines3`` or ``sb3-contrib``)
    :param since: the oldest release of ``package`` this row applies to
    :param target: ``"module:Class.method"``; the method must be defined in that class's ``__dict__``
    :param route: the name of the tensor route in :mod:`sb3_tensorpatch.routes`
    :param params: the parameter names the target must have, ``self`` excluded, in order
    :param options: route options that mirror a behaviour of these releases
    :param decides: the route gets every call while the patch is on and decides itself what it covers,
        calling the original for the rest (for a target whose first argument is not the observation);
        otherwise only tensor input reaches the route
    :param until: where the row ends, as a PEP 440 clause (``"<2.5.0"``, ``"<=2.9.2"``); filled in
        from the next row for the same target, or from :data:`TESTED_UP_TO`, when ``ROWS`` is built
    """

    package: str
    since: str
    target: str
    route: str
    params: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    decides: bool = False
    until: str = ""

    @property
    def versions(self) -> str:
        """The releases of ``package`` this row applies to, as a PEP 440 specifier set."""
        return f">={self.since},{self.until}" if self.until else f">={self.since}"

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


def _with_upper_ends(rows: tuple[Row, ...], tested_up_to: dict[str, str]) -> tuple[Row, ...]:
    """Close each row's range: before the next row for the same target, or at ``tested_up_to``."""
    closed = []
    for i, row in enumerate(rows):
        following = next((later for later in rows[i + 1 :] if later.target == row.target), None)
        until = f"<{following.since}" if following else f"<={tested_up_to[row.package]}"
        closed.append(replace(row, until=until))
    return tuple(closed)


#: The patch table. Rows for one target are listed oldest first; each applies from its ``since``
#: up to the next one's.
ROWS: tuple[Row, ...] = _with_upper_ends(
    (
        # BasePolicy.predict serves every policy that does not override predict: PPO, A2C, SAC, TD3,
        # DDPG, DQN's greedy branch, and contrib's QRDQN, TQC, TRPO, ARS and CrossQ.
        Row(SB3, "1.8.0", "stable_baselines3.common.policies:BasePolicy.predict", "policy", _PREDICT),
        # DQN.predict draws epsilon-greedy random actions itself, without reaching the policy.
        Row(SB3, "1.8.0", "stable_baselines3.dqn.dqn:DQN.predict", "epsilon_greedy", _PREDICT),
        # VecNormalize is numpy-only; these rows let a whole inference step stay on the device.
        Row(SB3, "1.8.0", "stable_baselines3.common.vec_env.vec_normalize:VecNormalize.normalize_obs",
            "normalize_obs", ("obs",)),
        Row(SB3, "1.8.0", "stable_baselines3.common.vec_env.vec_normalize:VecNormalize.unnormalize_obs",
            "unnormalize_obs", ("obs",)),
        # normalize_reward casts its result to float32 from 2.5.0 on
        Row(SB3, "1.8.0", "stable_baselines3.common.vec_env.vec_normalize:VecNormalize.normalize_reward",
            "normalize_reward", ("reward",), {"float32": False}),
        Row(SB3, "2.5.0", "stable_baselines3.common.vec_env.vec_normalize:VecNormalize.normalize_reward",
            "normalize_reward", ("reward",), {"float32": True}),
        Row(SB3, "1.8.0", "stable_baselines3.common.vec_env.vec_normalize:VecNormalize.unnormalize_reward",
            "unnormalize_reward", ("reward",)),
        # collect_rollouts of PPO and A2C on a TensorVecEnv: on the env's device (rollouts.py); the route
        # decides what it covers (its first argument is the env). From 2.2.0 a falsy on_step() stops and
        # update_locals() is called once more at the end; GAE's last step is float32 from 2.4.0 (float64
        # before); the buffer stores observations in the space's dtype from 2.7.1 (float32 before).
        Row(SB3, "1.8.0", _COLLECT, "collect_rollouts", _COLLECT_PARAMS, decides=True, options={
            "stop_on_falsy": False, "final_update_locals": False, "float32_dones": False, "store_obs_float32": True}),
        Row(SB3, "2.2.0", _COLLECT, "collect_rollouts", _COLLECT_PARAMS, decides=True, options={
            "stop_on_falsy": True, "final_update_locals": True, "float32_dones": False, "store_obs_float32": True}),
        Row(SB3, "2.4.0", _COLLECT, "collect_rollouts", _COLLECT_PARAMS, decides=True, options={
            "stop_on_falsy": True, "final_update_locals": True, "float32_dones": True, "store_obs_float32": True}),
        Row(SB3, "2.7.1", _COLLECT, "collect_rollouts", _COLLECT_PARAMS, decides=True, options={
            "stop_on_falsy": True, "final_update_locals": True, "float32_dones": True, "store_obs_float32": False}),
        # sb3-contrib
        Row(CONTRIB, "1.8.0", "sb3_contrib.qrdqn.qrdqn:QRDQN.predict", "epsilon_greedy", _PREDICT),
        # MaskableActorCriticPolicy.predict: returns (actions, None) up to 2.2.1, (actions, state) after;
        # reshapes the actions to the action shape before clipping from 2.8.0.
        Row(CONTRIB, "1.8.0", "sb3_contrib.common.maskable.policies:MaskableActorCriticPolicy.predict",
            "maskable", _MASKABLE_PREDICT, {"returns_state": False, "reshape": False}),
        Row(CONTRIB, "2.3.0", "sb3_contrib.common.maskable.policies:MaskableActorCriticPolicy.predict",
            "maskable", _MASKABLE_PREDICT, {"returns_state": True, "reshape": False}),
        Row(CONTRIB, "2.8.0", "sb3_contrib.common.maskable.policies:MaskableActorCriticPolicy.predict",
            "maskable", _MASKABLE_PREDICT, {"returns_state": True, "reshape": True}),
        # RecurrentActorCriticPolicy.predict: LSTM states in and out; reshape before clip from 2.8.0.
        Row(CONTRIB, "1.8.0", "sb3_contrib.common.recurrent.policies:RecurrentActorCriticPolicy.predict",
            "recurrent", _PREDICT, {"reshape": False}),
        Row(CONTRIB, "2.8.0", "sb3_contrib.common.recurrent.policies:RecurrentActorCriticPolicy.predict",
            "recurrent", _PREDICT, {"reshape": True}),
    ),
    TESTED_UP_TO,
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
