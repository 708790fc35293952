"""Other libraries' arrays through DLPack: JAX (CPU here), Warp (CPU, where installed), CuPy (GPU only).

With the patch on, a JAX array (or a dict of them) given to ``predict`` or to ``VecNormalize``'s
methods takes the tensor route through ``torch.from_dlpack`` and a JAX array comes back, on the
input's device. The reference is SB3's own path on ``numpy.asarray(obs)``, its result brought into
JAX as JAX brings any NumPy array in (``jnp.asarray``): bit for bit, same shape and dtype. Without
``jax_enable_x64`` that dtype is 32-bit where SB3's is 64-bit (``int64`` Discrete actions ->
``int32``, ``float64`` -> ``float32``); with x64 on it is SB3's dtype itself (tested too).

Zero-copy is shown by pointers: the network reads the JAX buffer itself, and the JAX array returned
is the buffer of the route's last op. No host sync: the CPU scalar-read counter of
``test_host_sync.py`` (which also covers the DLPack entry over the SB3 grid). The fake-CUDA checks
of ``test_fake_cuda.py`` cannot take JAX arrays (fake tensors have no memory to export or import
through DLPack); the DLPack entry adds no torch op of its own there to check.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import types
from typing import Any

import numpy as np
import pytest
import torch
from helpers import (
    ACTIONS,
    OBS_KINDS,
    action_space,
    algorithm_class,
    assert_same_bits,
    build,
    observation_space,
    sample_observations,
    stack,
)
from test_host_sync import CountHostReads
from test_vecnormalize import DICT_BOXES, box_obs, dict_env, dict_obs, pendulum, rewards
from torch.utils._python_dispatch import TorchDispatchMode

import sb3_tensorpatch
from sb3_tensorpatch import dlpack
from sb3_tensorpatch.errors import ForeignArrayError
from sb3_tensorpatch.observations import FOREIGN, NOT_ROUTED, TENSOR, route_kind
from sb3_tensorpatch.routes import _mask_width

jax = pytest.importorskip(
    "jax", reason="jax is not installed: `pip install -e '.[jax]'` (the extra that .ci/run installs) runs these tests"
)
import jax.numpy as jnp  # noqa: E402 (after the skip)

GRID = [(algo, obs, act) for algo, acts in ACTIONS.items() for obs in OBS_KINDS for act in acts]
METHODS = ("normalize_obs", "unnormalize_obs", "normalize_reward", "unnormalize_reward")
#: what JAX without x64 makes of SB3's 64-bit dtypes (every other dtype comes back as it is)
WITHOUT_X64 = {np.dtype(np.int64): np.dtype(np.int32), np.dtype(np.float64): np.dtype(np.float32)}


def x64() -> Any:
    """A context with ``jax_enable_x64`` on (``jax.enable_x64`` in new releases, ``experimental`` before)."""
    enable = getattr(jax, "enable_x64", None)
    if enable is None:  # pragma: no cover - older jax
        from jax.experimental import enable_x64 as enable
    return enable(True)


def to_jax(value: Any) -> Any:
    """A NumPy observation (array, scalar or dict of them) as JAX arrays on JAX's default device."""
    if isinstance(value, dict):
        return {key: to_jax(item) for key, item in value.items()}
    return jnp.asarray(value)


def to_numpy(value: Any) -> Any:
    """``numpy.asarray`` of a JAX observation (or of each value of a dict): SB3's input for the reference."""
    if isinstance(value, dict):
        return {key: to_numpy(item) for key, item in value.items()}
    return np.asarray(value)


def devices_of(value: Any) -> Any:
    items = list(value.values()) if isinstance(value, dict) else [value]
    return next(item.devices() for item in items if isinstance(item, jax.Array))


