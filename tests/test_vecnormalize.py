"""VecNormalize on tensors: ``normalize_obs`` / ``unnormalize_obs`` / ``normalize_reward`` /
``unnormalize_reward`` against SB3's numpy path.

Every tensor result is compared with the numpy path on the same values (within 1e-6), in shape,
dtype and device; the input is never modified, and the result is the input itself exactly where
SB3 returns its input. The statistics are never stale: stepping in training mode, assigning new
statistics, updating them in place, editing their arrays and ``VecNormalize.load`` are each seen by
the next call. No call reads a value back to the host. Numpy input still reaches SB3's own code.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest
import torch
from helpers import SB3_VERSION, SpaceEnv, spaces
from packaging.version import Version
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize
from test_host_sync import CountHostReads

import sb3_tensorpatch
from sb3_tensorpatch.testing import _compare, to_tensor

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
METHODS = ("normalize_obs", "unnormalize_obs", "normalize_reward", "unnormalize_reward")
#: SB3 casts normalize_reward's result to float32 from 2.5.0 on
REWARD_FLOAT32 = SB3_VERSION >= Version("2.5.0")

ACTION_SPACE = spaces.Box(low=-1.0, high=1.0, shape=(1,), dtype=np.float32)
#: two Box keys and a Discrete one: only a subset of the keys can be normalized
DICT_MIXED = {
    "pos": spaces.Box(low=-1.0, high=4.0, shape=(3,), dtype=np.float32),
    "vel": spaces.Box(low=-5.0, high=0.0, shape=(2,), dtype=np.float32),
    "mode": spaces.Discrete(3),
}
#: three Box keys (one 2-D): every key can be normalized
DICT_BOXES = {
    "pos": spaces.Box(low=-1.0, high=4.0, shape=(3,), dtype=np.float32),
    "vel": spaces.Box(low=-5.0, high=0.0, shape=(2,), dtype=np.float32),
    "grid": spaces.Box(low=0.0, high=9.0, shape=(2, 2), dtype=np.float32),
}
DICT_CASES = {
    "all-keys": (DICT_BOXES, None),
    "keys-subset": (DICT_BOXES, ["vel"]),
    "keys-mixed-space": (DICT_MIXED, ["pos", "vel"]),
}

pytestmark = pytest.mark.usefixtures("enabled")


# -- environments ---------------------------------------------------------------------------------


def _run(venv: Any, steps: int, seed: int = 0) -> Any:
    """Step ``venv`` with random actions (in training mode this updates its statistics)."""
    rng = np.random.default_rng(seed)
    space = venv.action_space
    for _ in range(steps):
        actions = rng.uniform(space.low, space.high, size=(venv.num_envs, *space.shape)).astype(np.float32)
        venv.step(actions)
    return venv


def pendulum(steps: int = 20, **kwargs: Any) -> Any:
    venv = VecNormalize(make_vec_env("Pendulum-v1", n_envs=2, seed=0), **kwargs)
    venv.reset()
    return _run(venv, steps)


def dict_env(space: dict[str, Any], norm_obs_keys: list[str] | None, steps: int = 20, **kwargs: Any) -> Any:
    observation_space = spaces.Dict(space)
    venv = VecNormalize(
        DummyVecEnv([lambda: SpaceEnv(observation_space, ACTION_SPACE)] * 2), norm_obs_keys=norm_obs_keys, **kwargs
    )
    venv.reset()
    return _run(venv, steps)


def box_obs(venv: Any, batch: int | None, seed: int = 1, scale: float = 3.0) -> np.ndarray:
    """Observations around (not at) the statistics, float32, batched or single."""
    rng = np.random.default_rng(seed)
    shape = venv.observation_space.shape if batch is None else (batch, *venv.observation_space.shape)
    return (rng.normal(size=shape) * scale).astype(np.float32)


def dict_obs(venv: Any, batch: int, seed: int = 1) -> dict[str, np.ndarray]:
    space = venv.observation_space
    space.seed(seed)
    samples = [space.sample() for _ in range(batch)]
    return {key: np.stack([np.asarray(sample[key]) for sample in samples]) for key in space.spaces}


def rewards(seed: int = 2, shape: tuple[int, ...] = (2,)) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=shape) * 5.0).astype(np.float32)


# -- comparison -----------------------------------------------------------------------------------


def _clone(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _clone(item) for key, item in value.items()}
    return value.clone() if isinstance(value, torch.Tensor) else np.array(value, copy=True)


def _assert_unchanged(before: Any, after: Any) -> None:
    if isinstance(before, dict):
        assert before.keys() == after.keys()
        for key in before:
            _assert_unchanged(before[key], after[key])
    elif isinstance(before, torch.Tensor):
        assert torch.equal(before, after), "the input tensor was modified"
    else:
        np.testing.assert_array_equal(before, after)


def _numpy(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _numpy(item) for key, item in value.items()}
    return value.cpu().numpy() if isinstance(value, torch.Tensor) else value


def _device_of(value: Any) -> torch.device:
    items = value.values() if isinstance(value, dict) else [value]
    return next(item.device for item in items if isinstance(item, torch.Tensor))


def check(venv: Any, method: str, value: Any, device: str = "cpu") -> Any:
    """Call ``method`` with ``value`` as tensors on ``device`` and as numpy; assert they agree.

    :param value: numpy input (an array or a dict of arrays), or a dict already holding tensors
        (numpy values mixed in stay numpy)
    :return: the tensor result
    """
    mixed = isinstance(value, dict) and any(isinstance(item, torch.Tensor) for item in value.values())
    tensor = value if mixed else to_tensor(value, device)
    numpy_input = _numpy(tensor)
    before = _clone(tensor)
    actual = getattr(venv, method)(tensor)
    expected = getattr(venv, method)(numpy_input)
    _assert_unchanged(before, tensor)
    target = _device_of(tensor)
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and list(actual) == list(expected)
        problems = [
            problem
            for key in expected
            for problem in _compare(f"{method}[{key}]", expected[key], actual[key], target, 1e-6, True)
        ]
        # SB3 deep-copies the dict: no value of the input comes back as is
        assert all(actual[key] is not tensor[key] for key in expected), f"{method} returned an input value itself"
    else:
        problems = _compare(method, expected, actual, target, 1e-6, True)
        # the very input exactly where SB3 returns its input
        assert (actual is tensor) == (expected is numpy_input), f"{method}: identity differs from SB3's"
    assert not problems, "\n".join(problems)
    return actual


# -- parity ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", ["normalize_obs", "unnormalize_obs"])
@pytest.mark.parametrize("batch", [None, 1, 5], ids=["single", "batch1", "batch5"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_box_obs_parity(method: str, batch: int | None, dtype: Any, device: str) -> None:
    venv = pendulum()
    check(venv, method, box_obs(venv, batch).astype(dtype), device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", ["normalize_reward", "unnormalize_reward"])
@pytest.mark.parametrize("shape", [(2,), (7,), ()], ids=["n_envs", "batch7", "0d"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reward_parity(method: str, shape: tuple[int, ...], dtype: Any, device: str) -> None:
    venv = pendulum()
    result = check(venv, method, rewards(shape=shape).astype(dtype), device)
    if method == "normalize_reward" and REWARD_FLOAT32:
        assert result.dtype == torch.float32


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", ["normalize_obs", "unnormalize_obs"])
@pytest.mark.parametrize("case", list(DICT_CASES))
def test_dict_obs_parity(case: str, method: str, device: str) -> None:
    space, keys = DICT_CASES[case]
    venv = dict_env(space, keys)
    check(venv, method, dict_obs(venv, 4), device)


@pytest.mark.parametrize("method", ["normalize_obs", "unnormalize_obs"])
def test_dict_of_tensors_with_numpy_values(method: str) -> None:
    venv = dict_env(DICT_MIXED, ["pos", "vel"])
    obs = dict_obs(venv, 3)
    mixed = {"pos": torch.as_tensor(obs["pos"]), "vel": obs["vel"], "mode": obs["mode"]}
    before = {key: np.array(value, copy=True) for key, value in obs.items()}
    result = check(venv, method, mixed)
    assert all(isinstance(value, torch.Tensor) for value in result.values())
    for key in ("vel", "mode"):  # the numpy values given are not modified either
        np.testing.assert_array_equal(mixed[key], before[key])


def test_dict_missing_a_normalized_key_raises_like_numpy() -> None:
    venv = dict_env(DICT_BOXES, ["pos", "vel"])
    obs = dict_obs(venv, 2)
    del obs["vel"]
    with pytest.raises(KeyError):
        venv.normalize_obs(obs)
    with pytest.raises(KeyError):
        venv.normalize_obs(to_tensor(obs))


@pytest.mark.parametrize("device", DEVICES)
def test_clip_obs_clips(device: str) -> None:
    venv = pendulum(clip_obs=1.0)
    rms = venv.obs_rms
    z = np.linspace(-3.0, 3.0, 18).reshape(6, 3)  # standard scores, a third of them inside [-1, 1]
    obs = (rms.mean + z * np.sqrt(rms.var)).astype(np.float32)
    result = check(venv, "normalize_obs", obs, device).cpu().numpy()
    outside = np.abs(z) > 1.01
    np.testing.assert_array_equal(np.abs(result[outside]), 1.0)
    assert (np.abs(result[~outside]) < 1.0).any()


@pytest.mark.parametrize("device", DEVICES)
def test_clip_reward_clips(device: str) -> None:
    venv = pendulum(clip_reward=0.25)
    result = check(venv, "normalize_reward", rewards(shape=(8,)), device).cpu()
    assert bool((result.abs() == 0.25).any()) and bool((result.abs() < 0.25).any())


@pytest.mark.parametrize("device", DEVICES)
def test_dict_clip_obs_clips(device: str) -> None:
    venv = dict_env(DICT_BOXES, None, clip_obs=0.3)
    obs = {key: value * 40.0 for key, value in dict_obs(venv, 4).items()}
    result = check(venv, "normalize_obs", obs, device)
    for value in result.values():
        values = np.abs(value.cpu().numpy())
        assert (values == np.float32(0.3)).any() and values.max() == np.float32(0.3)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", METHODS)
def test_norm_obs_and_norm_reward_off_pass_through(method: str, device: str) -> None:
    venv = pendulum(norm_obs=False, norm_reward=False)
    value = rewards(shape=(2,)) if "reward" in method else box_obs(venv, 3)
    result = check(venv, method, value, device)
    np.testing.assert_array_equal(result.cpu().numpy(), value)


@pytest.mark.parametrize("method", ["normalize_obs", "unnormalize_obs"])
def test_dict_norm_obs_off_passes_through(method: str) -> None:
    venv = dict_env(DICT_MIXED, ["pos", "vel"], norm_obs=False)
    obs = dict_obs(venv, 2)
    result = check(venv, method, obs)
    for key in obs:
        np.testing.assert_array_equal(result[key].numpy(), obs[key])


def test_norm_reward_off_identity_follows_the_release() -> None:
    venv = pendulum(norm_reward=False)
    reward = torch.as_tensor(rewards())
    # SB3 < 2.5.0 returns the very input; from 2.5.0 a float32 copy
    assert (venv.normalize_reward(reward) is reward) == (not REWARD_FLOAT32)
    assert venv.unnormalize_reward(reward) is reward


# -- statistics are never stale --------------------------------------------------------------------


def _check_all(venv: Any, obs: np.ndarray, reward: np.ndarray) -> list[np.ndarray]:
    """Check every method's parity; return the tensor results as numpy."""
    return [
        check(venv, "normalize_obs", obs).numpy(),
        check(venv, "unnormalize_obs", obs).numpy(),
        check(venv, "normalize_reward", reward).numpy(),
        check(venv, "unnormalize_reward", reward).numpy(),
    ]


