#!/usr/bin/env python3
"""The checks a session runs when a GPU is lent to it: one short script, prepared and tried on CPU.

A GPU machine is lent for minutes at a time, so everything it should show is asked for here, in one
run, each part printing what it found:

1. ``parity``: ``predict(tensor on the device)`` against ``predict(numpy)`` for PPO, SAC, DQN, A2C and
   TD3 (SB3's default ``MlpPolicy`` on their usual envs, the policy on the device), deterministic and
   stochastic from the same seed, batch 1 and 64: the same bits, dtype and shape, actions on the device.
2. ``syncs``: the same tensor predicts under ``torch.cuda.set_sync_debug_mode("error")`` after one
   warm-up call (which may upload the cached action bounds): any synchronising call raises. On CPU
   the sync debug mode does nothing and the part says so.
3. ``rollouts``: PPO ``learn()`` on ``TorchCartPole`` on the device with the patch on, counting the
   synchronising calls (sync debug mode ``"warn"``) during ``collect_rollouts`` for ``n_steps`` 8 and
   32: the count must not grow with ``n_steps`` (a constant per rollout is allowed).
4. ``bench``: ``python -m sb3_tensorpatch bench --device D --batches 1,4096`` and ``bench --train
   --device D --rsl-rl`` (rsl_rl when installed), with few rounds.

Run from the repository root, with a time limit that leaves room for a second try::

    python scripts/device_check.py                      # cuda, every part
    python scripts/device_check.py --device cpu --quick # the same code on CPU, small: a dry run
    python scripts/device_check.py parity syncs         # some parts

Exit status 0 when every part that ran passed; 1 otherwise.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
import warnings
from typing import Any, Callable

import numpy as np
import torch

PARTS = ("parity", "syncs", "rollouts", "bench")


def _models(device: str) -> list[tuple[str, Any]]:
    """The bench's five cases, built as the bench builds them."""
    from sb3_tensorpatch import bench

    models = []
    for name, algorithm, env_id in bench.CASES:
        model = bench._build(algorithm, env_id, device)
        if algorithm == "DQN":
            model.exploration_rate = 0.0  # the policy's own predict, on every call
        models.append((name, model))
    return models


def _observations(model: Any, rows: int) -> np.ndarray:
    space = model.observation_space
    space.seed(rows)
    return np.stack([space.sample() for _ in range(rows)])


def part_parity(device: str, quick: bool) -> bool:
    import sb3_tensorpatch

    ok = True
    for name, model in _models(device):
        for rows in (1,) if quick else (1, 64):
            obs = _observations(model, rows)
            for deterministic in (True, False):
                torch.manual_seed(1)
                want, _ = model.predict(obs, deterministic=deterministic)
                with sb3_tensorpatch.patched():
                    torch.manual_seed(1)
                    got, _ = model.predict(torch.as_tensor(obs, device=device), deterministic=deterministic)
                same = (
                    isinstance(got, torch.Tensor)
                    and got.device.type == torch.device(device).type
                    and np.array_equal(got.cpu().numpy(), want)
                    and got.cpu().numpy().dtype == want.dtype
                    and tuple(got.shape) == want.shape
                )
                ok &= same
                print(f"  {name:14} batch {rows:3} {'det ' if deterministic else 'stoch'}: {'same bits' if same else 'DIFFERENT'}")
    return ok


def part_syncs(device: str, quick: bool) -> bool:
    import sb3_tensorpatch

    if not device.startswith("cuda"):
        print("  (sync debug mode exists on CUDA only: nothing to check on this device)")
        return True
    ok = True
    for name, model in _models(device):
        obs = torch.as_tensor(_observations(model, 1), device=device)
        with sb3_tensorpatch.patched():
            for deterministic in (True, False):
                model.predict(obs, deterministic=deterministic)  # warm-up: may upload the bounds
                torch.cuda.synchronize()
                torch.cuda.set_sync_debug_mode("error")
                try:
                    for _ in range(3):
                        model.predict(obs, deterministic=deterministic)
                    found = "no sync"
                except RuntimeError as error:
                    found = f"SYNC: {error}"
                    ok = False
                finally:
                    torch.cuda.set_sync_debug_mode("default")
                print(f"  {name:14} {'det ' if deterministic else 'stoch'}: {found}")
    return ok