def assert_jax_result(actual: Any, expected: Any, devices: Any, x64_on: bool = False) -> None:
    """``actual`` is a JAX array on ``devices`` with the bits of SB3's ``expected`` brought into JAX."""
    assert isinstance(actual, jax.Array), f"got a {type(actual).__name__}, expected a jax.Array"
    assert actual.devices() == devices
    expected = np.asarray(expected)
    dtype = expected.dtype if x64_on else WITHOUT_X64.get(expected.dtype, expected.dtype)
    assert actual.dtype == dtype, f"dtype {actual.dtype}, expected {dtype} (SB3 gives {expected.dtype})"
    assert actual.shape == expected.shape
    # bit for bit against SB3's result as JAX takes it in (the same values where the dtype is the same)
    assert_same_bits(torch.from_dlpack(actual), np.asarray(jnp.asarray(expected)))
    if dtype == expected.dtype:
        assert_same_bits(torch.from_dlpack(actual), expected)


def predict_both(target: Any, numpy_obs: Any, seed: int | None = None, **kwargs: Any) -> tuple[Any, Any, Any, Any]:
    """SB3's ``predict`` on ``numpy.asarray`` of the JAX observation (patch off), then the patched one on it."""
    obs = to_jax(numpy_obs)
    if seed is not None:
        torch.manual_seed(seed)
    expected, expected_state = target.predict(to_numpy(obs), **{key: to_numpy(value) if value is not None else None for key, value in kwargs.items()})
    if seed is not None:
        torch.manual_seed(seed)
    with sb3_tensorpatch.patched():
        actual, state = target.predict(obs, **{key: to_jax(value) if value is not None else None for key, value in kwargs.items()})
    return actual, state, expected, expected_state


# -- which inputs are routed ----------------------------------------------------------------------


def test_route_kind() -> None:
    array = jnp.zeros(3)
    assert route_kind(array) == FOREIGN
    assert route_kind({"a": array, "b": np.zeros(2)}) == FOREIGN
    assert route_kind({"a": array, "b": torch.zeros(2)}) == TENSOR  # a tensor anywhere: the tensor route as it is
    assert route_kind(torch.zeros(3)) == TENSOR
    # NumPy implements __dlpack__ too, and stays on SB3's path; so do scalars, lists and the rest
    for value in (np.zeros(3), np.float32(1.0), np.zeros(3).view(np.ma.MaskedArray), {"a": np.zeros(2)}, [1.0, 2.0], 3, None, "x"):
        assert route_kind(value) == NOT_ROUTED, value


def test_numpy_still_reaches_sb3() -> None:
    model = build("PPO", "Box", "Box")
    obs = stack(sample_observations(observation_space("Box"), 3, seed=1))
    with sb3_tensorpatch.patched():
        actions, _ = model.predict(obs, deterministic=True)
    assert type(actions) is np.ndarray


# -- parity over the SB3 grid ---------------------------------------------------------------------


@pytest.mark.parametrize("algo,obs_kind,act_kind", GRID, ids=["-".join(case) for case in GRID])
def test_deterministic_parity(algo: str, obs_kind: str, act_kind: str) -> None:
    model = build(algo, obs_kind, act_kind)
    space = observation_space(obs_kind)
    single = sample_observations(space, 1, seed=3)[0]
    for numpy_obs in (single, stack(sample_observations(space, 4, seed=4))):
        for target in (model, model.policy):
            actual, state, expected, _ = predict_both(target, numpy_obs, deterministic=True)
            assert_jax_result(actual, expected, devices_of(to_jax(numpy_obs)))
            assert state is None


@pytest.mark.parametrize("algo,obs_kind,act_kind", GRID, ids=["-".join(case) for case in GRID])
def test_stochastic_parity_with_the_same_seed(algo: str, obs_kind: str, act_kind: str) -> None:
    model = build(algo, obs_kind, act_kind)
    numpy_obs = stack(sample_observations(observation_space(obs_kind), 4, seed=5))
    with torch.random.fork_rng():
        actual, _, expected, _ = predict_both(model, numpy_obs, seed=9, deterministic=False)
    assert_jax_result(actual, expected, devices_of(to_jax(numpy_obs)))


@pytest.mark.parametrize("act_kind", ["Discrete", "BoxInt", "Box"])
def test_x64_gives_sb3s_dtypes(act_kind: str) -> None:
    model = build("PPO", "Box", act_kind)
    numpy_obs = stack(sample_observations(observation_space("Box"), 4, seed=6)).astype(np.float64)
    with x64():
        actual, _, expected, _ = predict_both(model, numpy_obs, deterministic=True)
        assert to_jax(numpy_obs).dtype == jnp.float64  # a float64 observation really reaches the route
        assert_jax_result(actual, expected, devices_of(to_jax(numpy_obs)), x64_on=True)
    assert actual.dtype == expected.dtype


