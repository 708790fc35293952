"""Why not just call ``policy._predict()``? Five cases where it gives wrong actions, reproduced.

For each case the script runs the same observations three ways:

- ``model.predict(numpy)``: SB3's own path, the reference;
- ``policy._predict(tensor)`` under ``torch.no_grad()``: the usual workaround;
- ``model.predict(tensor)`` with sb3-tensorpatch enabled;

and prints what each gave. The patched call must agree with the reference (the script exits 1
otherwise); the workaround's failures are what the documentation page
"Why not just call policy._predict()" describes.

    python examples/why_not_predict.py
"""

from __future__ import annotations

import argparse
import warnings
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import PPO, SAC, TD3

import sb3_tensorpatch


class SpaceEnv(gym.Env):
    """An env that only has spaces: enough to build a model for them."""

    def __init__(self, observation_space: Any, action_space: Any) -> None:
        self.observation_space = observation_space
        self.action_space = action_space

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        return self.observation_space.sample(), {}

    def step(self, action: Any) -> Any:
        return self.observation_space.sample(), 0.0, False, False, {}


def workaround(model: Any, obs: Any) -> Any:
    """The usual advice: the policy's ``_predict`` on a tensor, under ``no_grad``."""
    tensor = (
        {key: torch.as_tensor(value) for key, value in obs.items()} if isinstance(obs, dict) else torch.as_tensor(obs)
    )
    with torch.no_grad():
        return model.policy._predict(tensor, deterministic=True)


def attempt(call: Callable[[], Any]) -> tuple[Any, str | None]:
    try:
        return call(), None
    except Exception as exc:
        message = str(exc).splitlines()[0]
        return None, f"{type(exc).__name__}: {message[:160]}"


def compare(title: str, model: Any, obs: Any, deterministic: bool, check: Callable[[Any, Any], str]) -> bool:
    """Run the three ways on ``obs``; print the outcome; return whether the patched call agreed."""
    print(f"\n{title}")
    expected, _ = model.predict(obs, deterministic=deterministic)
    print(f"  predict(numpy):           {check(expected, expected)}")
    if deterministic:
        raw, error = attempt(lambda: workaround(model, obs))
    else:
        tensor = torch.as_tensor(obs)
        with torch.no_grad():
            raw, error = attempt(lambda: model.policy._predict(tensor, deterministic=False))
    print(f"  policy._predict(tensor):  {error or check(raw.numpy(), expected)}")
    tensor_obs = {k: torch.as_tensor(v) for k, v in obs.items()} if isinstance(obs, dict) else torch.as_tensor(obs)
    with sb3_tensorpatch.patched():
        actions, _ = model.predict(tensor_obs, deterministic=deterministic)
    verdict = check(actions.numpy(), expected)
    print(f"  predict(tensor), patched: {verdict}")
    return verdict.startswith("ok")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=4000, help="observations in the batched cases (default 4000)")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    agreed = []

    # 1. PPO, Box actions in [-2, 2], stochastic: SB3 clips the samples to the bounds
    ppo = PPO("MlpPolicy", "Pendulum-v1", seed=0, device="cpu")
    ppo.observation_space.seed(0)
    obs = np.stack([ppo.observation_space.sample() for _ in range(args.n)])
    low, high = ppo.action_space.low, ppo.action_space.high

    def bounds(actions: Any, expected: Any) -> str:
        outside = np.mean((actions < low) | (actions > high))
        state = "ok" if outside == 0 else "WRONG"
        return f"{state}: {outside:.1%} outside [{low[0]:g}, {high[0]:g}], range [{actions.min():.2f}, {actions.max():.2f}]"

    agreed.append(compare("1. PPO Pendulum, stochastic (Box actions in [-2, 2])", ppo, obs, False, bounds))

    # 2. SAC and TD3 squash their output to [-1, 1]; SB3 unscales it to [low, high]
    for cls in (SAC, TD3):
        model = cls("MlpPolicy", "Pendulum-v1", seed=0, device="cpu")
        model.observation_space.seed(0)
        obs = np.stack([model.observation_space.sample() for _ in range(args.n // 4)])

        def unscaled(actions: Any, expected: Any) -> str:
            difference = np.abs(actions - expected).max()
            ratio = np.median(actions / expected)
            state = "ok" if difference < 1e-5 else "WRONG"
            return (
                f"{state}: range [{actions.min():.3f}, {actions.max():.3f}], median ratio to predict(numpy) {ratio:.2f}"
            )

        agreed.append(compare(f"2. {cls.__name__} Pendulum, deterministic (squash_output)", model, obs, True, unscaled))

    def same(actions: Any, expected: Any) -> str:
        ok = np.shape(actions) == np.shape(expected) and np.allclose(actions, expected, atol=1e-5)
        return f"{'ok' if ok else 'WRONG'}: actions {np.array2string(np.asarray(actions), threshold=6)}, shape {np.shape(actions)}"

    # 3. a single observation without the batch dimension
    cartpole = PPO("MlpPolicy", "CartPole-v1", seed=0, device="cpu")
    cartpole.observation_space.seed(0)
    agreed.append(
        compare(
            "3. PPO CartPole, one observation of shape (4,)", cartpole, cartpole.observation_space.sample(), True, same
        )
    )

    # 4. a channel-last uint8 image; SB3 transposes it to the policy's channel-first space
    image = SpaceEnv(spaces.Box(0, 255, (36, 36, 3), np.uint8), spaces.Discrete(3))
    cnn = PPO(
        "CnnPolicy", image, seed=0, device="cpu", policy_kwargs={"features_extractor_kwargs": {"features_dim": 16}}
    )
    image.observation_space.seed(0)
    images = np.stack([image.observation_space.sample() for _ in range(2)])
    agreed.append(
        compare("4. PPO CnnPolicy, channel-last uint8 images of shape (2, 36, 36, 3)", cnn, images, True, same)
    )

    # 5. an unbatched Dict observation
    dict_env = SpaceEnv(
        spaces.Dict({"a": spaces.Box(-1, 1, (3,), np.float32), "b": spaces.Box(-1, 1, (2,), np.float32)}),
        spaces.Discrete(3),
    )
    multi = PPO("MultiInputPolicy", dict_env, seed=0, device="cpu")
    dict_env.observation_space.seed(0)
    agreed.append(
        compare("5. PPO MultiInputPolicy, one Dict observation", multi, dict_env.observation_space.sample(), True, same)
    )

    if not all(agreed):
        print(f"\nFAIL: the patched predict(tensor) disagreed with predict(numpy) in {agreed.count(False)} case(s)")
        return 1
    print(f"\nOK: the patched predict(tensor) agreed with predict(numpy) in all {len(agreed)} runs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
