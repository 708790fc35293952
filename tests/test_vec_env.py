"""``TensorVecEnv``'s host path: a plain SB3 ``VecEnv`` around a vectorised env of torch tensors.

The reference is SB3's own path on the same dynamics: each environment of the torch env as a plain
gymnasium env (``SingleEnv``), in SB3's ``Monitor``, in a ``DummyVecEnv``. Step by step, both give the same
observations, rewards, dones and infos, bit for bit (``episode["t"]`` aside, a clock reading).
"""

from __future__ import annotations

import copy
import subprocess
import sys
import time
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from helpers import GYMNASIUM, assert_same_bits

if not GYMNASIUM:  # the module's parameters come from gymnasium-based helpers: skip before they are read
    pytest.skip("TensorVecEnv wraps gymnasium vector envs (SB3 >= 2.0)", allow_module_level=True)

if GYMNASIUM:
    import gymnasium as gym
    from stable_baselines3 import A2C, PPO
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecNormalize
    from torch_vector_envs import AUTORESET_MODES, LAYOUTS, SingleEnv, TorchCartPoleLike

    import sb3_tensorpatch
    from sb3_tensorpatch.vec_env import TensorVecEnv, autoreset_mode

#: gymnasium's own vector envs with a declared autoreset mode (gymnasium >= 1.1)
needs_autoreset_modes = pytest.mark.skipif(
    not GYMNASIUM or AUTORESET_MODES is None, reason="gymnasium < 1.1 has no AutoresetMode"
)

N_ENVS = 8
SEED = 3


def make(layout: str = "tensor", n_envs: int = N_ENVS, **kwargs: Any) -> tuple[TensorVecEnv, TorchCartPoleLike]:
    observation_key = kwargs.pop("observation_key", None)
    vector = TorchCartPoleLike(n_envs, layout=layout, **kwargs)
    return TensorVecEnv(vector, observation_key=observation_key), vector


def reference(n_envs: int = N_ENVS, **kwargs: Any) -> DummyVecEnv:
    return DummyVecEnv([lambda: Monitor(SingleEnv(**kwargs)) for _ in range(n_envs)])


def assert_same_obs(got: Any, want: Any) -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want)
        for key in want:
            assert_same_bits(got[key], want[key])
    else:
        assert isinstance(got, np.ndarray)
        assert_same_bits(got, want)


