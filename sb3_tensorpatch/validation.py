"""Distribution argument validation, switched off for SB3's own distributions on the tensor route.

``torch.distributions`` validates its arguments by default, and the checks read values back to the
host (``aten._local_scalar_dense``: a stream sync on a GPU). SB3 builds a distribution on every
``_predict``. The tensor route turns validation off for its own thread, for the duration of one
``_predict`` call; every other thread, and this thread outside the route, validates exactly as it
would without the patch.

The mechanism: SB3 builds its distributions by module-level names (``stable_baselines3.common.
distributions`` does ``from torch.distributions import Bernoulli, Categorical, Normal``, in every
supported release, and sb3-contrib's maskable distributions build ``MaskableCategorical`` by name).
While the patch is installed each of those (:data:`NAMES`) reads its ``_validate_args`` through a
non-data descriptor (:class:`QuietDefault`): ``False`` while the current thread is inside the route,
else whatever the class would hold without it at that moment (torch's default, or the one the user
set with ``Distribution.set_default_validate_args``, before or after ``enable()``). SB3's names of
torch's classes are rebound to *quiet* subclasses that carry the descriptor (:func:`quiet_class`);
contrib's ``MaskableCategorical`` is contrib's own class, defined under that very name, so it gets
the descriptor in its own ``__dict__`` instead (a subclass behind its name would make the class
itself, and every instance of it, unpicklable: ``pickle`` finds a class by its module and name).
``disable()`` puts back the very objects that were there; one that someone else replaced in between
is left alone.

Why not torch's class: replacing ``Distribution._validate_args`` itself made every distribution
built anywhere in the process (training, user code, other threads) pay a Python-level ``__get__``
per read, about three times a class attribute read. Here torch's classes are never modified, so
``Distribution._validate_args`` and a plain ``torch.distributions.Normal(...)`` cost exactly what
they cost unpatched; only the distributions SB3 and contrib build while the patch is installed read
through the descriptor (``scripts/validate_args_cost.py`` measures all of it). A distribution built
by other code inside the route (a custom policy's own ``torch.distributions.Normal``) validates as
usual.

When: ``enable()`` only *arms* it; the first tensor predict that builds a distribution installs it,
once, and it stays until ``disable()``. Installing it for the duration of each route call instead
would modify contrib's class and SB3's module twice per predict (each class modification empties
the type attribute cache of the class and its subclasses, and CPython 3.13 stops caching a class's
attributes once it has been modified 1,000 times), for little gain: the descriptor costs a
Python-level call only to SB3's own constructions.

The quiet classes are made once per parent class, for the life of the process, so that objects built
under one ``enable()`` have the type of those built under the next, and torch's KL-divergence
dispatch cache (keyed by type pairs) does not grow with every ``enable()``. Each one carries its
parent's ``__name__`` and ``__qualname__``, so that the objects print (``Normal(loc: ...)``) and
torch's validation errors read as they do without the patch, and a ``__reduce_ex__`` that pickles
and copies its instances as instances of the parent: a pickle made while the patch is on loads
without sb3-tensorpatch, after ``disable()`` and in another process.
"""

from __future__ import annotations

import copyreg
import importlib
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import _state
from .table import CONTRIB, SB3
from .wrappers import MISSING

if TYPE_CHECKING:
    from torch.distributions import Distribution


class _Switch(threading.local):
    """The per-thread switch: ``off`` is true while this thread runs inside the tensor route.

    The routes set ``_local.off`` and read it back as ``_local.off``.
    """

    #: the value in a thread that never set its own: found on the class, so a read never raises
    off = False


#: the one switch of the process: the routes hold it since their import, so a reload must keep it
_local: _Switch = _state.keep("validation._local", _Switch)


