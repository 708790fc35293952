"""On-device rollouts: ``OnPolicyAlgorithm.collect_rollouts`` restated for a :class:`~sb3_tensorpatch.TensorVecEnv`.

With the patch on, PPO and A2C collect their rollouts from a ``TensorVecEnv`` without leaving the env's
device: the policy runs on the env's tensors, actions are clipped on the device and go to
``env.step_tensors``, the buffer (:mod:`sb3_tensorpatch.buffers`) holds tensors, and the timeout bootstrap
and GAE run on the device. The result is SB3's, bit for bit: the same parameters after ``learn()``, the same
``num_timesteps`` and the same episodes in ``ep_info_buffer``.

What reads the host, per rollout and not per step: one transfer of the episode statistics and the
timeout mask (the episodes go to ``ep_info_buffer`` as SB3's ``_update_info_buffer`` would have put them,
in SB3's order), one copy of the last observations and episode starts (left in ``_last_obs`` /
``_last_episode_starts`` as NumPy, so SB3's own path can continue from them if the patch is disabled), and
in ``train()`` one copy of the buffer's values and returns for the logged explained variance.

Exactness, detail by detail:

- SB3 computes each timed-out environment's bootstrap value alone, as a batch of one observation; a batched
  forward gives different float32 values. The policy does not change during a rollout, so the route computes
  them at the end of the rollout, one row at a time, after one host read of the timeout mask, and adds them
  to the buffer's float32 rewards as SB3 does (``reward += gamma * value``).
- GAE restates SB3's NumPy loop with the same float32 (and, before SB3 2.4.0, float64) operations in the same
  order; the minibatch permutation comes from NumPy's global generator, as SB3's ``get`` draws it.

The policy's ``forward`` is the lowered one (:func:`~sb3_tensorpatch.lowering.lower_forward`: the same ops
without the module calls and distribution objects) where the policy is SB3's standard one, checked on every
step with ``Lowered.live()``; SB3's ``forward`` otherwise, and from the step after any change (a hook, a
replaced module) on.

Callbacks get ``on_step()`` every step and ``update_locals(locals())`` as in SB3, but the locals hold
tensors: ``new_obs``, ``rewards``, ``dones``, ``actions``, ``clipped_actions``, ``values`` and ``log_probs``
are tensors on the device, ``infos`` is the env's own info dict (not a list of per-env dicts) and ``step``
is the :class:`~sb3_tensorpatch.vec_env.TensorStep`. ``ep_info_buffer`` is filled at the end of the rollout.

Everything else takes SB3's own ``collect_rollouts``: an env that is not a ``TensorVecEnv`` (also one
wrapped in ``VecNormalize`` or another ``VecEnvWrapper``), a buffer that is not exactly SB3's
``RolloutBuffer`` / ``DictRolloutBuffer`` (a user's ``rollout_buffer_class``), an algorithm that is not PPO or
A2C or a subclass that overrides ``collect_rollouts``, ``train`` or ``_update_info_buffer``, ``use_sde``, a
policy with ``squash_output`` or its own ``obs_to_tensor``.
"""

from __future__ import annotations

import time
from typing import Any, Callable, cast

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import BasePolicy

from .buffers import TensorRolloutBuffer, device_buffer
from .host import TORCH_DTYPES
from .plans import forward_for
from .sb3 import spaces
from .validation import no_validation
from .vec_env import TensorObs, TensorVecEnv, host_copy
from .wrappers import tensor_route

Tensor = torch.Tensor
Route = Callable[..., Any]

_standard_algorithms: dict[Any, bool] = {}


def _standard_algorithm(cls: Any) -> bool:
    """Whether ``cls`` is PPO or A2C, or a subclass whose ``train`` and ``_update_info_buffer`` are theirs."""
    known = _standard_algorithms.get(cls)
    if known is None:
        from stable_baselines3 import A2C, PPO

        known = any(issubclass(cls, base) and cls.train is base.train for base in (PPO, A2C))
        known = known and cls._update_info_buffer is BaseAlgorithm._update_info_buffer
        _standard_algorithms[cls] = known
    return known


