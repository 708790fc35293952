"""What the patcher installs: one wrapper function per target, and the record of what it replaced.

This module says *what* goes into SB3's classes; :mod:`sb3_tensorpatch.patcher` says *when* (enable,
disable, scopes) and *where* (the patch table). A wrapper is a plain function generated from the
target's own signature: tensors go to the tensor route, other libraries' arrays to it through DLPack,
everything else to the entry it replaced.

Why generated functions and not wrapt ``FunctionWrapper`` proxies: a generated function binds and
calls as a method of the class, as SB3's own does (a call allocates no ``*args`` tuple or ``**kwargs``
dict and costs a fraction of a wrapt dispatch: ``scripts/microbench.py wrapper``), it keeps the exact
signature (a bad call raises Python's own ``TypeError`` word for word), and a bound method of it
pickles by name, where a bound wrapt wrapper raises ``NotImplementedError``
(``scripts/microbench.py pickle``).
"""

from __future__ import annotations

import functools
import inspect
import types
from typing import Any, Callable

from . import _state

Route = Callable[..., Any]

#: "the class had no entry": kept across a reload of this module, like everything a record holds
MISSING = _state.keep("patcher._MISSING", object)


class Record:
    """One installed patch: where it went, what it replaced, and whether it still routes.

    :param row: the table row it comes from
    :param owner: the class whose ``__dict__`` holds it
    :param name: the attribute
    :param original: the ``__dict__`` entry it replaced, or :data:`MISSING`
    """

    __slots__ = ("active", "name", "original", "owner", "route", "row", "wrapper")

    def __init__(self, row: Any, owner: type, name: str, original: Any) -> None:
        self.row = row
        self.owner = owner
        self.name = name
        self.original = original
        self.wrapper: Any = None
        self.route: Route | None = None
        #: false once the patch is undone: a wrapper still held somewhere passes every call on
        self.active = True

    @property
    def target(self) -> str:
        return f"{self.owner.__module__}:{self.owner.__qualname__}.{self.name}"


# one record class per process: the records made before a reload of this module (held by the kept
# patcher and by the installed wrappers) must pass the checks below after it
Record = _state.keep("patcher._Record", lambda: Record)  # type: ignore[misc]  # noqa: F811 (on purpose)

#: the attribute of our wrapper functions that holds their record
_RECORD = "_sb3_tensorpatch_record"


def make_wrapper(function: Any, route: Route, first: str, record: Record) -> Callable[..., Any]:
    """Return the function installed in place of ``function``: tensors to ``route``, the rest to ``function``.

    The wrapper takes the original's own parameters with the original's default objects where
    :func:`_parameters` can restate them, else ``(*args, **kwargs)``; both forms are rendered from
    one template by :func:`_source` and decide alike. ``functools.update_wrapper`` gives it the
    original's name, qualified name, module and docstring, and ``__wrapped__``, through which
    ``inspect.signature`` shows the original's parameters.

    The decision is one ``isinstance`` on the observation; anything else is told by
    :func:`~sb3_tensorpatch.observations.route_kind`: a dict observation goes to the route when a
    value is a tensor, and another library's array (or a dict of them) to the route through DLPack
    (:func:`~sb3_tensorpatch.dlpack.foreign_route`, built here once). Once ``record.active`` is false
    every call goes to ``function``.

    :param function: the entry of the class's ``__dict__`` being replaced (SB3's function, or a
        wrapper someone installed before ``enable()``, called through the descriptor protocol)
    :param route: the tensor route for this target
    :param first: the name of the observation parameter (after ``self``)
    :param record: this patch's record
    """
    from torch import Tensor

    from .dlpack import foreign_route
    from .observations import TENSOR, route_kind

    namespace: dict[str, Any] = {
        "__name__": __name__,  # its frames are ours (warnings skip them to reach the caller)
        "_route": route, "_record": record, "_function": function, "_Tensor": Tensor,
        "_route_kind": route_kind, "_TENSOR": TENSOR,
        "_foreign": foreign_route(route, tuple(inspect.signature(function).parameters)[1:]),
    }
    is_function = type(function) is types.FunctionType  # not isinstance: proxies such as wrapt pass that test
    decides = record.row is not None and record.row.decides
    source = _source(inspect.signature(function), first, is_function, namespace, decides)
    # written from the checked signature's parameter names only; tracebacks name the target
    exec(compile(source, f"<sb3-tensorpatch wrapper of {record.target}>", "exec"), namespace)
    wrapper: Callable[..., Any] = namespace["wrapper"]
    functools.update_wrapper(wrapper, function)
    setattr(wrapper, _RECORD, record)
    return wrapper


