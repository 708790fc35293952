"""SB3's own path through one host round trip, for classes whose overrides the route cannot restate.

SB3's ``predict`` calls methods that a subclass may override: a policy's ``obs_to_tensor`` (custom
preprocessing) or ``unscale_action`` (custom scaling), ``VecNormalize``'s ``_normalize_obs`` and
``_unnormalize_obs``. These take and return NumPy arrays, so the tensor route can neither call them on
the device nor skip them without giving other results than SB3. For such a class the route copies
the tensors to NumPy, calls SB3's original method (which calls the override), and turns what it
returns back into tensors on the input's device: exactly SB3's values, at the cost of one round
trip, with a warning once per class and method.

Which methods count is decided once per class (policies: in their plan), never per call.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from .notices import warn_once

Tensor = torch.Tensor


def _numpy_twins() -> dict[torch.dtype, np.dtype[Any]]:
    twins = {}
    for name in ("bool", "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64",
                 "float16", "float32", "float64", "complex64", "complex128"):
        try:
            twins[torch.from_numpy(np.zeros(0, dtype=name)).dtype] = np.dtype(name)
        except TypeError:  # a torch without this dtype (uint16..uint64 before torch 2.3)
            pass
    return twins


#: the NumPy dtype of each torch dtype that has one (a lookup: no tensor is made, so it works under
#: any torch mode, fake tensors included)
NUMPY_DTYPES: dict[torch.dtype, np.dtype[Any]] = _numpy_twins()
#: the torch dtype of each NumPy dtype that has one
TORCH_DTYPES: dict[np.dtype[Any], torch.dtype] = {twin: dtype for dtype, twin in NUMPY_DTYPES.items()}


def first_override(cls: type, methods: dict[str, tuple[Any, ...]]) -> str | None:
    """Return the first name in ``methods`` that ``cls`` resolves to none of SB3's own functions for it.

    :param cls: the class of the policy or ``VecNormalize``
    :param methods: method name to the functions SB3 and sb3-contrib define for it
    """
    for name, own in methods.items():
        if not any(getattr(cls, name, None) is function for function in own):
            return name
    return None


def warn_round_trip(obj: object, method: str) -> None:
    """Say once per class and method that this class's tensor calls take SB3's path through the host."""
    cls = type(obj)
    warn_once(
        ("host", cls, method),
        f"{cls.__qualname__} overrides {method}(), which SB3 calls with NumPy arrays; its tensor calls take "
        "SB3's own path through one host round trip, so the results are SB3's exactly (warned once per class).",
    )


def to_numpy(value: Any) -> Any:
    """Tensors (alone, or in a dict, tuple or list) as NumPy arrays; anything else as it is.

    A dtype NumPy lacks (``bfloat16``) becomes ``float32``, which holds every such value exactly; a
    sparse tensor becomes its dense equivalent.
    """
    if isinstance(value, Tensor):
        value = value.detach()
        if value.layout != torch.strided:
            value = value.to_dense()
        if value.dtype == torch.bfloat16:
            value = value.float()
        return value.cpu().resolve_conj().numpy()
    if isinstance(value, dict):
        return {key: to_numpy(item) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(to_numpy(item) for item in value)
    return value


def to_tensor(value: Any, device: torch.device) -> Any:
    """NumPy arrays (alone, or in a dict or tuple) as tensors on ``device``, dtype kept; anything else as it is."""
    if isinstance(value, (np.ndarray, np.generic)):
        array = np.asarray(value)
        # torch takes no negative strides; np.ascontiguousarray would turn a 0-d array into 1-d
        return torch.as_tensor(array if array.flags.c_contiguous else array.copy(), device=device)
    if isinstance(value, dict):
        return {key: to_tensor(item, device) for key, item in value.items()}
    if isinstance(value, tuple):
        return tuple(to_tensor(item, device) for item in value)
    return value


def device_of(observation: Any) -> torch.device:
    """The device of a tensor observation, or of the first tensor in a dict of them."""
    if isinstance(observation, Tensor):
        return observation.device
    return next(value.device for value in observation.values() if isinstance(value, Tensor))


def round_trip(original: Callable[..., Any], obj: Any, method: str, observation: Any, *args: Any) -> Any:
    """Call ``original(obj, observation, *args)`` with NumPy arrays; return its result as tensors.

    :param original: SB3's method (the entry the patch replaced), as a function taking ``obj`` first
    :param obj: the policy, algorithm or ``VecNormalize``
    :param method: the overridden method that sends this call through the host (for the warning)
    :param observation: a tensor, or a dict of them
    :param args: the method's other arguments, tensors among them converted too
    """
    warn_round_trip(obj, method)
    device = device_of(observation)
    result = original(obj, to_numpy(observation), *(to_numpy(arg) for arg in args))
    return to_tensor(result, device)