class QuietDefault:
    """``_validate_args`` of SB3's distributions: ``False`` inside the tensor route, else the default.

    :param parent: the class whose ``_validate_args`` applies outside the route, read at every access
        so that a default set at any time applies there exactly: the parent of a quiet class, or the
        base of a class that holds the descriptor itself
    """

    __slots__ = ("parent",)

    def __init__(self, parent: type[Distribution]) -> None:
        self.parent = parent

    def __get__(self, instance: object, owner: type | None = None) -> bool:
        # read by every construction of SB3's distributions while installed
        return False if _local.off else self.parent._validate_args

    def __repr__(self) -> str:
        return f"QuietDefault({self.parent.__qualname__})"


#: parent class -> its quiet subclass, made once per process (kept across a reload of this module)
_quiet_classes: dict[type, type] = _state.keep("validation._quiet_classes", dict)


def quiet_class(parent: type[Distribution]) -> type[Distribution]:
    """The subclass of ``parent`` whose instances skip argument validation inside the tensor route.

    It defines no ``__init__`` (torch's ``expand()`` refuses subclasses with their own), only its
    ``_validate_args`` and ``__reduce_ex__``; it is made on first use and then always the same.

    :param parent: a ``torch.distributions.Distribution`` subclass
    """
    try:
        return _quiet_classes[parent]  # type: ignore[no-any-return]
    except KeyError:
        pass

    def __reduce_ex__(self: Any, protocol: Any) -> Any:
        # the parent's reduction names type(self) as the class to rebuild: name the parent instead
        reduced = parent.__reduce_ex__(self, protocol)
        if not (isinstance(reduced, tuple) and len(reduced) > 1 and reduced[1] and reduced[1][0] is quiet):
            return reduced
        function, args, *rest = reduced
        if function is copyreg.__newobj__:  # type: ignore[attr-defined]  # (typeshed lacks it)
            # what __newobj__ would call: pickle refuses __newobj__ for another class than the object's
            function = parent.__new__
        return (function, (parent, *args[1:]), *rest)

    namespace = {
        "_validate_args": QuietDefault(parent),
        "__reduce_ex__": __reduce_ex__,
        "__module__": __name__,
        "__qualname__": parent.__qualname__,
        "__doc__": parent.__doc__,
    }
    quiet: type[Distribution] = type(parent.__name__, (parent,), namespace)
    return _quiet_classes.setdefault(parent, quiet)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Name:
    """A module-level name by which SB3 or sb3-contrib builds a torch distribution on ``_predict``.

    :param package: the distribution package the module belongs to
    :param module: the module that holds the name
    :param name: the name
    :param own: the name is the class's own address (the module defines it): it is quietened in place,
        with the descriptor in its ``__dict__``, since a name rebound to a subclass would no longer
        find the class itself for ``pickle`` (which saves a class by its module and qualified name)
    """

    package: str
    module: str
    name: str
    own: bool = False

    @property
    def target(self) -> str:
        """What the patch changes, as ``status()`` lists it: the name, or the class's attribute."""
        return f"{self.module}:{self.name}._validate_args" if self.own else f"{self.module}:{self.name}"


#: Every name SB3 and sb3-contrib build ``torch.distributions`` by, from 1.8.0 to 2.9.2 (nothing
#: else in either package builds one): SB3's action distributions (``SquashedDiagGaussian`` and
#: ``StateDependentNoise`` included) build torch's ``Normal`` / ``Categorical`` / ``Bernoulli``,
#: imported by name into SB3's module; contrib's maskable ones build contrib's own
#: ``MaskableCategorical`` (whose ``apply_masking`` runs ``Categorical.__init__`` again, reading
#: ``_validate_args`` through the instance: the descriptor answers that too).
NAMES: tuple[Name, ...] = (
    Name(SB3, "stable_baselines3.common.distributions", "Normal"),
    Name(SB3, "stable_baselines3.common.distributions", "Categorical"),
    Name(SB3, "stable_baselines3.common.distributions", "Bernoulli"),
    Name(CONTRIB, "sb3_contrib.common.maskable.distributions", "MaskableCategorical", own=True),
)


