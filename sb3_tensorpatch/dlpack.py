"""Arrays of other libraries (JAX, CuPy, Warp, ...) through DLPack: in zero-copy, out as the caller's kind.

With the patch on, an observation that is neither a torch tensor nor a NumPy array but implements
``__dlpack__`` (or a dict whose values do) is a *foreign* array. The wrapper sends such calls to
the route that :func:`foreign_route` builds once per target at ``enable()`` around the tensor
route: it imports every foreign argument (the observation, and ``state``, ``episode_start`` or
``action_masks`` where given) with ``torch.from_dlpack`` (no copy: the tensor views the caller's
memory on the caller's device), calls the tensor route, and gives every tensor of the result back
to the observation's library through that library's own ``from_dlpack``. NumPy arrays implement
``__dlpack__`` too; they stay on SB3's own path, as everything that is not routed.

The library is told by the observation's type: its top-level module (``jaxlib`` or ``jax`` for a
JAX array, ``cupy``, ``warp``) names a known library, whose module is imported then (the caller
holds one of its arrays, so it is imported already); another library's arrays come back through
the array API's ``__array_namespace__().from_dlpack`` or its top-level ``from_dlpack``. This is
decided once per type.

What comes back has torch's dtype where the library has it (zero-copy then). JAX without
``jax_enable_x64`` has no 64-bit arrays: 64-bit results (``int64`` Discrete actions, ``float64``
actions of integer Box bounds and ``VecNormalize.unnormalize_obs`` results) come back 32-bit, with
the values ``jnp.asarray`` gives SB3's NumPy result (narrowed in torch first: see :func:`_jax_export`).
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.dlpack import from_dlpack as _from_dlpack

from .errors import ForeignArrayError
from .host import NUMPY_DTYPES, TORCH_DTYPES

Tensor = torch.Tensor
Route = Callable[..., Any]
Export = Callable[[Tensor], Any]

#: types that implement ``__dlpack__`` but are not foreign: torch's own, and NumPy's (SB3's input)
_NOT_FOREIGN = (Tensor, np.ndarray, np.generic)


def _jax_export() -> Export:
    """JAX's ``from_dlpack``, after narrowing 64-bit results in torch where JAX is without x64.

    Without ``jax_enable_x64`` JAX holds no 64-bit arrays and would narrow them itself, on import,
    flushing float32 subnormals to zero on the way. Narrowed here with torch's ``.to`` they get NumPy's
    ``astype`` values, which is what ``jnp.asarray`` makes of SB3's NumPy result (and one copy fewer).
    Whether x64 is on is asked on each call (``jax.enable_x64`` switches it in a scope).
    """
    from jax import dlpack as jax_dlpack
    from jax import dtypes as jax_dtypes

    from_dlpack = jax_dlpack.from_dlpack
    canonical = jax_dtypes.canonicalize_dtype

    def export(tensor: Tensor) -> Any:
        wide = _WIDE.get(tensor.dtype)
        if wide is not None:
            narrow = TORCH_DTYPES.get(np.dtype(canonical(wide)))
            if narrow is not None and narrow != tensor.dtype:
                tensor = tensor.to(narrow)
        return from_dlpack(tensor)

    return export


def _module_export(module: str) -> Callable[[], Export]:
    def load() -> Export:
        return importlib.import_module(module).from_dlpack  # type: ignore[no-any-return]

    return load


#: torch's 64-bit dtypes and their NumPy twins (uint64 from torch 2.3 on), from the one twin table
_WIDE: dict[torch.dtype, np.dtype[Any]] = {
    dtype: twin for dtype, twin in NUMPY_DTYPES.items() if twin.name in ("int64", "uint64", "float64", "complex128")
}

#: top-level module of an array's type -> (the library's name, what gives its arrays back from tensors)
_KNOWN: dict[str, tuple[str, Callable[[], Export]]] = {
    "jax": ("JAX", _jax_export),
    "jaxlib": ("JAX", _jax_export),
    "cupy": ("CuPy", _module_export("cupy")),
    "warp": ("Warp", _module_export("warp")),
}

#: DLPack device types, for the messages
_DEVICE_TYPES = {1: "cpu", 2: "cuda", 3: "cuda_host", 4: "opencl", 7: "vulkan", 8: "metal", 9: "vpi",
                 10: "rocm", 11: "rocm_host", 13: "cuda_managed", 14: "oneapi", 15: "webgpu", 16: "hexagon"}


#: per type: whether its instances are foreign arrays (a lookup: a failing ``hasattr`` costs more)
_foreign_types: dict[type, bool] = {}
#: types kept in that cache; a program sees a handful, more means types made on the fly
_MAX_TYPES = 256


def is_foreign(value: object) -> bool:
    """Return whether ``value`` is another library's array: it implements ``__dlpack__`` and is
    neither a torch tensor nor a NumPy array or scalar."""
    cls = type(value)
    known = _foreign_types.get(cls)
    if known is None:
        known = hasattr(cls, "__dlpack__") and not issubclass(cls, _NOT_FOREIGN)
        if len(_foreign_types) >= _MAX_TYPES:
            _foreign_types.clear()
        # a dict assignment is atomic: concurrent first calls at worst decide twice
        _foreign_types[cls] = known
    return known


def library(cls: type) -> str:
    """The name of the library whose array type ``cls`` is (``"JAX"``, ``"CuPy"``, ``"Warp"``, or its module)."""
    package = cls.__module__.partition(".")[0]
    known = _KNOWN.get(package)
    return known[0] if known is not None else package


def _describe(value: object) -> str:
    cls = type(value)
    return f"a {library(cls)} array ({cls.__module__}.{cls.__qualname__})"


#: per foreign array type: how to give tensors back as that type's library's arrays
_exporters: dict[type, Export] = {}


def exporter(value: object) -> Export:
    """The function that turns a tensor into an array of ``value``'s library (found once per type).

    :raises ForeignArrayError: when the library offers no ``from_dlpack``
    """
    cls = type(value)
    found = _exporters.get(cls)
    if found is None:
        found = _exporters[cls] = _find_exporter(value)
    return found


def _find_exporter(value: object) -> Export:
    cls = type(value)
    package = cls.__module__.partition(".")[0]
    known = _KNOWN.get(package)
    function: Any = None
    if known is not None:
        function = known[1]()
    if function is None and hasattr(value, "__array_namespace__"):
        try:
            function = getattr(value.__array_namespace__(), "from_dlpack", None)
        except Exception:  # an array API namespace that fails to load: try the module next
            function = None
    if function is None:
        function = getattr(sys.modules.get(package), "from_dlpack", None)
    if function is None:
        raise ForeignArrayError(
            f"Error: the observation is {_describe(value)}, which sb3-tensorpatch takes in through DLPack, but "
            f"{library(cls)} has no from_dlpack to give the actions back as its arrays. Pass "
            "torch.from_dlpack(observation) to get torch tensors back, or numpy.asarray(observation) for "
            "SB3's NumPy path."
        )
    return function  # type: ignore[no-any-return]


def _import(value: Any, name: str) -> Tensor:
    """``torch.from_dlpack(value)``, or an error that names the library and the fix."""
    strides = getattr(value, "strides", None)  # CuPy's and Warp's arrays say (JAX's are always dense)
    if isinstance(strides, tuple) and any(stride < 0 for stride in strides):
        # torch cannot view negative strides, and aborts the process on some DLPack exports of them
        raise ForeignArrayError(
            f"Error: the value of {name} is {_describe(value)} with negative strides {strides}, which torch "
            "cannot view: pass a contiguous copy of it, or numpy.asarray(...) for SB3's NumPy path."
        )
    try:
        return _from_dlpack(value)  # type: ignore[no-any-return]
    except Exception as exc:  # each library raises its own class (BufferError, JaxRuntimeError, ...)
        raise ForeignArrayError(f"Error: the value of {name} is {_describe(value)}, which torch.from_dlpack cannot import: {exc}. {_fix(value)}") from exc


def _fix(value: Any) -> str:
    """What the caller can do about an array torch could not import."""
    try:
        device_type = int(value.__dlpack_device__()[0])
    except Exception:
        device_type = 0
    device = _DEVICE_TYPES.get(device_type, f"DLPack device type {device_type}")
    if device_type in (2, 3, 13) and not torch.cuda.is_available():
        return (
            f"It lives on {device}, which this torch build cannot use (torch.cuda.is_available() is False): "
            "install a CUDA build of torch, or pass numpy.asarray(...) for SB3's NumPy path."
        )
    if device_type not in (0, 1, 2, 3, 10, 11, 13):
        return f"It lives on {device}, which torch cannot use: move it to the CPU or a GPU torch supports first."
    return (
        "Cast it to a dtype torch supports (bool, integers, floats, complex), or pass numpy.asarray(...) for SB3's "
        "NumPy path."
    )


def to_torch(value: Any, name: str) -> Any:
    """``value`` with every foreign array in it (alone, in a dict, tuple or list) as a torch tensor."""
    if is_foreign(value):
        return _import(value, name)
    if isinstance(value, dict):
        return {key: to_torch(item, f"{name}[{key!r}]") for key, item in value.items()}
    if type(value) is tuple or type(value) is list:
        return type(value)(to_torch(item, f"{name}[{index}]") for index, item in enumerate(value))
    return value


def to_caller(value: Any, export: Export, kind: str) -> Any:
    """``value`` with every tensor in it (alone, in a dict, tuple or list) as an array of the caller's library.

    :param kind: the library's name, for the message when it cannot take a tensor
    """
    if isinstance(value, Tensor):
        try:
            return export(value)
        except Exception as exc:
            raise ForeignArrayError(
                f"Error: {kind} cannot take back a result of dtype {value.dtype} on {value.device} through "
                f"DLPack: {exc}. Pass torch.from_dlpack(observation) to get torch tensors back."
            ) from exc
    if isinstance(value, dict):
        return {key: to_caller(item, export, kind) for key, item in value.items()}
    if type(value) is tuple or type(value) is list:
        return type(value)(to_caller(item, export, kind) for item in value)
    return value


def first_foreign(observation: Any) -> Any:
    """The observation itself, or the first foreign array among its values."""
    if isinstance(observation, dict):
        return next(value for value in observation.values() if is_foreign(value))
    return observation


def foreign_route(route: Route, names: tuple[str, ...]) -> Route:
    """The route for foreign arrays around the tensor ``route``: arguments in through DLPack, results back.

    The wrapper calls it with the observation first, then with the arguments it would give
    ``route``; the library to give the results back to is the observation's, found before any work.

    :param route: the tensor route of the target
    :param names: the target's parameter names after ``self``, for the messages
    """

    def predict_foreign(observation: Any, *args: Any, **kwargs: Any) -> Any:
        caller = first_foreign(observation)
        export = exporter(caller)  # before any work: a library we cannot give results back to fails here
        # args[0] is the policy, model or VecNormalize; then the target's parameters in order
        converted = [to_torch(arg, names[index] if index < len(names) else "an argument") for index, arg in enumerate(args[1:])]
        for key, value in kwargs.items():
            kwargs[key] = to_torch(value, key)
        return to_caller(route(args[0], *converted, **kwargs), export, library(type(caller)))

    return predict_foreign
