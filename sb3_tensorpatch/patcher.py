"""Installs and removes the wrappers, exactly, under a lock.

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

import functools
import importlib
import inspect
import threading
import types
import warnings
from dataclasses import dataclass
from typing import Any, Callable

from . import _state, table
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

#: "the class had no entry": kept across a reload of this module, like everything a record holds
_MISSING = _state.keep("patcher._MISSING", object)


class _Record:
    """One installed patch: where it went, what it replaced, and whether it still routes."""

    __slots__ = ("active", "name", "original", "owner", "route", "row", "wrapper")

    def __init__(self, row: Row | None, owner: type, name: str, original: Any) -> None:
        self.row = row
        self.owner = owner
        self.name = name
        self.original = original
        self.wrapper: Any = None
        self.route: Callable[..., Any] | None = None
        self.active = True

    @property
    def target(self) -> str:
        return f"{self.owner.__module__}:{self.owner.__qualname__}.{self.name}"


# one record class per process: the records made before a reload of this module (held by the kept
# patcher and by the installed wrappers) must pass the checks below after it
_Record = _state.keep("patcher._Record", lambda: _Record)  # type: ignore[misc]

#: the attribute of our wrapper functions that holds their record
_RECORD = "_sb3_tensorpatch_record"


def _wrapper(function: Any, route: Callable[..., Any], first: str, record: _Record) -> Callable[..., Any]:
    """Return the function installed in place of ``function``: tensors to ``route``, the rest to ``function``.

    A plain function with the original's own parameters and defaults, so that Python binds and
    calls it as fast as SB3's own method, and a call allocates no ``*args`` tuple or ``**kwargs``
    dict (a wrapt ``FunctionWrapper`` costs several microseconds per call to bind and dispatch,
    more than the whole per-call budget of the tensor route). ``functools.update_wrapper`` gives it
    the original's name, qualified name, module and docstring, and ``__wrapped__``, through which
    ``inspect.signature`` shows the original's parameters; bound methods pickle by name, as SB3's
    do. A signature with other kinds of parameters than plain positional-or-keyword ones gets a
    ``(*args, **kwargs)`` wrapper that decides the same way.

    The decision is one ``isinstance`` on the observation; a dict observation goes to the route
    when a value is a tensor. Once ``record.active`` is false (after ``disable()``, for a wrapper
    still held somewhere) every call goes to ``function``.

    :param function: the entry of the class's ``__dict__`` being replaced (SB3's function, or a
        wrapper someone installed before ``enable()``, called through the descriptor protocol)
    :param route: the tensor route for this target
    :param first: the name of the observation parameter (after ``self``)
    :param record: this patch's record
    """
    from torch import Tensor

    from .observations import is_tensor_input

    plain = type(function) is types.FunctionType  # not isinstance: proxies such as wrapt pass that test
    namespace: dict[str, Any] = {
        "__name__": __name__,  # its frames are ours (warnings skip them to reach the caller)
        "_route": route, "_record": record, "_function": function, "_Tensor": Tensor, "_tensor_input": is_tensor_input,
    }
    source = _exact_source(inspect.signature(function), first, plain, namespace)
    if source is not None:
        # written from the checked signature's parameter names only; tracebacks name the target
        exec(compile(source, f"<sb3-tensorpatch wrapper of {record.target}>", "exec"), namespace)
        wrapper: Callable[..., Any] = namespace["wrapper"]
    else:

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if args and record.active:
                observation = args[1] if len(args) > 1 else kwargs.get(first)
                if isinstance(observation, Tensor) or is_tensor_input(observation):
                    return route(*args, **kwargs)
            if plain:
                return function(*args, **kwargs)
            if not args:
                return function(**kwargs)
            return function.__get__(args[0], type(args[0]))(*args[1:], **kwargs)

    functools.update_wrapper(wrapper, function)
    setattr(wrapper, _RECORD, record)
    return wrapper


def _exact_source(signature: inspect.Signature, first: str, plain: bool, namespace: dict[str, Any]) -> str | None:
    """The source of a wrapper with ``signature``'s parameters, or ``None`` when it cannot be written.

    Defaults are the original's own objects, put in ``namespace``; names must be identifiers and
    every parameter positional-or-keyword (SB3's ``predict`` and ``VecNormalize`` methods are).
    """
    names = list(signature.parameters)
    if len(names) < 2 or names[1] != first:
        return None
    declared = []
    for index, parameter in enumerate(signature.parameters.values()):
        if (
            parameter.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD
            or not parameter.name.isidentifier()
            or parameter.name.startswith("_")  # the generated code's own names start with "_"
            or parameter.name in ("isinstance", "type")  # ... or are these builtins
        ):
            return None
        if parameter.default is inspect.Parameter.empty:
            declared.append(parameter.name)
        else:
            namespace[f"_default{index}"] = parameter.default
            declared.append(f"{parameter.name}=_default{index}")
    arguments = ", ".join(names)
    original = f"_function({arguments})" if plain else f"_function.__get__({names[0]}, type({names[0]}))({', '.join(names[1:])})"
    return (
        f"def wrapper({', '.join(declared)}):\n"
        f"    if _record.active and (isinstance({first}, _Tensor) or _tensor_input({first})):\n"
        f"        return _route({arguments})\n"
        f"    return {original}\n"
    )


def _caller(function: Any) -> Callable[..., Any]:
    """``function`` (a class ``__dict__`` entry) as a plain function taking the instance first.

    The routes call SB3's original through it when they need SB3's own path.
    """
    if type(function) is types.FunctionType:
        return function  # type: ignore[no-any-return]

    def call(instance: Any, *args: Any) -> Any:
        return function.__get__(instance, type(instance))(*args)

    return call


def is_wrapper(entry: object) -> bool:
    """Return whether ``entry`` (a class ``__dict__`` value) is one of our installed wrappers."""
    record = getattr(entry, _RECORD, None)
    return isinstance(record, _Record) and record.wrapper is entry


def tensor_route(cls: type, name: str) -> Callable[..., Any] | None:
    """Return the tensor route that ``cls.name`` resolves to, or ``None``.

    ``None`` unless the attribute found first in the MRO is one of our wrappers and still routes
    (a wrapper someone installed on top of ours, or an override in a subclass, gives ``None``).
    A route that calls another patched method calls the route directly when this gives one,
    skipping a second pass through a wrapper.
    """
    # a function read from a class is the function itself (no binding); the MRO walk is Python's own
    entry = getattr(cls, name, None)
    record = getattr(entry, _RECORD, None)
    if record.__class__ is _Record and record.wrapper is entry and record.active:
        return record.route  # type: ignore[union-attr, no-any-return]
    return None


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
    """The one place that changes SB3's classes. Use the module-level functions of the package."""

    def __init__(self, rows: tuple[Row, ...] = ROWS) -> None:
        self._rows = rows
        self._lock = threading.RLock()
        self._records: list[_Record] = []
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

        routes = [ROUTES[target.row.route](target.row.options, _caller(target.function)) for target in targets]
        if selection.newer:
            names = ", ".join(f"{name} {selection.versions[name]}" for name in selection.newer)
            warnings.warn(
                f"sb3-tensorpatch was tested up to stable-baselines3 {NEWEST_SUPPORTED}; {names} is newer. "
                "Its signatures match the newest table rows, so it is patched.",
                UserWarning,
                stacklevel=5,
            )
        records: list[_Record] = []
        try:
            for target, route in zip(targets, routes):
                name = target.row.attribute
                record = _Record(target.row, target.owner, name, target.owner.__dict__.get(name, _MISSING))
                record.route = route
                record.wrapper = _wrapper(target.function, route, target.row.params[0], record)
                setattr(target.owner, name, record.wrapper)
                records.append(record)
            records.append(self._patch_validation(validation.ValidationDefault))
        except BaseException:
            self._records = records
            self._undo()
            raise
        self._records = records
        self._selection = selection

    @staticmethod
    def _patch_validation(descriptor: type) -> _Record:
        from torch.distributions import Distribution

        original = Distribution.__dict__.get("_validate_args", _MISSING)
        record = _Record(None, Distribution, "_validate_args", original)
        default = bool(Distribution._validate_args)
        record.wrapper = descriptor(default)
        Distribution._validate_args = record.wrapper
        return record

    def _undo(self) -> None:
        records, self._records = self._records, []
        for record in reversed(records):
            record.active = False
            current = record.owner.__dict__.get(record.name, _MISSING)
            if current is not record.wrapper:
                if record.row is not None:
                    warnings.warn(
                        f"sb3-tensorpatch: {record.target} was wrapped again by someone else after "
                        "enable(); their wrapper is left in place and ours inside it now passes every "
                        "call to SB3's original.",
                        UserWarning,
                        stacklevel=5,
                    )
                continue
            if record.original is _MISSING:
                delattr(record.owner, record.name)
            else:
                setattr(record.owner, record.name, record.original)
        from . import cache, normalization

        cache.clear()
        normalization.clear()

    # -- reporting ---------------------------------------------------------------------------
    def status(self, fresh: bool = True) -> Status:
        """Report versions, rows and patched targets.

        :param fresh: read the installed versions again; else reuse the last reading (cheap, for
            scopes entered in a loop)
        """
        with self._lock:
            patched = {record.target for record in self._records if record.row is not None}
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
            return Status(
                enabled=self.is_enabled(),
                versions=selection.versions,
                rows=tuple(rows),
                newer=selection.newer,
                error=None,
            )
