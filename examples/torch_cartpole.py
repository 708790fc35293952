"""CartPole for N environments written in torch, driving an SB3 policy with tensors only.

The dynamics are gymnasium's ``CartPole-v1`` (Euler integration, the same constants, termination
and 500-step truncation), computed for every environment at once on one device. Two ways in:

- :class:`TorchCartPole` is the torch-native env: ``reset()`` and ``step(actions)`` take and return
  tensors on its device, and environments that finish reset themselves.
- :class:`TorchCartPoleVecEnv` adapts it to SB3's ``VecEnv`` interface (NumPy in and out), so that
  SB3 itself can train a PPO agent on the very same dynamics.

After a short training run, the evaluation loop uses nothing but tensors: the observations come
out of the torch env, go into ``model.predict(obs)`` (patched by ``sb3_tensorpatch.enable()``),
and the actions go straight back into the env, on the same device, with no NumPy in between.
The trained policy's returns are compared with a random policy's on the same dynamics.

Run it (small defaults; ``--device cuda`` keeps everything on the GPU)::

    python examples/torch_cartpole.py
    python examples/torch_cartpole.py --n-envs 256 --train-steps 50000 --device cuda
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecEnv

import sb3_tensorpatch


class TorchCartPole:
    """``CartPole-v1`` for ``n_envs`` environments at once, as tensors on ``device``.

    :param n_envs: the number of environments
    :param device: where the state, observations, rewards and flags live
    :param seed: seed of the env's own generator (initial states after every reset)
    :param max_episode_steps: truncation length, as ``CartPole-v1``'s ``TimeLimit``
    """

    gravity = 9.8
    masscart = 1.0
    masspole = 0.1
    total_mass = masscart + masspole
    length = 0.5  # half the pole's length
    polemass_length = masspole * length
    force_mag = 10.0
    tau = 0.02  # seconds between state updates
    theta_threshold = 12 * 2 * math.pi / 360
    x_threshold = 2.4

    def __init__(
        self, n_envs: int, device: str | torch.device = "cpu", seed: int = 0, max_episode_steps: int = 500
    ) -> None:
        self.n_envs = n_envs
        self.device = torch.device(device)
        self.max_episode_steps = max_episode_steps
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self.state = torch.zeros(n_envs, 4, device=self.device)
        self.steps = torch.zeros(n_envs, dtype=torch.int64, device=self.device)
        high = np.array(
            [self.x_threshold * 2, np.finfo(np.float32).max, self.theta_threshold * 2, np.finfo(np.float32).max],
            dtype=np.float32,
        )
        self.observation_space = spaces.Box(-high, high, dtype=np.float32)
        self.action_space = spaces.Discrete(2)

    def _initial_states(self, count: int) -> torch.Tensor:
        return torch.rand(count, 4, generator=self.generator, device=self.device) * 0.1 - 0.05

    def reset(self) -> torch.Tensor:
        """Reset every environment; return the observations, shape ``(n_envs, 4)``."""
        self.state = self._initial_states(self.n_envs)
        self.steps.zero_()
        return self.state.clone()

    def step(
        self, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Advance every environment by one step; finished environments are reset.

        :param actions: shape ``(n_envs,)``, 0 (push left) or 1 (push right), on ``device``
        :return: ``(obs, reward, terminated, truncated, final_obs)``: ``obs`` is the next observation
            (after the reset for finished environments), ``final_obs`` the observation in which
            they finished (equal to ``obs`` elsewhere)
        """
        x, x_dot, theta, theta_dot = self.state.unbind(1)
        force = (actions.to(self.state.dtype) * 2.0 - 1.0) * self.force_mag
        costheta, sintheta = torch.cos(theta), torch.sin(theta)
        temp = (force + self.polemass_length * theta_dot**2 * sintheta) / self.total_mass
        thetaacc = (self.gravity * sintheta - costheta * temp) / (
            self.length * (4.0 / 3.0 - self.masspole * costheta**2 / self.total_mass)
        )
        xacc = temp - self.polemass_length * thetaacc * costheta / self.total_mass
        x = x + self.tau * x_dot
        x_dot = x_dot + self.tau * xacc
        theta = theta + self.tau * theta_dot
        theta_dot = theta_dot + self.tau * thetaacc
        final = torch.stack((x, x_dot, theta, theta_dot), dim=1)
        self.steps += 1
        terminated = (x.abs() > self.x_threshold) | (theta.abs() > self.theta_threshold)
        truncated = (self.steps >= self.max_episode_steps) & ~terminated
        reward = torch.ones(self.n_envs, device=self.device)  # 1 per step, the last one included
        done = terminated | truncated
        # reset finished environments without a branch on a tensor (no host read)
        self.state = torch.where(done.unsqueeze(1), self._initial_states(self.n_envs), final)
        self.steps = torch.where(done, torch.zeros_like(self.steps), self.steps)
        return self.state.clone(), reward, terminated, truncated, final