def assert_same_infos(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert len(got) == len(want)
    for ours, theirs in zip(got, want):
        assert set(ours) == set(theirs), (sorted(ours), sorted(theirs))
        assert ours["TimeLimit.truncated"] is theirs["TimeLimit.truncated"]
        if "terminal_observation" in theirs:
            assert_same_obs(ours["terminal_observation"], theirs["terminal_observation"])
        if "episode" in theirs:
            assert set(ours["episode"]) == {"r", "l", "t"}
            assert type(ours["episode"]["r"]) is float and type(ours["episode"]["l"]) is int
            assert (ours["episode"]["r"], ours["episode"]["l"]) == (theirs["episode"]["r"], theirs["episode"]["l"])
            assert isinstance(ours["episode"]["t"], float) and ours["episode"]["t"] >= 0.0


def run_side_by_side(venv: VecEnv, ref: VecEnv, steps: int, seed: int = SEED) -> dict[str, int]:
    """Step both with the same actions; assert the same outputs; count the kinds of episode ends."""
    venv.seed(seed)
    ref.seed(seed)
    assert_same_obs(venv.reset(), ref.reset())
    venv.action_space.seed(seed)
    counts = {"terminated": 0, "truncated": 0, "both": 0}
    for _ in range(steps):
        actions = np.stack([venv.action_space.sample() for _ in range(venv.num_envs)])
        obs, rewards, dones, infos = venv.step(actions)
        ref_obs, ref_rewards, ref_dones, ref_infos = ref.step(actions)
        assert_same_obs(obs, ref_obs)
        assert_same_bits(rewards, ref_rewards)
        assert_same_bits(dones, ref_dones)
        assert_same_infos(infos, ref_infos)
        for info, done in zip(infos, dones):
            if done:
                counts["truncated" if info["TimeLimit.truncated"] else "terminated"] += 1
    return counts


# -- step by step against DummyVecEnv + Monitor ------------------------------------------------------


@pytest.mark.parametrize("layout", [layout for layout in LAYOUTS if layout != "isaaclab"])
@pytest.mark.parametrize("dict_obs", [False, True], ids=["Box", "Dict"])
def test_matches_dummy_vec_env_with_monitor(layout: str, dict_obs: bool) -> None:
    venv, vector = make(layout, dict_obs=dict_obs)
    both = []
    original_step = vector.step

    def step(actions: torch.Tensor) -> Any:  # count the steps where an env terminated and truncated at once
        result = original_step(actions)
        both.append(int((result[2] & result[3]).sum()))
        return result

    vector.step = step  # type: ignore[method-assign]
    counts = run_side_by_side(venv, reference(dict_obs=dict_obs), steps=120)
    # the test covers what it claims: terminations, timeouts, and both in one step (a termination for SB3)
    assert counts["terminated"] > 0 and counts["truncated"] > 0, counts
    assert sum(both) > 0


@pytest.mark.parametrize("dict_obs", [False, True], ids=["Box", "Dict"])
def test_isaaclab_layout_with_observation_key(dict_obs: bool) -> None:
    # {"policy": obs}, final_obs the same dict for all envs, no mask, buffers overwritten in place
    venv, _ = make("isaaclab", dict_obs=dict_obs, observation_key="policy")
    assert venv.observation_space == SingleEnv(dict_obs=dict_obs).observation_space
    counts = run_side_by_side(venv, reference(dict_obs=dict_obs), steps=80)
    assert counts["terminated"] > 0 and counts["truncated"] > 0, counts


def test_isaaclab_layout_without_observation_key_is_a_dict_observation() -> None:
    venv, _vector = make("isaaclab")
    assert isinstance(venv.observation_space, gym.spaces.Dict)
    assert list(venv.observation_space.spaces) == ["policy"]
    ref = reference()
    venv.seed(SEED)
    ref.seed(SEED)
    assert_same_bits(venv.reset()["policy"], ref.reset())
    for _ in range(40):
        actions = np.ones(N_ENVS, dtype=np.int64)
        obs, _, _dones, infos = venv.step(actions)
        ref_obs, _, _, ref_infos = ref.step(actions)
        assert_same_bits(obs["policy"], ref_obs)
        for info, ref_info in zip(infos, ref_infos):
            if "terminal_observation" in ref_info:
                assert_same_bits(info["terminal_observation"]["policy"], ref_info["terminal_observation"])


def test_results_survive_envs_that_overwrite_their_buffers() -> None:
    # Isaac Lab overwrites its observation, reward and flag buffers in place every step: what SB3
    # keeps from one step (its _last_obs, the rewards it bootstraps in place) must not change
    venv, vector = make("isaaclab", observation_key="policy")
    venv.seed(SEED)
    first = venv.reset()
    kept = [(first.copy(), first)]
    terminal = 0
    for _ in range(30):
        obs, rewards, _dones, infos = venv.step(np.zeros(N_ENVS, dtype=np.int64))
        assert not np.shares_memory(obs, vector.obs_buf.numpy())
        assert not np.shares_memory(rewards, vector.reward_buf.numpy())
        kept.append((obs.copy(), obs))
        kept.append((rewards.copy(), rewards))
        finals = [info["terminal_observation"] for info in infos if "terminal_observation" in info]
        kept.extend((final.copy(), final) for final in finals)
        terminal += len(finals)
    assert terminal > 0
    for snapshot, returned in kept:
        assert_same_bits(returned, snapshot)


# -- Monitor's episode statistics ------------------------------------------------------------------


def test_episode_returns_are_float64_sums_rounded_like_monitor() -> None:
    venv, vector = make("tensor")
    venv.seed(SEED)
    venv.reset()
    sums64 = np.zeros(N_ENVS)
    sums32 = np.zeros(N_ENVS, dtype=np.float32)
    lengths = np.zeros(N_ENVS, dtype=np.int64)
    episodes = differ = 0
    original_step = vector.step

    def step(actions: torch.Tensor) -> Any:
        result = original_step(actions)
        raw = result[1].numpy()
        sums64[:] += raw.astype(np.float64)
        sums32[:] += raw
        return result

    vector.step = step  # type: ignore[method-assign]
    for _ in range(100):
        _, _, dones, infos = venv.step(np.zeros(N_ENVS, dtype=np.int64))
        lengths += 1
        for index in np.flatnonzero(dones):
            episode = infos[index]["episode"]
            assert episode["r"] == round(float(sums64[index]), 6)
            assert episode["l"] == lengths[index]
            differ += round(float(sums32[index]), 6) != episode["r"]
            episodes += 1
            sums64[index] = sums32[index] = lengths[index] = 0
    assert episodes > 20
    assert differ > 0  # float32 sums would have given other returns: the test tells them apart


def test_episode_time_counts_from_construction_like_monitor() -> None:
    before = time.time()
    venv, _ = make("tensor")
    time.sleep(0.05)  # a lower bound for every episode's time, whatever the machine's speed
    venv.seed(SEED)
    venv.reset()
    times = []
    for _ in range(40):
        _, _, dones, infos = venv.step(np.zeros(N_ENVS, dtype=np.int64))
        times.extend(infos[index]["episode"]["t"] for index in np.flatnonzero(dones))
    elapsed = time.time() - before
    assert times and times == sorted(times)
    assert all(0.05 <= value <= elapsed and value == round(value, 6) for value in times)


def test_reset_starts_new_episode_statistics() -> None:
    venv, _ = make("tensor", max_episode_steps=5)
    venv.seed(SEED)
    venv.reset()
    for _ in range(3):
        venv.step(np.zeros(N_ENVS, dtype=np.int64))
    venv.reset()
    lengths = []
    for _ in range(5):
        _, _, dones, infos = venv.step(np.zeros(N_ENVS, dtype=np.int64))
        lengths.extend(infos[index]["episode"]["l"] for index in np.flatnonzero(dones))
    assert lengths and max(lengths) <= 5


# -- final observation layouts, masks --------------------------------------------------------------


def test_step_tensors_fills_rows_without_final_observation_from_observations() -> None:
    # NaN rows (envs that did not finish) are replaced with torch.where, never multiplied away
    venv, _vector = make("tensor")
    venv.seed(SEED)
    venv.reset_tensors()
    for _ in range(60):
        step = venv.step_tensors(torch.zeros(N_ENVS, dtype=torch.int64))
        if step.final_observations is None:
            assert not bool(step.dones.any())
            continue
        assert isinstance(step.final_observations, torch.Tensor)
        assert not bool(step.final_observations.isnan().any())
        assert torch.equal(step.final_valid, step.dones)
        continuing = ~step.dones
        assert torch.equal(step.final_observations[continuing], step.observations[continuing])
        assert bool(step.dones.any())
        return
    pytest.fail("no episode ended")


def test_step_tensors_types_and_devices() -> None:
    venv, _vector = make("maniskill", dict_obs=True)
    venv.seed(SEED)
    first = venv.reset_tensors()
    assert isinstance(first, dict) and set(first) == {"cart", "pole"}
    assert venv.device == torch.device("cpu")
    step = venv.step_tensors(torch.ones(N_ENVS, dtype=torch.int64))
    assert step.rewards.dtype == torch.float32 and step.rewards.shape == (N_ENVS,)
    assert step.dones.dtype == torch.bool and step.terminated.dtype == torch.bool
    assert step.episode_returns.dtype == torch.float64 and step.episode_lengths.dtype == torch.int64
    assert torch.equal(step.episode_lengths, torch.ones(N_ENVS, dtype=torch.int64))
    assert all(value.dtype == torch.float32 for value in step.observations.values())  # type: ignore[union-attr]


def test_final_observation_without_mask_uses_finished_rows_only() -> None:
    # "unmasked": NaN rows and no "_final_obs": the rows of the finished envs are the valid ones
    venv, _ = make("unmasked")
    venv.seed(SEED)
    venv.reset()
    seen = 0
    for _ in range(60):
        _, _, dones, infos = venv.step(np.ones(N_ENVS, dtype=np.int64))
        for index in range(N_ENVS):
            assert ("terminal_observation" in infos[index]) == bool(dones[index])
            if dones[index]:
                assert not np.isnan(infos[index]["terminal_observation"]).any()
                seen += 1
    assert seen > 0


def test_mask_is_honoured_over_dones() -> None:
    # an env whose mask leaves out a finished env: that env gets no terminal observation (and a warning)
    venv, vector = make("tensor")
    original_step = vector.step

    def step(actions: torch.Tensor) -> Any:
        obs, rewards, terminated, truncated, info = original_step(actions)
        if "_final_obs" in info:
            info["_final_obs"] = info["_final_obs"].clone()
            info["_final_obs"][int(info["_final_obs"].nonzero()[0])] = False
        return obs, rewards, terminated, truncated, info

    vector.step = step  # type: ignore[method-assign]
    venv.seed(SEED)
    venv.reset()
    missing = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(40):
            _, _, dones, infos = venv.step(np.ones(N_ENVS, dtype=np.int64))
            missing += sum(bool(done) and "terminal_observation" not in info for done, info in zip(dones, infos))
    assert missing > 0
    assert any("without a terminal observation" in str(warning.message) for warning in caught)


def test_env_without_final_observations_warns_once() -> None:
    venv, vector = make("tensor")
    original_step = vector.step

    def step(actions: torch.Tensor) -> Any:
        obs, rewards, terminated, truncated, _ = original_step(actions)
        return obs, rewards, terminated, truncated, {}

    vector.step = step  # type: ignore[method-assign]
    venv.seed(SEED)
    venv.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(60):
            _, _, dones, infos = venv.step(np.ones(N_ENVS, dtype=np.int64))
            for done, info in zip(dones, infos):
                assert "terminal_observation" not in info
                assert ("episode" in info) == bool(done)
    assert sum("without a terminal observation" in str(warning.message) for warning in caught) == 1


# -- autoreset modes ------------------------------------------------------------------------------


@needs_autoreset_modes
def test_next_step_autoreset_is_refused_with_the_way_out() -> None:
    env = gym.make_vec("CartPole-v1", num_envs=2, vectorization_mode="sync")
    assert env.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP  # gymnasium's default
    with pytest.raises(ValueError, match="next-step autoreset") as error:
        TensorVecEnv(env)
    message = str(error.value)
    assert 'vector_kwargs={"autoreset_mode": gymnasium.vector.AutoresetMode.SAME_STEP}' in message
    # the advice works as written
    same_step = gym.make_vec(
        "CartPole-v1",
        num_envs=2,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
    )
    assert same_step.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (None, None),
        ("SameStep", "samestep"),
        ("same_step", "samestep"),
        ("SAME-STEP", "samestep"),
        ("NextStep", "nextstep"),
        ("next_step", "nextstep"),
        ("Disabled", "disabled"),
    ],
)
def test_autoreset_mode_spellings(mode: Any, expected: Any) -> None:
    vector = TorchCartPoleLike(2)
    vector.metadata = {} if mode is None else {"autoreset_mode": mode}
    assert autoreset_mode(vector) == expected
    for member in AUTORESET_MODES or ():
        vector.metadata = {"autoreset_mode": member}
        assert autoreset_mode(vector) == member.value.lower()
    vector.metadata = {} if mode is None else {"autoreset_mode": mode}
    if expected in (None, "samestep"):
        TensorVecEnv(vector)
    else:
        with pytest.raises(ValueError, match="same-step autoreset"):
            TensorVecEnv(vector)


