"""Distribution argument validation, switched off for the tensor route alone.

``torch.distributions`` validates its arguments by default, and the checks read values back to the
host (``aten._local_scalar_dense``: a stream sync on a GPU). SB3 builds a distribution on every
``_predict``. The tensor route turns validation off for its own thread, for the duration of one
``_predict`` call; every other thread, and this thread outside the route, sees the default exactly as
it was.

The mechanism: while the patch is enabled, ``Distribution._validate_args`` (a class attribute that
instances read unless they were given ``validate_args=``) is a non-data descriptor that returns the
recorded default, or ``False`` while the current thread is inside the tensor route. ``disable()``
puts the recorded value back. If someone calls ``Distribution.set_default_validate_args`` while the
patch is enabled, their value replaces the descriptor (they win), and ``disable()`` leaves it alone.

Every distribution built anywhere in the process reads ``_validate_args`` while the patch is on
(training too), so the read costs one attribute lookup on the per-thread switch and raises nothing:
the switch's class attribute is the value of every thread that never entered the route.
"""

from __future__ import annotations

import threading
from typing import Any

from . import _state


class _Switch(threading.local):
    """The per-thread switch: ``off`` is true while this thread runs inside the tensor route.

    The routes set ``_local.off`` and read it back as ``_local.off``.
    """

    #: the value in a thread that never set its own: found on the class, so a read never raises
    off = False


#: the one switch of the process: the routes hold it since their import, so a reload must keep it
_local: _Switch = _state.keep("validation._local", _Switch)


class ValidationDefault:
    """Stands in for ``Distribution._validate_args`` while the patch is enabled.

    :param default: the class attribute's value when the patch was applied
    """

    __slots__ = ("default",)

    def __init__(self, default: bool) -> None:
        self.default = default

    def __get__(self, instance: object, owner: type | None = None) -> bool:
        # read by every Distribution.__init__ in the process: one lookup, no exception
        return False if _local.off else self.default

    def __repr__(self) -> str:
        return f"ValidationDefault({self.default!r})"


class no_validation:
    """Context manager: distributions built in this thread skip argument validation.

    Re-entrant; restores the previous per-thread setting on exit.
    """

    __slots__ = ("_previous",)

    def __enter__(self) -> None:
        self._previous = _local.off
        _local.off = True

    def __exit__(self, *exc: Any) -> None:
        _local.off = self._previous
