"""No host sync on the tensor route, proven on fake CUDA tensors (no GPU needed; see ``fake_cuda.py``).

For every route, with the policy's parameters and every input on (fake) cuda, a warm-up call may
upload constants to the device (cached action bounds, VecNormalize statistics) and nothing else;
every later call makes no host sync at all: no scalar read, no copy in either direction, no op
whose CUDA kernel syncs. The checker's teeth: SB3's own NumPy path and a planted ``.item()`` are
caught, with the stack of the offending line.
"""

from __future__ import annotations

from typing import Any, Callable

import fake_cuda
import numpy as np
import pytest
import torch
from fake_cuda import (
    DEVICE_TO_HOST,
    HOST_TO_DEVICE,
    SCALAR_READ,
    SYNCING_OP,
    Recording,
    fake_cuda_mode,
    on_fake_cuda,
    record,
    to_fake_cuda,
)
from helpers import (
    ACTIONS,
    OBS_KINDS,
    action_space,
    algorithm_class,
    build,
    observation_space,
    sample_observations,
    stack,
)
from test_vecnormalize import DICT_BOXES, box_obs, dict_env, dict_obs, pendulum, rewards

from sb3_tensorpatch.routes import _mask_width
from sb3_tensorpatch.validation import no_validation

GRID = [(algo, obs, act) for algo, acts in ACTIONS.items() for obs in OBS_KINDS for act in acts]

pytestmark = pytest.mark.usefixtures("enabled")


def _assert_no_syncs(call: Callable[[], Any], label: str) -> None:
    """One warm-up call (host->device uploads only), then one call with no host sync at all."""
    warm = record(call)
    assert warm.error is None and all(event.kind == HOST_TO_DEVICE for event in warm.events), (
        f"{label}, warm-up call: {warm.report()}"
    )
    steady = record(call)
    assert steady.error is None and not steady.events, f"{label}: {steady.report()}"
    # and the work was done on the device: the result (actions, states, normalized values) is there
    for value in torch.utils._pytree.tree_leaves(steady.result):
        assert not isinstance(value, torch.Tensor) or value.device.type == "cuda", f"{label}: a result on {value.device}"
    assert any(isinstance(value, torch.Tensor) for value in torch.utils._pytree.tree_leaves(steady.result)), label


def _observations(obs_kind: str) -> dict[str, Any]:
    space = observation_space(obs_kind)
    return {"single": sample_observations(space, 1, seed=3)[0], "batch": stack(sample_observations(space, 4, seed=4))}


def _predicts(model: Any) -> dict[str, Callable[..., Any]]:
    return {"model.predict": model.predict, "policy.predict": model.policy.predict}


# -- the checker's teeth --------------------------------------------------------------------------


def _kinds(recording: Recording) -> list[str]:
    return [event.kind for event in recording.events]


def test_the_recorder_classifies_each_kind_of_sync() -> None:
    with fake_cuda_mode():
        x = torch.ones(6).to("cuda")
        mask = x > 0
        counts = torch.ones(6, dtype=torch.int64).to("cuda")
        host = torch.ones(6)
        cases: dict[str, tuple[Callable[[], Any], list[str]]] = {
            "upload": (lambda: host.to("cuda"), [HOST_TO_DEVICE]),
            "python value to cuda": (lambda: torch.tensor(-1e8, device="cuda"), [HOST_TO_DEVICE]),
            "download": (lambda: x.cpu(), [DEVICE_TO_HOST]),
            "copy_ into host": (lambda: torch.empty(6).copy_(x), [DEVICE_TO_HOST]),
            "copy_ into device": (lambda: torch.empty(6, device="cuda").copy_(host), [HOST_TO_DEVICE]),
            "item": (lambda: x.sum().item(), [SCALAR_READ]),
            "bool": (lambda: bool(x.sum() > 0), [SCALAR_READ]),
            "equal": (lambda: torch.equal(x, x), [SCALAR_READ]),
            "nonzero": (lambda: x.nonzero(), [SYNCING_OP]),
            "bool mask indexing": (lambda: x[mask], [SYNCING_OP]),
            "masked_select": (lambda: torch.masked_select(x, mask), [SYNCING_OP]),
            "unique": (lambda: torch.unique(x), [SYNCING_OP]),
            "repeat_interleave": (lambda: torch.repeat_interleave(x, counts), [SYNCING_OP]),
        }
        for name, (call, expected) in cases.items():
            recording = record(call)
            assert _kinds(recording)[: len(expected)] == expected, f"{name}: {recording.report()}"
        # and what does not sync is not recorded
        quiet: dict[str, Callable[[], Any]] = {
            "arithmetic": lambda: (x * 2 + 1).clamp(0, 3),
            "cpu scalar operand": lambda: x + torch.tensor(2.0),
            "factory on device": lambda: torch.full((3,), -1e8, device="cuda"),
            "dtype change on device": lambda: mask.to(torch.float32),
            "repeat_interleave with output_size": lambda: torch.repeat_interleave(x, counts, output_size=36),
        }
        for name, call in quiet.items():
            recording = record(call)
            assert not recording.events and recording.error is None, f"{name}: {recording.report()}"
        # a host tensor has no device to wait for (the fake mode cannot size the result: it raises)
        assert not record(lambda: host.nonzero()).events