def test_bool_observations_are_taken() -> None:
    model = build("PPO", "MultiBinary", "Discrete")
    numpy_obs = stack(sample_observations(observation_space("MultiBinary"), 4, seed=7)).astype(bool)
    actual, _, expected, _ = predict_both(model, numpy_obs, deterministic=True)
    assert to_jax(numpy_obs).dtype == jnp.bool_
    assert_jax_result(actual, expected, devices_of(to_jax(numpy_obs)))


def test_dict_of_jax_and_numpy_values() -> None:
    model = build("PPO", "Dict", "Box")
    numpy_obs = stack(sample_observations(observation_space("Dict"), 3, seed=8))
    mixed = {**to_jax(numpy_obs), "img": numpy_obs["img"]}  # a NumPy value beside JAX ones
    expected, _ = model.predict(to_numpy(mixed), deterministic=True)
    with sb3_tensorpatch.patched():
        actual, _ = model.predict(mixed, deterministic=True)
    assert_jax_result(actual, expected, devices_of(mixed))


# -- sb3-contrib: state, episode_start, action_masks ------------------------------------------------


def _needs(algo: str) -> None:
    pytest.importorskip("sb3_contrib")
    if algorithm_class(algo) is None:
        pytest.skip(f"{algo} is not in the installed sb3-contrib")


def test_recurrent_states_and_episode_starts_as_jax() -> None:
    _needs("RecurrentPPO")
    model = build("RecurrentPPO", "Box", "Box", "MlpLstmPolicy")
    space = observation_space("Box")
    first, second = (stack(sample_observations(space, 4, seed=seed)) for seed in (8, 9))
    starts = (np.array([True, False, True, False]), np.array([False, True, False, False]))
    a1, s1 = model.predict(first, episode_start=starts[0], deterministic=True)
    a2, s2 = model.predict(second, state=s1, episode_start=starts[1], deterministic=True)
    devices = devices_of(to_jax(first))
    with sb3_tensorpatch.patched():
        j1, js1 = model.predict(to_jax(first), episode_start=to_jax(starts[0]), deterministic=True)
        j2, js2 = model.predict(to_jax(second), state=js1, episode_start=to_jax(starts[1]), deterministic=True)
    assert isinstance(js1, tuple) and len(js1) == 2
    for actual, expected in ((j1, a1), (j2, a2), (js1[0], s1[0]), (js1[1], s1[1]), (js2[0], s2[0]), (js2[1], s2[1])):
        assert_jax_result(actual, expected, devices)


@pytest.mark.parametrize("deterministic", [True, False], ids=["det", "stoch"])
@pytest.mark.parametrize("act_kind", ["Discrete", "MultiDiscrete"])
def test_maskable_masks_as_jax(act_kind: str, deterministic: bool) -> None:
    _needs("MaskablePPO")
    model = build("MaskablePPO", "Box", act_kind, "MlpPolicy")
    numpy_obs = stack(sample_observations(observation_space("Box"), 16, seed=5))
    masks = np.random.default_rng(6).random((16, _mask_width(action_space(act_kind)))) < 0.5
    masks[:, 1] = True  # a valid choice in each row (the first sub-action's second)
    if act_kind == "MultiDiscrete":
        masks[:, 2 + 1] = True
    with torch.random.fork_rng():
        actual, _, expected, _ = predict_both(model, numpy_obs, seed=7, deterministic=deterministic, action_masks=masks)
    assert_jax_result(actual, expected, devices_of(to_jax(numpy_obs)))


def test_qrdqn_greedy_and_dqn_exploration() -> None:
    _needs("QRDQN")
    numpy_obs = stack(sample_observations(observation_space("Box"), 6, seed=2))
    model = build("QRDQN", "Box", "Discrete")
    actual, _, expected, _ = predict_both(model, numpy_obs, deterministic=True)
    assert_jax_result(actual, expected, devices_of(to_jax(numpy_obs)))
    # epsilon-greedy's random actions are drawn on the device, and come back as JAX arrays too
    dqn = copy.deepcopy(build("DQN", "Box", "Discrete"))
    dqn.exploration_rate = 1.0
    with sb3_tensorpatch.patched():
        random_actions, _ = dqn.predict(to_jax(numpy_obs), deterministic=False)
    assert isinstance(random_actions, jax.Array) and random_actions.shape == (6,)
    assert random_actions.dtype == jnp.int32  # int64 without x64
    assert bool(((random_actions >= 0) & (random_actions < 4)).all())