def _all_differ(first: list[np.ndarray], second: list[np.ndarray]) -> None:
    for one, other in zip(first, second):
        assert not np.allclose(one, other, atol=1e-6), "the statistics did not change: the test proves nothing"


def test_stats_updated_by_stepping_in_training_mode() -> None:
    venv = pendulum(steps=3)
    obs, reward = box_obs(venv, 4), rewards()
    first = _check_all(venv, obs, reward)
    _run(venv, 10, seed=7)
    _all_differ(first, _check_all(venv, obs, reward))


def test_stats_follow_the_training_flag() -> None:
    venv = pendulum(steps=3)
    obs, reward = box_obs(venv, 4), rewards()
    venv.training = False
    first = _check_all(venv, obs, reward)
    _run(venv, 10, seed=7)  # no update while not training
    for one, other in zip(first, _check_all(venv, obs, reward)):
        np.testing.assert_array_equal(one, other)
    venv.training = True
    _run(venv, 10, seed=8)
    _all_differ(first, _check_all(venv, obs, reward))


def test_stats_replaced_by_assignment() -> None:
    venv = pendulum()
    obs, reward = box_obs(venv, 4), rewards()
    first = _check_all(venv, obs, reward)
    rng = np.random.default_rng(5)
    obs_rms = RunningMeanStd(shape=venv.observation_space.shape)
    obs_rms.mean = rng.normal(size=obs_rms.mean.shape)
    obs_rms.var = rng.uniform(0.1, 4.0, size=obs_rms.var.shape)
    ret_rms = RunningMeanStd(shape=())
    ret_rms.var = np.float64(rng.uniform(10.0, 20.0))
    venv.obs_rms, venv.ret_rms = obs_rms, ret_rms
    _all_differ(first, _check_all(venv, obs, reward))


