"""Rollout buffers whose storage is device tensors, for the on-device ``collect_rollouts`` route.

:class:`TensorRolloutBuffer` and :class:`TensorDictRolloutBuffer` are SB3's ``RolloutBuffer`` and
``DictRolloutBuffer`` with a second mode. The route (:mod:`sb3_tensorpatch.rollouts`) puts the buffer in
*device mode* with :meth:`TensorRolloutBuffer.start` and fills it with tensors; ``get()`` then yields the
very ``RolloutBufferSamples`` SB3's numpy buffer would (same values, dtypes and shapes, on the model's
device), with the minibatch permutation drawn by ``np.random.permutation`` from NumPy's global generator,
exactly as SB3's ``get`` draws it, and uploaded once per ``get``.

SB3's own ``reset()`` puts the buffer back in *host mode*, where every method is SB3's: so a model whose
buffer was replaced by the route keeps training on SB3's own path once the patch is disabled (SB3's
``collect_rollouts`` starts with ``rollout_buffer.reset()``).

In device mode ``values`` and ``returns`` are NumPy copies of the device tensors, made once per update on
the first ``get()`` and laid out as SB3's ``get`` leaves them (swapped and flattened): PPO's and A2C's
``train()`` read them for the logged explained variance. The other arrays of SB3's buffer are not kept.
"""

from __future__ import annotations

from typing import Any, Generator, Union

import numpy as np
import torch
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer
from stable_baselines3.common.type_aliases import DictRolloutBufferSamples, RolloutBufferSamples

from .host import TORCH_DTYPES

Tensor = torch.Tensor
#: observations as tensors: one tensor, or a dict of tensors for a ``Dict`` space
TensorObs = Union[Tensor, "dict[str, Tensor]"]


def _swap_and_flatten(tensor: Tensor) -> Tensor:
    """SB3's ``BaseBuffer.swap_and_flatten`` for a tensor: ``(n_steps, n_envs, ...)`` to ``(n_envs * n_steps, ...)``,
    with a trailing dimension of 1 added to ``(n_steps, n_envs)``."""
    if tensor.dim() < 3:
        tensor = tensor.unsqueeze(-1)
    return tensor.transpose(0, 1).reshape(tensor.shape[0] * tensor.shape[1], *tensor.shape[2:])


def _host_copy(tensor: Tensor) -> np.ndarray:
    return tensor.detach().to("cpu", copy=True).numpy()


