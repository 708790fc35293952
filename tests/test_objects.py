"""Objects and processes while patched.

``model.save()`` / ``load()``, pickling and deep copies made while the patch is enabled give objects
that behave exactly like unpatched ones and never contain our wrappers. ``SubprocVecEnv`` workers
started with ``spawn`` or ``forkserver`` work while patched. A child process started with ``fork``
inherits the patch; one started with ``spawn`` does not, until it calls ``enable()`` itself.

Every test starts and ends with the patch disabled.
"""

from __future__ import annotations

import base64
import copy
import functools
import io
import json
import multiprocessing
import pickle
import textwrap
import traceback
import zipfile
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import pytest
import torch
from helpers import assert_same_bits, build, gym, observation_space, sample_observations, sb3_contrib, stack
from stable_baselines3 import PPO
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.vec_env import SubprocVecEnv

import sb3_tensorpatch

# SB3's own numpy path turns a CPU tensor into an array with np.array(), which numpy 2 warns about
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

needs_contrib = pytest.mark.skipif(sb3_contrib is None, reason="sb3-contrib is not installed")

#: what a pickle holding our routes, records or wrappers by value (or any wrapt object) would mention
MARKS = (b"sb3_tensorpatch", b"wrapt")
#: generous: under load a spawned interpreter takes seconds to import torch and SB3
TIMEOUT = 240

KEYS = [
    ("PPO", "Box", "Box"),
    ("DQN", "Box", "Discrete"),
    ("SAC", "Box", "Box"),
    pytest.param(("MaskablePPO", "Box", "Discrete"), marks=needs_contrib),
    pytest.param(("RecurrentPPO", "Box", "Box", "MlpLstmPolicy"), marks=needs_contrib),
]


def _obs(batch: int = 4, seed: int = 21) -> np.ndarray:
    return stack(sample_observations(observation_space("Box"), batch, seed))  # type: ignore[no-any-return]


def _assert_clean(blob: bytes, what: str) -> None:
    for mark in MARKS:
        assert mark not in blob, f"{what} mentions {mark!r}"


def _assert_clean_archive(path: Path) -> None:
    """No member of an SB3 archive (nor the base64 pickles inside its JSON, nor the torch archives
    inside it) mentions our package or wrapt."""
    _assert_clean(path.read_bytes(), str(path))
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        assert "data" in names and "policy.pth" in names
        for name in names:
            content = archive.read(name)
            _assert_clean(content, name)
            if name == "data":
                for key, value in json.loads(content).items():
                    if isinstance(value, dict) and ":serialized:" in value:
                        _assert_clean(base64.b64decode(value[":serialized:"]), f"data[{key!r}]")
            elif name.endswith(".pth"):
                with zipfile.ZipFile(io.BytesIO(content)) as inner:
                    for record in inner.namelist():
                        _assert_clean(inner.read(record), f"{name}/{record}")


def _assert_no_wrappers(obj: Any) -> None:
    """Nothing of ours sits on the instance: ``predict`` comes from the class."""
    assert "predict" not in vars(obj)
    for name, value in vars(obj).items():
        module = type(value).__module__ or ""
        assert not module.startswith(("wrapt", "sb3_tensorpatch")), f"{name}: {type(value)}"


def _predict(model: Any, obs: Any) -> tuple[Any, Any]:
    return model.predict(obs, deterministic=True)  # type: ignore[no-any-return]


def _assert_numpy_equal(result: tuple[Any, Any], expected: tuple[Any, Any]) -> None:
    assert isinstance(result[0], np.ndarray)
    np.testing.assert_array_equal(result[0], expected[0])
    assert result[0].dtype == expected[0].dtype
    if expected[1] is None:
        assert result[1] is None
    else:
        for got, want in zip(result[1], expected[1]):
            np.testing.assert_array_equal(got, want)


def _assert_tensor_equal(result: tuple[Any, Any], expected: tuple[Any, Any]) -> None:
    assert isinstance(result[0], torch.Tensor)
    assert result[0].dtype == torch.from_numpy(expected[0]).dtype
    assert_same_bits(result[0], expected[0])
    if expected[1] is not None:
        for got, want in zip(result[1], expected[1]):
            assert isinstance(got, torch.Tensor)
            assert_same_bits(got, want)


