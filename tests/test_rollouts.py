"""On-device rollouts: PPO and A2C ``learn()`` on a ``TensorVecEnv`` with the patch on equal the same training
with the patch off (SB3's own ``collect_rollouts`` on ``TensorVecEnv``'s host path), bit for bit.

Each parity test trains twice from the same seeds, on fresh envs, and compares every ``state_dict`` entry
with ``torch.equal``, ``num_timesteps`` and the episodes ``(r, l)`` in ``ep_info_buffer``. The env's
episodes end both by termination and by truncation (a timeout, whose value SB3 bootstraps), inside
rollouts and on a rollout's last step: the reference run records which happened and the tests assert it.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import pytest
import torch
from helpers import GYMNASIUM
from torch.utils._python_dispatch import TorchDispatchMode

if not GYMNASIUM:  # the module's classes and parameters come from gymnasium-based SB3: skip before they are read
    pytest.skip("TensorVecEnv wraps gymnasium vector envs (SB3 >= 2.0)", allow_module_level=True)

if GYMNASIUM:
    from gymnasium import spaces
    from stable_baselines3 import A2C, PPO
    from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.policies import ActorCriticPolicy
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize
    from torch_vector_envs import LAYOUTS, SingleEnv, TorchCartPoleLike

    import sb3_tensorpatch
    from sb3_tensorpatch import lowering, plans, rollouts
    from sb3_tensorpatch.buffers import TensorDictRolloutBuffer, TensorRolloutBuffer
    from sb3_tensorpatch.vec_env import TensorVecEnv

N_ENVS = 6
N_STEPS = 10
SEED = 3
#: episodes of at most 10 steps, rollouts of 10 steps: timeouts fall on rollouts' last steps, and
#: terminations (the pole falls within 10 steps) anywhere
MAX_STEPS = 10
HYPER = {"PPO": {"n_steps": N_STEPS, "batch_size": 20, "n_epochs": 2}, "A2C": {"n_steps": N_STEPS}}


def algorithm(name: str) -> Any:
    return {"PPO": PPO, "A2C": A2C}[name]


def make_env(layout: str = "tensor", max_episode_steps: int = MAX_STEPS, **kwargs: Any) -> TensorVecEnv:
    observation_key = kwargs.pop("observation_key", None)
    vector = TorchCartPoleLike(N_ENVS, layout=layout, max_episode_steps=max_episode_steps, **kwargs)
    return TensorVecEnv(vector, observation_key=observation_key)


class Events(BaseCallback):  # type: ignore[misc]
    """Records, on SB3's own path, where episodes ended: (terminated, truncated) x (inside, last step of a rollout)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[str, str]] = set()
        self.steps = 0

    def _on_step(self) -> bool:
        self.steps += 1
        where = "boundary" if self.locals["n_steps"] == self.locals["n_rollout_steps"] - 1 else "inside"
        dones = self.locals["dones"]
        if isinstance(dones, np.ndarray):  # SB3's path: a list of infos
            for done, info in zip(dones, self.locals["infos"]):
                if done:
                    self.seen.add(("truncated" if info["TimeLimit.truncated"] else "terminated", where))
        return True


def train(
    algo: str, env: Any, patch: bool, steps: int = 4 * N_ENVS * N_STEPS, callback: Any = None, own_buffer: bool = False, **kwargs: Any
) -> Any:
    """A small model trained on ``env``; ``own_buffer``: with a user's buffer class (:class:`UserBuffer`)."""
    policy = "MultiInputPolicy" if isinstance(env.observation_space, spaces.Dict) else "MlpPolicy"
    options = {**HYPER[algo], **kwargs}
    buffer_class = "rollout_buffer_class" in inspect.signature(algorithm(algo).__init__).parameters  # SB3 >= 2.2.0
    if own_buffer and buffer_class:
        options["rollout_buffer_class"] = UserBuffer
    model = algorithm(algo)(policy, env, seed=SEED, device="cpu", policy_kwargs={"net_arch": [16]}, **options)
    if own_buffer and not buffer_class:
        old = model.rollout_buffer
        model.rollout_buffer = UserBuffer(
            old.buffer_size, old.observation_space, old.action_space, old.device, gae_lambda=old.gae_lambda, gamma=old.gamma, n_envs=old.n_envs
        )
    if patch:
        with sb3_tensorpatch.patched():
            model.learn(steps, callback=callback)
    else:
        model.learn(steps, callback=callback)
    return model