def test_stats_updated_in_place_by_update() -> None:
    venv = pendulum()
    obs, reward = box_obs(venv, 4), rewards()
    first = _check_all(venv, obs, reward)
    rng = np.random.default_rng(6)
    venv.obs_rms.update(rng.normal(3.0, 5.0, size=(64, *venv.observation_space.shape)))
    venv.ret_rms.update(rng.normal(0.0, 50.0, size=(64,)))
    _all_differ(first, _check_all(venv, obs, reward))


def test_stats_arrays_edited_in_place() -> None:
    venv = pendulum()
    obs, reward = box_obs(venv, 4), rewards()
    first = _check_all(venv, obs, reward)
    venv.obs_rms.mean += 1.0  # the same array objects, new values
    venv.obs_rms.var *= 4.0
    venv.ret_rms.var *= 9.0
    _all_differ(first, _check_all(venv, obs, reward))


def test_epsilon_change_is_seen() -> None:
    venv = pendulum()
    venv.obs_rms.var[:] = 0.0  # epsilon alone sets the scale
    venv.ret_rms.var = np.float64(0.0)
    obs, reward = box_obs(venv, 4, scale=1e-3), rewards() * 1e-3
    first = _check_all(venv, obs, reward)
    venv.epsilon = 1e-2
    _all_differ(first, _check_all(venv, obs, reward))