def _parameters(signature: inspect.Signature, first: str, namespace: dict[str, Any]) -> list[str] | None:
    """The wrapper's declared parameters, restating ``signature``'s, or ``None`` where they cannot be.

    Defaults are the original's own objects, put in ``namespace``; names must be identifiers and
    every parameter positional-or-keyword (SB3's ``predict`` and ``VecNormalize`` methods are), and
    ``first`` must be the parameter after ``self``.
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
    return declared


def _source(signature: inspect.Signature, first: str, is_function: bool, namespace: dict[str, Any], decides: bool = False) -> str:
    """The source of the wrapper: the exact-signature form, or the ``(*args, **kwargs)`` form.

    :param is_function: the original is a function, called directly; else it is bound through the
        descriptor protocol first (a wrapper someone installed before us, a proxy)
    :param decides: every call goes to the route while the patch is active (the row's ``decides``)
    """
    declared = _parameters(signature, first, namespace)
    if declared is not None:
        names = [name.partition("=")[0] for name in declared]
        instance, rest = names[0], ", ".join(names[1:])
        parameters, observation, arguments = ", ".join(declared), first, ", ".join(names)
        guard, called = "", "_record.active"
    else:
        instance, rest = "_args[0]", "*_args[1:], **_kwargs"
        parameters, observation, arguments = "*_args, **_kwargs", "_observation", "*_args, **_kwargs"
        # the observation is the argument after self, by position or by name; no self, no route
        guard = f"    _observation = _args[1] if len(_args) > 1 else _kwargs.get({first!r})\n"
        called = "_args and _record.active"
    original = f"_function({arguments})" if is_function else f"_function.__get__({instance}, type({instance}))({rest})"
    if declared is None and not is_function:
        original = f"({original} if _args else _function(**_kwargs))"
    if decides:
        return f"def wrapper({parameters}):\n    if {called}:\n        return _route({arguments})\n    return {original}\n"
    return (
        f"def wrapper({parameters}):\n"
        f"{guard}"
        # a tensor is told by one isinstance; anything else (NumPy first) by route_kind
        f"    if {called}:\n"
        f"        if isinstance({observation}, _Tensor):\n"
        f"            return _route({arguments})\n"
        f"        _kind = _route_kind({observation})\n"
        f"        if _kind:\n"
        f"            return _route({arguments}) if _kind == _TENSOR else _foreign({observation}, {arguments})\n"
        f"    return {original}\n"
    )


def caller(function: Any) -> Route:
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
    return isinstance(record, Record) and record.wrapper is entry


def tensor_route(cls: type, name: str) -> Route | None:
    """Return the tensor route that ``cls.name`` resolves to, or ``None``.

    ``None`` unless the attribute found first in the MRO is one of our wrappers and still routes
    (a wrapper someone installed on top of ours, or an override in a subclass, gives ``None``).
    A route that calls another patched method calls the route directly when this gives one,
    skipping a second pass through a wrapper.
    """
    # a function read from a class is the function itself (no binding); the MRO walk is Python's own
    entry = getattr(cls, name, None)
    record = getattr(entry, _RECORD, None)
    if record.__class__ is Record and record.wrapper is entry and record.active:
        return record.route  # type: ignore[union-attr, no-any-return]
    return None
