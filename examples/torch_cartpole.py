"""CartPole for N environments written in torch, trained with SB3 and driven with tensors only.

The dynamics are gymnasium's ``CartPole-v1`` (Euler integration, the same constants, termination
and 500-step truncation), computed for every environment at once on one device:
:class:`sb3_tensorpatch.bench_envs.TorchCartPole`, a gymnasium vector env whose ``reset()`` and
``step(actions)`` take and return tensors on its device, and which resets finished environments
in the same step. :class:`sb3_tensorpatch.TensorVecEnv` puts SB3's ``VecEnv`` interface around it,
so that SB3 itself trains a PPO agent on the very same dynamics.

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
import time
from typing import Any

import torch
from stable_baselines3 import PPO

import sb3_tensorpatch
from sb3_tensorpatch.bench_envs import TorchCartPole


def first_episode_returns(env: TorchCartPole, policy: Any, seed: int) -> torch.Tensor:
    """Return each environment's first-episode return, with tensors only.

    Runs exactly ``max_episode_steps`` steps, so every environment finishes at least one episode
    (truncation ends it at the latest), and never reads a value back to the host.

    :param policy: maps an observation tensor ``(n_envs, 4)`` to an action tensor ``(n_envs,)``
    :param seed: seeds the env's initial states
    """
    obs, _ = env.reset(seed=seed)
    returns = torch.zeros(env.num_envs, device=env.device)
    running = torch.ones(env.num_envs, dtype=torch.bool, device=env.device)
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

    # 1. train with SB3 itself, on the same torch dynamics behind SB3's VecEnv interface
    started = time.perf_counter()
    train_env = sb3_tensorpatch.TensorVecEnv(TorchCartPole(args.train_envs, device="cpu"))
    train_env.seed(args.seed)
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
    env = TorchCartPole(args.n_envs, device=args.device)
    generator = torch.Generator(device=env.device).manual_seed(args.seed + 2)

    def random_policy(obs: torch.Tensor) -> torch.Tensor:
        return torch.randint(0, 2, (obs.shape[0],), generator=generator, device=obs.device)

    def trained_policy(obs: torch.Tensor) -> torch.Tensor:
        actions, _ = model.predict(obs, deterministic=True)
        assert isinstance(actions, torch.Tensor) and actions.device == obs.device  # never NumPy
        return actions

    started = time.perf_counter()
    random_returns = first_episode_returns(env, random_policy, args.seed + 1)
    trained_returns = first_episode_returns(env, trained_policy, args.seed + 1)
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