def test_no_compiler_skips_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch.utils import cpp_extension

    def no_compiler(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("Error building extension: c++: command not found\nmore output")

    monkeypatch.setattr(cpp_extension, "load_inline", no_compiler)
    assert fake_cuda._load_guard() == (
        "cannot compile the no-op CUDA device guard (RuntimeError: Error building extension: c++: command not found)"
    )
    monkeypatch.setattr(fake_cuda, "_unavailable", lambda: "a reason")
    with pytest.raises(pytest.skip.Exception, match="fake CUDA unavailable: a reason"), fake_cuda_mode():
        pass  # pragma: no cover - skipped before


def test_numpy_path_is_flagged() -> None:
    # SB3's own path uploads the observation and downloads the actions on every call (and its
    # distribution validates its arguments with scalar reads: switched off here to reach the download)
    model = build("PPO", "Box", "Box")
    obs = _observations("Box")["batch"]
    with fake_cuda_mode(), on_fake_cuda(model.policy), no_validation():
        recording = record(lambda: model.predict(obs, deterministic=True))
    assert HOST_TO_DEVICE in _kinds(recording), recording.report()
    downloads = [event for event in recording.events if event.kind == DEVICE_TO_HOST]
    assert downloads, recording.report()
    # the stack names SB3's line that moves the actions to the host
    frame = downloads[0].frames[-1]
    assert frame.filename.endswith("policies.py") and frame.name == "predict", str(downloads[0])
    assert ".cpu()" in (frame.line or ""), str(downloads[0])


def test_planted_item_is_flagged_with_its_stack() -> None:
    model = build("PPO", "Box", "Discrete")
    obs = _observations("Box")["batch"]

    def planted_hook(module: Any, inputs: Any, output: torch.Tensor) -> None:
        output.sum().item()

    handle = model.policy.action_net.register_forward_hook(planted_hook)
    try:
        with fake_cuda_mode(), on_fake_cuda(model.policy):
            tensor = to_fake_cuda(obs)
            recording = record(lambda: model.predict(tensor, deterministic=True))
    finally:
        handle.remove()
    reads = [event for event in recording.events if event.kind == SCALAR_READ]
    assert len(reads) == 1, recording.report()
    frame = reads[0].frames[-1]
    assert frame.name == "planted_hook" and frame.filename == __file__ and frame.line == "output.sum().item()"
    assert f'{__file__}", line {frame.lineno}, in planted_hook' in str(reads[0])


def test_the_model_is_restored_exactly() -> None:
    model = build("SAC", "Box", "Box")
    policy = model.policy
    obs = _observations("Box")["batch"]
    before = {name: (tensor, type(tensor), tensor.detach().clone()) for name, tensor in policy.state_dict(keep_vars=True).items()}
    expected, _ = model.predict(obs, deterministic=True)
    with fake_cuda_mode(), on_fake_cuda(policy):
        assert policy.device.type == "cuda"
        assert all(tensor.device.type == "cuda" for tensor in policy.state_dict(keep_vars=True).values())
        tensor = to_fake_cuda(obs)
        record(lambda: model.predict(tensor, deterministic=True))
    after = policy.state_dict(keep_vars=True)
    assert after.keys() == before.keys()
    for name, (tensor, cls, values) in before.items():
        assert after[name] is tensor, name  # the same objects
        assert type(tensor) is cls and tensor.device.type == "cpu", name
        assert torch.equal(tensor.detach(), values), name
    assert policy.device.type == "cpu"
    actual, _ = model.predict(obs, deterministic=True)
    np.testing.assert_array_equal(actual, expected)


# -- every route ----------------------------------------------------------------------------------


@pytest.mark.parametrize("deterministic", [True, False], ids=["det", "stoch"])
@pytest.mark.parametrize("algo,obs_kind,act_kind", GRID, ids=["-".join(case) for case in GRID])
def test_sb3_grid(algo: str, obs_kind: str, act_kind: str, deterministic: bool) -> None:
    model = build(algo, obs_kind, act_kind)
    with fake_cuda_mode(), on_fake_cuda(model.policy):
        for shape, obs in _observations(obs_kind).items():
            tensor = to_fake_cuda(obs)
            for entry, predict in _predicts(model).items():
                _assert_no_syncs(lambda p=predict, t=tensor: p(t, deterministic=deterministic), f"{entry}, {shape}")


CONTRIB = [
    ("QRDQN", "MlpPolicy", "Box", "Discrete"),
    ("QRDQN", "CnnPolicy", "ImageLast", "Discrete"),
    ("TQC", "MlpPolicy", "Box", "Box"),
    ("TQC", "MultiInputPolicy", "Dict", "Box"),
    ("TRPO", "MlpPolicy", "Box", "Box"),
    ("TRPO", "MlpPolicy", "Discrete", "MultiDiscrete"),
    ("ARS", "MlpPolicy", "Box", "Box"),
    ("ARS", "LinearPolicy", "Box", "Discrete"),
    ("CrossQ", "MlpPolicy", "Box", "Box"),
]


def _needs(algo: str) -> None:
    pytest.importorskip("sb3_contrib")
    if algorithm_class(algo) is None:
        pytest.skip(f"{algo} is not in the installed sb3-contrib")


@pytest.mark.parametrize("deterministic", [True, False], ids=["det", "stoch"])
@pytest.mark.parametrize("algo,policy,obs_kind,act_kind", CONTRIB, ids=["-".join(case) for case in CONTRIB])
def test_contrib(algo: str, policy: str, obs_kind: str, act_kind: str, deterministic: bool) -> None:
    _needs(algo)
    model = build(algo, obs_kind, act_kind, policy)
    with fake_cuda_mode(), on_fake_cuda(model.policy):
        for shape, obs in _observations(obs_kind).items():
            tensor = to_fake_cuda(obs)
            for entry, predict in _predicts(model).items():
                _assert_no_syncs(lambda p=predict, t=tensor: p(t, deterministic=deterministic), f"{entry}, {shape}")


@pytest.mark.parametrize("algo", ["DQN", "QRDQN"])
def test_epsilon_greedy_exploration(algo: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # the random branch draws its actions on the device
    if algo == "QRDQN":
        _needs(algo)
    model = build(algo, "Box", "Discrete", "MlpPolicy")
    monkeypatch.setattr(model, "exploration_rate", 1.0)
    with fake_cuda_mode(), on_fake_cuda(model.policy):
        for shape, obs in _observations("Box").items():
            tensor = to_fake_cuda(obs)
            _assert_no_syncs(lambda t=tensor: model.predict(t, deterministic=False), f"model.predict, {shape}")


MASKABLE = [
    ("MlpPolicy", "Box", "Discrete"),
    ("MlpPolicy", "Box", "MultiDiscrete"),
    ("MlpPolicy", "Box", "MultiBinary"),
    ("MultiInputPolicy", "Dict", "MultiDiscrete"),
]


@pytest.mark.parametrize("deterministic", [True, False], ids=["det", "stoch"])
@pytest.mark.parametrize("policy,obs_kind,act_kind", MASKABLE, ids=["-".join(case) for case in MASKABLE])
def test_maskable_with_tensor_masks(policy: str, obs_kind: str, act_kind: str, deterministic: bool) -> None:
    _needs("MaskablePPO")
    model = build("MaskablePPO", obs_kind, act_kind, policy)
    width = _mask_width(action_space(act_kind))
    with fake_cuda_mode(), on_fake_cuda(model.policy):
        for shape, obs in _observations(obs_kind).items():
            tensor = to_fake_cuda(obs)
            masks = to_fake_cuda(np.ones((width,) if shape == "single" else (4, width), dtype=bool))
            for entry, predict in _predicts(model).items():
                _assert_no_syncs(
                    lambda p=predict, t=tensor, m=masks: p(t, deterministic=deterministic, action_masks=m), f"{entry}, {shape}"
                )


@pytest.mark.parametrize("deterministic", [True, False], ids=["det", "stoch"])
@pytest.mark.parametrize("act_kind", ["Box", "Discrete"])
def test_recurrent_with_tensor_state(act_kind: str, deterministic: bool) -> None:
    _needs("RecurrentPPO")
    model = build("RecurrentPPO", "Box", act_kind, "MlpLstmPolicy")
    layers, _, hidden = model.policy.lstm_hidden_state_shape
    with fake_cuda_mode(), on_fake_cuda(model.policy):
        for shape, obs in _observations("Box").items():
            tensor = to_fake_cuda(obs)
            n_envs = 1 if shape == "single" else 4
            state = to_fake_cuda((np.zeros((layers, n_envs, hidden), np.float32),) * 2)
            starts = to_fake_cuda(np.zeros(n_envs, dtype=bool))
            for entry, predict in _predicts(model).items():
                _assert_no_syncs(
                    lambda p=predict, t=tensor, s=state, e=starts: p(t, state=s, episode_start=e, deterministic=deterministic),
                    f"{entry}, {shape}, with state",
                )
                _assert_no_syncs(lambda p=predict, t=tensor: p(t, deterministic=deterministic), f"{entry}, {shape}, no state")


def test_vecnormalize() -> None:
    box = pendulum()
    mixed = dict_env(DICT_BOXES, ["vel"])
    with fake_cuda_mode():
        inputs = {
            "box single": (box, to_fake_cuda(box_obs(box, None))),
            "box batch": (box, to_fake_cuda(box_obs(box, 4))),
            "dict": (mixed, to_fake_cuda(dict_obs(mixed, 4))),
        }
        for label, (venv, obs) in inputs.items():
            for method in (venv.normalize_obs, venv.unnormalize_obs):
                _assert_no_syncs(lambda m=method, o=obs: m(o), f"{method.__name__}, {label}")
        reward = to_fake_cuda(rewards())
        for method in (box.normalize_reward, box.unnormalize_reward):
            _assert_no_syncs(lambda m=method: m(reward), method.__name__)
