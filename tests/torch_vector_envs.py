"""Torch-native vectorised envs for the ``TensorVecEnv`` tests, in the layouts the big simulators use.

:class:`TorchCartPoleLike` is CartPole's dynamics for N environments at once, as torch tensors, with
same-step autoreset. It uses only additions, multiplications and divisions (sine and cosine by their
Taylor polynomials, resets from a counter instead of a generator), so each environment's numbers do not
depend on how many environments are computed with it: :class:`SingleEnv` runs one environment of it as a
plain gymnasium env, which SB3's own ``DummyVecEnv`` and ``Monitor`` can wrap as the reference.

The ``layout`` says how the env hands out terminal observations (and observations):

- ``"tensor"``: gymnasium's keys, ``info["final_obs"]`` one tensor with NaN in the rows of environments that
  did not finish, ``info["_final_obs"]`` a bool tensor; ``metadata["autoreset_mode"]`` an ``AutoresetMode``
- ``"object"``: gymnasium's own same-step layout, ``info["final_obs"]`` a NumPy object array (a tensor per
  finished environment, ``None`` elsewhere), ``info["_final_obs"]`` a NumPy bool array; the mode a string
- ``"unmasked"``: ``info["final_obs"]`` with NaN rows and no mask (the finished rows are the valid ones)
- ``"maniskill"``: ManiSkill3's ``final_observation`` / ``_final_observation`` (every row the observation
  before the reset), no ``autoreset_mode`` in the metadata
- ``"isaaclab"``: Isaac Lab's: observations ``{"policy": tensor}``, ``extras["final_obs"]`` the same dict
  for every environment, no mask; observations, rewards and flags are buffers overwritten in place

Every layout adds its final keys only on steps where an environment finished, and can report
``terminated`` and ``truncated`` together (an episode that fails on its last step).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

LAYOUTS = ("tensor", "object", "unmasked", "maniskill", "isaaclab")


#: gymnasium >= 1.1 names its autoreset modes; older releases have no such enum (and their vector envs
#: reset in the same step, with ``final_observation`` in ``info``)
AUTORESET_MODES: Any = getattr(gym.vector, "AutoresetMode", None)
SAME_STEP: Any = AUTORESET_MODES.SAME_STEP if AUTORESET_MODES is not None else "SameStep"


class TorchCartPoleLike(gym.vector.VectorEnv):  # type: ignore[misc]
    """CartPole-like dynamics for ``num_envs`` environments on ``device``, same-step autoreset.

    :param num_envs: the number of environments
    :param device: where the tensors live
    :param layout: one of :data:`LAYOUTS`
    :param dict_obs: observations as ``{"cart": (x, x_dot), "pole": (theta, theta_dot)}``
    :param box_actions: a continuous force in [-1, 1] (``Box((1,))``) instead of left/right
    :param max_episode_steps: truncation length
    """

    force_mag = 10.0
    tau = 0.02
    gravity = 9.8
    masspole = 0.1
    total_mass = 1.1
    length = 0.5
    polemass_length = 0.05
    theta_threshold = 0.12
    x_threshold = 2.4

    def __init__(
        self,
        num_envs: int,
        device: str = "cpu",
        layout: str = "tensor",
        dict_obs: bool = False,
        box_actions: bool = False,
        max_episode_steps: int = 20,
    ) -> None:
        assert layout in LAYOUTS, layout
        self.num_envs = num_envs
        self.device = torch.device(device)
        self.layout = layout
        self.dict_obs = dict_obs
        self.box_actions = box_actions
        self.max_episode_steps = max_episode_steps
        self.metadata = {
            "tensor": {"autoreset_mode": SAME_STEP},
            "object": {"autoreset_mode": "SameStep"},
            "unmasked": {"autoreset_mode": SAME_STEP},
            "maniskill": {},
            "isaaclab": {"autoreset_mode": "same_step"},
        }[layout]
        high = np.array([4.8, np.inf, 0.24, np.inf], dtype=np.float32)
        if dict_obs:
            observation: Any = spaces.Dict(
                {
                    "cart": spaces.Box(-high[:2], high[:2], dtype=np.float32),
                    "pole": spaces.Box(-high[2:], high[2:], dtype=np.float32),
                }
            )
        else:
            observation = spaces.Box(-high, high, dtype=np.float32)
        if layout == "isaaclab":
            observation = spaces.Dict({"policy": observation})
        self.single_observation_space = observation
        self.single_action_space = (
            spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32) if box_actions else spaces.Discrete(2)
        )
        self.observation_space = gym.vector.utils.batch_space(observation, num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        self.render_mode = None
        # gymnasium < 1.0's VectorEnv.close() (also called by __del__) reads these; its __init__ is not called
        self.closed = False
        self.viewer = None
        self.seeds = torch.arange(num_envs, device=self.device)
        self.episodes = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        self.steps = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        self.state = torch.zeros(num_envs, 4, device=self.device)
        self.last_actions: torch.Tensor | None = None
        if layout == "isaaclab":  # Isaac Lab's output buffers, overwritten in place every step
            self.obs_buf = torch.zeros(num_envs, 4, device=self.device)
            self.final_buf = torch.zeros(num_envs, 4, device=self.device)
            self.reward_buf = torch.zeros(num_envs, device=self.device)
            self.terminated_buf = torch.zeros(num_envs, dtype=torch.bool, device=self.device)
            self.truncated_buf = torch.zeros(num_envs, dtype=torch.bool, device=self.device)

    def _initial_states(self) -> torch.Tensor:
        # a counter hash, not a generator: the same numbers for an environment whatever num_envs is
        mix = (
            self.seeds[:, None] * 7919
            + self.episodes[:, None] * 104729
            + torch.arange(4, device=self.device) * 15485863
        )
        return (mix % 10007).to(torch.float32) / 10007.0 * 0.1 - 0.05

    def _observe(self, state: torch.Tensor, buffer: torch.Tensor | None = None) -> Any:
        if buffer is not None:
            state = buffer.copy_(state)
        observation: Any = {"cart": state[:, :2], "pole": state[:, 2:]} if self.dict_obs else state
        return {"policy": observation} if self.layout == "isaaclab" else observation

    def reset(self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None) -> Any:
        if seed is not None:
            seeds = [seed + index for index in range(self.num_envs)] if isinstance(seed, int) else seed
            self.seeds = torch.as_tensor(seeds, dtype=torch.int64, device=self.device)
            self.episodes.zero_()
        else:
            self.episodes += 1
        self.steps.zero_()
        self.state = self._initial_states()
        self.reset_options = options
        return self._observe(self.state, self.obs_buf if self.layout == "isaaclab" else None), {}

    def step(self, actions: torch.Tensor) -> Any:
        self.last_actions = actions
        x, x_dot, theta, theta_dot = self.state.unbind(1)
        if self.box_actions:
            force = actions[:, 0].clamp(-1.0, 1.0) * self.force_mag
        else:
            force = (actions.to(torch.float32) * 2.0 - 1.0) * self.force_mag
        theta_sq = theta * theta
        sintheta = theta - theta_sq * theta / 6.0
        costheta = 1.0 - theta_sq / 2.0
        temp = (force + self.polemass_length * theta_dot * theta_dot * sintheta) / self.total_mass
        thetaacc = (self.gravity * sintheta - costheta * temp) / (
            self.length * (4.0 / 3.0 - self.masspole * costheta * costheta / self.total_mass)
        )
        xacc = temp - self.polemass_length * thetaacc * costheta / self.total_mass
        x = x + self.tau * x_dot
        x_dot = x_dot + self.tau * xacc
        theta = theta + self.tau * theta_dot
        theta_dot = theta_dot + self.tau * thetaacc
        final = torch.stack((x, x_dot, theta, theta_dot), dim=1)
        self.steps += 1
        terminated = (x.abs() > self.x_threshold) | (theta.abs() > self.theta_threshold)
        truncated = self.steps >= self.max_episode_steps  # not masked by terminated: both can be true
        # float32, not a constant: float32 and float64 episode sums differ
        reward = 1.0 - theta.abs() * 3.0 - x.abs() * 0.1
        done = terminated | truncated
        self.episodes += done.to(torch.int64)
        self.state = torch.where(done[:, None], self._initial_states(), final)
        self.steps = self.steps.masked_fill(done, 0)
        info: dict[str, Any] = {}
        if self.layout == "isaaclab":
            self.reward_buf.copy_(reward)
            self.terminated_buf.copy_(terminated)
            self.truncated_buf.copy_(truncated)
            if bool(done.any()):
                info["final_obs"] = self._observe(final, self.final_buf)
            return (
                self._observe(self.state, self.obs_buf),
                self.reward_buf,
                self.terminated_buf,
                self.truncated_buf,
                info,
            )
        if bool(done.any()):
            self._add_final(info, final, done)
        return self._observe(self.state), reward, terminated, truncated, info

    def _add_final(self, info: dict[str, Any], final: torch.Tensor, done: torch.Tensor) -> None:
        if self.layout in ("tensor", "unmasked"):
            nan_rows = torch.where(done[:, None], final, torch.full_like(final, float("nan")))
            info["final_obs"] = self._observe(nan_rows)
            if self.layout == "tensor":
                info["_final_obs"] = done.clone()
        elif self.layout == "object":
            entries = np.full(self.num_envs, None, dtype=object)
            observed = self._observe(final)
            for index in np.flatnonzero(done.cpu().numpy()):
                entries[index] = (
                    {key: value[index].clone() for key, value in observed.items()}
                    if self.dict_obs
                    else observed[index].clone()
                )
            info["final_obs"] = entries
            info["_final_obs"] = done.cpu().numpy()
        else:  # maniskill
            info["final_observation"] = self._observe(final)
            info["_final_observation"] = done.clone()


class SingleEnv(gym.Env):  # type: ignore[misc]
    """Environment ``index`` of a :class:`TorchCartPoleLike` as a plain gymnasium env (NumPy out, and no
    autoreset: the terminal observation is returned, the next episode starts at ``reset()``).

    Seeded with ``seed`` it is the vector env's environment ``index`` seeded with ``seed - index``.
    """

    metadata = {"render_modes": []}  # noqa: RUF012

    def __init__(self, dict_obs: bool = False, box_actions: bool = False, max_episode_steps: int = 20) -> None:
        super().__init__()
        self.vector = TorchCartPoleLike(
            1, dict_obs=dict_obs, box_actions=box_actions, max_episode_steps=max_episode_steps
        )
        self.observation_space = self.vector.single_observation_space
        self.action_space = self.vector.single_action_space
        self.pending: Any = None

    def _numpy(self, observation: Any) -> Any:
        if isinstance(observation, dict):
            return {key: value[0].numpy().copy() for key, value in observation.items()}
        return observation[0].numpy().copy()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        if seed is None and self.pending is not None:
            observation, self.pending = self.pending, None
            return observation, {}
        observation, _ = self.vector.reset(seed=seed)
        return self._numpy(observation), {}

    def step(self, action: Any) -> Any:
        observation, reward, terminated, truncated, info = self.vector.step(torch.as_tensor(np.asarray(action)[None]))
        terminated, truncated = bool(terminated[0]), bool(truncated[0])
        if terminated or truncated:
            self.pending = self._numpy(observation)  # the vector env reset already
            observation = info["final_obs"]
        return self._numpy(observation), float(reward[0]), terminated, truncated, {}
