"""On-device ``VecNormalize``: its statistics applied to tensors, never stale.

The statistics (``RunningMeanStd``: float64 ``mean`` and ``var``) become device tensors once and are
reused for as long as they are the same objects: SB3 replaces the arrays on every update
(``update_from_moments``) and the whole object on ``VecNormalize.load``, and the cache compares
identities and ``count`` on each call, so the next call after a change sees the new values.

The arithmetic is SB3's, in the dtype numpy would use for the same operands (float64 in general,
the input's dtype where numpy's promotion rules keep it), so the results agree with the numpy path.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from .cache import ObjectCache

Tensor = torch.Tensor


class _Stats:
    """Device tensors for one ``RunningMeanStd`` snapshot: ``mean`` and ``sqrt(var + epsilon)``."""

    __slots__ = ("count", "dtypes", "epsilon", "mean_src", "np_mean", "np_std", "per_device", "var_src")

    def __init__(self, rms: Any, epsilon: float) -> None:
        # holding the source arrays keeps their ids from being reused while they are compared
        self.mean_src = rms.mean
        self.var_src = rms.var
        self.count = rms.count
        self.epsilon = epsilon
        self.np_mean = np.asarray(rms.mean)
        self.np_std = np.sqrt(rms.var + epsilon)
        self.per_device: dict[torch.device, tuple[Tensor, Tensor]] = {}
        self.dtypes: dict[tuple[str, torch.dtype], torch.dtype] = {}

    def fresh(self, rms: Any, epsilon: float) -> bool:
        return (
            self.mean_src is rms.mean
            and self.var_src is rms.var
            and self.count == rms.count
            and self.epsilon == epsilon
        )

    def on(self, device: torch.device) -> tuple[Tensor, Tensor]:
        pair = self.per_device.get(device)
        if pair is None:
            pair = self.per_device[device] = (
                torch.as_tensor(self.np_mean, device=device),
                torch.as_tensor(self.np_std, device=device),
            )
        return pair

    def compute_dtype(self, op: str, dtype: torch.dtype) -> torch.dtype:
        """The dtype numpy computes ``x <op> statistics`` in, for an ``x`` of torch ``dtype``."""
        key = (op, dtype)
        found = self.dtypes.get(key)
        if found is None:
            found = self.dtypes[key] = _numpy_result_dtype(op, dtype, self.np_mean, self.np_std)
        return found


def _numpy_result_dtype(op: str, dtype: torch.dtype, mean: np.ndarray, std: np.ndarray) -> torch.dtype:
    try:
        np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
    except TypeError:  # bfloat16 and others without a numpy twin: compute in float64
        return torch.float64
    probe = np.zeros((1,) * max(mean.ndim, 1), dtype=np_dtype)
    result = (probe - mean) / std if op == "normalize" else probe * std + mean
    return torch.from_numpy(np.zeros(0, dtype=result.dtype)).dtype


_stats = ObjectCache()


def stats_for(rms: Any, epsilon: float) -> _Stats:
    """Return the cached device statistics for ``rms``, rebuilt if they changed since last time."""
    stats: _Stats | None = _stats.get(rms)
    if stats is None or not stats.fresh(rms, epsilon):
        stats = _stats.put(rms, _Stats(rms, epsilon))
    assert stats is not None
    return stats


def clear() -> None:
    """Drop every cached statistics tensor (``disable()`` calls this)."""
    _stats.clear()


def _normalize(x: Tensor, rms: Any, venv: Any) -> Tensor:
    stats = stats_for(rms, venv.epsilon)
    mean, std = stats.on(x.device)
    x = x.to(stats.compute_dtype("normalize", x.dtype))
    clip = venv.clip_obs
    return torch.clamp((x - mean) / std, -clip, clip).to(torch.float32)


def _unnormalize(x: Tensor, rms: Any, venv: Any) -> Tensor:
    stats = stats_for(rms, venv.epsilon)
    mean, std = stats.on(x.device)
    x = x.to(stats.compute_dtype("unnormalize", x.dtype))
    return (x * std) + mean


def _as_tensors(obs: dict[str, Any]) -> dict[str, Tensor]:
    device = next(value.device for value in obs.values() if isinstance(value, Tensor))
    return {key: value if isinstance(value, Tensor) else torch.as_tensor(value, device=device) for key, value in obs.items()}


def _map_obs(venv: Any, obs: Tensor | dict[str, Any], leaf: Any) -> Tensor | dict[str, Tensor]:
    """Apply ``leaf`` as VecNormalize does: per normalized key for Dict spaces, else to the tensor.

    Keys that are not normalized, and the whole input when ``norm_obs`` is off, are copied, so
    the input is never modified nor returned as is (SB3 deep-copies it).
    """
    if isinstance(obs, dict):
        out = {key: value.clone() for key, value in _as_tensors(obs).items()}
        if venv.norm_obs:
            rms = venv.obs_rms
            if not isinstance(rms, dict):
                raise TypeError(
                    "Error: a dict observation was given but this VecNormalize normalizes a "
                    f"non-Dict observation space {venv.observation_space}."
                )
            for key in venv.norm_obs_keys:
                out[key] = leaf(out[key], rms[key], venv)
        return out
    if not venv.norm_obs:
        return obs.clone()
    rms = venv.obs_rms  # absent when norm_obs is off
    if isinstance(rms, dict):
        raise TypeError(
            "Error: a tensor observation was given but this VecNormalize normalizes the Dict "
            f"observation space {venv.observation_space}: pass a dict of tensors."
        )
    return leaf(obs, rms, venv)  # type: ignore[no-any-return]


def normalize_obs(venv: Any, obs: Tensor | dict[str, Any]) -> Tensor | dict[str, Tensor]:
    """``VecNormalize.normalize_obs`` for a tensor or a dict of tensors, on their device."""
    return _map_obs(venv, obs, _normalize)


def unnormalize_obs(venv: Any, obs: Tensor | dict[str, Any]) -> Tensor | dict[str, Tensor]:
    """``VecNormalize.unnormalize_obs`` for a tensor or a dict of tensors, on their device."""
    return _map_obs(venv, obs, _unnormalize)


def normalize_reward_route(options: dict[str, Any]) -> Callable[[Any, Tensor], Tensor]:
    """``VecNormalize.normalize_reward`` for a tensor, on its device.

    :param options: ``float32``: the release casts the result to float32 (SB3 >= 2.5.0); before
        that the result keeps the computation's dtype, and is the input itself when ``norm_reward``
        is off
    """
    cast = options.get("float32", True)

    def normalize_reward(venv: Any, reward: Tensor) -> Tensor:
        if venv.norm_reward:
            stats = stats_for(venv.ret_rms, venv.epsilon)
            _, std = stats.on(reward.device)
            x = reward.to(stats.compute_dtype("normalize", reward.dtype))
            clip = venv.clip_reward
            reward = torch.clamp(x / std, -clip, clip)
            return reward.to(torch.float32) if cast else reward
        return reward.to(torch.float32, copy=True) if cast else reward

    return normalize_reward


def unnormalize_reward(venv: Any, reward: Tensor) -> Tensor:
    """``VecNormalize.unnormalize_reward`` for a tensor, on its device."""
    if venv.norm_reward:
        stats = stats_for(venv.ret_rms, venv.epsilon)
        _, std = stats.on(reward.device)
        return reward.to(stats.compute_dtype("unnormalize", reward.dtype)) * std
    return reward