# -- save / load ------------------------------------------------------------------------------


@pytest.mark.parametrize("key", KEYS, ids=lambda key: key[0])
def test_save_and_load_while_patched(key: tuple[str, ...], tmp_path: Path) -> None:
    model = build(*key)
    cls = type(model)
    obs = _obs()
    model.save(tmp_path / "unpatched.zip")
    reference = cls.load(tmp_path / "unpatched.zip", device="cpu")
    expected = _predict(reference, obs)
    _assert_numpy_equal(_predict(model, obs), expected)

    sb3_tensorpatch.enable()
    _assert_tensor_equal(_predict(model, torch.from_numpy(obs)), expected)  # the route has cached its plans
    model.save(tmp_path / "patched.zip")
    _assert_clean_archive(tmp_path / "patched.zip")
    with zipfile.ZipFile(tmp_path / "patched.zip") as patched, zipfile.ZipFile(tmp_path / "unpatched.zip") as unpatched:
        assert patched.namelist() == unpatched.namelist()
        assert patched.read("policy.pth") == unpatched.read("policy.pth")
        assert json.loads(patched.read("data")).keys() == json.loads(unpatched.read("data")).keys()

    loaded = cls.load(tmp_path / "patched.zip", device="cpu")
    assert type(loaded) is cls and type(loaded.policy) is type(model.policy)
    _assert_no_wrappers(loaded)
    _assert_no_wrappers(loaded.policy)
    _assert_numpy_equal(_predict(loaded, obs), expected)
    _assert_tensor_equal(_predict(loaded, torch.from_numpy(obs)), expected)
    _assert_tensor_equal(_predict(reference, torch.from_numpy(obs)), expected)

    sb3_tensorpatch.disable()
    _assert_numpy_equal(_predict(loaded, obs), expected)


def test_model_loaded_while_patched_is_unpatched_after_disable(tmp_path: Path) -> None:
    """Loading while patched gives a plain object: once the patch is off, a tensor goes to SB3's original."""
    model = build("PPO", "Box", "Box")
    model.save(tmp_path / "model.zip")
    sb3_tensorpatch.enable()
    loaded = PPO.load(tmp_path / "model.zip", device="cpu")
    assert isinstance(_predict(loaded, torch.from_numpy(_obs()))[0], torch.Tensor)
    original = BasePolicy.__dict__["predict"]
    sb3_tensorpatch.disable()
    assert BasePolicy.__dict__["predict"] is not original  # the wrapper is gone from the class ...
    assert type(loaded.policy).predict is BasePolicy.__dict__["predict"]  # ... and from the object's view
    assert isinstance(_predict(loaded, torch.from_numpy(_obs()))[0], np.ndarray)


# -- pickling and copying ---------------------------------------------------------------------


@pytest.mark.parametrize("dumps", [cloudpickle.dumps, pickle.dumps], ids=["cloudpickle", "pickle"])
@pytest.mark.parametrize("key", KEYS, ids=lambda key: key[0])
def test_pickled_policy_while_patched(key: tuple[str, ...], dumps: Any) -> None:
    model = build(*key)
    obs = _obs()
    expected = _predict(model.policy, obs)
    unpatched = pickle.loads(dumps(model.policy))

    sb3_tensorpatch.enable()
    _assert_tensor_equal(_predict(model.policy, torch.from_numpy(obs)), expected)  # plans cached
    blob = dumps(model.policy)
    _assert_clean(blob, "the pickled policy")
    clone = pickle.loads(blob)
    assert type(clone) is type(model.policy)
    _assert_no_wrappers(clone)
    for one in (clone, unpatched):
        _assert_numpy_equal(_predict(one, obs), expected)
        _assert_tensor_equal(_predict(one, torch.from_numpy(obs)), expected)

    sb3_tensorpatch.disable()
    _assert_numpy_equal(_predict(clone, obs), expected)
    _assert_numpy_equal(_predict(unpatched, obs), expected)