def episodes(model: Any) -> list[tuple[float, int]]:
    return [(episode["r"], episode["l"]) for episode in model.ep_info_buffer]


def assert_same_training(on: Any, off: Any) -> None:
    assert on.num_timesteps == off.num_timesteps
    assert len(off.ep_info_buffer) > 0
    assert episodes(on) == episodes(off)
    mine, theirs = on.policy.state_dict(), off.policy.state_dict()
    assert list(mine) == list(theirs)
    for name, value in theirs.items():
        assert mine[name].dtype == value.dtype and torch.equal(mine[name], value), name


def took_route(model: Any) -> bool:
    return type(model.rollout_buffer) in (TensorRolloutBuffer, TensorDictRolloutBuffer)


def parity(algo: str, make: Any, steps: int = 4 * N_ENVS * N_STEPS, **kwargs: Any) -> set[tuple[str, str]]:
    """Train with the patch off and on; assert both end the same; return where episodes ended."""
    events = Events()
    off = train(algo, make(), patch=False, steps=steps, callback=events, **kwargs)
    on = train(algo, make(), patch=True, steps=steps, **kwargs)
    assert not took_route(off) and took_route(on)
    assert_same_training(on, off)
    return events.seen


ALL_EVENTS = {(kind, where) for kind in ("terminated", "truncated") for where in ("inside", "boundary")}


class _Counted:
    """A lowered forward that counts its calls (one per rollout step that took it)."""

    def __init__(self, lowered: Any, calls: list[int]) -> None:
        self.lowered, self.calls = lowered, calls
        self.live = lowered.live

    def run(self, obs: torch.Tensor, deterministic: bool) -> Any:
        self.calls.append(1)
        return self.lowered.run(obs, deterministic)


@pytest.fixture
def lowered_steps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the rollout steps whose ``policy(obs)`` took the lowered forward (one entry per step)."""
    calls: list[int] = []
    original = rollouts.forward_for

    def counting(policy: Any) -> Any:
        lowered, what = original(policy)
        return (None if lowered is None else _Counted(lowered, calls)), what

    monkeypatch.setattr(rollouts, "forward_for", counting)
    return calls


# -- parity -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("algo", ["PPO", "A2C"])
@pytest.mark.parametrize("box_actions", [False, True], ids=["Discrete", "Box"])
def test_training_equals_sb3_path(algo: str, box_actions: bool, lowered_steps: list[int]) -> None:
    # Box actions keep the pole up longer: longer episodes and rollouts make every kind of ending happen
    length, steps = (15, 6 * N_ENVS * N_STEPS) if box_actions else (MAX_STEPS, 4 * N_ENVS * N_STEPS)
    seen = parity(algo, lambda: make_env(box_actions=box_actions, max_episode_steps=length), steps=steps)
    assert seen == ALL_EVENTS
    # every step's policy(obs) was the lowered forward (none where SB3_TENSORPATCH_LOWERING=0)
    assert len(lowered_steps) == (steps // N_ENVS if lowering.enabled else 0)


class _HookAt(BaseCallback):  # type: ignore[misc]
    """Puts a forward hook that doubles the action net's output on the policy at step ``at`` (after that
    step's forward)."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def _on_step(self) -> bool:
        if self.n_calls == self.at:
            self.model.policy.action_net.register_forward_hook(lambda module, args, output: output * 2)
        return True