def test_no_metadata_key_is_taken_as_same_step() -> None:
    # ManiSkill3 declares no autoreset mode and resets in the same step
    vector = TorchCartPoleLike(2, layout="maniskill")
    assert "autoreset_mode" not in vector.metadata
    TensorVecEnv(vector)


# -- gymnasium's NumpyToTorch over a same-step SyncVectorEnv ----------------------------------------


class StackFinalObs(getattr(gym.vector, "VectorWrapper", object) if GYMNASIUM else object):  # type: ignore[misc]
    """The wrapper that usage.md recommends between a same-step gymnasium vector env and ``NumpyToTorch``:
    ``info["final_obs"]`` as one array (each row the env's observation where it did not finish)."""

    def step(self, actions: Any) -> Any:
        obs, rewards, terminated, truncated, info = self.env.step(actions)
        if "final_obs" in info:
            finished = info["_final_obs"]
            stacked = obs.copy()
            stacked[finished] = np.stack(info["final_obs"][finished])
            info = {**info, "final_obs": stacked}
        return obs, rewards, terminated, truncated, info


def same_step_cartpole(n_envs: int) -> Any:
    return gym.make_vec(
        "CartPole-v1",
        num_envs=n_envs,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
    )


@needs_autoreset_modes
def test_numpy_to_torch_over_same_step_raises_buffer_error_in_gymnasium() -> None:
    # the fact the refusal below is for (gymnasium 1.4.0): DLPack cannot take the object array
    pytest.importorskip("array_api_compat")
    from gymnasium.wrappers.vector import NumpyToTorch

    env = NumpyToTorch(same_step_cartpole(2))
    env.reset(seed=0)
    with pytest.raises(BufferError):
        for _ in range(500):
            env.step(torch.zeros(2, dtype=torch.int64))


