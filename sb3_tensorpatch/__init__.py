"""sb3-tensorpatch: Stable-Baselines3 ``predict()`` for torch tensors, on the tensor's device.

.. code-block:: python

    import sb3_tensorpatch

    sb3_tensorpatch.enable()
    actions, _ = model.predict(obs_tensor, deterministic=True)  # a tensor on obs_tensor.device

Only the names below are public.
"""

from __future__ import annotations

import functools
import inspect
import threading
from typing import TYPE_CHECKING, Any, AsyncGenerator, Callable, Generator, TypeVar, overload

from . import _state
from .patcher import Patcher
from .status import RowStatus, Status
from .table import UnsupportedVersionError

if TYPE_CHECKING:
    from .vec_env import TensorVecEnv

__version__ = "0.1.0"

__all__ = [
    "RowStatus",
    "Status",
    "TensorVecEnv",
    "UnsupportedVersionError",
    "__version__",
    "disable",
    "enable",
    "is_enabled",
    "patched",
    "status",
]

_F = TypeVar("_F", bound=Callable[..., Any])


def __getattr__(name: str) -> Any:
    # TensorVecEnv subclasses SB3's VecEnv: importing it loads torch and SB3, which ``import sb3_tensorpatch``
    # must not (the pytest plugin imports the package in every test run of everyone who installs it)
    if name == "TensorVecEnv":
        from .vec_env import TensorVecEnv

        globals()[name] = TensorVecEnv
        return TensorVecEnv
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# the one patcher of the process (importing it loads neither torch nor SB3); a reload of the package
# (importlib.reload, IPython's %autoreload) finds the same one, with what it installed
_patcher: Patcher = _state.keep("patcher", Patcher)


def enable() -> Status:
    """Patch SB3 so that ``predict()`` accepts torch tensors. Idempotent.

    Imports SB3 (and sb3-contrib when installed), checks their versions and every target's
    signature against the patch table, and patches only when all fit.

    :return: the status after enabling
    :raises UnsupportedVersionError: when the installed SB3 is outside the table; nothing is patched
    """
    return _patcher.enable()


def disable() -> Status:
    """Undo the patch exactly. Idempotent, and safe when it was never enabled.

    Ends every open :func:`patched` scope too.

    :return: the status after disabling
    """
    return _patcher.disable()


def is_enabled() -> bool:
    """Return whether the patch is installed right now."""
    return _patcher.is_enabled()


def status() -> Status:
    """Return the installed SB3 / sb3-contrib versions, the table rows that match, and what is patched."""
    return _patcher.status()


class _Scope:
    """A :func:`patched` scope: a context manager, and a decorator that opens a fresh scope per call."""

    __slots__ = ("_tokens",)

    def __init__(self) -> None:
        # per thread, so that one scope object may be entered by several threads at once
        self._tokens: dict[int, list[Any]] = {}

    def __enter__(self) -> Status:
        token = _patcher.enter_scope()
        self._tokens.setdefault(threading.get_ident(), []).append(token)
        return _patcher.status(fresh=False)

    def __exit__(self, *exc: object) -> None:
        thread = threading.get_ident()
        stack = self._tokens[thread]
        token = stack.pop()
        if not stack:
            del self._tokens[thread]
        _patcher.exit_scope(token)

    def __call__(self, function: _F) -> _F:
        if inspect.isgeneratorfunction(function):
            return _scoped_generator(function)  # type: ignore[return-value]
        if inspect.iscoroutinefunction(function):
            return _scoped_coroutine(function)  # type: ignore[return-value]
        if inspect.isasyncgenfunction(function):
            return _scoped_async_generator(function)  # type: ignore[return-value]

        @functools.wraps(function)
        def scoped(*args: Any, **kwargs: Any) -> Any:
            with _Scope():
                return function(*args, **kwargs)

        return scoped  # type: ignore[return-value]


# A generator's or coroutine's scope is open from its first step until it finishes, is closed or
# raises: its token lives in its own frame (not per thread, as a ``with`` block's does), because it
# may be resumed, closed or collected in another thread than the one that started it.


def _scoped_generator(function: Callable[..., Generator[Any, Any, Any]]) -> Callable[..., Generator[Any, Any, Any]]:
    @functools.wraps(function)
    def scoped(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
        token = _patcher.enter_scope(undo=False)
        try:
            return (yield from function(*args, **kwargs))  # delegates send(), throw() and close()
        finally:
            _patcher.exit_scope(token)

    return scoped


def _scoped_coroutine(function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    async def scoped(*args: Any, **kwargs: Any) -> Any:
        token = _patcher.enter_scope(undo=False)
        try:
            return await function(*args, **kwargs)
        finally:
            _patcher.exit_scope(token)

    return scoped


def _scoped_async_generator(
    function: Callable[..., AsyncGenerator[Any, Any]],
) -> Callable[..., AsyncGenerator[Any, Any]]:
    @functools.wraps(function)
    async def scoped(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
        token = _patcher.enter_scope(undo=False)
        try:
            inner = function(*args, **kwargs)
            try:
                # what ``yield from`` does for a generator (async generators have no such form):
                # pass asend() values and athrow() exceptions on; aclose() closes the inner one
                item = await inner.__anext__()
                while True:
                    try:
                        sent = yield item
                    except GeneratorExit:
                        raise
                    except BaseException as exc:
                        item = await inner.athrow(exc)
                    else:
                        item = await inner.asend(sent)
            except StopAsyncIteration:
                return
            finally:
                await inner.aclose()
        finally:
            _patcher.exit_scope(token)

    return scoped


@overload
def patched(function: None = None) -> _Scope: ...
@overload
def patched(function: _F) -> _F: ...
def patched(function: _F | None = None) -> _Scope | _F:
    """Enable the patch for a block or a function, then restore the state found on entry.

    Usable as ``with patched():``, as ``@patched()`` and as ``@patched``. Scopes nest and are counted
    across threads: the patch stays installed while any scope is open or :func:`enable` was called.
    On exit, also when the body raises, an :func:`enable` or :func:`disable` that this thread called
    inside the scope is undone, so the state found on entry is back; one called by another thread
    stands. :func:`disable` is a hard off that closes every open scope.

    A decorated generator function, ``async def`` function or async generator function opens its
    scope when the generator or coroutine starts running (its first ``next()``, ``send()`` or
    ``await``), keeps it open while it is suspended, and closes it when it finishes, is closed or
    raises (an unfinished generator is closed when it is garbage collected). Two differences from a
    ``with`` block: the scope may be closed by another thread than the one that opened it (a
    generator resumed or collected there), and an :func:`enable` or :func:`disable` called while it
    is open stands, because its thread runs the caller's code and other tasks between its steps and
    those calls cannot be told from the body's own. A plain function that returns a generator or an
    awaitable without being one of these gets a scope around its own call only, before any of the
    returned object runs: decorate the generator or coroutine function itself.

    :param function: the function to decorate, when used as a bare ``@patched``
    """
    scope = _Scope()
    if function is None:
        return scope
    return scope(function)
