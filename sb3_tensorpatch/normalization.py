"""On-device ``VecNormalize``: its statistics applied to tensors, never stale.

The statistics (``RunningMeanStd``: float64 ``mean`` and ``var``) become device tensors once and are
reused for as long as their values are the same. Each call compares the bytes of ``mean`` and
``var`` (host-side numpy arrays, so this reads nothing back from the device) and ``epsilon`` with the
snapshot the tensors were made from, so the next call after any change sees the new values: SB3
replacing the arrays on every update (``update_from_moments``), ``VecNormalize.load`` replacing the
whole object, an assignment of new statistics, and an in-place edit of the arrays alike.

The arithmetic is SB3's, in the dtype numpy would use for the same operands (float64 in general,
the input's dtype where numpy's promotion rules keep it). As numpy does, every operand is brought to
that dtype first (the statistics once, in the cache; the input only where torch's own promotion
would not reach it), so the results agree with the numpy path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional, Tuple

import numpy as np
import torch

from . import host
from .errors import ObservationTypeError
from .plans import statistics

if TYPE_CHECKING:
    from stable_baselines3.common.running_mean_std import RunningMeanStd
    from stable_baselines3.common.vec_env import VecNormalize


Tensor = torch.Tensor

# each operation of VecNormalize, as numpy computes it in SB3 and as the route restates it for
# tensors (``x`` in the result dtype or promoted to it by torch; ``mean`` and ``std`` in that dtype)
_NUMPY_OPS: dict[str, Callable[[Any, Any, Any], Any]] = {
    "normalize": lambda x, mean, std: (x - mean) / std,
    "unnormalize": lambda x, mean, std: (x * std) + mean,
    "normalize_reward": lambda x, mean, std: x / std,
    "unnormalize_reward": lambda x, mean, std: x * std,
}
_TORCH_OPS: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    # the in-place steps work on the fresh tensor the first step made, never on the input
    "normalize": lambda x, mean, std: torch.sub(x, mean).div_(std),
    "unnormalize": lambda x, mean, std: torch.mul(x, std).add_(mean),
    "normalize_reward": lambda x, mean, std: torch.div(x, std),
    "unnormalize_reward": lambda x, mean, std: torch.mul(x, std),
}

#: per (operation, input dtype, input is 0-d, device): the dtype to convert the input to first (or
#: ``None`` where torch promotes it there itself), the statistics tensors, and the operation
_Step = Tuple[Optional[torch.dtype], Tensor, Tensor, Callable[[Tensor, Tensor, Tensor], Tensor]]


def _torch_dtype(np_dtype: np.dtype[Any]) -> torch.dtype:
    return host.TORCH_DTYPES.get(np.dtype(np_dtype), torch.float64)  # float64 where torch has no twin


def _array(value: Any) -> np.ndarray:
    return value if type(value) is np.ndarray else np.asarray(value)


class _Stats:
    """Device tensors for one snapshot of a ``RunningMeanStd``: ``mean`` and ``sqrt(var + epsilon)``."""

    __slots__ = ("epsilon", "mean", "mean_bytes", "std", "steps", "tensors", "var", "var_bytes")

    def __init__(self, rms: Any, epsilon: float) -> None:
        # copies: the snapshot must not follow later in-place edits of the live arrays
        self.mean = np.array(rms.mean)
        self.var = np.array(rms.var)
        self.mean_bytes = self.mean.tobytes()
        self.var_bytes = self.var.tobytes()
        self.epsilon = epsilon
        self.std = np.sqrt(self.var + epsilon)  # SB3's expression, in numpy, once
        self.steps: dict[tuple[str, torch.dtype, bool, torch.device], _Step] = {}
        self.tensors: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor]] = {}

    def fresh(self, rms: Any, epsilon: float) -> bool:
        """Whether ``rms`` and ``epsilon`` still hold the values this snapshot was made from."""
        if epsilon != self.epsilon:
            return False
        mean = _array(rms.mean)
        var = _array(rms.var)
        return (
            mean.dtype == self.mean.dtype
            and var.dtype == self.var.dtype
            and mean.shape == self.mean.shape
            and var.shape == self.var.shape
            and mean.tobytes() == self.mean_bytes
            and var.tobytes() == self.var_bytes
        )

    def step(self, op: str, x: Tensor) -> _Step:
        """The cached plan for applying ``op`` to ``x``, built on first use."""
        key = (op, x.dtype, x.dim() == 0, x.device)
        found = self.steps.get(key)
        if found is None:
            found = self.steps[key] = self._build(*key)
        return found

    def _on(self, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        pair = self.tensors.get((device, dtype))
        if pair is None:
            # as numpy does, the statistics take the result dtype before the arithmetic
            pair = self.tensors[(device, dtype)] = (
                torch.tensor(self.mean, device=device).to(dtype),
                torch.tensor(self.std, device=device).to(dtype),
            )
        return pair

    def _build(self, op: str, dtype: torch.dtype, scalar: bool, device: torch.device) -> _Step:
        function = _TORCH_OPS[op]
        probe_shape = () if scalar else (1,)
        np_dtype = host.NUMPY_DTYPES.get(dtype)  # None: bfloat16 and others without a NumPy twin
        if np_dtype is None:
            result = torch.float64
        else:
            # numpy's promotion (value-based for 0-d operands before numpy 2) on a probe of the input
            probe = np.zeros(probe_shape, dtype=np_dtype)
            result = _torch_dtype(np.asarray(_NUMPY_OPS[op](probe, self.mean, self.std)).dtype)
        mean, std = self._on(device, result)
        # skip converting the input on every call where torch's own promotion gives the same dtype
        convert: torch.dtype | None = None
        if dtype != result:
            cpu_mean, cpu_std = self._on(torch.device("cpu"), result)
            try:
                promoted: torch.dtype | None = function(torch.zeros(probe_shape, dtype=dtype), cpu_mean, cpu_std).dtype
            except RuntimeError:  # e.g. bool operands of a subtraction
                promoted = None
            convert = None if promoted == result else result
        return convert, mean, std, function


def stats_for(rms: Any, epsilon: float) -> _Stats:
    """Return the cached device statistics for ``rms``, rebuilt if they changed since last time."""
    stats: _Stats | None = statistics.get(rms)
    if stats is None or not stats.fresh(rms, epsilon):
        stats = statistics.put(rms, _Stats(rms, epsilon))
    assert stats is not None
    return stats


def _apply(op: str, x: Tensor, rms: Any, epsilon: float) -> Tensor:
    """``op`` of :data:`_TORCH_OPS` on ``x`` with ``rms``'s statistics, in numpy's result dtype."""
    convert, mean, std, function = stats_for(rms, epsilon).step(op, x)
    if convert is not None:
        x = x.to(convert)
    return function(x, mean, std)


def _normalize(x: Tensor, rms: RunningMeanStd, venv: VecNormalize) -> Tensor:
    clip = venv.clip_obs
    return _apply("normalize", x, rms, venv.epsilon).clamp_(-clip, clip).to(torch.float32)


def _unnormalize(x: Tensor, rms: RunningMeanStd, venv: VecNormalize) -> Tensor:
    return _apply("unnormalize", x, rms, venv.epsilon)


def _to_tensor(value: Any, device: torch.device) -> Tensor:
    if isinstance(value, Tensor):
        return value
    try:
        return torch.as_tensor(value, device=device)
    except ValueError:  # numpy arrays with negative strides
        return torch.as_tensor(np.array(value), device=device)


def _map_obs(venv: VecNormalize, obs: Tensor | dict[str, Any], leaf: Callable[[Tensor, Any, Any], Tensor]) -> Tensor | dict[str, Tensor]:
    """Apply ``leaf`` as VecNormalize does: per normalized key for Dict spaces, else to the tensor.

    Keys that are not normalized, and the whole input when ``norm_obs`` is off, are copied, so
    the input is never modified nor returned as is (SB3 deep-copies it). Numpy values in a dict of
    tensors become tensors on the device of the dict's first tensor.
    """
    if isinstance(obs, dict):
        device = next(value.device for value in obs.values() if isinstance(value, Tensor))
        tensors = {key: _to_tensor(value, device) for key, value in obs.items()}
        if not venv.norm_obs:
            return {key: value.clone() for key, value in tensors.items()}
        rms = venv.obs_rms
        if not isinstance(rms, dict):
            raise TypeError(
                "Error: a dict observation was given but this VecNormalize normalizes a "
                f"non-Dict observation space {venv.observation_space}."
            )
        keys = venv.norm_obs_keys
        assert keys is not None  # VecNormalize fills it in for a Dict space
        for key in keys:
            if key not in tensors:
                raise KeyError(key)  # as SB3's numpy path
        return {
            key: leaf(value, rms[key], venv) if key in keys else value.clone() for key, value in tensors.items()
        }
    if not venv.norm_obs:
        return obs.clone()
    rms = venv.obs_rms  # absent when norm_obs is off
    if isinstance(rms, dict):
        raise ObservationTypeError(
            "Error: a tensor observation was given but this VecNormalize normalizes the Dict "
            f"observation space {venv.observation_space}: pass a dict of tensors."
        )
    return leaf(obs, rms, venv)


#: SB3's ``VecNormalize`` methods that the obs routes restate, with the public method that calls each
_HELPERS = {"normalize_obs": "_normalize_obs", "unnormalize_obs": "_unnormalize_obs"}
_overrides: dict[tuple[type, str], str | None] = {}


def _override(venv: VecNormalize, method: str) -> str | None:
    """The helper of ``method`` when ``type(venv)`` overrides it (it takes NumPy arrays), else ``None``."""
    key = (type(venv), method)
    if key not in _overrides:
        from stable_baselines3.common.vec_env import VecNormalize

        helper = _HELPERS[method]
        _overrides[key] = host.first_override(type(venv), {helper: (getattr(VecNormalize, helper),)})
    return _overrides[key]


def _obs_route(method: str, leaf: Callable[[Tensor, Any, Any], Tensor]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The route factory of ``VecNormalize.<method>`` for a tensor or a dict of tensors, on their device."""

    def factory(original: Callable[..., Any]) -> Callable[..., Any]:
        def route(venv: VecNormalize, obs: Tensor | dict[str, Any]) -> Any:
            helper = _override(venv, method)
            if helper is not None:
                return host.round_trip(original, venv, helper, obs)
            return _map_obs(venv, obs, leaf)

        route.__doc__ = f"``VecNormalize.{method}`` for a tensor or a dict of tensors, on their device."
        return route

    return factory