# -- VecNormalize -----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_vecnormalize_box(method: str) -> None:
    venv = pendulum()
    value = to_jax(box_obs(venv, 5) if method.endswith("obs") else rewards())
    expected = getattr(venv, method)(to_numpy(value))
    with sb3_tensorpatch.patched():
        actual = getattr(venv, method)(value)
    assert_jax_result(actual, expected, value.devices())


@pytest.mark.parametrize("method", ["normalize_obs", "unnormalize_obs"])
def test_vecnormalize_dict(method: str) -> None:
    venv = dict_env(DICT_BOXES, None)
    value = to_jax(dict_obs(venv, 4))
    expected = getattr(venv, method)(to_numpy(value))
    with sb3_tensorpatch.patched():
        actual = getattr(venv, method)(value)
    assert isinstance(actual, dict) and list(actual) == list(expected)
    for key in expected:
        assert_jax_result(actual[key], expected[key], devices_of(value))


def test_vecnormalize_x64_unnormalize_is_float64() -> None:
    venv = pendulum()
    with x64():
        value = to_jax(box_obs(venv, 5))
        expected = venv.unnormalize_obs(to_numpy(value))
        with sb3_tensorpatch.patched():
            actual = venv.unnormalize_obs(value)
        assert expected.dtype == np.float64
        assert_jax_result(actual, expected, value.devices(), x64_on=True)


def test_a_whole_step_stays_in_jax_without_host_reads() -> None:
    venv = pendulum()
    model = build("PPO", "Box", "Box")
    obs = to_jax(box_obs(venv, 4))
    with sb3_tensorpatch.patched():
        model.predict(venv.normalize_obs(obs), deterministic=True)  # warm the caches
        with CountHostReads() as counter:
            normalized = venv.normalize_obs(obs)
            actions, _ = model.predict(normalized, deterministic=False)
    assert counter.count == 0, counter.ops
    assert isinstance(normalized, jax.Array) and isinstance(actions, jax.Array)


@pytest.mark.parametrize("algo", ["RecurrentPPO", "MaskablePPO"])
def test_contrib_arguments_as_jax_without_host_reads(algo: str) -> None:
    _needs(algo)
    policy = "MlpLstmPolicy" if algo == "RecurrentPPO" else "MlpPolicy"
    model = build(algo, "Box", "Discrete", policy)
    obs = to_jax(stack(sample_observations(observation_space("Box"), 4, seed=3)))
    with sb3_tensorpatch.patched():
        if algo == "RecurrentPPO":
            _, state = model.predict(obs, deterministic=False)
            extra: dict[str, Any] = {"state": state, "episode_start": jnp.array([True, False, False, True])}
        else:
            extra = {"action_masks": jnp.ones((4, 4), dtype=bool)}
        model.predict(obs, deterministic=False, **extra)  # warm the caches
        with CountHostReads() as counter:
            actions, _ = model.predict(obs, deterministic=False, **extra)
    assert counter.count == 0, counter.ops
    assert isinstance(actions, jax.Array)


# -- zero-copy --------------------------------------------------------------------------------------


class _Pointers(TorchDispatchMode):
    """Records the data pointers of every tensor an op reads and writes."""

    def __init__(self) -> None:
        super().__init__()
        self.read: set[int] = set()
        self.written: set[int] = set()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        result = func(*args, **(kwargs or {}))
        for value in (*args, *(kwargs or {}).values()):
            if isinstance(value, torch.Tensor):
                self.read.add(value.data_ptr())
        for value in result if isinstance(result, (tuple, list)) else (result,):
            if isinstance(value, torch.Tensor):
                self.written.add(value.data_ptr())
        return result


