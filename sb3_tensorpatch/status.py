"""The report returned by ``enable()``, ``disable()`` and ``status()``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RowStatus:
    """One row of the patch table as it stands for the installed packages.

    :param target: ``"module:Class.method"``
    :param package: the distribution the target belongs to
    :param versions: the row's version range
    :param route: the tensor route that serves it
    :param state: ``"patched"`` (installed now), ``"selected"`` (would be patched by ``enable()``),
        ``"armed"`` (enabled, installed on first need: the names rebound for distribution validation,
        see :mod:`.validation`) or ``"skipped"`` (does not apply)
    :param reason: why a skipped row does not apply
    """

    target: str
    package: str
    versions: str
    route: str
    state: str
    reason: str


@dataclass(frozen=True)
class Status:
    """What sb3-tensorpatch sees and has done.

    :param enabled: whether the patch is installed now
    :param versions: installed version per package (``None`` when not installed)
    :param rows: every table row for the installed packages, patched, selected or skipped
    :param newer: packages newer than the newest table row
    :param error: why ``enable()`` would refuse, if it would
    """

    enabled: bool
    versions: dict[str, str | None]
    rows: tuple[RowStatus, ...]
    newer: tuple[str, ...]
    error: str | None

    @property
    def patched(self) -> tuple[str, ...]:
        """The targets patched right now."""
        return tuple(row.target for row in self.rows if row.state == "patched")

    @property
    def supported(self) -> bool:
        """Whether ``enable()`` can patch the installed packages."""
        return self.error is None

    def __str__(self) -> str:
        lines = [f"sb3-tensorpatch: {'enabled' if self.enabled else 'disabled'}"]
        for package, version in self.versions.items():
            lines.append(f"  {package}: {version or 'not installed'}")
        if self.error:
            lines.append(f"  unsupported: {self.error}")
        if self.newer:
            lines.append(f"  newer than tested: {', '.join(self.newer)} (patched with the newest rows)")
        if self.rows:
            width = max(len(row.target) for row in self.rows)
            for row in self.rows:
                note = f"  ({row.reason})" if row.reason else ""
                lines.append(f"  [{row.state:>8}] {row.target:<{width}}  {row.versions}{note}")
        return "\n".join(lines)