@pytest.mark.parametrize("case", list(DICT_CASES))
def test_dict_stats_updated_between_calls(case: str) -> None:
    space, keys = DICT_CASES[case]
    venv = dict_env(space, keys, steps=2)
    obs = dict_obs(venv, 4)
    first = check(venv, "normalize_obs", obs)
    _run(venv, 10, seed=9)
    second = check(venv, "normalize_obs", obs)
    for key in keys or list(space):
        assert not np.allclose(first[key].numpy(), second[key].numpy(), atol=1e-6)


def test_save_load_round_trip(tmp_path: Any) -> None:
    venv = pendulum(steps=30)
    obs, reward = box_obs(venv, 4), rewards()
    saved = _check_all(venv, obs, reward)
    path = str(tmp_path / "vec_normalize.pkl")
    venv.save(path)

    other = pendulum(steps=2)  # other statistics, already cached
    _all_differ(saved, _check_all(other, obs, reward))
    other = VecNormalize.load(path, make_vec_env("Pendulum-v1", n_envs=2, seed=0))
    other.training = False
    loaded = _check_all(other, obs, reward)
    for one, two in zip(saved, loaded):
        np.testing.assert_array_equal(one, two)


def test_dict_save_load_round_trip(tmp_path: Any) -> None:
    venv = dict_env(DICT_MIXED, ["pos", "vel"], steps=30)
    obs = dict_obs(venv, 3)
    saved = check(venv, "normalize_obs", obs)
    path = str(tmp_path / "vec_normalize.pkl")
    venv.save(path)
    observation_space = spaces.Dict(DICT_MIXED)
    loaded = VecNormalize.load(path, DummyVecEnv([lambda: SpaceEnv(observation_space, ACTION_SPACE)] * 2))
    result = check(loaded, "normalize_obs", obs)
    for key in obs:
        np.testing.assert_array_equal(result[key].numpy(), saved[key].numpy())


