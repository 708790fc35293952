"""No host reads on the tensor route: ``aten._local_scalar_dense`` / ``is_nonzero`` / ``item`` are
counted with a ``TorchDispatchMode`` during tensor predicts, over the parity grid, stochastic and
deterministic.

The one documented exception: on CPU, ``F.one_hot`` (SB3's preprocessing of Discrete and
MultiDiscrete observations) checks its bounds with host reads. The test counts the reads that
SB3's ``preprocess_obs`` makes on its own for the same observation and requires the route to add
none on top. (On CUDA, ``one_hot`` does not read back.)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from helpers import ACTIONS, OBS_KINDS, algorithm_class, build, observation_space, sample_observations, stack
from stable_baselines3.common.preprocessing import preprocess_obs
from torch.utils._python_dispatch import TorchDispatchMode

import sb3_tensorpatch
from sb3_tensorpatch.testing import to_tensor

HOST_READS = {"aten._local_scalar_dense", "aten.is_nonzero", "aten.item"}
GRID = [(algo, obs, act) for algo, acts in ACTIONS.items() for obs in OBS_KINDS for act in acts]


class CountHostReads(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.ops: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = str(func.overloadpacket._qualified_op_name).replace("::", ".")
        if name in HOST_READS:
            self.count += 1
            self.ops.append(name)
        return func(*args, **(kwargs or {}))


def _count(function: Any) -> int:
    with CountHostReads() as counter:
        function()
    return counter.count


def _one_hot_reads(policy: Any, obs: Any) -> int:
    """The reads SB3's own preprocessing makes (one_hot bound checks on CPU), as a baseline."""
    with torch.no_grad():
        obs_tensor, _ = policy.obs_to_tensor(obs)
        return _count(lambda: preprocess_obs(obs_tensor, policy.observation_space, policy.normalize_images))


@pytest.fixture(autouse=True)
def _enabled() -> Any:
    sb3_tensorpatch.enable()
    yield
    sb3_tensorpatch.disable()


def test_the_counter_sees_host_reads() -> None:
    # SB3's distributions validate their arguments with host reads: the workaround pays them
    model = build("PPO", "Box", "Box")
    obs = to_tensor(stack(sample_observations(observation_space("Box"), 2, seed=0)))
    with torch.no_grad():
        assert _count(lambda: model.policy._predict(obs, deterministic=False)) > 0
    assert _count(lambda: torch.ones(1).item()) == 1


@pytest.mark.parametrize("deterministic", [True, False], ids=["det", "stoch"])
@pytest.mark.parametrize("algo,obs_kind,act_kind", GRID, ids=["-".join(case) for case in GRID])
def test_no_host_reads(algo: str, obs_kind: str, act_kind: str, deterministic: bool) -> None:
    model = build(algo, obs_kind, act_kind)
    space = observation_space(obs_kind)
    for obs in (sample_observations(space, 1, seed=3)[0], stack(sample_observations(space, 4, seed=4))):
        tensor = to_tensor(obs)
        model.predict(tensor, deterministic=deterministic)  # warm the caches
        allowed = _one_hot_reads(model.policy, obs)
        assert _count(lambda t=tensor: model.predict(t, deterministic=deterministic)) == allowed
        assert _count(lambda t=tensor: model.policy.predict(t, deterministic=deterministic)) == allowed


@pytest.mark.parametrize("deterministic", [True, False], ids=["det", "stoch"])
@pytest.mark.parametrize("algo,obs_kind,act_kind", GRID, ids=["-".join(case) for case in GRID])
def test_no_host_reads_dlpack(algo: str, obs_kind: str, act_kind: str, deterministic: bool) -> None:
    """The DLPack entry: a JAX array in (torch.from_dlpack), a JAX array out, and no host read added."""
    jnp = pytest.importorskip("jax.numpy", reason="jax is not installed: `pip install -e '.[jax]'` runs this test")
    model = build(algo, obs_kind, act_kind)
    space = observation_space(obs_kind)
    for obs in (sample_observations(space, 1, seed=3)[0], stack(sample_observations(space, 4, seed=4))):
        array = {key: jnp.asarray(value) for key, value in obs.items()} if isinstance(obs, dict) else jnp.asarray(obs)
        actions, _ = model.predict(array, deterministic=deterministic)  # warm the caches
        assert not isinstance(actions, np.ndarray), "a JAX array went down SB3's NumPy path"
        allowed = _one_hot_reads(model.policy, obs)
        assert _count(lambda a=array: model.predict(a, deterministic=deterministic)) == allowed
        assert _count(lambda a=array: model.policy.predict(a, deterministic=deterministic)) == allowed


@pytest.mark.parametrize(
    "algo,policy,obs_kind,act_kind",
    [
        ("QRDQN", "MlpPolicy", "Box", "Discrete"),
        ("TQC", "MlpPolicy", "Box", "Box"),
        ("TRPO", "MlpPolicy", "Box", "Box"),
        ("TRPO", "MlpPolicy", "Box", "Discrete"),
        ("ARS", "MlpPolicy", "Box", "Box"),
        ("ARS", "LinearPolicy", "Box", "Discrete"),
        ("CrossQ", "MlpPolicy", "Box", "Box"),
        ("RecurrentPPO", "MlpLstmPolicy", "Box", "Box"),
        ("RecurrentPPO", "MlpLstmPolicy", "Box", "Discrete"),
        ("MaskablePPO", "MlpPolicy", "Box", "Discrete"),
        ("MaskablePPO", "MlpPolicy", "Box", "MultiDiscrete"),
        ("MaskablePPO", "MlpPolicy", "Box", "MultiBinary"),
    ],
)
@pytest.mark.parametrize("deterministic", [True, False], ids=["det", "stoch"])
def test_no_host_reads_contrib(algo: str, policy: str, obs_kind: str, act_kind: str, deterministic: bool) -> None:
    if algorithm_class(algo) is None:
        pytest.skip(f"{algo} is not in the installed sb3-contrib")
    model = build(algo, obs_kind, act_kind, policy)
    obs = to_tensor(stack(sample_observations(observation_space(obs_kind), 4, seed=6)))
    extra: dict[str, Any] = {}
    if algo == "MaskablePPO":
        from helpers import action_space

        from sb3_tensorpatch.routes import _mask_width

        width = _mask_width(action_space(act_kind))
        extra["action_masks"] = torch.ones(4, width, dtype=torch.bool)
    model.predict(obs, deterministic=deterministic, **extra)
    assert _count(lambda: model.predict(obs, deterministic=deterministic, **extra)) == 0