@needs_autoreset_modes
def test_numpy_to_torch_over_same_step_is_refused_and_the_documented_order_works() -> None:
    pytest.importorskip("array_api_compat")
    from gymnasium.wrappers.vector import NumpyToTorch

    with pytest.raises(ValueError, match="BufferError"):
        TensorVecEnv(NumpyToTorch(same_step_cartpole(2)))
    venv = TensorVecEnv(NumpyToTorch(StackFinalObs(same_step_cartpole(4))))
    ref = DummyVecEnv([lambda: Monitor(gym.make("CartPole-v1")) for _ in range(4)])
    counts = run_side_by_side(venv, ref, steps=150)
    assert counts["terminated"] > 0


# -- the VecEnv interface --------------------------------------------------------------------------


@pytest.mark.parametrize("dict_obs", [False, True], ids=["Box", "Dict"])
def test_vec_env_contract(dict_obs: bool) -> None:
    venv, vector = make("object", dict_obs=dict_obs)
    assert isinstance(venv, VecEnv) and venv.num_envs == N_ENVS
    assert venv.observation_space == vector.single_observation_space
    assert venv.action_space == vector.single_action_space
    assert venv.seed(7) == [7 + index for index in range(N_ENVS)]
    obs = venv.reset()
    for _ in range(30):
        actions = np.stack([venv.action_space.sample() for _ in range(N_ENVS)])
        obs, rewards, dones, infos = venv.step(actions)
        batch = obs if dict_obs else {"": obs}
        spaces_ = venv.observation_space.spaces if dict_obs else {"": venv.observation_space}
        for key, value in batch.items():
            assert value.shape == (N_ENVS, *spaces_[key].shape) and value.dtype == spaces_[key].dtype
        assert rewards.dtype == np.float32 and rewards.shape == (N_ENVS,)
        assert dones.dtype == np.bool_ and dones.shape == (N_ENVS,)
        assert isinstance(infos, list) and len(infos) == N_ENVS and all(type(info) is dict for info in infos)
        # the actions reached the env as a tensor on its device, in the action space's dtype
        assert isinstance(vector.last_actions, torch.Tensor)
        assert vector.last_actions.dtype == torch.int64 and vector.last_actions.device == vector.device
        assert np.array_equal(vector.last_actions.numpy(), actions)
    assert venv.get_attr("max_episode_steps") == [20] * N_ENVS
    assert venv.get_attr("max_episode_steps", indices=[1, 2]) == [20, 20]
    if hasattr(VecEnv, "has_attr"):  # SB3 >= 2.3
        assert venv.has_attr("layout") and not venv.has_attr("no_such_attribute")
    venv.set_attr("max_episode_steps", 30)
    assert vector.max_episode_steps == 30
    with pytest.raises(ValueError, match="some of the environments"):
        venv.set_attr("max_episode_steps", 40, indices=[0])
    assert venv.env_method("_initial_states")[0].shape == (N_ENVS, 4)
    assert venv.env_is_wrapped(Monitor) == [True] * N_ENVS
    assert venv.env_is_wrapped(gym.wrappers.TimeLimit) == [False] * N_ENVS
    venv.close()


