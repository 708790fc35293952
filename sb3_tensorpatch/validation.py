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
"""

from __future__ import annotations

import threading
from typing import Any

_local = threading.local()


class ValidationDefault:
    """Stands in for ``Distribution._validate_args`` while the patch is enabled.

    :param default: the class attribute's value when the patch was applied
    """

    __slots__ = ("default",)

    def __init__(self, default: bool) -> None:
        self.default = default

    def __get__(self, instance: object, owner: type | None = None) -> bool:
        if getattr(_local, "off", False):
            return False
        return self.default

    def __repr__(self) -> str:
        return f"ValidationDefault({self.default!r})"


class no_validation:
    """Context manager: distributions built in this thread skip argument validation.

    Re-entrant; restores the previous per-thread setting on exit.
    """

    __slots__ = ("_previous",)

    def __enter__(self) -> None:
        self._previous = getattr(_local, "off", False)
        _local.off = True

    def __exit__(self, *exc: Any) -> None:
        _local.off = self._previous
