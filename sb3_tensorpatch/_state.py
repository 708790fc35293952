"""The process's objects that must outlive a reload of the package's modules.

``importlib.reload`` runs a module's code again in the same module object, and IPython's
``%autoreload`` does the same after clearing the module's namespace: every object the module
makes at import is made anew. The patcher (its records of what it replaced in SB3's classes, the
open scopes), the sentinel in those records and the route's per-thread switch describe what is
installed right now; fresh copies would forget it (``is_enabled()`` would say ``False`` and
``disable()`` could no longer restore SB3). So each of them is made once, through :func:`keep`,
and every later run of the module that makes it gets the first one back.

This module keeps the objects and does nothing else, so that it never needs to change: a reload of
it keeps what it holds (``importlib.reload`` leaves the namespace in place), and ``%autoreload``
reloads only modules whose file changed.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

_T = TypeVar("_T")

#: name -> the object made first; a reload of this module finds it in its own namespace
_kept: dict[str, Any] = globals().get("_kept", {})


def keep(name: str, make: Callable[[], _T]) -> _T:
    """Return the object kept under ``name``; the first call makes it with ``make()``.

    :param name: the object's name, ``"module.name"`` by convention
    :param make: makes the object (called once per process)
    """
    try:
        return _kept[name]  # type: ignore[no-any-return]
    except KeyError:
        return _kept.setdefault(name, make())  # type: ignore[no-any-return]
