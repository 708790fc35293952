"""``sb3_tensorpatch.bench_envs.TorchCartPole``: gymnasium's ``CartPole-v1`` dynamics, same-step autoreset,
seeding, the continuous force, and no host reads per step."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from helpers import GYMNASIUM

pytestmark = pytest.mark.skipif(not GYMNASIUM, reason="TorchCartPole is a gymnasium vector env (SB3 >= 2.0)")

if GYMNASIUM:
    import gymnasium as gym

    from sb3_tensorpatch import TensorVecEnv
    from sb3_tensorpatch.bench_envs import TorchCartPole
    from sb3_tensorpatch.vec_env import autoreset_mode

N = 32


def _gymnasium_envs(count: int, seed: int) -> list[Any]:
    envs = [gym.make("CartPole-v1").unwrapped for _ in range(count)]
    for index, env in enumerate(envs):
        env.reset(seed=seed + index)
    return envs


def _one_step_each(dtype: torch.dtype, steps: int = 150) -> list[tuple[Any, ...]]:
    """Step N gymnasium CartPoles and a TorchCartPole of N from the same states with the same actions, the
    torch env's state set to gymnasium's before every step; return per step (torch obs, gymnasium obs,
    torch terminated, gymnasium terminated)."""
    envs = _gymnasium_envs(N, seed=100)
    torch_env = TorchCartPole(N, dtype=dtype, max_episode_steps=10**9)
    torch_env.reset(seed=0)
    rng = np.random.default_rng(0)
    records = []
    for _ in range(steps):
        torch_env.state = torch.as_tensor(np.stack([env.state for env in envs]), dtype=dtype)
        actions = rng.integers(2, size=N)
        results = [env.step(int(action)) for env, action in zip(envs, actions)]
        _, _, terminated, _, info = torch_env.step(torch.as_tensor(actions))
        expected_obs = np.stack([result[0] for result in results])
        expected_terminated = np.array([result[2] for result in results])
        # the torch env's observation before its reset, to compare with gymnasium's (which does not reset)
        records.append((info["final_obs"].numpy(), expected_obs, terminated.numpy(), expected_terminated))
        for env, result in zip(envs, results):
            if result[2]:
                env.reset()
    return records


def test_float64_matches_gymnasium_cartpole_bit_for_bit() -> None:
    """In float64 (gymnasium's precision) every observation equals CartPole-v1's, step by step."""
    records = _one_step_each(torch.float64)
    assert sum(int(expected.sum()) for *_, expected in records) > 50  # episodes did end
    for observations, expected_obs, terminated, expected_terminated in records:
        assert observations.dtype == np.float32
        np.testing.assert_array_equal(observations, expected_obs)
        np.testing.assert_array_equal(terminated, expected_terminated)


def test_float32_follows_gymnasium_cartpole_to_float32_rounding() -> None:
    """In float32 (the default) each step lands within float32 rounding of CartPole-v1's; the flags agree
    wherever the state is not within that rounding of a threshold."""
    records = _one_step_each(torch.float32)
    for observations, expected_obs, terminated, expected_terminated in records:
        # not a predict parity check: the env's own float32 dynamics against gymnasium's float64 ones
        # (the float64 test above is the bit-exact one)
        np.testing.assert_allclose(observations, expected_obs, rtol=1e-5, atol=1e-6)
        margin = np.minimum(
            np.abs(np.abs(expected_obs[:, 0]) - TorchCartPole.x_threshold),
            np.abs(np.abs(expected_obs[:, 2]) - TorchCartPole.theta_threshold_radians),
        )
        clear = margin > 1e-5
        np.testing.assert_array_equal(terminated[clear], expected_terminated[clear])


def test_spaces_and_metadata() -> None:
    env = TorchCartPole(4)
    reference = gym.make("CartPole-v1")
    ours, theirs = env.single_observation_space, reference.observation_space
    if np.isinf(theirs.high).any():  # gymnasium >= 1.0 bounds the velocities with inf
        assert ours == theirs
    else:  # gymnasium < 1.0 with float32's largest value; the position bounds are the same
        assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
        assert np.array_equal(ours.high[[0, 2]], theirs.high[[0, 2]]) and np.isinf(ours.high[[1, 3]]).all()
    assert env.single_action_space == reference.action_space
    assert env.observation_space.shape == (4, 4) and env.action_space.shape == (4,)
    assert autoreset_mode(env) == "samestep"
    assert env.max_episode_steps == reference.spec.max_episode_steps == 500
    continuous = TorchCartPole(4, continuous=True)
    assert continuous.single_action_space == gym.spaces.Box(-1.0, 1.0, (1,), np.float32)


def test_same_step_autoreset() -> None:
    """A finished environment's returned observation is its next episode's first; ``final_obs`` holds the
    terminal one where ``_final_obs`` is set; the others go on undisturbed."""
    env = TorchCartPole(N, max_episode_steps=12)
    observations, _ = env.reset(seed=3)
    right = torch.ones(N, dtype=torch.int64)
    # half the envs push right every step (they fall), half alternate (they last until the time limit)
    alternate = torch.arange(N) % 2 == 0
    lengths = torch.zeros(N, dtype=torch.int64)
    seen_termination = seen_truncation = False
    for step in range(30):
        actions = torch.where(alternate, step % 2, right)
        observations, rewards, terminated, truncated, info = env.step(actions)
        done = terminated | truncated
        lengths += 1
        assert torch.equal(info["_final_obs"], done)
        assert torch.equal(rewards, torch.ones(N))
        final = info["final_obs"]
        assert final.dtype == observations.dtype == torch.float32 and final.shape == (N, 4)
        # the terminal observations are past a threshold (terminated) or at the time limit (truncated)
        fell = (final[:, 0].abs() > TorchCartPole.x_threshold) | (
            final[:, 2].abs() > TorchCartPole.theta_threshold_radians
        )
        assert torch.equal(fell, terminated)
        assert torch.equal(truncated, lengths >= 12)
        # reset rows: a fresh initial state; the other rows: the step's result, which is final_obs
        assert bool((observations[done].abs() <= TorchCartPole.reset_bound).all())
        assert torch.equal(observations[~done], final[~done])
        # every row's next step starts from the observation returned (for a finished row: the reset one)
        assert torch.equal(env.state, observations)
        seen_termination |= bool(terminated.any())
        seen_truncation |= bool((truncated & ~terminated).any())
        lengths = lengths.masked_fill(done, 0)
    assert seen_termination and seen_truncation


def test_terminated_and_truncated_together() -> None:
    """As under gymnasium's TimeLimit, an episode that fails on its last step is both."""
    env = TorchCartPole(1)
    env.reset(seed=0)
    length = 0
    while True:
        length += 1
        _, _, terminated, _, _ = env.step(torch.ones(1, dtype=torch.int64))
        if bool(terminated[0]):
            break
    env = TorchCartPole(1, max_episode_steps=length)
    env.reset(seed=0)
    for _ in range(length):
        _, _, terminated, truncated, _ = env.step(torch.ones(1, dtype=torch.int64))
    assert bool(terminated[0]) and bool(truncated[0])


def _trajectory(env: Any, seed: int | None, steps: int = 40) -> torch.Tensor:
    observations, _ = env.reset(seed=seed)
    rows = [observations]
    for step in range(steps):
        observations, *_ = env.step(torch.full((env.num_envs,), step % 2, dtype=torch.int64))
        rows.append(observations)
    return torch.stack(rows)


def test_seeding() -> None:
    env = TorchCartPole(8)
    first = _trajectory(env, seed=5)
    assert torch.equal(_trajectory(TorchCartPole(8), seed=5), first)  # another env, the same seed
    assert torch.equal(_trajectory(env, seed=5), first)  # reseeded
    assert not torch.equal(_trajectory(env, seed=None), first)  # unseeded: the generator goes on
    assert not torch.equal(_trajectory(env, seed=6), first)
    assert not torch.equal(_trajectory(TorchCartPole(8), seed=None), _trajectory(TorchCartPole(8), seed=None))


def test_continuous_force() -> None:
    """The continuous force is ``clip(action, -1, 1) * 10 N``: +-1 are Discrete's two actions, exactly."""
    states = torch.rand(6, 4, generator=torch.Generator().manual_seed(0)) * 0.1 - 0.05

    def step(env: Any, actions: torch.Tensor) -> torch.Tensor:
        env.reset(seed=0)
        env.state = states.clone()
        return env.step(actions)[4]["final_obs"]

    discrete = step(TorchCartPole(6), torch.tensor([1, 0, 1, 0, 1, 0]))
    continuous = TorchCartPole(6, continuous=True)
    assert torch.equal(step(continuous, torch.tensor([[1.0], [-1.0], [5.0], [-3.0], [1.0], [-1.0]])), discrete)
    halfway = step(continuous, torch.full((6, 1), 0.5))
    assert not torch.equal(halfway, discrete)


def test_no_host_reads_per_step() -> None:
    from test_host_sync import CountHostReads

    env = TorchCartPole(16, continuous=True)
    env.reset(seed=0)
    actions = torch.zeros(16, 1)
    with CountHostReads() as counter:
        for _ in range(30):
            env.step(actions)
    assert counter.count == 0, counter.ops


def test_trains_through_tensor_vec_env() -> None:
    """SB3's host path over it: the terminal observations and timeouts reach SB3's infos."""
    venv = TensorVecEnv(TorchCartPole(4, max_episode_steps=9))
    venv.seed(0)
    venv.reset()
    finished = 0
    for _ in range(30):
        venv.step_async(np.ones(4, dtype=np.int64))
        observations, _, dones, infos = venv.step_wait()
        for index in np.flatnonzero(dones):
            info = infos[index]
            assert np.abs(observations[index]).max() <= TorchCartPole.reset_bound
            terminal = info["terminal_observation"]
            fell = (
                abs(terminal[0]) > TorchCartPole.x_threshold or abs(terminal[2]) > TorchCartPole.theta_threshold_radians
            )
            assert info["TimeLimit.truncated"] == (not fell)  # 9 steps: some fall first, the others time out
            assert info["episode"]["r"] == info["episode"]["l"]
            finished += 1
    assert finished > 4