def test_box_actions_reach_the_env_in_the_action_space_dtype() -> None:
    venv, vector = make("tensor", box_actions=True)
    venv.seed(SEED)
    venv.reset()
    actions = np.linspace(-1.5, 1.5, N_ENVS).reshape(N_ENVS, 1)  # float64, as a user might pass
    venv.step(actions)
    assert vector.last_actions.dtype == torch.float32 and vector.last_actions.shape == (N_ENVS, 1)
    assert np.array_equal(vector.last_actions.numpy(), actions.astype(np.float32))


def test_seed_and_options_reach_the_env_once() -> None:
    if not hasattr(VecEnv, "set_options"):
        pytest.skip("SB3 < 2.2 has no VecEnv.set_options")
    venv, vector = make("tensor")
    venv.seed(11)
    venv.set_options({"level": 2})
    venv.reset()
    assert vector.seeds.tolist() == [11 + index for index in range(N_ENVS)]
    assert vector.reset_options == {"level": 2}
    venv.reset()
    assert vector.reset_options is None and vector.seeds.tolist() == [11 + index for index in range(N_ENVS)]
    venv.set_options([{"level": index} for index in range(N_ENVS)])
    with pytest.raises(ValueError, match="one options dict"):
        venv.reset()


@needs_autoreset_modes
def test_an_env_of_numpy_arrays_is_refused_at_reset() -> None:
    env = gym.make_vec(
        "CartPole-v1",
        num_envs=2,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
    )
    venv = TensorVecEnv(env)
    with pytest.raises(TypeError, match="DummyVecEnv"):
        venv.reset()


