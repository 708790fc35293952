"""Benchmark envs written in torch: vectorised physics for ``bench --train`` and the training examples.

:class:`TorchCartPole` is gymnasium's ``CartPole-v1`` (the same constants, Euler integration, termination
and the 500-step ``TimeLimit``) for N environments at once, as a ``gymnasium.vector.VectorEnv`` of torch
tensors on one device: every step is a fixed handful of tensor ops over all environments, with no Python
loop over them and nothing read back to the host. It resets finished environments in the same step (SB3's
semantics, what :class:`sb3_tensorpatch.TensorVecEnv` needs), so it trains with SB3 as it is::

    from stable_baselines3 import PPO
    from sb3_tensorpatch import TensorVecEnv
    from sb3_tensorpatch.bench_envs import TorchCartPole

    model = PPO("MlpPolicy", TensorVecEnv(TorchCartPole(1024)), n_steps=32).learn(100_000)

It is a benchmark env, not a new task: its purpose is to cost little and the same for every trainer timed
on it, so that what a benchmark measures is the trainer.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces


class TorchCartPole(gym.vector.VectorEnv):  # type: ignore[misc]
    """``CartPole-v1`` for ``num_envs`` environments on ``device``, with same-step autoreset.

    ``step(actions)`` returns ``(observations, rewards, terminated, truncated, info)``, all tensors on the
    env's device: float32 observations of shape ``(num_envs, 4)`` (for a finished environment, the first
    observation of its next episode), float32 rewards (1 per step, the last one included, as ``CartPole-v1``),
    and bool ``terminated`` (the pole fell or the cart left the track) and ``truncated`` (the time limit; both
    can be true together, as under gymnasium's ``TimeLimit``). ``info["final_obs"]`` holds, on every step,
    the observations in which the environments ended the step before any reset (the terminal observation of
    the environments where ``info["_final_obs"]``, that is ``terminated | truncated``, is true): adding the
    keys on every step, rather than only on the steps where an environment finished, spares a host read per
    step.

    The dynamics run in ``dtype``: float32 (the default, as GPU simulators run) or float64, the precision
    of gymnasium's own ``CartPole-v1``, which it then matches step by step to rounding (the two differ only
    where torch's and NumPy's sine and cosine round differently).

    :param num_envs: the number of environments
    :param device: where the state and every returned tensor live
    :param continuous: a continuous force, action ``Box(-1, 1, (1,))`` (the force is ``clip(action, -1, 1)``
        times 10 N), instead of ``CartPole-v1``'s ``Discrete(2)`` (1 pushes right, anything else left). Trainers
        with Gaussian policies only (rsl_rl) need it.
    :param max_episode_steps: the time limit, as ``CartPole-v1``'s ``TimeLimit``
    :param dtype: the dtype of the state and of the dynamics (observations are float32 either way)
    """

    # gymnasium < 1.1 has no AutoresetMode enum; TensorVecEnv reads its value's spelling too
    metadata = {  # noqa: RUF012
        "autoreset_mode": getattr(getattr(gym.vector, "AutoresetMode", None), "SAME_STEP", "SameStep"),
        "render_modes": [],
    }

    # gymnasium's CartPoleEnv constants, computed as it computes them
    gravity = 9.8
    masscart = 1.0
    masspole = 0.1
    total_mass = masspole + masscart
    length = 0.5  # half the pole's length
    polemass_length = masspole * length
    force_mag = 10.0
    tau = 0.02  # seconds between state updates
    theta_threshold_radians = 12 * 2 * math.pi / 360
    x_threshold = 2.4
    #: initial states are drawn uniformly from [-reset_bound, reset_bound) in each of the four coordinates
    reset_bound = 0.05

    def __init__(
        self,
        num_envs: int,
        device: str | torch.device = "cpu",
        continuous: bool = False,
        max_episode_steps: int = 500,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.num_envs = num_envs
        self.device = torch.device(device)
        self.continuous = continuous
        self.max_episode_steps = max_episode_steps
        self.dtype = dtype
        self.render_mode = None
        high = np.array(
            [self.x_threshold * 2, np.inf, self.theta_threshold_radians * 2, np.inf],
            dtype=np.float32,
        )
        self.single_observation_space = spaces.Box(-high, high, dtype=np.float32)
        self.single_action_space: spaces.Space[Any] = (
            spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32) if continuous else spaces.Discrete(2)
        )
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        # unseeded until reset(seed=...), as gymnasium's envs: a fresh random seed
        self.generator = torch.Generator(device=self.device)
        self.generator.seed()
        self.state = torch.zeros(num_envs, 4, dtype=dtype, device=self.device)
        self.elapsed_steps = torch.zeros(num_envs, dtype=torch.int64, device=self.device)

    def _initial_states(self) -> torch.Tensor:
        """A fresh initial state for every environment (the caller keeps the rows it needs: drawing for all
        environments, every step, costs less than finding out which ones finished)."""
        states = torch.empty(self.num_envs, 4, dtype=self.dtype, device=self.device)
        return states.uniform_(-self.reset_bound, self.reset_bound, generator=self.generator)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Reset every environment.

        :param seed: seeds the env's generator (the initial states of this and every later episode); ``None``
            goes on with the generator as it is
        :param options: unused (accepted for gymnasium's interface)
        :return: the first observations, float32 ``(num_envs, 4)``, and an empty info dict
        """
        if seed is not None:
            self.generator.manual_seed(seed)
        self.state = self._initial_states()
        self.elapsed_steps = torch.zeros(self.num_envs, dtype=torch.int64, device=self.device)
        return self.state.to(torch.float32), {}

    def step(
        self, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Advance every environment by one step; finished environments start their next episode at once.

        :param actions: on the env's device: shape ``(num_envs,)`` (or ``(num_envs, 1)``) of 0 / 1 for
            ``Discrete(2)``; shape ``(num_envs, 1)`` (or ``(num_envs,)``) of forces in [-1, 1] if ``continuous``
        """
        x, x_dot, theta, theta_dot = self.state.unbind(1)
        actions = actions.reshape(self.num_envs)
        if self.continuous:
            force = actions.to(self.dtype).clamp(-1.0, 1.0) * self.force_mag
        else:
            force = torch.where(actions == 1, self.force_mag, -self.force_mag).to(self.dtype)
        costheta = torch.cos(theta)
        sintheta = torch.sin(theta)
        # gymnasium's expressions, in its order of operations
        temp = (force + self.polemass_length * torch.square(theta_dot) * sintheta) / self.total_mass
        thetaacc = (self.gravity * sintheta - costheta * temp) / (
            self.length * (4.0 / 3.0 - self.masspole * torch.square(costheta) / self.total_mass)
        )
        xacc = temp - self.polemass_length * thetaacc * costheta / self.total_mass
        x = x + self.tau * x_dot
        x_dot = x_dot + self.tau * xacc
        theta = theta + self.tau * theta_dot
        theta_dot = theta_dot + self.tau * thetaacc
        final = torch.stack((x, x_dot, theta, theta_dot), dim=1)
        terminated = (
            (x < -self.x_threshold)
            | (x > self.x_threshold)
            | (theta < -self.theta_threshold_radians)
            | (theta > self.theta_threshold_radians)
        )
        self.elapsed_steps = self.elapsed_steps + 1
        truncated = self.elapsed_steps >= self.max_episode_steps  # TimeLimit: whether or not it terminated
        done = terminated | truncated
        # the reset as a select, not a branch: no host read of ``done``
        self.state = torch.where(done.unsqueeze(1), self._initial_states(), final)
        self.elapsed_steps = self.elapsed_steps.masked_fill(done, 0)
        rewards = torch.ones(self.num_envs, dtype=torch.float32, device=self.device)
        info = {"final_obs": final.to(torch.float32), "_final_obs": done}
        return self.state.to(torch.float32), rewards, terminated, truncated, info