@dataclass(frozen=True)
class _Change:
    """One change made by :func:`install`: ``owner.__dict__[attribute]`` was ``original``, is ``replacement``."""

    name: Name
    owner: Any  # the module (a name rebound) or the class (quietened in place)
    attribute: str
    original: Any
    replacement: Any


class _Slot:
    """Where the quiet classes stand: armed by ``enable()``, installed on first need, undone by ``disable()``.

    :ivar armed: the patch is on, so a route may install them
    :ivar packages: the packages whose names may be changed (those the patcher selected rows for)
    :ivar installed: the names are changed (or were, until someone changed one again)
    :ivar changes: what each change replaced, in the order they were made
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.armed = False
        self.packages: frozenset[str] = frozenset()
        self.installed = False
        self.changes: tuple[_Change, ...] = ()


#: kept across a reload: it says what is changed in SB3's modules right now
_slot: _Slot = _state.keep("validation._slot", _Slot)


def arm(packages: frozenset[str]) -> None:
    """Let the routes install the quiet classes for ``packages`` (``enable()`` calls this; nothing changes yet).

    :param packages: the packages the patcher selected table rows for (sb3-contrib only when installed)
    """
    with _slot.lock:
        _slot.armed = True
        _slot.packages = packages


def _change(name: Name) -> _Change | None:
    """The change that quietens ``name``, or ``None`` where the installed release holds no fit class there."""
    from torch.distributions import Distribution

    module = importlib.import_module(name.module)  # imported by enable() already
    cls = module.__dict__.get(name.name, MISSING)
    if not (isinstance(cls, type) and issubclass(cls, Distribution)):
        return None
    if not name.own:
        return _Change(name, module, name.name, cls, quiet_class(cls))
    if "_validate_args" in cls.__dict__:
        return None  # a class with a default of its own: the descriptor would have to restate it
    return _Change(name, cls, "_validate_args", MISSING, QuietDefault(cls.__mro__[1]))


def install() -> None:
    """Install the quiet classes if the patch is armed and they are not installed yet (the routes call this).

    The route's fast path checks ``_slot.installed`` first; this takes the lock, so two threads
    install them once, and a concurrent ``disable()`` either comes first (nothing is installed) or
    undoes them afterwards. Every name is resolved before any is changed.
    """
    with _slot.lock:
        if not _slot.armed or _slot.installed:
            return
        changes = [change for name in NAMES if name.package in _slot.packages and (change := _change(name)) is not None]
        for change in changes:
            setattr(change.owner, change.attribute, change.replacement)
        _slot.changes = tuple(changes)
        _slot.installed = True


def disarm() -> None:
    """Put back what each change replaced, unless someone replaced ours since (``disable()``)."""
    with _slot.lock:
        for change in reversed(_slot.changes):
            if change.owner.__dict__.get(change.attribute, MISSING) is change.replacement:
                if change.original is MISSING:
                    delattr(change.owner, change.attribute)
                else:
                    setattr(change.owner, change.attribute, change.original)
        _slot.armed = _slot.installed = False
        _slot.packages = frozenset()
        _slot.changes = ()


def state() -> str:
    """``"patched"`` (installed), ``"armed"`` (enabled, not needed yet) or ``"off"``."""
    if _slot.installed:
        return "patched"
    return "armed" if _slot.armed else "off"


def changed() -> frozenset[str]:
    """The targets (:attr:`Name.target`) changed right now."""
    return frozenset(change.name.target for change in _slot.changes)


class no_validation:
    """Context manager: SB3's distributions built in this thread skip argument validation.

    Re-entrant; restores the previous per-thread setting on exit. Outside an enabled patch it only
    sets the switch (the quiet classes that read it are installed by the routes while enabled).
    """

    __slots__ = ("_previous",)

    def __enter__(self) -> None:
        if not _slot.installed:
            install()
        self._previous = _local.off
        _local.off = True

    def __exit__(self, *exc: Any) -> None:
        _local.off = self._previous