def _count_syncs(run: Callable[[], Any]) -> int:
    """Synchronising calls CUDA's sync debug mode warns about while ``run`` runs."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(warning.message) for warning in caught)


def part_rollouts(device: str, quick: bool) -> bool:
    from stable_baselines3 import PPO

    import sb3_tensorpatch
    from sb3_tensorpatch.bench_envs import TorchCartPole

    envs = 64 if quick else 1024
    cuda = device.startswith("cuda")
    counts: dict[int, list[int]] = {}
    with sb3_tensorpatch.patched():
        for n_steps in (8, 32):
            env = sb3_tensorpatch.TensorVecEnv(TorchCartPole(envs, device, continuous=True))
            model = PPO("MlpPolicy", env, n_steps=n_steps, batch_size=envs * n_steps // 4, n_epochs=1, device=device, seed=0)
            model.learn(envs * n_steps)  # warm-up: builds the device buffer and the lowered forward
            counts[n_steps] = []
            # learn() calls self.collect_rollouts: count the syncs of each call of the class's (the route)
            def collect_rollouts(*args: Any, model: Any = model, found: list[int] = counts[n_steps], **kwargs: Any) -> Any:
                algorithm = type(model)
                if not cuda:
                    found.append(0)
                    return algorithm.collect_rollouts(model, *args, **kwargs)
                result: list[Any] = []
                found.append(_count_syncs(lambda: result.append(algorithm.collect_rollouts(model, *args, **kwargs))))
                return result[0]

            model.collect_rollouts = collect_rollouts  # type: ignore[method-assign]  # on the instance, as the bench does
            started = time.perf_counter()
            model.learn(3 * envs * n_steps, reset_num_timesteps=False)
            print(f"  n_steps {n_steps}: 3 rollouts of {envs} envs and their updates in {time.perf_counter() - started:.2f} s")
    if not cuda:
        print("  (sync debug mode exists on CUDA only: nothing counted on this device)")
        return all(len(found) == 3 for found in counts.values())
    ok = max(counts[32]) <= max(counts[8])
    print(f"  synchronising calls per rollout: n_steps 8 -> {counts[8]}, n_steps 32 -> {counts[32]} ({'constant' if ok else 'GROWS with n_steps'})")
    return ok


def part_bench(device: str, quick: bool) -> bool:
    commands = [
        [sys.executable, "-m", "sb3_tensorpatch", "bench", "--device", device, "--batches", "1,4096", "--rounds", "3" if quick else "11"],
        [sys.executable, "-m", "sb3_tensorpatch", "bench", "--device", device, "--batches", "1", "--rounds", "3" if quick else "11", "--stochastic"],
        [sys.executable, "-m", "sb3_tensorpatch", "bench", "--train", "--device", device, "--rounds", "1" if quick else "3"]
        + (["--envs", "64", "--iterations", "1"] if quick else [])
        + (["--rsl-rl"] if importlib.util.find_spec("rsl_rl") is not None else []),
    ]
    ok = True
    for command in commands:
        print("  $", " ".join(command[1:]), flush=True)
        ok &= subprocess.run(command, check=False).returncode == 0
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("parts", nargs="*", choices=[[], *PARTS], metavar="PART", help=f"some of {', '.join(PARTS)} (default: all)")
    parser.add_argument("--device", default="cuda", help="torch device (default cuda)")
    parser.add_argument("--quick", action="store_true", help="small sizes and few rounds: a dry run")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA device here: use --device cpu for a dry run")
    print(f"torch {torch.__version__}, device {args.device}" + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else ""))
    results = {}
    for part in args.parts or PARTS:
        print(f"\n== {part}", flush=True)
        started = time.perf_counter()
        results[part] = {"parity": part_parity, "syncs": part_syncs, "rollouts": part_rollouts, "bench": part_bench}[part](args.device, args.quick)
        print(f"== {part}: {'ok' if results[part] else 'FAILED'} ({time.perf_counter() - started:.0f} s)", flush=True)
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
