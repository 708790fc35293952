"""Warnings given once per key, pointing at the user's line.

The route warns about things the user may want to change (a tensor on another device than the policy,
a subclass whose override sends predict through the host) once per key, not on every call of a loop.
"""

from __future__ import annotations

import sys
import threading
import warnings
from typing import Hashable

_warned: set[Hashable] = set()
_lock = threading.Lock()

#: the packages whose frames a warning skips to reach the user's call (``model.predict`` passes
#: through SB3's ``BaseAlgorithm.predict`` before it reaches our wrapper)
_INTERNAL = ("sb3_tensorpatch", "stable_baselines3", "sb3_contrib")


def caller_level() -> int:
    """The ``stacklevel`` that points a warning at the first frame outside this package and SB3.

    The depth varies by route and by entry point (``model.predict`` or ``policy.predict``), so it
    is counted, not fixed.
    """
    frame = sys._getframe(1)  # the function that will call warnings.warn
    level = 1
    while frame.f_back is not None and frame.f_globals.get("__name__", "").partition(".")[0] in _INTERNAL:
        frame = frame.f_back
        level += 1
    return level


def warn_once(key: Hashable, message: str) -> None:
    """Warn with ``message`` (a ``UserWarning`` at the user's line) unless ``key`` was warned about before."""
    if key in _warned:
        return
    with _lock:
        if key in _warned:
            return
        _warned.add(key)
    warnings.warn(f"sb3-tensorpatch: {message}", UserWarning, stacklevel=caller_level())
