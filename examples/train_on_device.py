"""Train PPO on a torch-native vectorised CartPole, with the patch off and on, and compare the two runs.

The env is :class:`sb3_tensorpatch.bench_envs.TorchCartPole`: gymnasium's ``CartPole-v1`` for N
environments at once, computed with torch tensors on one device, resetting finished environments in the
same step. :class:`sb3_tensorpatch.TensorVecEnv` makes it an SB3 ``VecEnv``, and PPO trains on it twice
from the same seed:

- patch off: SB3's own ``collect_rollouts``; every step copies the env's tensors to NumPy (the host path);
- patch on (``sb3_tensorpatch.enable()``): PPO's ``learn()`` takes the patch's rollout route, which keeps
  the rollout on the env's device where the installed version of the package has one (and is SB3's host
  path again where it has none).

Both runs are the same algorithm, so they must end with bit-identical parameters and the same episodes:
the script says whether they do (exit code 1 if not), and prints each run's steps per second and final
mean episode return (SB3's ``ep_info_buffer``: the last 100 episodes).

Run it (small defaults; ``--device cuda`` puts the env and the policy on the GPU)::

    python examples/train_on_device.py
    python examples/train_on_device.py --n-envs 1024 --timesteps 500000 --device cuda
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from stable_baselines3 import PPO

import sb3_tensorpatch
from sb3_tensorpatch.bench_envs import TorchCartPole


def train(patched: bool, args: argparse.Namespace) -> tuple[Any, float]:
    """Train PPO from ``args.seed`` with the patch on or off; return the model and the seconds in ``learn()``."""
    if patched:
        sb3_tensorpatch.enable()
    else:
        sb3_tensorpatch.disable()
    env = sb3_tensorpatch.TensorVecEnv(TorchCartPole(args.n_envs, device=args.device))
    model = PPO(
        "MlpPolicy",
        env,
        n_steps=32,
        batch_size=args.n_envs * 32 // 4,  # 4 minibatches per epoch
        n_epochs=10,
        gae_lambda=0.8,
        gamma=0.98,
        learning_rate=1e-3,
        policy_kwargs={"net_arch": [64, 64]},
        seed=args.seed,  # seeds torch, NumPy and the env's first reset
        device=args.device,
    )
    started = time.perf_counter()
    model.learn(total_timesteps=args.timesteps)
    seconds = time.perf_counter() - started
    sb3_tensorpatch.disable()
    return model, seconds


def mean_return(model: Any) -> float:
    episodes = list(model.ep_info_buffer)
    return sum(episode["r"] for episode in episodes) / max(len(episodes), 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-envs", type=int, default=64, help="environments (default 64)")
    parser.add_argument("--timesteps", type=int, default=32768, help="training steps of each run (default 32768)")
    parser.add_argument("--device", default="cpu", help="torch device of the env and the policy (default cpu)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default 1: fastest for small networks)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    runs = {}
    for name, patched in (("patch off", False), ("patch on", True)):
        model, seconds = train(patched, args)
        runs[name] = model
        print(
            f"{name:>9}: {model.num_timesteps} steps in {seconds:.1f} s ({model.num_timesteps / seconds:,.0f} steps/s), "
            f"final mean episode return {mean_return(model):.1f} over {len(model.ep_info_buffer)} episodes"
        )

    off, on = runs["patch off"].policy.state_dict(), runs["patch on"].policy.state_dict()
    identical = off.keys() == on.keys() and all(torch.equal(off[key], on[key]) for key in off)
    same_episodes = [(e["r"], e["l"]) for e in runs["patch off"].ep_info_buffer] == [
        (e["r"], e["l"]) for e in runs["patch on"].ep_info_buffer
    ]
    if identical and same_episodes and runs["patch off"].num_timesteps == runs["patch on"].num_timesteps:
        print("OK: parameters bit-identical, same episodes, same num_timesteps with the patch off and on")
        return 0
    print(f"FAIL: parameters identical: {identical}, same episodes: {same_episodes}")
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