def _covered(model: Any, env: Any, rollout_buffer: Any) -> TensorRolloutBuffer | None:
    """The device buffer to collect into when the route covers this call, else ``None`` (SB3's path).

    Replaces the model's buffer by its device twin on the first covered call (``train()`` reads
    ``model.rollout_buffer``).
    """
    if not isinstance(env, TensorVecEnv) or rollout_buffer is not model.rollout_buffer or model.use_sde:
        return None
    # an override of collect_rollouts in a subclass (which may have called us through super()) is first in the MRO
    if not _standard_algorithm(type(model)) or tensor_route(type(model), "collect_rollouts") is None:
        return None
    policy = model.policy
    if policy.squash_output or type(policy).obs_to_tensor is not BasePolicy.obs_to_tensor:
        return None
    buffer = device_buffer(rollout_buffer)
    if buffer is not None and buffer is not rollout_buffer:
        model.rollout_buffer = buffer
    return buffer


def _to(obs: TensorObs, device: torch.device) -> TensorObs:
    if isinstance(obs, Tensor):
        return obs.to(device)
    return {key: value.to(device) for key, value in obs.items()}


def _upload(obs: Any, device: torch.device) -> TensorObs:
    """SB3's ``obs_as_tensor`` for NumPy observations (a dict of arrays for ``Dict``)."""
    if isinstance(obs, dict):
        return {key: torch.as_tensor(value, device=device) for key, value in obs.items()}
    return torch.as_tensor(obs, device=device)


def _host(obs: TensorObs) -> Any:
    if isinstance(obs, Tensor):
        return host_copy(obs)
    return {key: host_copy(value) for key, value in obs.items()}


def _row(obs: TensorObs, index: int, device: torch.device) -> TensorObs:
    """Environment ``index``'s observation as a batch of one, as SB3's ``obs_to_tensor`` makes it."""
    if isinstance(obs, Tensor):
        return obs[index : index + 1].to(device)
    return {key: value[index : index + 1].to(device) for key, value in obs.items()}


class _Bounds:
    """``np.clip(actions, low, high)`` restated with the bounds as tensors on the model's device.

    NumPy clips in the result type of float32 actions and the bounds' dtype; so does :meth:`clip`.
    """

    def __init__(self, space: Any, device: torch.device) -> None:
        dtype = TORCH_DTYPES[np.result_type(np.float32, space.low.dtype, space.high.dtype)]
        self.dtype = dtype
        self.low = torch.as_tensor(space.low, device=device).to(dtype)
        self.high = torch.as_tensor(space.high, device=device).to(dtype)

    def clip(self, actions: Tensor) -> Tensor:
        return torch.clamp(actions.to(self.dtype), self.low, self.high)


_bounds: dict[tuple[int, torch.device], tuple[Any, _Bounds]] = {}


def _bounds_for(space: Any, device: torch.device) -> _Bounds:
    """The action bounds of a Box ``space`` on ``device``, made once per (space, device)."""
    key = (id(space), device)
    found = _bounds.get(key)
    if found is None or found[0] is not space:  # an id reused by another space after the first was freed
        found = _bounds[key] = (space, _Bounds(space, device))
    return found[1]