def test_a_hook_set_mid_rollout_takes_sb3s_forward_from_the_next_step(monkeypatch: pytest.MonkeyPatch, lowered_steps: list[int]) -> None:
    monkeypatch.setattr(lowering, "enabled", True)
    plans.clear()
    at = N_STEPS + 4  # inside the second rollout
    off = train("PPO", make_env(box_actions=True), patch=False, steps=2 * N_ENVS * N_STEPS, callback=_HookAt(at))
    on = train("PPO", make_env(box_actions=True), patch=True, steps=2 * N_ENVS * N_STEPS, callback=_HookAt(at))
    assert took_route(on)
    assert_same_training(on, off)
    assert len(lowered_steps) == at


def test_lowering_off_takes_sb3s_forward(monkeypatch: pytest.MonkeyPatch, lowered_steps: list[int]) -> None:
    monkeypatch.setattr(lowering, "enabled", False)  # what SB3_TENSORPATCH_LOWERING=0 sets
    plans.clear()
    parity("A2C", lambda: make_env(box_actions=True), steps=N_ENVS * N_STEPS)
    assert lowered_steps == []


@pytest.mark.parametrize("algo", ["PPO", "A2C"])
def test_dict_observations(algo: str) -> None:
    seen = parity(algo, lambda: make_env(dict_obs=True))
    assert seen == ALL_EVENTS


@pytest.mark.parametrize("layout", [layout for layout in LAYOUTS if layout != "tensor"])
def test_final_observation_layouts(layout: str) -> None:
    # object arrays, NaN rows without a mask, ManiSkill3's keys (terminated and truncated together
    # possible), Isaac Lab's buffers overwritten in place; every layout adds its keys only on steps where
    # an env finished
    kwargs = {"observation_key": "policy"} if layout == "isaaclab" else {}
    seen = parity("PPO", lambda: make_env(layout, **kwargs))
    assert seen == ALL_EVENTS


def test_isaaclab_dict_observations() -> None:
    # {"policy": {"cart": ..., "pole": ...}} buffers overwritten in place, a Dict observation through the key
    parity("A2C", lambda: make_env("isaaclab", dict_obs=True, observation_key="policy"))


def test_gae_lambda_and_gamma_and_advantage_normalisation_options() -> None:
    parity("PPO", make_env, gamma=0.9, gae_lambda=0.8, normalize_advantage=False)
    parity("A2C", make_env, gamma=0.97, gae_lambda=0.9, normalize_advantage=True)


def test_stats_window_smaller_than_a_rollouts_episodes() -> None:
    # only the last stats_window_size episodes stay in ep_info_buffer (the route builds only those)
    parity("A2C", make_env, stats_window_size=3)
    model = train("A2C", make_env(), patch=True, stats_window_size=3)
    assert len(model.ep_info_buffer) == 3


def test_equals_dummy_vec_env_of_single_envs() -> None:
    # the route against SB3's own reference VecEnv on the same dynamics (DummyVecEnv of Monitor envs)
    from stable_baselines3.common.monitor import Monitor

    reference = DummyVecEnv([lambda: Monitor(SingleEnv(max_episode_steps=MAX_STEPS)) for _ in range(N_ENVS)])
    off = train("PPO", reference, patch=False)
    on = train("PPO", make_env(), patch=True)
    assert took_route(on)
    assert_same_training(on, off)


# -- the route and its fallbacks ------------------------------------------------------------------------


def test_route_steps_the_env_with_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    host_steps: list[int] = []
    monkeypatch.setattr(TensorVecEnv, "step_wait", lambda self: host_steps.append(1))  # never reached
    env = make_env(box_actions=True)
    model = train("PPO", env, patch=True, steps=N_ENVS * N_STEPS)
    assert host_steps == []
    assert type(model.rollout_buffer) is TensorRolloutBuffer
    actions = env.env.last_actions
    assert isinstance(actions, torch.Tensor) and actions.dtype == torch.float32
    assert bool((actions.abs() <= 1.0).all())  # clipped to the Box bounds


class UserBuffer(RolloutBuffer):  # type: ignore[misc]
    pass