@pytest.mark.parametrize("key", [("PPO", "Box", "Box"), ("DQN", "Box", "Discrete")], ids=lambda key: key[0])
def test_cloudpickled_model_while_patched(key: tuple[str, ...]) -> None:
    model = build(*key)
    obs = _obs()
    expected = _predict(model, obs)
    sb3_tensorpatch.enable()
    _predict(model, torch.from_numpy(obs))
    blob = cloudpickle.dumps(model)
    _assert_clean(blob, "the pickled model")
    clone = pickle.loads(blob)
    _assert_no_wrappers(clone)
    _assert_no_wrappers(clone.policy)
    _assert_tensor_equal(_predict(clone, torch.from_numpy(obs)), expected)
    sb3_tensorpatch.disable()
    _assert_numpy_equal(_predict(clone, obs), expected)


@pytest.mark.parametrize("what", ["policy", "model"])
def test_deepcopy_while_patched(what: str) -> None:
    model = build("SAC", "Box", "Box")
    obs = _obs()
    expected = _predict(model, obs)
    sb3_tensorpatch.enable()
    _predict(model, torch.from_numpy(obs))
    clone = copy.deepcopy(model.policy if what == "policy" else model)
    _assert_no_wrappers(clone)
    _assert_tensor_equal(_predict(clone, torch.from_numpy(obs)), expected)
    _assert_numpy_equal(_predict(clone, obs), expected)
    sb3_tensorpatch.disable()
    _assert_numpy_equal(_predict(clone, obs), expected)


@pytest.mark.parametrize("which", ["policy.predict", "DQN.predict"])
def test_bound_predict_pickles_while_patched(which: str) -> None:
    """``model.policy.predict`` (or ``dqn_model.predict``) handed to a process pool, Ray or joblib
    must pickle as it does unpatched: ``getattr(obj, "predict")``, without our wrappers."""
    model = build("DQN", "Box", "Discrete")
    obs = _obs()
    expected = _predict(model, obs)

    def bound() -> Any:
        return model.policy.predict if which == "policy.predict" else model.predict

    restored = pickle.loads(cloudpickle.dumps(bound()))
    _assert_numpy_equal(restored(obs, deterministic=True), expected)  # unpatched: fine
    sb3_tensorpatch.enable()
    blob = cloudpickle.dumps(bound())
    _assert_clean(blob, "the pickled bound method")
    restored = pickle.loads(blob)
    _assert_numpy_equal(restored(obs, deterministic=True), expected)


# -- processes --------------------------------------------------------------------------------


def _methods(*wanted: str) -> list[Any]:
    available = multiprocessing.get_all_start_methods()
    return [
        pytest.param(method, marks=pytest.mark.skipif(method not in available, reason=f"no {method} start method"))
        for method in wanted
    ]


_PROCESS_TYPES = {"spawn": "SpawnProcess", "forkserver": "ForkServerProcess", "fork": "ForkProcess"}


@pytest.mark.parametrize("method", _methods("spawn", "forkserver"))
def test_subproc_vec_env_while_patched(method: str) -> None:
    """Workers started while patched: building, stepping with tensor-route actions, learning."""
    status = sb3_tensorpatch.enable()
    env = SubprocVecEnv([functools.partial(gym.make, "CartPole-v1")], start_method=method)
    try:
        assert [type(process).__name__ for process in env.processes] == [_PROCESS_TYPES[method]]
        model = PPO(
            "MlpPolicy",
            env,
            policy_kwargs={"net_arch": [16]},
            device="cpu",
            seed=0,
            n_steps=16,
            batch_size=16,
            n_epochs=1,
        )
        obs = env.reset()
        for _ in range(5):
            actions, _ = model.predict(torch.from_numpy(obs), deterministic=True)
            assert isinstance(actions, torch.Tensor) and actions.shape == (1,)
            np.testing.assert_array_equal(actions.numpy(), model.predict(obs, deterministic=True)[0])
            obs, rewards, _dones, infos = env.step(actions.numpy())
            assert obs.shape == (1, 4) and rewards.shape == (1,) and len(infos) == 1
        model.learn(total_timesteps=16)
        assert model.num_timesteps == 16
    finally:
        env.close()
    assert all(process.exitcode == 0 for process in env.processes)
    assert sb3_tensorpatch.is_enabled()
    assert sb3_tensorpatch.status().patched == status.patched


