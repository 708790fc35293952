"""A JAX environment stepping on its device, and SB3's PPO predicting on the same device, through DLPack.

JAX simulators (Brax, MJX, gymnax, ...) hand out ``jax.Array`` observations on their device. With
``sb3_tensorpatch`` enabled, ``model.predict`` takes them as they are: the array goes into torch with
``torch.from_dlpack`` (no copy), the policy runs on that device, and the actions come back as a
``jax.Array`` on the same device, ready for the next ``env.step``. Nothing passes through NumPy.

The environment here is Pendulum-v1's dynamics written in ``jax.numpy`` for a batch of pendulums
(jitted, on JAX's default device). PPO learns on gymnasium's Pendulum-v1 for a moment, then drives
the JAX pendulums; each step is checked against SB3's NumPy path on ``numpy.asarray(obs)``.

    python examples/jax_env_inference.py                                # 200 steps, 64 pendulums
    python examples/jax_env_inference.py --steps 20 --timesteps 512     # a quick smoke run

Needs JAX: ``pip install "jax[cpu]"`` (or ``pip install -e ".[jax]"``); on a GPU, a CUDA build of
both JAX and torch puts everything on the GPU.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import torch
from stable_baselines3 import PPO

import sb3_tensorpatch

# Pendulum-v1's constants (gymnasium.envs.classic_control.pendulum)
MAX_SPEED, MAX_TORQUE, DT, G, M, L = 8.0, 2.0, 0.05, 10.0, 1.0, 1.0


class State(NamedTuple):
    theta: jax.Array
    theta_dot: jax.Array


def reset(key: jax.Array, n_envs: int) -> State:
    """Random angles in [-pi, pi] and speeds in [-1, 1], as Pendulum-v1 starts."""
    angle_key, speed_key = jax.random.split(key)
    return State(
        jax.random.uniform(angle_key, (n_envs,), minval=-jnp.pi, maxval=jnp.pi),
        jax.random.uniform(speed_key, (n_envs,), minval=-1.0, maxval=1.0),
    )


@jax.jit
def observe(state: State) -> jax.Array:
    """Pendulum-v1's observation for each env: (cos theta, sin theta, theta_dot), float32."""
    return jnp.stack([jnp.cos(state.theta), jnp.sin(state.theta), state.theta_dot], axis=1).astype(jnp.float32)


@jax.jit
def step(state: State, actions: jax.Array) -> tuple[State, jax.Array]:
    """One step of every pendulum with the torques ``actions`` (n_envs, 1); returns the new state and rewards."""
    torque = jnp.clip(actions[:, 0], -MAX_TORQUE, MAX_TORQUE)
    angle = ((state.theta + jnp.pi) % (2 * jnp.pi)) - jnp.pi
    reward = -(angle**2 + 0.1 * state.theta_dot**2 + 0.001 * torque**2)
    speed = state.theta_dot + (3 * G / (2 * L) * jnp.sin(state.theta) + 3.0 / (M * L**2) * torque) * DT
    speed = jnp.clip(speed, -MAX_SPEED, MAX_SPEED)
    return State(state.theta + speed * DT, speed), reward


def torch_device() -> str:
    """The torch device that is JAX's default device: the policy must run where the arrays are."""
    return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def run(model: Any, steps: int, n_envs: int, seed: int, check: bool) -> tuple[float, float, float]:
    """Drive ``n_envs`` JAX pendulums with ``model`` for ``steps`` steps; return the mean return and
    the time per step of the JAX route (and of SB3's NumPy path when ``check``)."""
    state = reset(jax.random.PRNGKey(seed), n_envs)
    total = jnp.zeros(n_envs)
    route_time = numpy_time = 0.0
    for index in range(steps):
        obs = observe(state)  # a jax.Array on JAX's default device

        tick = time.perf_counter()
        actions, _ = model.predict(obs, deterministic=True)  # a jax.Array on the same device
        actions.block_until_ready()
        if index:  # the first step builds the caches
            route_time += time.perf_counter() - tick

        if check:  # SB3's own path on the same observation, for comparison only
            assert isinstance(actions, jax.Array) and actions.devices() == obs.devices()
            tick = time.perf_counter()
            expected, _ = model.predict(np.asarray(obs), deterministic=True)
            if index:
                numpy_time += time.perf_counter() - tick
            got = np.asarray(actions)
            assert got.dtype == expected.dtype and got.shape == expected.shape
            assert np.array_equal(got.view(np.uint32), expected.view(np.uint32)), "actions differ from SB3's"

        state, reward = step(state, actions)  # stays on the device
        total = total + reward
    timed = max(steps - 1, 1)
    return float(total.mean()), route_time / timed, numpy_time / timed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="steps of the JAX pendulums (default: 200)")
    parser.add_argument("--n-envs", type=int, default=64, help="pendulums stepped together (default: 64)")
    parser.add_argument("--timesteps", type=int, default=4096, help="PPO training timesteps (default: 4096)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # a small MLP: more CPU threads only contend with each other
    device = torch_device()

    start = time.perf_counter()
    model = PPO("MlpPolicy", "Pendulum-v1", n_steps=512, batch_size=64, n_epochs=4, seed=args.seed, device=device)
    model.learn(total_timesteps=args.timesteps)
    print(f"trained PPO on gymnasium's Pendulum-v1 for {args.timesteps} steps on {device} ({time.perf_counter() - start:.1f} s)")

    with sb3_tensorpatch.patched():
        mean_return, route_time, numpy_time = run(model, args.steps, args.n_envs, args.seed, check=True)
    print(
        f"{args.steps} steps of {args.n_envs} JAX pendulums on {jax.devices()[0]}: observations and actions stayed "
        f"jax.Arrays on that device, and every action was bit-identical to predict(numpy.asarray(obs))"
    )
    print(f"mean return over the steps: {mean_return:.1f}")
    print(f"per step (predict): JAX array in and out {route_time * 1e6:.0f} us, SB3's NumPy path {numpy_time * 1e6:.0f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
