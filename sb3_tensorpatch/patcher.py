"""When and where the wrappers go: enable, disable, scopes and exact undo, under a lock.

What is installed (the wrapper functions and their records) is :mod:`sb3_tensorpatch.wrappers`;
which targets, for which releases, is :mod:`sb3_tensorpatch.table`.

``enable()`` selects the table rows that fit the installed packages, imports every target, checks
each target's signature against its row, and only when all of them fit installs one wrapper
function per target into the class that defines it. For each target it records the raw
``cls.__dict__`` entry it replaced; ``disable()`` replays the records in reverse and puts each entry
back by identity, so each class's ``__dict__`` holds the very object it held before.

A wrapper that someone else installed on top of ours stays where it is: ours underneath it is made
inert (it passes every call straight to SB3's original) and a warning says so.

The patch is on while it is enabled explicitly or while any ``patched()`` scope is open; scopes
are counted so that one thread leaving its scope does not unpatch another's.
"""

from __future__ import annotations

import importlib
import inspect
import threading
import warnings
from dataclasses import dataclass
from typing import Any

from . import table
from .status import RowStatus, Status
from .table import (
    CONTRIB,
    NEWEST_SUPPORTED,
    ROWS,
    SB3,
    Row,
    Selection,
    UnsupportedVersionError,
    select_rows,
)
from .wrappers import MISSING, Record, caller, make_wrapper


@dataclass(frozen=True)
class _Token:
    """What a scope saw on entry."""

    generation: int
    explicit: bool
    version: int
    #: the thread whose enable()/disable() inside the scope its exit undoes (None: none is undone)
    thread: int | None


@dataclass(frozen=True)
class _Target:
    row: Row
    owner: type
    function: Any


def _resolve(row: Row) -> _Target:
    """Import the row's target and check it against the row; raise if it does not fit."""
    module = importlib.import_module(row.module)
    owner: Any = module
    for part in row.owner.split("."):
        owner = getattr(owner, part)
    if row.attribute not in owner.__dict__:
        raise UnsupportedVersionError(
            f"{row.target} is not defined in the installed {row.package}; nothing was patched."
        )
    function = owner.__dict__[row.attribute]
    params = tuple(inspect.signature(function).parameters)[1:]
    if params != row.params:
        raise UnsupportedVersionError(
            f"{row.target} in the installed {row.package} has the parameters {params}, "
            f"but the patch table expects {row.params}; nothing was patched."
        )
    return _Target(row, owner, function)


