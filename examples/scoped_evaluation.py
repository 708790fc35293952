"""Scoped patching: ``predict(tensor)`` only inside an evaluation loop, SB3 untouched elsewhere.

A PPO agent trains with SB3 as usual (NumPy, unpatched). Its evaluation runs on a torch-native
batch of ``Pendulum-v1`` environments, with the patch switched on only for the evaluation:

- ``with sb3_tensorpatch.patched():`` around the loop, or
- ``@sb3_tensorpatch.patched`` on the evaluation function.

Either way, the state found on entry is restored on exit (also when the body raises), so the rest
of the program sees SB3 exactly as it was. The same loop through SB3's own NumPy path gives the same
returns, step for step; only the device round trips differ.

Run it::

    python examples/scoped_evaluation.py
    python examples/scoped_evaluation.py --n-envs 1024 --device cuda
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any, Callable

import torch
from stable_baselines3 import PPO

import sb3_tensorpatch


class TorchPendulum:
    """``Pendulum-v1`` for ``n_envs`` environments at once, as tensors on ``device``.

    Gymnasium's dynamics and reward, without termination; evaluation runs fixed-length episodes.
    """

    max_speed = 8.0
    max_torque = 2.0
    dt = 0.05
    g = 10.0
    m = 1.0
    length = 1.0

    def __init__(self, n_envs: int, device: str | torch.device = "cpu", seed: int = 0) -> None:
        self.n_envs = n_envs
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self.theta = torch.zeros(n_envs, device=self.device)
        self.theta_dot = torch.zeros(n_envs, device=self.device)

    def observe(self) -> torch.Tensor:
        return torch.stack((torch.cos(self.theta), torch.sin(self.theta), self.theta_dot), dim=1)

    def reset(self) -> torch.Tensor:
        """Random angles in [-pi, pi] and angular velocities in [-1, 1]; return ``(n_envs, 3)``."""
        uniform = torch.rand(self.n_envs, 2, generator=self.generator, device=self.device) * 2 - 1
        self.theta = uniform[:, 0] * math.pi
        self.theta_dot = uniform[:, 1]
        return self.observe()

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply torques ``(n_envs, 1)``; return ``(obs, reward)``."""
        u = torch.clamp(actions[:, 0], -self.max_torque, self.max_torque)
        angle = (self.theta + math.pi) % (2 * math.pi) - math.pi
        cost = angle**2 + 0.1 * self.theta_dot**2 + 0.001 * u**2
        theta_dot = (
            self.theta_dot
            + (3 * self.g / (2 * self.length) * torch.sin(self.theta) + 3.0 / (self.m * self.length**2) * u) * self.dt
        )
        self.theta_dot = torch.clamp(theta_dot, -self.max_speed, self.max_speed)
        self.theta = self.theta + self.theta_dot * self.dt
        return self.observe(), -cost


def rollout(
    model: Any, env: TorchPendulum, steps: int, predict: Callable[[Any, torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """Run one fixed-length episode in every environment; return the returns, on the env's device."""
    obs = env.reset()
    returns = torch.zeros(env.n_envs, device=env.device)
    for _ in range(steps):
        obs, reward = env.step(predict(model, obs))
        returns += reward
    return returns


def tensor_predict(model: Any, obs: torch.Tensor) -> torch.Tensor:
    actions, _ = model.predict(obs, deterministic=True)  # needs the patch: tensor in, tensor out
    assert isinstance(actions, torch.Tensor), "predict(tensor) outside a patched scope"
    return actions


def numpy_predict(model: Any, obs: torch.Tensor) -> torch.Tensor:
    actions, _ = model.predict(obs.cpu().numpy(), deterministic=True)  # SB3's own path
    return torch.as_tensor(actions, device=obs.device)


def evaluate_with_block(model: Any, env: TorchPendulum, steps: int) -> torch.Tensor:
    """The context-manager form: the patch is on for this block only."""
    with sb3_tensorpatch.patched():
        assert sb3_tensorpatch.is_enabled()
        return rollout(model, env, steps, tensor_predict)


@sb3_tensorpatch.patched
def evaluate_decorated(model: Any, env: TorchPendulum, steps: int) -> torch.Tensor:
    """The decorator form: every call runs in a fresh patched scope."""
    assert sb3_tensorpatch.is_enabled()
    return rollout(model, env, steps, tensor_predict)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-envs", type=int, default=32, help="environments evaluated at once (default 32)")
    parser.add_argument(
        "--steps", type=int, default=200, help="steps per evaluation episode (default 200, as Pendulum-v1)"
    )
    parser.add_argument(
        "--train-steps", type=int, default=1024, help="PPO training steps before evaluating (default 1024)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    # training: plain SB3, no patch anywhere
    model = PPO("MlpPolicy", "Pendulum-v1", n_steps=512, batch_size=128, seed=args.seed, device=args.device)
    model.learn(total_timesteps=args.train_steps)
    print(f"trained PPO for {model.num_timesteps} steps; patch enabled: {sb3_tensorpatch.is_enabled()}")

    env = TorchPendulum(args.n_envs, device=args.device, seed=args.seed)
    timings = {}
    results = {}
    for name, evaluate in (
        ("with patched()", evaluate_with_block),
        ("@patched", evaluate_decorated),
        ("numpy path", lambda model, env, steps: rollout(model, env, steps, numpy_predict)),
    ):
        env.generator.manual_seed(args.seed)  # the same initial states for every run
        started = time.perf_counter()
        results[name] = evaluate(model, env, args.steps)
        timings[name] = time.perf_counter() - started
        # outside the scope the patch is gone again
        print(
            f"{name:<15} mean return {results[name].mean().item():9.2f}  in {timings[name]:.2f} s; "
            f"patch enabled after: {sb3_tensorpatch.is_enabled()}"
        )

    reference = results["numpy path"]
    worst = 0.0
    for name in ("with patched()", "@patched"):
        difference = (results[name] - reference).abs().max().item()
        worst = max(worst, difference)
        if not torch.allclose(results[name], reference, atol=1e-3, rtol=1e-5):
            print(f"FAIL: {name} returns differ from the numpy path by up to {difference:.3g}")
            return 1
    assert not sb3_tensorpatch.is_enabled()
    print(f"OK: scoped tensor evaluation matches SB3's NumPy path (max difference {worst:.3g}); SB3 is unpatched again")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