class OwnTrain(PPO):  # type: ignore[misc]
    def train(self) -> None:
        super().train()


class OwnCollect(PPO):  # type: ignore[misc]
    def collect_rollouts(self, env: Any, callback: Any, rollout_buffer: Any, n_rollout_steps: int) -> bool:
        return super().collect_rollouts(env, callback, rollout_buffer, n_rollout_steps)  # type: ignore[no-any-return]


class PlainSubclass(PPO):  # type: ignore[misc]
    pass


class OwnObsToTensor(ActorCriticPolicy):  # type: ignore[misc]
    def obs_to_tensor(self, observation: Any) -> Any:
        return super().obs_to_tensor(observation)


FALLBACKS = ["rollout_buffer_class", "use_sde", "DummyVecEnv", "VecNormalize", "own_train", "own_collect_rollouts", "own_obs_to_tensor"]


def _fallback_cases() -> dict[str, Any]:
    def with_kwargs(**kwargs: Any) -> Any:
        def run() -> Any:
            return train("PPO", make_env(box_actions=True), patch=True, steps=N_ENVS * N_STEPS, **kwargs)

        return run

    def with_class(cls: Any, env: Any = None, policy: Any = "MlpPolicy") -> Any:
        def run() -> Any:
            model = cls(policy, env or make_env(), seed=SEED, device="cpu", policy_kwargs={"net_arch": [16]}, **HYPER["PPO"])
            with sb3_tensorpatch.patched():
                model.learn(N_ENVS * N_STEPS)
            return model

        return run

    dummy = DummyVecEnv([lambda: SingleEnv(max_episode_steps=MAX_STEPS) for _ in range(N_ENVS)])
    return {
        "rollout_buffer_class": with_kwargs(own_buffer=True),
        "use_sde": with_kwargs(use_sde=True),
        "DummyVecEnv": with_class(PPO, dummy),
        "VecNormalize": with_class(PPO, VecNormalize(make_env())),
        "own_train": with_class(OwnTrain),
        "own_collect_rollouts": with_class(OwnCollect),
        "own_obs_to_tensor": with_class(PPO, policy=OwnObsToTensor),
    }


@pytest.mark.parametrize("case", FALLBACKS)
def test_fallbacks_take_sb3_path(case: str) -> None:
    model = _fallback_cases()[case]()
    assert model.num_timesteps >= N_ENVS * N_STEPS
    assert not took_route(model)
    assert type(model.rollout_buffer) in (RolloutBuffer, DictRolloutBuffer, UserBuffer)


def test_subclass_without_overrides_takes_the_route() -> None:
    model = PlainSubclass("MlpPolicy", make_env(), seed=SEED, device="cpu", policy_kwargs={"net_arch": [16]}, **HYPER["PPO"])
    with sb3_tensorpatch.patched():
        model.learn(N_ENVS * N_STEPS)
    assert took_route(model)


def test_fallback_trains_as_sb3() -> None:
    # a fallback is SB3's own path: the same result as without the patch
    off = train("PPO", make_env(box_actions=True), patch=False, own_buffer=True)
    on = train("PPO", make_env(box_actions=True), patch=True, own_buffer=True)
    assert not took_route(on)
    assert_same_training(on, off)


# -- learn() after learn(), with the patch switched in between ----------------------------------------------


@pytest.mark.parametrize("first,second", [(True, False), (False, True), (True, True)])
def test_patch_switched_between_learn_calls(first: bool, second: bool) -> None:
    def run(patches: tuple[bool, bool]) -> Any:
        model = PPO("MlpPolicy", make_env(), seed=SEED, device="cpu", policy_kwargs={"net_arch": [16]}, **HYPER["PPO"])
        for patch in patches:
            with sb3_tensorpatch.patched() if patch else _nothing():
                model.learn(2 * N_ENVS * N_STEPS, reset_num_timesteps=False)
            assert isinstance(model._last_obs, np.ndarray)  # SB3's path can always continue from it
        return model

    assert_same_training(run((first, second)), run((False, False)))


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