# -- no host reads ----------------------------------------------------------------------------------


def _no_host_reads(call: Callable[[], Any]) -> None:
    call()  # warm the caches
    with CountHostReads() as counter:
        call()
    assert counter.count == 0, f"host reads: {counter.ops}"


@pytest.mark.parametrize("method", METHODS)
def test_no_host_reads(method: str) -> None:
    venv = pendulum()
    value = torch.as_tensor(rewards() if "reward" in method else box_obs(venv, 4))
    _no_host_reads(lambda: getattr(venv, method)(value))
    venv.obs_rms.update(box_obs(venv, 8, seed=3).astype(np.float64))  # new statistics: no reads either
    venv.ret_rms.update(rewards(seed=4).astype(np.float64))
    _no_host_reads(lambda: getattr(venv, method)(value))


@pytest.mark.parametrize("method", ["normalize_obs", "unnormalize_obs"])
def test_no_host_reads_dict(method: str) -> None:
    venv = dict_env(DICT_MIXED, ["pos", "vel"])
    value = to_tensor(dict_obs(venv, 4))
    _no_host_reads(lambda: getattr(venv, method)(value))


# -- numpy input keeps SB3's own code ----------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("norm", [True, False], ids=["norm", "no-norm"])
def test_numpy_input_gives_sb3s_result(method: str, norm: bool) -> None:
    venv = pendulum(norm_obs=norm, norm_reward=norm)
    value = rewards() if "reward" in method else box_obs(venv, 3)
    patched = getattr(venv, method)(value)
    sb3_tensorpatch.disable()
    original = getattr(venv, method)(value)
    assert type(patched) is type(original) and patched.dtype == original.dtype
    np.testing.assert_array_equal(patched, original)
    assert (patched is value) == (original is value)


def test_numpy_dict_input_gives_sb3s_result() -> None:
    venv = dict_env(DICT_MIXED, ["pos", "vel"])
    obs = dict_obs(venv, 3)
    patched = venv.normalize_obs(obs)
    sb3_tensorpatch.disable()
    original = venv.normalize_obs(obs)
    assert patched.keys() == original.keys()
    for key in obs:
        assert type(patched[key]) is np.ndarray and patched[key].dtype == original[key].dtype
        np.testing.assert_array_equal(patched[key], original[key])


def test_numpy_input_reaches_sb3s_original(monkeypatch: pytest.MonkeyPatch) -> None:
    venv = pendulum()
    calls: list[str] = []
    for name in ("_normalize_obs", "_unnormalize_obs"):
        helper = getattr(VecNormalize, name)

        def spy(self: Any, *args: Any, _helper: Any = helper, _name: str = name) -> Any:
            calls.append(_name)
            return _helper(self, *args)

        monkeypatch.setattr(VecNormalize, name, spy)
    obs = box_obs(venv, 2)
    venv.normalize_obs(obs)
    venv.unnormalize_obs(obs)
    assert calls == ["_normalize_obs", "_unnormalize_obs"]
    calls.clear()
    venv.normalize_obs(torch.as_tensor(obs))  # the tensor route does not go through numpy
    venv.unnormalize_obs(torch.as_tensor(obs))
    assert calls == []