class TensorRolloutBuffer(RolloutBuffer):  # type: ignore[misc]
    """SB3's ``RolloutBuffer``, whose storage is device tensors while the tensor route collects into it.

    Made by the route from the model's own buffer (same size, spaces, device, ``gae_lambda``, ``gamma``,
    ``n_envs``); see the module's documentation for the two modes.
    """

    #: the device storage in device mode (``None`` in host mode): name to tensor of ``(n_steps, n_envs, ...)``,
    #: swapped and flattened by the first ``get()``
    device_data: dict[str, Any] | None = None
    #: the last observations and episode starts of the route's last rollout, on the device, and the NumPy
    #: copies of them it left in the model's ``_last_obs`` / ``_last_episode_starts``: while the model still
    #: holds those very objects, the next rollout continues from the device tensors
    last_obs: TensorObs | None = None
    last_starts: Tensor | None = None
    last_obs_host: Any = None
    last_starts_host: Any = None

    def reset(self) -> None:
        """SB3's ``reset()``: back to host mode, with SB3's NumPy storage."""
        self.device_data = None
        super().reset()

    def _empty_obs(self, space: Any, shape: tuple[int, ...], store_obs_float32: bool) -> Tensor:
        dtype = torch.float32 if store_obs_float32 else TORCH_DTYPES[np.dtype(space.dtype)]
        return torch.zeros((self.buffer_size, self.n_envs, *shape), dtype=dtype, device=self.device)

    def _obs_storage(self, store_obs_float32: bool) -> TensorObs:
        return self._empty_obs(self.observation_space, self.obs_shape, store_obs_float32)

    def start(self, store_obs_float32: bool) -> None:
        """Enter device mode: empty device storage for a new rollout (SB3's ``reset()`` for tensors).

        :param store_obs_float32: store observations as float32 (SB3 < 2.7.1) instead of in the
            observation space's dtype
        """
        shape = (self.buffer_size, self.n_envs)

        def zeros(*size: int) -> Tensor:
            return torch.zeros(size, dtype=torch.float32, device=self.device)

        self.device_data = {
            "observations": self._obs_storage(store_obs_float32),
            # float32 in every release's samples (stored float32 before 2.7.1, cast to float32 on sampling after)
            "actions": zeros(*shape, self.action_dim),
            "rewards": zeros(*shape),
            "episode_starts": zeros(*shape),
            "values": zeros(*shape),
            "log_probs": zeros(*shape),
        }
        # SB3's NumPy storage is not used in device mode: drop it (a reset() makes it again)
        self.observations = self.actions = self.rewards = self.episode_starts = np.zeros(0, dtype=np.float32)
        self.values = self.log_probs = self.advantages = self.returns = np.zeros(0, dtype=np.float32)
        self.generator_ready = False
        self.pos = 0
        self.full = False

    def _store_obs(self, data: dict[str, Any], obs: TensorObs) -> None:
        assert isinstance(obs, Tensor)
        # (n_envs,) Discrete observations to (n_envs, 1), as SB3's add() reshapes them
        data["observations"][self.pos] = obs.reshape(self.n_envs, *self.obs_shape)

    def add_tensors(self, obs: TensorObs, actions: Tensor, rewards: Tensor, episode_starts: Tensor, values: Tensor, log_probs: Tensor) -> None:
        """SB3's ``add()`` for tensors on the buffer's device (device mode)."""
        data = self.device_data
        assert data is not None, "TensorRolloutBuffer.start() must be called first"
        self._store_obs(data, obs)
        data["actions"][self.pos] = actions.reshape(self.n_envs, self.action_dim)
        data["rewards"][self.pos] = rewards
        data["episode_starts"][self.pos] = episode_starts
        data["values"][self.pos] = values.flatten()
        data["log_probs"][self.pos] = log_probs.reshape(-1)
        self.pos += 1
        if self.pos == self.buffer_size:
            self.full = True

    def compute_on_device(self, last_values: Tensor, dones: Tensor, float32_dones: bool) -> None:
        """SB3's ``compute_returns_and_advantage`` on the device, with SB3's float operations in SB3's order.

        :param last_values: the values of the observations after the last step, shape ``(n_envs, 1)``
        :param dones: bool, the dones of the last step
        :param float32_dones: SB3 >= 2.4.0: the last step's ``1.0 - dones`` is float32. Before, it was
            ``1.0 - bool array``, float64, which made the whole running advantage float64 (rounded to
            float32 only where it is stored): restated as such.
        """
        data = self.device_data
        assert data is not None
        rewards, values, starts = data["rewards"], data["values"], data["episode_starts"]
        advantages = torch.zeros_like(rewards)
        gamma_lambda = self.gamma * self.gae_lambda  # a Python float product first, as in SB3's expression
        last_values = last_values.flatten()
        last_gae_lam: Any = 0
        for step in reversed(range(self.buffer_size)):
            if step == self.buffer_size - 1:
                next_non_terminal = 1.0 - dones.to(torch.float32 if float32_dones else torch.float64)
                next_values = last_values
            else:
                next_non_terminal = 1.0 - starts[step + 1]
                next_values = values[step + 1]
            delta = rewards[step] + self.gamma * next_values * next_non_terminal - values[step]
            last_gae_lam = delta + gamma_lambda * next_non_terminal * last_gae_lam
            advantages[step] = last_gae_lam
        data["advantages"] = advantages
        data["returns"] = advantages + values

    def get(self, batch_size: int | None = None) -> Generator[RolloutBufferSamples, None, None]:
        """SB3's ``get()``: in device mode, samples of the device storage, in SB3's order."""
        if self.device_data is None:
            yield from super().get(batch_size)
            return
        assert self.full, ""
        total = self.buffer_size * self.n_envs
        # SB3's draw, from NumPy's global generator (the same seed gives the same minibatches)
        indices = np.random.permutation(total)
        data = self._flattened()
        order = torch.as_tensor(indices, device=self.device)  # one upload per get()
        if batch_size is None:
            batch_size = total
        start = 0
        while start < total:
            yield self._samples(data, order[start : start + batch_size])
            start += batch_size

    def _flattened(self) -> dict[str, Any]:
        """The device storage swapped and flattened as SB3's first ``get()`` does; NumPy copies of ``values``
        and ``returns`` for ``train()``'s explained variance."""
        data = self.device_data
        assert data is not None
        if not self.generator_ready:
            data["observations"] = self._flatten_observations(data["observations"])
            for name in ("actions", "values", "log_probs", "advantages", "returns"):
                data[name] = _swap_and_flatten(data[name])
            self.values = _host_copy(data["values"])
            self.returns = _host_copy(data["returns"])
            self.generator_ready = True
        return data

    def _flatten_observations(self, observations: Any) -> Any:
        return _swap_and_flatten(observations)

    def _samples(self, data: dict[str, Any], indices: Tensor) -> Any:
        return RolloutBufferSamples(
            data["observations"][indices],
            data["actions"][indices],
            data["values"][indices].flatten(),
            data["log_probs"][indices].flatten(),
            data["advantages"][indices].flatten(),
            data["returns"][indices].flatten(),
        )