class _Episodes:
    """Per-step episode statistics and timeout masks, kept on the device and read back once per rollout."""

    def __init__(self) -> None:
        self.dones: list[Tensor] = []
        self.returns: list[Tensor] = []
        self.lengths: list[Tensor] = []
        self.timeouts: list[Tensor] = []
        self.finals: list[TensorObs | None] = []
        self.times: list[float] = []

    def record(self, step: Any) -> None:
        self.dones.append(step.dones)
        self.returns.append(step.episode_returns)
        self.lengths.append(step.episode_lengths)
        self.times.append(time.time())
        # TimeLimit.truncated (truncated and not terminated) with a terminal observation: SB3 bootstraps these
        timeouts = step.truncated & ~step.terminated
        if step.final_valid is None:
            timeouts = torch.zeros_like(timeouts)
        else:
            timeouts = timeouts & step.final_valid
        self.timeouts.append(timeouts)
        self.finals.append(step.final_observations)

    def read(self) -> np.ndarray:
        """One host transfer: ``(4, n_steps, n_envs)`` float64 of dones, returns, lengths and timeouts."""
        rows = [torch.stack(self.dones), torch.stack(self.returns), torch.stack(self.lengths), torch.stack(self.timeouts)]
        return host_copy(torch.stack([row.to(torch.float64) for row in rows]))

    def to_info_buffer(self, model: Any, env: TensorVecEnv, host: np.ndarray) -> None:
        """What SB3's ``_update_info_buffer`` adds for these steps: ``Monitor``'s ``{"r", "l", "t"}`` of each
        finished episode, step by step, in environment order.

        ``ep_info_buffer`` is a deque of ``stats_window_size`` entries: of the many episodes a rollout of
        many environments finishes, only the last that many would stay, so only those are built.
        """
        steps, envs = np.nonzero(host[0])
        keep = getattr(model.ep_info_buffer, "maxlen", None)
        if keep is not None and len(steps) > keep:
            steps, envs = steps[len(steps) - keep :], envs[len(envs) - keep :]
        start = env._t_start
        model.ep_info_buffer.extend(
            # Monitor's round(ep_rew, 6) of a Python float, its length as an int, its round(time - start, 6)
            {"r": round(episode_return, 6), "l": int(length), "t": round(self.times[step] - start, 6)}
            for episode_return, length, step in zip(host[1, steps, envs].tolist(), host[2, steps, envs].tolist(), steps.tolist())
        )

    def bootstrap(self, model: Any, buffer: TensorRolloutBuffer, host: np.ndarray) -> None:
        """SB3's timeout bootstrap, ``reward += gamma * V(terminal_obs)``, each value from a batch of one."""
        steps, envs = np.nonzero(host[3])
        if len(steps) == 0:
            return
        device = buffer.device
        values = []
        with torch.no_grad():
            for step, index in zip(steps.tolist(), envs.tolist()):
                final = self.finals[step]
                assert final is not None
                values.append(model.policy.predict_values(_row(final, index, device))[0])
        assert buffer.device_data is not None
        rewards = buffer.device_data["rewards"]
        where = (torch.as_tensor(steps, device=device), torch.as_tensor(envs, device=device))
        rewards[where] += model.gamma * torch.cat(values)