def _collect(process: Any, queue: Any) -> dict[str, Any]:
    try:
        result: dict[str, Any] = queue.get(timeout=TIMEOUT)
    finally:
        process.join(timeout=TIMEOUT)
        if process.is_alive():
            process.terminate()
    assert "error" not in result, result.get("error")
    assert process.exitcode == 0
    return result


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork start method")
@pytest.mark.parametrize("how", ["enable", "scope"])
def test_fork_child_inherits_the_patch(how: str) -> None:
    """A child forked after ``enable()`` (or inside a ``patched()`` scope) is patched: tensor in, tensor
    out. Its own ``disable()`` undoes the patch in the child only."""
    model = build("PPO", "Box", "Box")
    obs = _obs()
    expected = _predict(model, obs)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()

    def child() -> None:
        try:
            torch.set_num_threads(1)
            actions, _ = model.predict(torch.from_numpy(obs), deterministic=True)
            out = {
                "enabled": sb3_tensorpatch.is_enabled(),
                "patched": sb3_tensorpatch.status().patched,
                "type": type(actions).__name__,
                "actions": actions.tolist(),
            }
            sb3_tensorpatch.disable()
            after, _ = model.predict(torch.from_numpy(obs), deterministic=True)
            out["enabled_after_disable"] = sb3_tensorpatch.is_enabled()
            out["type_after_disable"] = type(after).__name__
        except BaseException:
            out = {"error": traceback.format_exc()}
        queue.put(out)

    def run() -> dict[str, Any]:
        patched = sb3_tensorpatch.status().patched
        assert patched
        process = context.Process(target=child)
        process.start()
        result = _collect(process, queue)
        assert result["patched"] == patched
        assert sb3_tensorpatch.is_enabled()  # the child's disable() stays in the child
        assert sb3_tensorpatch.status().patched == patched
        return result

    if how == "enable":
        sb3_tensorpatch.enable()
        result = run()
    else:
        with sb3_tensorpatch.patched():
            result = run()
    assert result["enabled"] is True
    assert result["type"] == "Tensor"
    assert_same_bits(np.array(result["actions"], dtype=np.float32), expected[0])
    assert result["enabled_after_disable"] is False
    assert result["type_after_disable"] == "ndarray"


_SPAWN_CHILD = textwrap.dedent(
    """
    import traceback
    try:
        import cloudpickle
        import torch
        import sb3_tensorpatch
        from stable_baselines3.common.policies import BasePolicy

        out = {
            "enabled": sb3_tensorpatch.is_enabled(),
            "predict_type": type(BasePolicy.__dict__["predict"]).__module__,
        }
        policy = cloudpickle.loads(blob)
        actions, _ = policy.predict(torch.from_numpy(obs), deterministic=True)
        out["type_before"] = type(actions).__name__
        sb3_tensorpatch.enable()
        out["enabled_after"] = sb3_tensorpatch.is_enabled()
        actions, _ = policy.predict(torch.from_numpy(obs), deterministic=True)
        out["type_after"] = type(actions).__name__
        out["actions"] = actions.tolist()
        sb3_tensorpatch.disable()
    except BaseException:
        out = {"error": traceback.format_exc()}
    queue.put(out)
    """
)


def test_spawn_child_is_not_patched_until_it_enables() -> None:
    """A spawned child is a fresh interpreter: enabling in the parent does not reach it (and the
    policy pickled to it carries no patch). It is patched once it calls ``enable()`` itself."""
    model = build("PPO", "Box", "Box")
    obs = _obs()
    expected = _predict(model, obs)
    sb3_tensorpatch.enable()
    blob = cloudpickle.dumps(model.policy)
    _assert_clean(blob, "the policy sent to the child")
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    # ``exec`` is a builtin, so the spawned child unpickles it without importing this test module
    process = context.Process(target=exec, args=(_SPAWN_CHILD, {"queue": queue, "blob": blob, "obs": obs}))
    process.start()
    result = _collect(process, queue)
    assert result["enabled"] is False
    assert result["predict_type"] == "builtins"  # a plain function: SB3's original
    assert result["type_before"] == "ndarray"  # a tensor went to SB3's NumPy path
    assert result["enabled_after"] is True
    assert result["type_after"] == "Tensor"
    assert_same_bits(np.array(result["actions"], dtype=np.float32), expected[0])
    assert sb3_tensorpatch.is_enabled()
