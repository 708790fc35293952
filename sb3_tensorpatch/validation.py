"""Distribution argument validation, switched off for the tensor route alone.

``torch.distributions`` validates its arguments by default, and the checks read values back to the
host (``aten._local_scalar_dense``: a stream sync on a GPU). SB3 builds a distribution on every
``_predict``. The tensor route turns validation off for its own thread, for the duration of one
``_predict`` call; every other thread, and this thread outside the route, sees the default exactly as
it was.

The mechanism: ``Distribution._validate_args`` (a class attribute that instances read unless they
were given ``validate_args=``) is replaced by a non-data descriptor that returns the recorded
default, or ``False`` while the current thread is inside the tensor route. ``disable()`` puts the
recorded value back. If someone calls ``Distribution.set_default_validate_args`` while it is
installed, their value replaces the descriptor (they win), and ``disable()`` leaves it alone.

When: ``enable()`` only *arms* it; the first tensor predict that builds a distribution installs it,
once, and it stays until ``disable()``. Every distribution built anywhere in the process reads
``_validate_args``, and through the descriptor a read costs a Python-level call (about four times a
class attribute read: ``scripts/validate_args_cost.py``); armed, it is still the plain class
attribute. So a program that enables the patch and trains costs nothing here until it predicts from
a tensor. Installing it for the duration of each route call instead (and the plain attribute in
between) would modify the class twice per predict: that empties the type attribute cache of
``Distribution`` and of every subclass each time, and CPython 3.13 stops caching a class's
attributes for good once it has been modified 1,000 times.
"""

from __future__ import annotations

import threading
from typing import Any

from . import _state
from .wrappers import MISSING


class _Switch(threading.local):
    """The per-thread switch: ``off`` is true while this thread runs inside the tensor route.

    The routes set ``_local.off`` and read it back as ``_local.off``.
    """

    #: the value in a thread that never set its own: found on the class, so a read never raises
    off = False


#: the one switch of the process: the routes hold it since their import, so a reload must keep it
_local: _Switch = _state.keep("validation._local", _Switch)


class ValidationDefault:
    """Stands in for ``Distribution._validate_args`` while installed.

    :param default: the class attribute's value when it was installed
    """

    __slots__ = ("default",)

    def __init__(self, default: bool) -> None:
        self.default = default

    def __get__(self, instance: object, owner: type | None = None) -> bool:
        # read by every Distribution.__init__ in the process: one lookup, no exception
        return False if _local.off else self.default

    def __repr__(self) -> str:
        return f"ValidationDefault({self.default!r})"


class _Slot:
    """Where the descriptor stands: armed by ``enable()``, installed on first need, removed by ``disable()``.

    :ivar armed: the patch is on, so a route may install the descriptor
    :ivar installed: the descriptor is in ``Distribution.__dict__`` (or was, until someone replaced it)
    :ivar original: the ``Distribution.__dict__`` entry it replaced
    :ivar descriptor: the installed descriptor
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.armed = False
        self.installed = False
        self.original: Any = MISSING
        self.descriptor: ValidationDefault | None = None


#: kept across a reload: it says what is installed in torch's class right now
_slot: _Slot = _state.keep("validation._slot", _Slot)

#: the patched attribute, as ``status()`` names it
TARGET = "torch.distributions.distribution:Distribution._validate_args"


def arm() -> None:
    """Let the routes install the descriptor (``enable()`` calls this; nothing changes in torch yet)."""
    with _slot.lock:
        _slot.armed = True


def install() -> None:
    """Install the descriptor if the patch is armed and it is not installed yet (the routes call this).

    The route's fast path checks ``_slot.installed`` first; this takes the lock, so two threads
    install it once, and a concurrent ``disable()`` either comes first (nothing is installed) or
    removes it afterwards.
    """
    from torch.distributions import Distribution

    with _slot.lock:
        if not _slot.armed or _slot.installed:
            return
        _slot.original = Distribution.__dict__.get("_validate_args", MISSING)
        _slot.descriptor = ValidationDefault(bool(Distribution._validate_args))
        Distribution._validate_args = _slot.descriptor  # type: ignore[assignment]
        _slot.installed = True


def disarm() -> None:
    """Put back what the descriptor replaced, unless someone replaced the descriptor since (``disable()``)."""
    from torch.distributions import Distribution

    with _slot.lock:
        if _slot.installed and Distribution.__dict__.get("_validate_args", MISSING) is _slot.descriptor:
            if _slot.original is MISSING:
                delattr(Distribution, "_validate_args")
            else:
                Distribution._validate_args = _slot.original
        _slot.armed = _slot.installed = False
        _slot.original, _slot.descriptor = MISSING, None


def state() -> str:
    """``"patched"`` (installed), ``"armed"`` (enabled, not needed yet) or ``"off"``."""
    if _slot.installed:
        return "patched"
    return "armed" if _slot.armed else "off"


class no_validation:
    """Context manager: distributions built in this thread skip argument validation.

    Re-entrant; restores the previous per-thread setting on exit. Outside an enabled patch it only
    sets the switch (the descriptor that reads it is installed by the routes while enabled).
    """

    __slots__ = ("_previous",)

    def __enter__(self) -> None:
        if not _slot.installed:
            install()
        self._previous = _local.off
        _local.off = True

    def __exit__(self, *exc: Any) -> None:
        _local.off = self._previous