# -- callbacks ------------------------------------------------------------------------------------------------


class Recorder(BaseCallback):  # type: ignore[misc]
    def __init__(self, stop_at: int | None = None) -> None:
        super().__init__()
        self.stop_at = stop_at
        self.calls = 0
        self.kinds: set[str] = set()
        self.rollouts = 0

    def _on_rollout_end(self) -> None:
        self.rollouts += 1

    def _on_step(self) -> bool:
        self.calls += 1
        self.kinds.add(type(self.locals["new_obs"]).__name__)
        self.kinds.add(type(self.locals["dones"]).__name__)
        return self.stop_at is None or self.calls < self.stop_at


def test_callbacks_get_every_step_and_tensor_locals() -> None:
    recorder = Recorder()
    model = train("A2C", make_env(), patch=True, callback=recorder)
    assert recorder.calls == model.num_timesteps // N_ENVS == 4 * N_STEPS
    assert recorder.rollouts == 4
    assert recorder.kinds == {"Tensor"}
    assert isinstance(recorder.locals["step"].rewards, torch.Tensor)


@pytest.mark.parametrize("stop_at", [1, N_STEPS + 3])
def test_callback_early_stop_is_sb3s(stop_at: int) -> None:
    # on_step() returning False ends learn() at once, with the same steps counted and episodes kept
    off, on = Recorder(stop_at), Recorder(stop_at)
    a = train("PPO", make_env(), patch=False, callback=off)
    b = train("PPO", make_env(), patch=True, callback=on)
    assert off.calls == on.calls == stop_at
    assert a.num_timesteps == b.num_timesteps == stop_at * N_ENVS
    assert episodes(a) == episodes(b)
    assert all(torch.equal(b.policy.state_dict()[name], value) for name, value in a.policy.state_dict().items())
    assert np.array_equal(a._last_obs, b._last_obs) and np.array_equal(a._last_episode_starts, b._last_episode_starts)


# -- host reads -------------------------------------------------------------------------------------------------

HOST_READS = {"aten._local_scalar_dense", "aten.is_nonzero", "aten.item"}


