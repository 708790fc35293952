"""Check the tensor route against SB3's NumPy path on your own models and policies.

.. code-block:: python

    from sb3_tensorpatch.testing import assert_predict_parity

    assert_predict_parity(model, [env.observation_space.sample() for _ in range(8)])
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

from .host import NUMPY_DTYPES

__all__ = ["ParityError", "assert_predict_parity", "to_tensor"]


class ParityError(AssertionError):
    """The tensor route and the NumPy path disagree."""


def to_tensor(value: Any, device: str | torch.device = "cpu") -> Any:
    """Convert a numpy observation (array, scalar or dict of them) to tensors on ``device``."""
    if isinstance(value, Mapping):
        return {key: to_tensor(item, device) for key, item in value.items()}
    if value is None or isinstance(value, torch.Tensor):
        return value
    if isinstance(value, tuple):
        return tuple(to_tensor(item, device) for item in value)
    return torch.as_tensor(np.asarray(value), device=device)


def _numpy_dtype_of(tensor: torch.Tensor) -> np.dtype[Any] | None:
    return NUMPY_DTYPES.get(tensor.dtype)


def _same_values(got: np.ndarray, expected: np.ndarray, atol: float | None) -> np.ndarray:
    """Elementwise agreement: bit for bit when ``atol`` is ``None``, else within ``atol``.

    Bit for bit means the same bytes, so ``-0.0`` and ``0.0`` differ (they behave differently in
    later arithmetic, ``1 / x`` for one). NaN is the exception: a NaN matches a NaN in the same
    place whatever its sign and payload bits, which neither NumPy nor PyTorch keeps stable.
    """
    if atol is not None:
        return np.asarray(np.isclose(got, expected, atol=atol, rtol=0, equal_nan=True))
    if expected.dtype.kind == "f":
        bits = np.dtype(f"u{expected.dtype.itemsize}")
        return np.asarray((got.view(bits) == expected.view(bits)) | (np.isnan(got) & np.isnan(expected)))
    return np.asarray(got == expected)


def _compare(what: str, expected: Any, actual: Any, device: torch.device, atol: float | None, values: bool) -> list[str]:
    """Return the differences between a numpy result and a tensor result."""
    if expected is None or actual is None:
        return [] if expected is None and actual is None else [f"{what}: NumPy path gave {expected!r}, tensor route gave {actual!r}"]
    if isinstance(expected, tuple):
        if not isinstance(actual, tuple) or len(actual) != len(expected):
            return [f"{what}: NumPy path gave a tuple of {len(expected)}, tensor route gave {type(actual).__name__}"]
        problems: list[str] = []
        for index, (one, other) in enumerate(zip(expected, actual)):
            problems += _compare(f"{what}[{index}]", one, other, device, atol, values)
        return problems
    expected = np.asarray(expected)
    if not isinstance(actual, torch.Tensor):
        return [f"{what}: tensor route returned {type(actual).__name__}, expected a torch.Tensor"]
    problems = []
    if actual.device != device:
        problems.append(f"{what}: on device {actual.device}, expected the input's device {device}")
    if tuple(actual.shape) != expected.shape:
        problems.append(f"{what}: shape {tuple(actual.shape)}, NumPy path gives {expected.shape}")
    if _numpy_dtype_of(actual) != expected.dtype:
        problems.append(f"{what}: dtype {actual.dtype}, NumPy path gives {expected.dtype}")
    if values and not problems:
        got = actual.detach().cpu().numpy()
        same = _same_values(got, expected, atol)
        if not same.all():
            with np.errstate(all="ignore"):
                worst = np.nanmax(np.abs(got.astype(np.float64) - expected.astype(np.float64)), initial=0.0)
            bound = "not bit-identical" if atol is None else f"> {atol:g}"
            problems.append(
                f"{what}: values differ in {int(same.size - same.sum())} of {same.size} element(s) "
                f"(max abs difference {worst:.3g}, {bound})\n"
                f"    NumPy path:   {np.array2string(expected, threshold=12)}\n"
                f"    tensor route: {np.array2string(got, threshold=12)}"
            )
    return problems


def _in_space(space: Any, actions: np.ndarray, vectorized: bool) -> bool:
    batch = actions if vectorized else actions[None]
    return all(space.contains(np.asarray(one, dtype=space.dtype)) for one in batch)


def assert_predict_parity(
    model: Any,
    observations: Iterable[Any] | Any,
    *,
    deterministic: bool = True,
    device: str | torch.device = "cpu",
    atol: float | None = None,
    state: Any = None,
    episode_start: Any = None,
    action_masks: Any = None,
    batched: bool | None = None,
) -> None:
    """Assert that ``predict(tensor)`` agrees with ``predict(numpy)`` for each observation.

    For each observation (single or batched, array or dict of arrays) the model's ``predict`` is
    called with the numpy observation and with the same observation as a tensor on ``device``, with
    the patch enabled for the tensor call only. Deterministic: the actions (and the recurrent states,
    if any) must agree in values (within ``atol``), shape and dtype, and lie on ``device``.
    Stochastic: shapes, dtypes and devices must agree and every tensor action must lie in the
    action space.

    :param model: an SB3 algorithm (``model.predict``) or policy (``policy.predict``)
    :param observations: a list of observations, or one observation (an array or a dict)
    :param deterministic: passed to ``predict``
    :param device: the device the tensor observations are put on
    :param atol: absolute tolerance for the values; ``None`` (the default) asks for the same bits
        (NaN matches NaN, ``-0.0`` does not match ``0.0``). Deterministic SB3 prediction is
        reproducible, so the route owes the very same numbers; pass a tolerance only for a policy
        of your own whose forward pass is not deterministic (some GPU kernels)
    :param state: recurrent state passed to both calls (numpy; converted for the tensor call)
    :param episode_start: passed to both calls (numpy; converted for the tensor call)
    :param action_masks: passed to both calls (numpy; converted for the tensor call), maskable only
    :param batched: whether ``observations`` is one observation rather than a list of them; guessed
        when ``None`` (a numpy array or a dict is one observation)
    :raises ParityError: listing every difference found
    """
    import sb3_tensorpatch

    if batched is None:
        batched = isinstance(observations, (np.ndarray, Mapping))
    items = [observations] if batched else list(observations)
    device = torch.device(device)
    extra: dict[str, Any] = {}
    if action_masks is not None:
        extra["action_masks"] = action_masks
    space = model.action_space
    problems: list[str] = []
    for index, observation in enumerate(items):
        expected, expected_state = model.predict(
            observation, state=state, episode_start=episode_start, deterministic=deterministic, **extra
        )
        tensor_extra = {key: to_tensor(value, device) for key, value in extra.items()}
        with sb3_tensorpatch.patched():
            actual, actual_state = model.predict(
                to_tensor(observation, device),
                state=to_tensor(state, device),
                episode_start=to_tensor(episode_start, device),
                deterministic=deterministic,
                **tensor_extra,
            )
        what = f"observation #{index}"
        problems += _compare(f"{what} actions", expected, actual, device, atol, values=deterministic)
        problems += _compare(f"{what} state", expected_state, actual_state, device, atol, values=deterministic)
        if not deterministic and isinstance(actual, torch.Tensor) and actual.shape == np.shape(expected):
            got = actual.detach().cpu().numpy()
            if not _in_space(space, got, vectorized=got.shape != tuple(space.shape)):
                problems.append(f"{what} actions: {got} outside the action space {space}")
    if problems:
        name = type(model).__name__
        raise ParityError(f"predict parity failed for {name}:\n  " + "\n  ".join(problems))