class TorchCartPoleVecEnv(VecEnv):
    """SB3's ``VecEnv`` interface over :class:`TorchCartPole`, for training with SB3 itself."""

    def __init__(self, env: TorchCartPole) -> None:
        self.env = env
        self._actions: torch.Tensor | None = None
        self._returns = np.zeros(env.n_envs)
        self._lengths = np.zeros(env.n_envs, dtype=np.int64)
        super().__init__(env.n_envs, env.observation_space, env.action_space)

    def reset(self) -> np.ndarray:
        self._returns[:] = 0
        self._lengths[:] = 0
        return self.env.reset().cpu().numpy()

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = torch.as_tensor(actions, device=self.env.device).reshape(-1)

    def step_wait(self) -> Any:
        assert self._actions is not None
        obs, reward, terminated, truncated, final = (t.cpu().numpy() for t in self.env.step(self._actions))
        dones = terminated | truncated
        self._returns += reward
        self._lengths += 1
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        for index in np.flatnonzero(dones):
            infos[index] = {
                "terminal_observation": final[index],
                "TimeLimit.truncated": bool(truncated[index]),
                "episode": {"r": float(self._returns[index]), "l": int(self._lengths[index]), "t": 0.0},
            }
            self._returns[index] = 0
            self._lengths[index] = 0
        return obs, reward.astype(np.float32), dones, infos

    def close(self) -> None:
        pass

    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        return [getattr(self, attr_name, None) for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        setattr(self, attr_name, value)

    def env_method(self, method_name: str, *method_args: Any, indices: Any = None, **method_kwargs: Any) -> list[Any]:
        return [None for _ in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class: type, indices: Any = None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]


def first_episode_returns(env: TorchCartPole, policy: Any) -> torch.Tensor:
    """Return each environment's first-episode return, with tensors only.

    Runs exactly ``max_episode_steps`` steps, so every environment finishes at least one episode
    (truncation ends it at the latest), and never reads a value back to the host.

    :param policy: maps an observation tensor ``(n_envs, 4)`` to an action tensor ``(n_envs,)``
    """
    obs = env.reset()
    returns = torch.zeros(env.n_envs, device=env.device)
    running = torch.ones(env.n_envs, dtype=torch.bool, device=env.device)
    for _ in range(env.max_episode_steps):
        actions = policy(obs)
        obs, reward, terminated, truncated, _ = env.step(actions)
        returns += reward * running
        running &= ~(terminated | truncated)
    return returns


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-envs", type=int, default=64, help="environments evaluated at once (default 64)")
    parser.add_argument("--train-envs", type=int, default=8, help="environments used for training (default 8)")
    parser.add_argument("--train-steps", type=int, default=4096, help="PPO training steps (default 4096)")
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device for evaluation"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default 1: fastest for small networks)"
    )
    args = parser.parse_args(argv)

    sb3_tensorpatch.enable()  # model.predict(tensor) now stays on the tensor's device
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)

    # 1. train with SB3 itself, on the same torch dynamics behind a VecEnv (NumPy at the boundary)
    started = time.perf_counter()
    train_env = TorchCartPoleVecEnv(TorchCartPole(args.train_envs, device="cpu", seed=args.seed))
    model = PPO(
        "MlpPolicy",
        train_env,
        n_steps=32,
        batch_size=256,
        n_epochs=20,
        gae_lambda=0.8,
        gamma=0.98,
        ent_coef=0.0,
        learning_rate=1e-3,
        policy_kwargs={"net_arch": [64, 64]},
        seed=args.seed,
        device="cpu",
    )
    model.learn(total_timesteps=args.train_steps)
    print(
        f"trained PPO for {model.num_timesteps} steps on {args.train_envs} torch CartPoles in {time.perf_counter() - started:.1f} s"
    )

    # 2. evaluate on the device, with tensors only: env -> predict(tensor) -> env
    model.policy.to(args.device)
    env = TorchCartPole(args.n_envs, device=args.device, seed=args.seed + 1)
    generator = torch.Generator(device=env.device).manual_seed(args.seed + 2)

    def random_policy(obs: torch.Tensor) -> torch.Tensor:
        return torch.randint(0, 2, (obs.shape[0],), generator=generator, device=obs.device)

    def trained_policy(obs: torch.Tensor) -> torch.Tensor:
        actions, _ = model.predict(obs, deterministic=True)
        assert isinstance(actions, torch.Tensor) and actions.device == obs.device  # never NumPy
        return actions

    started = time.perf_counter()
    random_returns = first_episode_returns(env, random_policy)
    trained_returns = first_episode_returns(env, trained_policy)
    seconds = time.perf_counter() - started
    random_mean = random_returns.mean().item()  # the only host reads: the summary
    trained_mean = trained_returns.mean().item()
    print(f"evaluated {args.n_envs} envs x {env.max_episode_steps} steps twice on {env.device} in {seconds:.2f} s")
    print(f"random policy:  mean episode return {random_mean:6.1f}")
    print(f"trained policy: mean episode return {trained_mean:6.1f} (max {env.max_episode_steps})")
    if trained_mean <= random_mean:
        print("FAIL: the trained policy is not better than random")
        return 1
    print(f"OK: trained policy is {trained_mean / random_mean:.1f}x better than random")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