class CountHostReads(TorchDispatchMode):
    """Counts scalar reads (dispatch) and ``.cpu()``/``.numpy()``/``.item()``/``.tolist()`` calls, except while
    ``paused`` (inside the test env's own ``step``, which reads ``done.any()`` to decide its info keys)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.paused = False

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if not self.paused and str(func.overloadpacket._qualified_op_name).replace("::", ".") in HOST_READS:
            self.count += 1
        return func(*args, **(kwargs or {}))


def _host_reads(patch: bool, n_steps: int, monkeypatch: pytest.MonkeyPatch) -> int:
    env = make_env()
    counter = CountHostReads()
    vector = env.env
    step = vector.step

    def env_step(actions: Any) -> Any:
        counter.paused = True
        try:
            return step(actions)
        finally:
            counter.paused = False

    vector.step = env_step
    with monkeypatch.context() as patcher:
        for name in ("cpu", "numpy", "item", "tolist"):
            method = getattr(torch.Tensor, name)

            def counted(self: Any, *args: Any, _method: Any = method, **kwargs: Any) -> Any:
                if not counter.paused:
                    counter.count += 1
                return _method(self, *args, **kwargs)

            patcher.setattr(torch.Tensor, name, counted)
        # one minibatch per epoch whatever n_steps is: PPO's logging reads a constant per minibatch
        model = PPO(
            "MlpPolicy", env, seed=SEED, device="cpu", policy_kwargs={"net_arch": [16]},
            n_steps=n_steps, batch_size=n_steps * N_ENVS, n_epochs=1,
        )
        with counter:
            if patch:
                with sb3_tensorpatch.patched():
                    model.learn(2 * n_steps * N_ENVS)
            else:
                model.learn(2 * n_steps * N_ENVS)
    assert model.num_timesteps == 2 * n_steps * N_ENVS
    return counter.count


def test_host_reads_do_not_grow_with_n_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    short, long = _host_reads(True, 8, monkeypatch), _host_reads(True, 32, monkeypatch)
    assert short == long  # a constant per rollout and update, none per step
    # the counter sees SB3's per-step reads (actions.cpu().numpy(), ...) on the host path
    host_short, host_long = _host_reads(False, 8, monkeypatch), _host_reads(False, 32, monkeypatch)
    assert host_long - host_short >= 2 * (32 - 8)
    assert long < host_long


# -- the device buffer against SB3's ------------------------------------------------------------------------------


def _route_options() -> dict[str, Any]:
    from sb3_tensorpatch.table import select_rows

    (row,) = [row for row in select_rows().rows if row.route == "collect_rollouts"]
    return row.options


@pytest.mark.parametrize(
    "obs_kind,act_kind",
    [("Box", "Discrete"), ("Discrete", "Box"), ("uint8", "MultiDiscrete"), ("MultiBinary", "MultiBinary"), ("Dict", "Discrete")],
)
def test_device_buffer_samples_equal_sb3s(obs_kind: str, act_kind: str) -> None:
    # the same data in SB3's buffer and in ours (as the route stores it): get() yields the same samples, with the
    # observations in the dtype this SB3 release stores them in, from the same draw of NumPy's generator
    from helpers import action_space, observation_space

    from sb3_tensorpatch.buffers import device_buffer

    obs_space = spaces.Box(0, 255, (2, 3), np.uint8) if obs_kind == "uint8" else observation_space(obs_kind)
    act_space = action_space(act_kind)
    n_steps, n_envs = 5, 4
    cls = DictRolloutBuffer if obs_kind == "Dict" else RolloutBuffer
    theirs = cls(n_steps, obs_space, act_space, device="cpu", gae_lambda=0.9, gamma=0.95, n_envs=n_envs)
    ours = device_buffer(cls(n_steps, obs_space, act_space, device="cpu", gae_lambda=0.9, gamma=0.95, n_envs=n_envs))
    assert ours is not None
    options = _route_options()
    ours.start(options["store_obs_float32"])
    obs_space.seed(0)
    act_space.seed(1)
    generator = torch.Generator().manual_seed(2)
    for _ in range(n_steps):
        obs = [obs_space.sample() for _ in range(n_envs)]
        batch = {key: np.stack([o[key] for o in obs]) for key in obs[0]} if obs_kind == "Dict" else np.stack(obs)
        actions = np.stack([act_space.sample() for _ in range(n_envs)])
        rewards = torch.randn(n_envs, generator=generator).numpy()
        starts = (torch.rand(n_envs, generator=generator) < 0.3).numpy()
        values = torch.randn(n_envs, 1, generator=generator)
        log_probs = torch.randn(n_envs, generator=generator)
        theirs.add(batch, actions, rewards, starts, values, log_probs)
        tensors = {k: torch.as_tensor(v) for k, v in batch.items()} if isinstance(batch, dict) else torch.as_tensor(batch)
        ours.add_tensors(tensors, torch.as_tensor(actions), torch.as_tensor(rewards), torch.as_tensor(starts), values, log_probs)
    last_values, dones = torch.randn(n_envs, 1, generator=generator), np.array([True, False, True, False])
    theirs.compute_returns_and_advantage(last_values, dones)
    ours.compute_on_device(last_values, torch.as_tensor(dones), options["float32_dones"])
    np.random.seed(7)
    want = list(theirs.get(6))
    np.random.seed(7)
    got = list(ours.get(6))
    assert len(got) == len(want) == 4
    for mine, reference in zip(got, want):
        for name in reference._fields:
            a, b = getattr(mine, name), getattr(reference, name)
            pairs = [(a[key], b[key]) for key in b] if isinstance(b, dict) else [(a, b)]
            for x, y in pairs:
                assert x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y), name
    assert np.array_equal(ours.values, theirs.values) and np.array_equal(ours.returns, theirs.returns)