class Patcher:
    """The one place that changes SB3's classes. Use the module-level functions of the package.

    The patch is installed while ``explicit or scopes > 0``. The state, and what each event does
    to it (every event runs under the lock and ends with :meth:`_sync`, which installs or removes
    the patch to match):

    ==============================  ============================================================
    field                           meaning
    ==============================  ============================================================
    ``_explicit``                   ``enable()`` was called and no ``disable()`` since
    ``_scopes``                     open scopes, across threads
    ``_generation``                 count of ``disable()`` calls: a scope opened in an older
                                    generation was already closed by ``disable()``
    ``_version``, ``_changed_by``   count of changes of ``_explicit``, and the thread that made
                                    the last one: a scope's exit undoes only its own thread's
    ==============================  ============================================================

    ====================  =================================================================  ==========================
    event                 fields changed                                                     installed afterwards
    ====================  =================================================================  ==========================
    ``enable()``          ``_explicit = True`` (``_version``, ``_changed_by`` if it changed)  yes
    ``disable()``         ``_generation += 1``, ``_scopes = 0``, ``_explicit = False``        no
    scope entered         ``_scopes += 1``; the token keeps ``_generation``, ``_explicit``,   yes
                          ``_version`` and the thread
    scope exited          ``_scopes -= 1`` unless ``disable()`` came since (generation);      if ``explicit or scopes``
                          ``_explicit`` back to the token's if this thread changed it inside
    ====================  =================================================================  ==========================
    """

    def __init__(self, rows: tuple[Row, ...] = ROWS) -> None:
        self._rows = rows
        self._lock = threading.RLock()
        self._records: list[Record] = []
        self._explicit = False
        self._scopes = 0
        self._generation = 0  # bumped by disable(), which closes every open scope
        self._version = 0  # bumped whenever the explicit state changes
        self._changed_by = 0  # the thread that changed it last
        self._selection: Selection | None = None

    # -- state -------------------------------------------------------------------------------
    def is_enabled(self) -> bool:
        return bool(self._records)

    def enable(self) -> Status:
        with self._lock:
            self._sync(explicit=True)
            return self.status()

    def disable(self) -> Status:
        with self._lock:
            self._generation += 1
            self._scopes = 0
            self._sync(explicit=False)
            return self.status()

    def enter_scope(self, undo: bool = True) -> _Token:
        """Open a scope: the patch stays installed until the scope is exited with the token returned.

        :param undo: the exit undoes an :func:`enable` or :func:`disable` that this thread called
            while the scope was open. ``False`` for the scope of a generator or coroutine: its thread
            also runs its caller's code (and other tasks) between its steps, and their calls stand.
        """
        with self._lock:
            token = _Token(self._generation, self._explicit, self._version, threading.get_ident() if undo else None)
            self._scopes += 1
            try:
                self._sync(explicit=self._explicit)
            except BaseException:
                self._scopes -= 1
                raise
            return token

    def exit_scope(self, token: _Token) -> None:
        """Close the scope that ``token`` opened; any thread may close it."""
        with self._lock:
            if token.generation == self._generation:  # else disable() already closed every scope
                self._scopes -= 1
            explicit = self._explicit
            # an enable()/disable() made inside the scope by this thread is undone: the scope
            # restores the state it found; one made by another thread stands
            if self._version != token.version and self._changed_by == token.thread:
                explicit = token.explicit
            self._sync(explicit)

    def _sync(self, explicit: bool) -> None:
        """Install or remove the patch to match ``explicit`` and the open scopes, then record it."""
        want = explicit or self._scopes > 0
        if want and not self._records:
            self._apply()
        elif not want and self._records:
            self._undo()
        if explicit != self._explicit:
            self._explicit = explicit
            self._version += 1
            self._changed_by = threading.get_ident()

    # -- patching ----------------------------------------------------------------------------
    def _apply(self) -> None:
        selection = select_rows(rows=self._rows)
        targets = [_resolve(row) for row in selection.rows]  # everything is checked before patching
        from . import validation
        from .routes import ROUTES

        # the row's options are keyword-only parameters of its route's factory: a misspelt one fails here
        routes = [ROUTES[target.row.route](caller(target.function), **target.row.options) for target in targets]
        if selection.newer:
            names = ", ".join(f"{name} {selection.versions[name]}" for name in selection.newer)
            warnings.warn(
                f"sb3-tensorpatch was tested up to stable-baselines3 {NEWEST_SUPPORTED}; {names} is newer. "
                "Its signatures match the newest table rows, so it is patched.",
                UserWarning,
                stacklevel=5,
            )
        records: list[Record] = []
        try:
            for target, route in zip(targets, routes):
                name = target.row.attribute
                record = Record(target.row, target.owner, name, target.owner.__dict__.get(name, MISSING))
                record.route = route
                record.wrapper = make_wrapper(target.function, route, target.row.params[0], record)
                setattr(target.owner, name, record.wrapper)
                records.append(record)
            # installed by the first route call that builds a distribution
            validation.arm(frozenset(row.package for row in selection.rows))
        except BaseException:
            self._records = records
            self._undo()
            raise
        self._records = records
        self._selection = selection

    def _undo(self) -> None:
        from . import validation

        records, self._records = self._records, []
        validation.disarm()  # armed last by _apply, so undone first
        for record in reversed(records):
            record.active = False
            current = record.owner.__dict__.get(record.name, MISSING)
            if current is not record.wrapper:
                warnings.warn(
                    f"sb3-tensorpatch: {record.target} was wrapped again by someone else after "
                    "enable(); their wrapper is left in place and ours inside it now passes every "
                    "call to SB3's original.",
                    UserWarning,
                    stacklevel=5,
                )
                continue
            if record.original is MISSING:
                delattr(record.owner, record.name)
            else:
                setattr(record.owner, record.name, record.original)
        from . import plans

        plans.clear()

    # -- reporting ---------------------------------------------------------------------------
    @staticmethod
    def _validation_status(selection: Selection) -> list[RowStatus]:
        """The names SB3 builds its distributions by, one row each (see :mod:`.validation`)."""
        from . import validation

        state, changed = validation.state(), validation.changed()
        selected = {row.package for row in selection.rows}
        rows = []
        for name in validation.NAMES:
            why = ""
            if name.package not in selected:
                row_state = "skipped"
                why = next((reason for row, reason in selection.skipped if row.package == name.package), "no row selected")
            elif state == "armed":
                row_state, why = "armed", "installed by the first tensor predict that builds a distribution"
            elif state == "patched" and name.target not in changed:
                row_state, why = "skipped", "no torch distribution class there to quieten"
            else:
                row_state = "patched" if state == "patched" else "selected"
            rows.append(RowStatus(name.target, name.package, "any", "validation", row_state, why))
        return rows

    def status(self, fresh: bool = True) -> Status:
        """Report versions, rows and patched targets.

        :param fresh: read the installed versions again; else reuse the last reading (cheap, for
            scopes entered in a loop)
        """
        with self._lock:
            patched = {record.target for record in self._records}
            try:
                selection = self._selection
                if fresh or selection is None:
                    selection = self._selection = select_rows(rows=self._rows)
            except UnsupportedVersionError as exc:
                return Status(
                    enabled=self.is_enabled(), versions={SB3: table.installed_version(SB3), CONTRIB: table.installed_version(CONTRIB)}, rows=(), newer=(), error=str(exc)
                )
            rows = [
                RowStatus(row.target, row.package, row.versions, row.route, "patched" if row.target in patched else "selected", "")
                for row in selection.rows
            ]
            rows += [RowStatus(row.target, row.package, row.versions, row.route, "skipped", why) for row, why in selection.skipped]
            order = {row: index for index, row in enumerate(self._rows)}
            lookup = {(row.target, row.versions): row for row in self._rows}
            rows.sort(key=lambda item: order[lookup[(item.target, item.versions)]])
            rows += self._validation_status(selection)
            return Status(
                enabled=self.is_enabled(),
                versions=selection.versions,
                rows=tuple(rows),
                newer=selection.newer,
                error=None,
            )
