"""A full inference step on the device: VecNormalize statistics and ``predict`` on torch tensors.

Trains PPO on Pendulum-v1 behind ``VecNormalize`` for a moment, saves the model and the statistics,
loads them back, enables ``sb3_tensorpatch``, and then runs inference steps where the observation
stays a tensor on the device from start to end:

    obs tensor -> venv.normalize_obs(obs) -> model.predict(obs, deterministic=True) -> actions tensor

Each step is checked against SB3's numpy path on the same observation. Pendulum itself runs on the
CPU, so its observations are copied to the device here; a torch-native simulator (Isaac Lab,
ManiSkill, Genesis, ...) hands them over on the device already.

    python examples/on_device_inference.py             # 200 inference steps
    python examples/on_device_inference.py --steps 20  # a quick smoke run
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Any

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecNormalize

import sb3_tensorpatch

ENV_ID = "Pendulum-v1"
N_ENVS = 4


def train(directory: str, timesteps: int, seed: int) -> tuple[str, str]:
    """Train PPO behind VecNormalize; save the model and the statistics; return their paths."""
    venv = VecNormalize(make_vec_env(ENV_ID, n_envs=N_ENVS, seed=seed))
    model = PPO("MlpPolicy", venv, n_steps=256, batch_size=64, n_epochs=4, seed=seed, device="cpu")
    model.learn(total_timesteps=timesteps)
    model_path = os.path.join(directory, "ppo_pendulum.zip")
    stats_path = os.path.join(directory, "vec_normalize.pkl")
    model.save(model_path)
    venv.save(stats_path)
    venv.close()
    return model_path, stats_path


def load(model_path: str, stats_path: str, device: str, seed: int) -> tuple[Any, Any, Any]:
    """Load the statistics (around a fresh env) and the model, on ``device``, for inference."""
    env = make_vec_env(ENV_ID, n_envs=N_ENVS, seed=seed + 1)
    venv = VecNormalize.load(stats_path, env)
    venv.training = False  # inference: the statistics stay as trained
    venv.norm_reward = False
    model = PPO.load(model_path, device=device)
    return env, venv, model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="inference steps to run (default: 200)")
    parser.add_argument("--timesteps", type=int, default=2048, help="PPO training timesteps (default: 2048)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(1)  # a small MLP: more CPU threads only contend with each other

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as directory:
        model_path, stats_path = train(directory, args.timesteps, args.seed)
        env, venv, model = load(model_path, stats_path, device, args.seed)
    print(f"trained PPO on {ENV_ID} for {args.timesteps} steps, saved and reloaded ({time.perf_counter() - start:.1f} s)")

    sb3_tensorpatch.enable()
    obs = env.reset()
    tensor_time = numpy_time = 0.0
    worst = 0.0
    for step in range(args.steps):
        obs_t = torch.as_tensor(obs, device=device)  # a torch-native env would return this

        # the on-device step: nothing leaves the device
        tick = time.perf_counter()
        obs_norm = venv.normalize_obs(obs_t)
        actions_t, _ = model.predict(obs_norm, deterministic=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if step:  # the first step builds the caches
            tensor_time += time.perf_counter() - tick

        # SB3's numpy path on the same observation, for comparison
        tick = time.perf_counter()
        actions, _ = model.predict(venv.normalize_obs(obs), deterministic=True)
        if step:
            numpy_time += time.perf_counter() - tick

        assert isinstance(obs_norm, torch.Tensor) and obs_norm.device == obs_t.device
        assert isinstance(actions_t, torch.Tensor) and actions_t.device == obs_t.device
        assert tuple(actions_t.shape) == actions.shape
        got = actions_t.cpu().numpy()  # for the check only
        assert got.dtype == actions.dtype
        worst = max(worst, float(np.max(np.abs(got - actions))))
        assert worst <= 1e-5, f"tensor and numpy actions differ by {worst}"

        obs, _, _, _ = env.step(actions)  # Pendulum steps on the CPU, with numpy actions
    sb3_tensorpatch.disable()
    env.close()

    timed = max(args.steps - 1, 1)
    print(f"{args.steps} inference steps on {device} ({N_ENVS} envs): actions are tensors on {device}, "
          f"equal to the numpy path's (max abs difference {worst:.2g})")
    print(f"per step (normalize + predict): tensor route {tensor_time / timed * 1e6:.0f} us, "
          f"numpy path {numpy_time / timed * 1e6:.0f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