def test_observation_key_needs_a_dict_space() -> None:
    with pytest.raises(ValueError, match="observation_key='policy'"):
        TensorVecEnv(TorchCartPoleLike(2), observation_key="policy")


def test_step_before_reset_says_so() -> None:
    venv, _ = make("tensor")
    with pytest.raises(RuntimeError, match=r"reset\(\)"):
        venv.step(np.zeros(N_ENVS, dtype=np.int64))


def test_importing_the_package_does_not_import_the_vec_env() -> None:
    code = (
        "import sys, sb3_tensorpatch\n"
        "assert 'torch' not in sys.modules and 'stable_baselines3' not in sys.modules\n"
        "from sb3_tensorpatch import TensorVecEnv\n"
        "from stable_baselines3.common.vec_env import VecEnv\n"
        "assert issubclass(TensorVecEnv, VecEnv) and sb3_tensorpatch.TensorVecEnv is TensorVecEnv\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- training ---------------------------------------------------------------------------------------


def parameters(model: Any) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.policy.state_dict().items()}


def train(algo: Any, env: VecEnv, policy: str, steps: int, **kwargs: Any) -> Any:
    model = algo(policy, env, seed=SEED, device="cpu", policy_kwargs={"net_arch": [16]}, **kwargs)
    model.learn(steps)
    return model