def collect_rollouts_route(
    original: Route,
    *,
    stop_on_falsy: bool = True,
    final_update_locals: bool = True,
    float32_dones: bool = True,
    store_obs_float32: bool = False,
) -> Route:
    """``OnPolicyAlgorithm.collect_rollouts`` on the device of a ``TensorVecEnv``; SB3's own for anything else.

    :param original: SB3's ``collect_rollouts``, for the calls the route does not cover
    :param stop_on_falsy: SB3 >= 2.2.0 stops when ``on_step()`` returns anything falsy (``not
        callback.on_step()``); before, only ``False`` stopped
    :param final_update_locals: SB3 >= 2.2.0 calls ``callback.update_locals(locals())`` once more before
        ``on_rollout_end()``
    :param float32_dones: SB3 >= 2.4.0 computes GAE's last step in float32 (see
        :meth:`~sb3_tensorpatch.buffers.TensorRolloutBuffer.compute_on_device`)
    :param store_obs_float32: SB3 < 2.7.1 stores observations as float32 in its buffer (and samples them so)
    """

    def collect_rollouts(self: Any, env: Any, callback: Any, rollout_buffer: Any, n_rollout_steps: int) -> bool:
        buffer = _covered(self, env, rollout_buffer)
        if buffer is None:
            return original(self, env, callback, rollout_buffer, n_rollout_steps)  # type: ignore[no-any-return]
        # the names of SB3's locals are kept: callbacks read them through update_locals(locals())
        rollout_buffer = buffer
        assert self._last_obs is not None, "No previous observation was provided"
        # Switch to eval mode (this affects batch norm / dropout)
        self.policy.set_training_mode(False)
        n_steps = 0
        rollout_buffer.start(store_obs_float32)
        callback.on_rollout_start()

        # SB3's forward as direct op calls where the policy is SB3's standard one, checked on every step
        policy = self.policy
        lowered = forward_for(policy)[0]
        device = self.device
        env_device = env.device
        action_dtype = TORCH_DTYPES[np.dtype(self.action_space.dtype)]
        bounds = _bounds_for(self.action_space, device) if isinstance(self.action_space, spaces.Box) else None
        discrete = isinstance(self.action_space, spaces.Discrete)
        # continue from the device tensors of the last rollout while the model still holds their host copies
        if self._last_obs is rollout_buffer.last_obs_host and rollout_buffer.last_obs is not None:
            last_obs: TensorObs = rollout_buffer.last_obs
        else:
            last_obs = _upload(self._last_obs, device)
        if self._last_episode_starts is rollout_buffer.last_starts_host and rollout_buffer.last_starts is not None:
            last_starts: Tensor = rollout_buffer.last_starts
        else:
            last_starts = torch.as_tensor(np.asarray(self._last_episode_starts), device=device)
        episodes = _Episodes()

        def finish(host: np.ndarray | None) -> None:
            """The host side of the steps collected so far (``host``: their :meth:`_Episodes.read`): the
            episodes, and the last observations and episode starts as NumPy."""
            if host is not None:
                episodes.to_info_buffer(self, env, host)
            self._last_obs = rollout_buffer.last_obs_host = _host(last_obs)
            self._last_episode_starts = rollout_buffer.last_starts_host = host_copy(last_starts)
            rollout_buffer.last_obs, rollout_buffer.last_starts = last_obs, last_starts

        while n_steps < n_rollout_steps:
            obs_tensor = last_obs
            if lowered is not None and self.policy is policy and lowered.live():
                with torch.no_grad():  # it builds no distribution: nothing to validate
                    # lowered only for Box observations: a tensor
                    actions, values, log_probs = lowered.run(cast(Tensor, obs_tensor), False)
            else:
                with torch.no_grad(), no_validation():
                    actions, values, log_probs = self.policy(obs_tensor)

            # Rescale and perform action
            clipped_actions = actions if bounds is None else bounds.clip(actions)
            step = env.step_tensors(clipped_actions.to(env_device, action_dtype))
            new_obs, rewards, dones, infos = _to(step.observations, device), step.rewards, step.dones, step.infos

            self.num_timesteps += env.num_envs

            # Give access to local variables (tensors: see the module's documentation)
            callback.update_locals(locals())
            keep_going = callback.on_step()
            if (not keep_going) if stop_on_falsy else (keep_going is False):
                finish(episodes.read() if episodes.dones else None)
                return False

            episodes.record(step)
            n_steps += 1

            if discrete:
                # Reshape in case of discrete action
                actions = actions.reshape(-1, 1)

            rollout_buffer.add_tensors(obs_tensor, actions, rewards.to(device), last_starts, values, log_probs)
            last_obs = new_obs
            last_starts = dones.to(device)

        host = episodes.read()
        episodes.bootstrap(self, rollout_buffer, host)
        finish(host)

        with torch.no_grad():
            # Compute value for the last timestep
            values = self.policy.predict_values(new_obs)

        rollout_buffer.compute_on_device(values, dones, float32_dones)

        if final_update_locals:
            callback.update_locals(locals())

        callback.on_rollout_end()

        return True

    return collect_rollouts