def test_zero_copy_both_ways() -> None:
    # the conversion is torch.from_dlpack and JAX's from_dlpack: the same memory, no copy
    array = jnp.arange(12, dtype=jnp.float32).reshape(4, 3)
    tensor = dlpack.to_torch(array, "observation")
    assert tensor.data_ptr() == array.unsafe_buffer_pointer()
    back = dlpack.to_caller(tensor, dlpack.exporter(array), "JAX")
    assert isinstance(back, jax.Array) and back.unsafe_buffer_pointer() == tensor.data_ptr()
    # end to end: the network reads the caller's JAX buffer, and the JAX array returned is the
    # buffer the route's last op wrote
    model = build("PPO", "Box", "Box")
    obs = to_jax(stack(sample_observations(observation_space("Box"), 4, seed=1)))
    with sb3_tensorpatch.patched():
        model.predict(obs, deterministic=True)
        with _Pointers() as pointers:
            actions, _ = model.predict(obs, deterministic=True)
    assert obs.unsafe_buffer_pointer() in pointers.read
    assert actions.dtype == jnp.float32 and actions.unsafe_buffer_pointer() in pointers.written


def test_narrowing_without_x64_gives_jnp_asarray_values() -> None:
    # JAX's own narrowing on import would flush the float32 subnormals to zero; jnp.asarray of SB3's
    # NumPy result keeps them, and so does the route (it narrows in torch first, as NumPy's astype)
    export = dlpack.exporter(jnp.zeros(1))
    floats = np.array([1e-40, -3e-39, 0.1, 1 / 3, -0.0], dtype=np.float64)
    ints = np.array([2**40 + 5, -1, 7], dtype=np.int64)
    for value in (floats, ints):
        got = export(torch.from_numpy(value))
        assert got.dtype == WITHOUT_X64[value.dtype]
        assert_same_bits(torch.from_dlpack(got), np.asarray(jnp.asarray(value)))
    assert np.asarray(export(torch.from_numpy(floats)))[0] != 0.0  # the subnormal survives
    with x64():
        kept = export(torch.from_numpy(floats))
        assert kept.dtype == jnp.float64
        assert_same_bits(torch.from_dlpack(kept), floats)


# -- errors -----------------------------------------------------------------------------------------


class _Foreign:
    """A foreign array of a made-up library (``fakelib``): ``__dlpack__`` of a torch tensor it holds."""

    __module__ = "fakelib.arrays"

    def __init__(self, tensor: torch.Tensor, device: tuple[int, int] | None = None) -> None:
        self.tensor = tensor
        self.device = device

    def __dlpack__(self, **kwargs: Any) -> Any:
        return self.tensor.__dlpack__(**kwargs)

    def __dlpack_device__(self) -> Any:
        return self.device or self.tensor.__dlpack_device__()


class _WithNamespace(_Foreign):
    """A made-up library that gives its arrays back through the array API's namespace."""

    __module__ = "fakelib.arrays"

    def __array_namespace__(self, api_version: Any = None) -> Any:
        return types.SimpleNamespace(from_dlpack=lambda tensor: _WithNamespace(torch.from_dlpack(tensor)))


def test_an_unsupported_dtype_names_jax_and_the_fix() -> None:
    model = build("PPO", "Box", "Box")
    obs = jnp.zeros((2, 3), dtype=jnp.int4)
    with sb3_tensorpatch.patched(), pytest.raises(ForeignArrayError, match=r"JAX array .*torch\.from_dlpack cannot import.*numpy\.asarray"):
        model.predict(obs)


def test_a_library_without_from_dlpack_fails_before_any_work() -> None:
    model = build("PPO", "Box", "Box")
    with sb3_tensorpatch.patched(), pytest.raises(ForeignArrayError, match=r"fakelib has no from_dlpack.*torch\.from_dlpack\(observation\)"):
        model.predict(_Foreign(torch.zeros(2, 3)))


def test_a_library_with_an_array_namespace_gets_its_arrays_back() -> None:
    model = build("PPO", "Box", "Box")
    numpy_obs = stack(sample_observations(observation_space("Box"), 2, seed=3))
    expected, _ = model.predict(numpy_obs, deterministic=True)
    with sb3_tensorpatch.patched():
        actual, _ = model.predict(_WithNamespace(torch.as_tensor(numpy_obs)), deterministic=True)
    assert isinstance(actual, _WithNamespace)
    assert_same_bits(actual.tensor, expected)