class TensorDictRolloutBuffer(TensorRolloutBuffer, DictRolloutBuffer):  # type: ignore[misc]
    """SB3's ``DictRolloutBuffer``, whose storage is device tensors while the tensor route collects into it.

    Host mode is ``DictRolloutBuffer``'s own code (it comes before ``RolloutBuffer`` in the MRO).
    """

    def _obs_storage(self, store_obs_float32: bool) -> TensorObs:
        spaces = self.observation_space.spaces
        return {key: self._empty_obs(spaces[key], shape, store_obs_float32) for key, shape in self.obs_shape.items()}

    def _store_obs(self, data: dict[str, Any], obs: TensorObs) -> None:
        assert isinstance(obs, dict)
        for key, storage in data["observations"].items():
            storage[self.pos] = obs[key].reshape(self.n_envs, *self.obs_shape[key])

    def _flatten_observations(self, observations: Any) -> Any:
        return {key: _swap_and_flatten(value) for key, value in observations.items()}

    def _samples(self, data: dict[str, Any], indices: Tensor) -> Any:
        return DictRolloutBufferSamples(
            observations={key: value[indices] for key, value in data["observations"].items()},
            actions=data["actions"][indices],
            old_values=data["values"][indices].flatten(),
            old_log_prob=data["log_probs"][indices].flatten(),
            advantages=data["advantages"][indices].flatten(),
            returns=data["returns"][indices].flatten(),
        )


#: SB3's buffer class to the device buffer class that replaces it
DEVICE_BUFFERS: dict[type, type[TensorRolloutBuffer]] = {
    RolloutBuffer: TensorRolloutBuffer,
    DictRolloutBuffer: TensorDictRolloutBuffer,
}


def device_buffer(buffer: RolloutBuffer) -> TensorRolloutBuffer | None:
    """The device buffer for ``buffer``: itself if it is one, a new one for SB3's own classes, else ``None``.

    Only SB3's exact classes are replaced: a user's ``rollout_buffer_class`` may store or sample differently.
    """
    cls = type(buffer)
    if cls is TensorRolloutBuffer or cls is TensorDictRolloutBuffer:
        return buffer  # type: ignore[return-value]
    replacement = DEVICE_BUFFERS.get(cls)
    if replacement is None:
        return None
    return replacement(
        buffer.buffer_size,
        buffer.observation_space,
        buffer.action_space,
        device=buffer.device,
        gae_lambda=buffer.gae_lambda,
        gamma=buffer.gamma,
        n_envs=buffer.n_envs,
    )

