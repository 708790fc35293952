"""Unusual but legitimate inputs that SB3's NumPy path takes: the tensor route gives SB3's values.

- RecurrentPPO's ``episode_start`` in any form with one value per env: a Python bool or int, a 0-d
  array or tensor for a single observation, ``(n_envs,)``, ``(1, n_envs)`` or ``(n_envs, 1)``.
- Sparse tensors: the values of ``predict(obs.to_dense().numpy())``.
- Complex observations: SB3 keeps the real part (with torch's warning), and so does the route.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch
from helpers import algorithm_class, build, observation_space, sample_observations, stack

import sb3_tensorpatch
from sb3_tensorpatch.testing import to_tensor


def _same(expected: Any, actual: Any) -> None:
    expected = torch.as_tensor(np.asarray(expected))
    assert isinstance(actual, torch.Tensor)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    assert torch.equal(actual, expected), (expected, actual)


def _recurrent() -> Any:
    if algorithm_class("RecurrentPPO") is None:
        pytest.skip("RecurrentPPO is not in the installed sb3-contrib")
    return build("RecurrentPPO", "Box", "Box", "MlpLstmPolicy")


# a state where resetting matters: episode_start=1 zeroes it, 0 keeps it
def _state(n_envs: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(n_envs)
    return tuple(rng.standard_normal((1, n_envs, 8)).astype(np.float32) for _ in range(2))  # type: ignore[return-value]


SINGLE_STARTS = [True, False, 1, 0, np.array(True), np.array(1.0), torch.tensor(True), torch.tensor(0), np.array([1])]
BATCH_STARTS = [
    np.array([True, False, True]),
    np.array([[True, False, True]]),  # (1, n_envs)
    np.array([[1], [0], [1]]),  # (n_envs, 1)
    [True, False, True],
    torch.tensor([[1.0, 0.0, 1.0]]),
]


@pytest.mark.parametrize("start", SINGLE_STARTS, ids=[repr(s).replace(" ", "") for s in SINGLE_STARTS])
def test_episode_start_for_a_single_observation(start: Any) -> None:
    model = _recurrent()
    obs = sample_observations(observation_space("Box"), 1, seed=0)[0]
    state = _state(1)
    numpy_start = start.numpy() if isinstance(start, torch.Tensor) else start
    expected, expected_state = model.predict(obs, state=state, episode_start=numpy_start, deterministic=True)
    tensor_start = start if isinstance(start, (torch.Tensor, bool, int)) else to_tensor(start)
    with sb3_tensorpatch.patched():
        actual, actual_state = model.predict(to_tensor(obs), state=to_tensor(state), episode_start=tensor_start, deterministic=True)
    _same(expected, actual)
    for one, other in zip(expected_state, actual_state):
        _same(one, other)


@pytest.mark.parametrize("start", BATCH_STARTS, ids=["flat", "1xn", "nx1", "list", "tensor-1xn"])
def test_episode_start_for_a_batch(start: Any) -> None:
    model = _recurrent()
    obs = stack(sample_observations(observation_space("Box"), 3, seed=1))
    state = _state(3)
    numpy_start = start.numpy() if isinstance(start, torch.Tensor) else start
    expected, expected_state = model.predict(obs, state=state, episode_start=numpy_start, deterministic=True)
    tensor_start = start if isinstance(start, (torch.Tensor, list)) else to_tensor(start)
    with sb3_tensorpatch.patched():
        actual, actual_state = model.predict(to_tensor(obs), state=to_tensor(state), episode_start=tensor_start, deterministic=True)
    _same(expected, actual)
    for one, other in zip(expected_state, actual_state):
        _same(one, other)


# a CSR tensor has two dimensions: batches only
SPARSE = [("coo", True), ("coo", False), ("csr", True)]


@pytest.mark.parametrize("layout,batched", SPARSE, ids=["coo-batch", "coo-single", "csr-batch"])
@pytest.mark.parametrize("algo,obs_kind,act_kind", [("PPO", "Box", "Box"), ("SAC", "Box", "Box"), ("DQN", "MultiBinary", "Discrete")])
def test_sparse_observation_gives_the_dense_values(algo: str, obs_kind: str, act_kind: str, layout: str, batched: bool) -> None:
    model = build(algo, obs_kind, act_kind)
    samples = sample_observations(observation_space(obs_kind), 4, seed=2)
    dense = to_tensor(stack(samples) if batched else samples[0])
    if obs_kind == "Box":
        dense = torch.where(dense > 0, dense, torch.zeros(()))  # sparse in earnest: about half are zero
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch: sparse CSR support is in beta
        sparse = dense.to_sparse() if layout == "coo" else dense.to_sparse_csr()
    expected, _ = model.predict(sparse.to_dense().numpy(), deterministic=True)
    with sb3_tensorpatch.patched():
        actual, _ = model.predict(sparse, deterministic=True)
    _same(expected, actual)


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
@pytest.mark.parametrize("algo,act_kind", [("PPO", "Box"), ("SAC", "Box"), ("A2C", "Discrete")])
def test_complex_observation_as_sb3_takes_it(algo: str, act_kind: str, dtype: Any) -> None:
    model = build(algo, "Box", act_kind)
    real = stack(sample_observations(observation_space("Box"), 3, seed=4))
    obs = (real + 1j * real[::-1]).astype(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch: casting complex values to real discards the imaginary part
        expected, _ = model.predict(obs, deterministic=True)
        with sb3_tensorpatch.patched():
            actual, _ = model.predict(torch.as_tensor(obs), deterministic=True)
    _same(expected, actual)