normalize_obs_route = _obs_route("normalize_obs", _normalize)
unnormalize_obs_route = _obs_route("unnormalize_obs", _unnormalize)


def normalize_reward_route(original: Callable[..., Any], *, float32: bool = True) -> Callable[[Any, Tensor], Tensor]:
    """``VecNormalize.normalize_reward`` for a tensor, on its device.

    :param original: SB3's method (unused: ``normalize_reward`` calls no method a subclass overrides)
    :param float32: the release casts the result to float32 (SB3 >= 2.5.0); before that the result
        keeps the computation's dtype, and is the input itself when ``norm_reward`` is off
    """
    cast = float32

    def normalize_reward(venv: VecNormalize, reward: Tensor) -> Tensor:
        if venv.norm_reward:
            clip = venv.clip_reward
            reward = _apply("normalize_reward", reward, venv.ret_rms, venv.epsilon).clamp_(-clip, clip)
            return reward.to(torch.float32) if cast else reward
        return reward.to(torch.float32, copy=True) if cast else reward

    return normalize_reward


def unnormalize_reward(venv: VecNormalize, reward: Tensor) -> Tensor:
    """``VecNormalize.unnormalize_reward`` for a tensor, on its device."""
    if venv.norm_reward:
        return _apply("unnormalize_reward", reward, venv.ret_rms, venv.epsilon)
    return reward