ALGOS = {"PPO": (PPO, {"n_steps": 16, "batch_size": 32, "n_epochs": 2}), "A2C": (A2C, {"n_steps": 8})}


@pytest.mark.parametrize("algo", sorted(ALGOS))
@pytest.mark.parametrize("normalize", [False, True], ids=["plain", "VecNormalize"])
@pytest.mark.parametrize("patch", [False, True], ids=["patch-off", "patch-on"])
def test_training_equals_sb3_own_path(algo: str, normalize: bool, patch: bool) -> None:
    # PPO / A2C on a TensorVecEnv end with the parameters and episodes of the same training on
    # DummyVecEnv + Monitor over the same dynamics: the VecEnvs give SB3 the very same data
    cls, kwargs = ALGOS[algo]
    steps = 300
    results = []
    for env in (make("tensor")[0], reference()):
        if normalize:
            env = VecNormalize(env)
        if patch:
            with sb3_tensorpatch.patched():
                model = train(cls, env, "MlpPolicy", steps, **kwargs)
        else:
            model = train(cls, env, "MlpPolicy", steps, **kwargs)
        results.append(model)
    ours, theirs = results
    assert ours.num_timesteps == theirs.num_timesteps >= steps
    assert len(ours.ep_info_buffer) > 0
    assert [(e["r"], e["l"]) for e in ours.ep_info_buffer] == [(e["r"], e["l"]) for e in theirs.ep_info_buffer]
    mine, reference_parameters = parameters(ours), parameters(theirs)
    for name, value in reference_parameters.items():
        assert torch.equal(mine[name], value), name


@pytest.mark.parametrize("algo", sorted(ALGOS))
def test_training_with_the_patch_on_equals_off(algo: str) -> None:
    cls, kwargs = ALGOS[algo]
    off = train(cls, make("object", box_actions=True)[0], "MlpPolicy", 200, **kwargs)
    with sb3_tensorpatch.patched():
        on = train(cls, make("object", box_actions=True)[0], "MlpPolicy", 200, **kwargs)
    assert off.num_timesteps == on.num_timesteps
    assert [(e["r"], e["l"]) for e in off.ep_info_buffer] == [(e["r"], e["l"]) for e in on.ep_info_buffer]
    for name, value in parameters(off).items():
        assert torch.equal(parameters(on)[name], value), name


def test_training_on_dict_observations() -> None:
    ours = train(PPO, make("maniskill", dict_obs=True)[0], "MultiInputPolicy", 200, **ALGOS["PPO"][1])
    theirs = train(PPO, reference(dict_obs=True), "MultiInputPolicy", 200, **ALGOS["PPO"][1])
    for name, value in parameters(theirs).items():
        assert torch.equal(parameters(ours)[name], value), name


def test_evaluate_policy_counts_monitor_episodes() -> None:
    venv, _ = make("tensor")
    model = PPO("MlpPolicy", venv, seed=SEED, device="cpu", policy_kwargs={"net_arch": [16]}, n_steps=16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "not wrapped with a Monitor" warning
        rewards, lengths = evaluate_policy(model, venv, n_eval_episodes=10, return_episode_rewards=True)
    assert len(rewards) == len(lengths) == 10
    assert all(1 <= length <= 20 for length in lengths)


def test_copy_keeps_it_usable() -> None:
    venv, _ = make("tensor")
    clone = copy.deepcopy(venv)
    clone.seed(SEED)
    assert clone.reset().shape == (N_ENVS, 4)