def test_negative_strides_are_refused_not_crashed() -> None:
    # torch aborts the whole process on some DLPack exports with negative strides: refused first
    model = build("PPO", "Box", "Box")

    class Strided(_WithNamespace):
        strides = (-12, 4)

    with sb3_tensorpatch.patched(), pytest.raises(ForeignArrayError, match="negative strides"):
        model.predict(Strided(torch.zeros(2, 3)))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch build without CUDA")
def test_a_device_torch_cannot_reach_names_the_fix() -> None:
    model = build("PPO", "Box", "Box")
    cuda_array = _WithNamespace(torch.zeros(2, 3), device=(2, 0))  # says it lives on cuda:0
    with sb3_tensorpatch.patched(), pytest.raises(ForeignArrayError, match="install a CUDA build of torch"):
        model.predict(cuda_array)


def test_only_the_callers_library_is_imported() -> None:
    code = (
        "import sys, numpy as np\n"
        "import sb3_tensorpatch, sb3_tensorpatch.dlpack\n"
        "assert 'jax' not in sys.modules, 'importing the package imported jax'\n"
        "import jax.numpy as jnp\n"
        "from stable_baselines3 import PPO\n"
        "sb3_tensorpatch.enable()\n"
        "model = PPO('MlpPolicy', 'Pendulum-v1', device='cpu', seed=0)\n"
        "actions, _ = model.predict(jnp.zeros((2, 3), dtype=jnp.float32), deterministic=True)\n"
        "assert type(actions).__module__.startswith('jax'), type(actions)\n"
        "print(sorted(name for name in ('cupy', 'warp') if name in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


# -- other libraries and GPUs ----------------------------------------------------------------------


def test_warp_on_cpu() -> None:
    wp = pytest.importorskip("warp", reason="warp-lang is not installed (pip install warp-lang; it runs on the CPU too)")
    wp.config.quiet = True
    model = build("PPO", "Box", "Box")
    numpy_obs = stack(sample_observations(observation_space("Box"), 4, seed=2))
    expected, _ = model.predict(numpy_obs, deterministic=True)
    obs = wp.array(numpy_obs, device="cpu")
    with sb3_tensorpatch.patched():
        actual, _ = model.predict(obs, deterministic=True)
    assert isinstance(actual, wp.array) and str(actual.device) == "cpu"
    assert_same_bits(actual.numpy(), expected)


def _cuda_or_skip() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU and a CUDA build of torch (none here)")


def test_cupy_on_gpu() -> None:
    _cuda_or_skip()
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed")
    gpu_model = copy.deepcopy(build("PPO", "Box", "Discrete"))
    gpu_model.policy.to("cuda")
    numpy_obs = stack(sample_observations(observation_space("Box"), 4, seed=2))
    expected, _ = gpu_model.predict(numpy_obs, deterministic=True)  # SB3's path on the same GPU
    with sb3_tensorpatch.patched():
        actual, _ = gpu_model.predict(cupy.asarray(numpy_obs), deterministic=True)
    assert isinstance(actual, cupy.ndarray) and actual.device.id == 0
    assert_same_bits(cupy.asnumpy(actual), expected)  # CuPy keeps int64


def test_jax_on_gpu() -> None:
    _cuda_or_skip()
    gpus = [device for device in jax.devices() if device.platform == "gpu"] if jax.default_backend() == "gpu" else []
    if not gpus:
        pytest.skip("jax has no GPU here (pip install 'jax[cuda12]' on a GPU machine)")
    model = copy.deepcopy(build("PPO", "Box", "Box"))
    model.policy.to("cuda")
    numpy_obs = stack(sample_observations(observation_space("Box"), 4, seed=2))
    expected, _ = model.predict(numpy_obs, deterministic=True)  # SB3's path on the same GPU
    obs = jax.device_put(numpy_obs, gpus[0])
    with sb3_tensorpatch.patched():
        actual, _ = model.predict(obs, deterministic=True)
    assert_jax_result(actual, expected, {gpus[0]})
