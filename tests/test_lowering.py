"""The lowered fast path (:mod:`sb3_tensorpatch.lowering`): bit-exact with SB3's NumPy path where it
is taken, and not taken wherever anything on the path is not SB3's standard code.

Every test compares ``predict(tensor)`` with ``predict(numpy)`` on the same model and input (the
patch on: NumPy input takes SB3's own code), and counts the calls into the lowered route, so a
test fails both when the actions differ and when the path taken is not the one it claims. The patch
stays on for the whole test, so a plan built by the first predict is the one later predicts use
(``disable()`` drops every plan).
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from helpers import (
    SpaceEnv,
    action_space,
    algorithm_class,
    assert_same_bits,
    build,
    observation_space,
    sample_observations,
    stack,
)
from stable_baselines3.common.distributions import CategoricalDistribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, MlpExtractor
from test_host_sync import CountHostReads
from torch import nn
from torch.nn.modules import module as torch_module

import sb3_tensorpatch
from sb3_tensorpatch import lowering, plans, routes
from sb3_tensorpatch.testing import to_tensor

pytestmark = pytest.mark.usefixtures("enabled")


@pytest.fixture(autouse=True)
def _lowering_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lowering on whatever the environment says (the parity grid runs with it off too)."""
    monkeypatch.setattr(lowering, "enabled", True)


@pytest.fixture
def lowered_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the predicts that took the lowered route (one entry per call)."""
    calls: list[int] = []
    original = routes._lowered_finished

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(routes, "_lowered_finished", counting)
    return calls


def _model(algo: str, act_kind: str, policy_kwargs: dict[str, Any] | None = None, policy: Any = "MlpPolicy") -> Any:
    """A fresh small model on a Box observation space (tests may change it)."""
    kwargs: dict[str, Any] = {"device": "cpu", "seed": 0}
    if algo in ("SAC", "TD3", "DQN"):
        kwargs.update(buffer_size=16, learning_starts=0)
    env = SpaceEnv(observation_space("Box"), action_space(act_kind))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return algorithm_class(algo)(policy, env, policy_kwargs=policy_kwargs or {}, **kwargs)


#: (algorithm, action space, policy_kwargs): SB3's defaults and the options that change the module tree
CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("PPO", "Box", {}),
    ("PPO", "Discrete", {}),
    ("PPO", "MultiDiscrete", {}),
    ("PPO", "MultiBinary", {}),
    ("A2C", "Box", {}),
    ("A2C", "Discrete", {}),
    ("SAC", "Box", {}),
    ("TD3", "Box", {}),
    ("DQN", "Discrete", {}),
    ("PPO", "Box", {"net_arch": [8, 4], "activation_fn": nn.ReLU, "log_std_init": -0.7, "ortho_init": False}),
    ("PPO", "Discrete", {"net_arch": {"pi": [8], "vf": [4]}, "activation_fn": nn.ELU, "share_features_extractor": False}),
    ("A2C", "Box", {"net_arch": {"pi": [], "vf": [4]}, "share_features_extractor": False, "log_std_init": 0.4}),
    ("A2C", "Discrete", {"net_arch": [8], "activation_fn": nn.LeakyReLU, "ortho_init": False}),
    ("A2C", "MultiDiscrete", {"net_arch": [8], "activation_fn": nn.ReLU}),
    ("A2C", "MultiBinary", {"net_arch": [8], "share_features_extractor": False}),
    ("SAC", "Box", {"net_arch": [8, 8], "activation_fn": nn.ELU, "log_std_init": -1.0}),
    ("SAC", "BoxPow2", {"net_arch": [8], "activation_fn": nn.SiLU}),
    ("TD3", "Box", {"net_arch": [8], "activation_fn": nn.GELU}),
    ("DQN", "Discrete", {"net_arch": [8, 8], "activation_fn": nn.Sigmoid}),
    ("DQN", "Discrete", {"net_arch": [], "activation_fn": nn.Tanh}),
]
IDS = [f"{algo}-{act}-{'-'.join(kwargs) or 'default'}-{index}" for index, (algo, act, kwargs) in enumerate(CASES)]


def _observations() -> list[Any]:
    """One observation without the batch dim, a batch of one, a batch of five."""
    space = observation_space("Box")
    return [sample_observations(space, 1, 7)[0], stack(sample_observations(space, 1, 8)), stack(sample_observations(space, 5, 9))]


def _assert_parity(model: Any, observations: list[Any], deterministic: bool, seed: int = 0) -> None:
    """``predict(tensor)`` returns what ``predict(numpy)`` does, bit for bit, from the same torch seed."""
    for target in (model, model.policy):
        for obs in observations:
            torch.manual_seed(seed)
            want, _ = target.predict(obs, deterministic=deterministic)
            with sb3_tensorpatch.patched():
                torch.manual_seed(seed)
                got, _ = target.predict(to_tensor(obs), deterministic=deterministic)
            assert isinstance(got, torch.Tensor)
            assert_same_bits(got, want)


@pytest.mark.parametrize("deterministic", [True, False], ids=["det", "stoch"])
@pytest.mark.parametrize("algo,act_kind,policy_kwargs", CASES, ids=IDS)
def test_lowered_parity(algo: str, act_kind: str, policy_kwargs: dict[str, Any], deterministic: bool, lowered_calls: list[int]) -> None:
    model = _model(algo, act_kind, copy.copy(policy_kwargs))
    if algo == "DQN":
        model.exploration_rate = 0.0  # the greedy action: the policy's own predict
    _assert_parity(model, _observations(), deterministic, seed=3)
    assert plans.plan_for(model.policy).lowering.startswith("lowered")
    assert len(lowered_calls) == 2 * 3  # model and policy, three observations each


@pytest.mark.parametrize("algo", ["PPO", "A2C"])
def test_categorical_mode_breaks_a_rounding_tie_as_sb3_does(algo: str, lowered_calls: list[int]) -> None:
    """SB3's deterministic Discrete action is the argmax of ``softmax(logits - logsumexp(logits))``, not of the
    logits: for logits ``[0, 1e-8]`` both normalised logits round to one float32 and SB3 picks action 0.
    An exported actor's ``argmax(logits)`` picks 1 (the docs' reason A2C's lowered path cannot skip those ops)."""
    model = _model(algo, "Discrete")
    with torch.no_grad():
        model.policy.action_net.weight.zero_()
        model.policy.action_net.bias.fill_(-10.0)
        model.policy.action_net.bias[:2] = torch.tensor([0.0, 1e-8])
    observations = _observations()
    _assert_parity(model, observations, deterministic=True)
    assert len(lowered_calls) == 2 * len(observations)
    for obs in observations:
        actions, _ = model.predict(obs, deterministic=True)
        assert np.all(actions == 0)
    logits = model.policy.action_net(torch.zeros(1, model.policy.action_net.in_features))
    assert logits.argmax(dim=1).item() == 1


@pytest.mark.parametrize("algo,act_kind", [("PPO", "Box"), ("PPO", "Discrete"), ("PPO", "MultiDiscrete"), ("A2C", "MultiBinary"), ("SAC", "Box")])
def test_stochastic_draws_follow_the_seed(algo: str, act_kind: str, lowered_calls: list[int]) -> None:
    # the stochastic parity above has teeth: other seeds give other actions on both paths
    model = _model(algo, act_kind)
    obs = stack(sample_observations(observation_space("Box"), 64, 1))
    with sb3_tensorpatch.patched():
        first = [model.predict(torch.as_tensor(obs), deterministic=False)[0] for _ in range(2)]
    assert not torch.equal(first[0], first[1])
    _assert_parity(model, [obs], deterministic=False, seed=11)
    assert lowered_calls


# -- what falls back --------------------------------------------------------------------------------


def _assert_falls_back(model: Any, lowered_calls: list[int], deterministic: bool = True) -> None:
    """Bit-exact with the NumPy path, and the lowered route never taken."""
    lowered_calls.clear()
    _assert_parity(model, _observations(), deterministic, seed=5)
    assert not lowered_calls


def _ppo_box() -> Any:
    return _model("PPO", "Box", {"net_arch": [8]})


def _doubling(module: Any, args: Any, output: torch.Tensor) -> torch.Tensor:
    return output * 2


def _warm(model: Any) -> None:
    """One tensor predict: the plan (and its lowered path) is built before the change under test."""
    with sb3_tensorpatch.patched():
        model.predict(torch.as_tensor(stack(sample_observations(observation_space("Box"), 2, 0))), deterministic=True)
    assert plans.plan_for(model.policy).lowered is not None


def test_forward_hook_falls_back(lowered_calls: list[int]) -> None:
    model = _ppo_box()
    _warm(model)
    before, _ = model.predict(_observations()[2], deterministic=True)
    handle = model.policy.action_net.register_forward_hook(_doubling)
    try:
        after, _ = model.predict(_observations()[2], deterministic=True)
        assert not np.array_equal(before, after)  # the hook changes SB3's actions
        _assert_falls_back(model, lowered_calls)
    finally:
        handle.remove()
    _assert_parity(model, _observations(), True)
    assert lowered_calls  # lowered again once the hook is gone


def test_forward_pre_hook_falls_back(lowered_calls: list[int]) -> None:
    model = _model("SAC", "Box", {"net_arch": [8]})
    _warm(model)
    handle = model.policy.actor.latent_pi[0].register_forward_pre_hook(lambda module, args: (args[0] * 3,))
    try:
        _assert_falls_back(model, lowered_calls)
    finally:
        handle.remove()


def test_global_forward_hook_falls_back(lowered_calls: list[int]) -> None:
    model = _model("DQN", "Discrete", {"net_arch": [8]})
    _warm(model)
    handle = torch_module.register_module_forward_hook(_doubling)
    try:
        _assert_falls_back(model, lowered_calls)
        # a plan built while a global hook is set is not lowered at all
        plans.clear()
        assert plans.plan_for(model.policy).lowered is None
        assert "global" in plans.plan_for(model.policy).lowering
    finally:
        handle.remove()


def test_hook_on_the_actor_module_falls_back(lowered_calls: list[int]) -> None:
    # SACPolicy._predict calls self.actor(...): hooks on the actor itself run on SB3's path
    model = _model("SAC", "Box", {"net_arch": [8]})
    _warm(model)
    handle = model.policy.actor.register_forward_hook(_doubling)
    try:
        _assert_falls_back(model, lowered_calls)
    finally:
        handle.remove()


def test_backward_hooks_keep_the_lowered_path(lowered_calls: list[int]) -> None:
    # with autograd off (as predict runs) Module.__call__ leaves values alone for backward hooks
    model = _ppo_box()
    _warm(model)
    lowered_calls.clear()
    handles = [
        model.policy.action_net.register_full_backward_hook(lambda module, grad_in, grad_out: (grad_in[0] * 0,)),
        model.policy.mlp_extractor.policy_net[0].register_full_backward_pre_hook(lambda module, grad_out: (grad_out[0] * 0,)),
    ]
    try:
        _assert_parity(model, _observations(), True)
        _assert_parity(model, _observations(), False)
        assert len(lowered_calls) == 2 * 2 * 3
    finally:
        for handle in handles:
            handle.remove()


class _HalfPredict(ActorCriticPolicy):
    def _predict(self, observation: Any, deterministic: bool = False) -> torch.Tensor:
        return super()._predict(observation, deterministic) * 0.5


class _ShiftedExtractor(MlpExtractor):
    def forward_actor(self, features: torch.Tensor) -> torch.Tensor:
        return super().forward_actor(features) + 1.0


class _ShiftedPolicy(ActorCriticPolicy):
    def _build_mlp_extractor(self) -> None:
        self.mlp_extractor = _ShiftedExtractor(self.features_dim, net_arch=self.net_arch, activation_fn=self.activation_fn, device=self.device)


class _MyTanh(nn.Tanh):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return torch.tanh(input) * 0.9


class _Scaled(BaseFeaturesExtractor):
    def __init__(self, observation_space: Any) -> None:
        super().__init__(observation_space, int(np.prod(observation_space.shape)))

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return observations.flatten(1) * 0.5


@pytest.mark.parametrize(
    "build,reason",
    [
        (lambda: _model("PPO", "Box", {"net_arch": [8]}, policy=_HalfPredict), "_predict"),
        (lambda: _model("PPO", "Box", {"net_arch": [8]}, policy=_ShiftedPolicy), "mlp_extractor"),
        (lambda: _model("A2C", "Discrete", {"net_arch": [8], "activation_fn": _MyTanh}), "_MyTanh"),
        (lambda: _model("TD3", "Box", {"net_arch": [8], "activation_fn": _MyTanh}), "_MyTanh"),
        (lambda: _model("PPO", "Box", {"net_arch": [8], "features_extractor_class": _Scaled}), "_Scaled"),
        (lambda: _model("DQN", "Discrete", {"net_arch": [8], "features_extractor_class": _Scaled}), "_Scaled"),
        (lambda: _model_sde(), "gSDE"),
    ],
    ids=["override-_predict", "override-forward_actor", "custom-activation", "custom-activation-td3", "custom-extractor", "custom-extractor-dqn", "sac-gsde"],
)
def test_non_standard_policies_fall_back(build: Any, reason: str, lowered_calls: list[int]) -> None:
    model = build()
    _assert_falls_back(model, lowered_calls)
    _assert_falls_back(model, lowered_calls, deterministic=False)
    plan = plans.plan_for(model.policy)
    assert plan.lowered is None
    assert reason in plan.lowering


def _model_sde() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return algorithm_class("SAC")(
            "MlpPolicy", SpaceEnv(observation_space("Box"), action_space("Box")), device="cpu", seed=0,
            buffer_size=16, use_sde=True, policy_kwargs={"net_arch": [8]},
        )


IMAGE_CASES = [("PPO", "Box"), ("A2C", "Discrete"), ("SAC", "Box"), ("TD3", "Box"), ("DQN", "Discrete")]


@pytest.mark.parametrize("deterministic", [True, False], ids=["det", "stoch"])
@pytest.mark.parametrize("obs_kind", ["ImageFirst", "ImageLast"])
@pytest.mark.parametrize("algo,act_kind", IMAGE_CASES, ids=["-".join(case) for case in IMAGE_CASES])
def test_images_lowered_parity(algo: str, act_kind: str, obs_kind: str, deterministic: bool, lowered_calls: list[int]) -> None:
    # CnnPolicy: NatureCNN after obs.float() / 255.0 (channel-last input is transposed before _predict)
    model = build(algo, obs_kind, act_kind)
    if algo == "DQN":
        model = copy.copy(model)  # the cached model is shared: the exploration rate is set on a copy
        model.exploration_rate = 0.0
    space = observation_space(obs_kind)
    observations = [sample_observations(space, 1, 2)[0], stack(sample_observations(space, 3, 4))]
    _assert_parity(model, observations, deterministic, seed=6)
    assert plans.plan_for(model.policy).lowering.startswith("lowered")
    assert len(lowered_calls) == 2 * 2


def test_images_without_normalization_are_lowered(lowered_calls: list[int]) -> None:
    env = SpaceEnv(observation_space("ImageFirst"), action_space("Box"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = algorithm_class("PPO")("CnnPolicy", env, device="cpu", seed=0, policy_kwargs={"normalize_images": False, "features_extractor_kwargs": {"features_dim": 8}})
    observations = [stack(sample_observations(observation_space("ImageFirst"), 2, 4))]
    _assert_parity(model, observations, True)
    assert lowered_calls


@pytest.mark.parametrize("obs_kind", ["Discrete", "MultiBinary", "Dict"])
def test_other_observation_spaces_are_not_lowered(obs_kind: str, lowered_calls: list[int]) -> None:
    env = SpaceEnv(observation_space(obs_kind), action_space("Box"))
    name = "MultiInputPolicy" if obs_kind == "Dict" else "MlpPolicy"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = algorithm_class("PPO")(name, env, device="cpu", seed=0, policy_kwargs={"net_arch": [8]})
    assert plans.plan_for(model.policy).lowered is None
    obs = stack(sample_observations(observation_space(obs_kind), 2, 1))
    want, _ = model.predict(obs, deterministic=True)
    with sb3_tensorpatch.patched():
        got, _ = model.predict(to_tensor(obs), deterministic=True)
    assert_same_bits(got, want)
    assert not lowered_calls


def test_dropout_in_the_network_falls_back(lowered_calls: list[int]) -> None:
    # a module whose output depends on the training flag is never lowered; the policy is left in
    # training mode and SB3's eval switch must still happen on the fallback
    model = _ppo_box()
    extractor = model.policy.mlp_extractor
    extractor.policy_net = nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.5), nn.Tanh())
    model.policy.action_net = nn.Linear(8, 2)
    model.policy.set_training_mode(True)
    _assert_falls_back(model, lowered_calls)
    assert "Dropout" in plans.plan_for(model.policy).lowering
    assert not model.policy.training


def test_training_mode_is_left_as_sb3_leaves_it(lowered_calls: list[int]) -> None:
    model = _ppo_box()
    model.policy.set_training_mode(True)
    _assert_parity(model, _observations(), True)
    assert lowered_calls
    assert not any(module.training for module in model.policy.modules())


@pytest.mark.parametrize(
    "replace,changes",
    [
        (lambda policy: setattr(policy, "action_net", nn.Linear(8, 2)), True),
        (lambda policy: policy.mlp_extractor.policy_net.__setitem__(0, nn.Linear(3, 8)), True),
        (lambda policy: policy.mlp_extractor.policy_net.append(nn.Tanh()), True),
        (lambda policy: policy.mlp_extractor.policy_net.__setitem__(1, nn.ReLU()), True),
        (lambda policy: setattr(policy, "pi_features_extractor", _Scaled(policy.observation_space)), True),
        # the same computation by a new module: still not the module the plan was built from
        (lambda policy: setattr(policy.pi_features_extractor, "flatten", nn.Flatten()), False),
        (lambda policy: setattr(policy.action_net, "forward", lambda x: torch.zeros(x.shape[0], 2)), True),
        (lambda policy: setattr(policy, "_predict", lambda obs, deterministic=False: torch.zeros(obs.shape[0], 2)), True),
    ],
    ids=["action_net", "layer", "appended-layer", "activation", "features-extractor", "flatten", "instance-forward", "instance-_predict"],
)
def test_replaced_after_the_first_predict_falls_back(replace: Any, changes: bool, lowered_calls: list[int]) -> None:
    model = _ppo_box()
    _warm(model)
    before, _ = model.predict(_observations()[2], deterministic=True)
    torch.manual_seed(1)
    replace(model.policy)
    after, _ = model.predict(_observations()[2], deterministic=True)
    assert changes != np.array_equal(before, after)  # what the change does to SB3's actions
    _assert_falls_back(model, lowered_calls)


def test_sac_replaced_sub_module_falls_back(lowered_calls: list[int]) -> None:
    model = _model("SAC", "Box", {"net_arch": [8]})
    _warm(model)
    model.policy.actor.log_std = nn.Linear(8, 2)
    _assert_falls_back(model, lowered_calls, deterministic=False)


class _LeastLikely(CategoricalDistribution):
    def mode(self) -> torch.Tensor:
        return torch.argmin(self.distribution.probs, dim=1)


def test_replaced_distribution_falls_back(lowered_calls: list[int]) -> None:
    # action_dist is a plain attribute, not a module: _get_action_dist_from_latent dispatches on it
    model = _model("PPO", "Discrete", {"net_arch": [8]})
    _warm(model)
    before, _ = model.predict(_observations()[2], deterministic=True)
    model.policy.action_dist = _LeastLikely(int(model.action_space.n))
    after, _ = model.predict(_observations()[2], deterministic=True)
    assert not np.array_equal(before, after)
    _assert_falls_back(model, lowered_calls)


# -- live parameters --------------------------------------------------------------------------------


@pytest.mark.parametrize("algo,act_kind", [("PPO", "Box"), ("A2C", "Discrete"), ("SAC", "Box"), ("TD3", "Box"), ("DQN", "Discrete")])
def test_optimizer_step_and_load_state_dict_are_seen(algo: str, act_kind: str, lowered_calls: list[int]) -> None:
    model = _model(algo, act_kind, {"net_arch": [8]})
    observations = _observations()
    _assert_parity(model, observations, True)
    saved = copy.deepcopy(model.policy.state_dict())
    # an optimizer step that moves every parameter (log_std included)
    parameters = list(model.policy.parameters())
    optimizer = torch.optim.SGD(parameters, lr=0.5)
    loss = sum((parameter * torch.randn_like(parameter)).sum() for parameter in parameters)
    optimizer.zero_grad()
    loss.backward()  # type: ignore[union-attr]
    optimizer.step()
    with sb3_tensorpatch.patched():
        stepped, _ = model.predict(torch.as_tensor(observations[2]), deterministic=True)
    _assert_parity(model, observations, True)
    _assert_parity(model, observations, False)
    model.policy.load_state_dict(saved)
    with sb3_tensorpatch.patched():
        restored, _ = model.predict(torch.as_tensor(observations[2]), deterministic=True)
    assert not torch.equal(stepped, restored) or algo == "DQN"  # DQN's argmax may not move
    _assert_parity(model, observations, True)
    # assign=True puts new Parameter objects in place of the old ones
    model.policy.load_state_dict({key: value * 0.5 for key, value in saved.items()}, assign=True)
    _assert_parity(model, observations, True)
    _assert_parity(model, observations, False)
    assert len(lowered_calls) == 6 * (2 * 3) + 2  # six parity checks of six predicts, two more


# -- host syncs, the switch -------------------------------------------------------------------------


@pytest.mark.parametrize("deterministic", [True, False], ids=["det", "stoch"])
@pytest.mark.parametrize(
    "algo,act_kind",
    [("PPO", "Box"), ("PPO", "Discrete"), ("PPO", "MultiDiscrete"), ("PPO", "MultiBinary"), ("A2C", "Box"), ("SAC", "Box"), ("TD3", "Box"), ("DQN", "Discrete")],
)
def test_no_host_reads_on_the_lowered_path(algo: str, act_kind: str, deterministic: bool, lowered_calls: list[int]) -> None:
    model = _model(algo, act_kind, {"net_arch": [8]})
    if algo == "DQN":
        model.exploration_rate = 0.0
    with sb3_tensorpatch.patched():
        for obs in _observations():
            tensor = to_tensor(obs)
            model.predict(tensor, deterministic=deterministic)  # warm the caches
            with CountHostReads() as counter:
                model.predict(tensor, deterministic=deterministic)
                model.policy.predict(tensor, deterministic=deterministic)
            assert counter.count == 0, counter.ops
    assert len(lowered_calls) == 3 * 3


def test_the_switch_turns_lowering_off(monkeypatch: pytest.MonkeyPatch, lowered_calls: list[int]) -> None:
    model = _ppo_box()
    _warm(model)
    monkeypatch.setattr(lowering, "enabled", False)
    _assert_parity(model, _observations(), True)
    assert lowered_calls  # plans built before the switch keep their lowered path ...
    plans.clear()  # ... until they are dropped
    lowered_calls.clear()
    _assert_parity(model, _observations(), True)
    assert not lowered_calls
    assert plans.plan_for(model.policy).lowering == "lowering is turned off"


def test_sac_log_std_is_clamped_as_sb3_clamps_it(lowered_calls: list[int]) -> None:
    # log-std outputs far outside [LOG_STD_MIN, LOG_STD_MAX]: SB3's clamp decides the draws
    model = _model("SAC", "Box", {"net_arch": [8]})
    with torch.no_grad():
        model.policy.actor.log_std.bias.copy_(torch.tensor([30.0, -60.0]))
    _assert_parity(model, _observations(), False, seed=2)
    assert lowered_calls


def test_doctor_says_which_path_each_model_takes(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from sb3_tensorpatch import doctor

    models = [
        ("PPO Box", lambda: _model("PPO", "Box", {"net_arch": [8]})),
        ("PPO custom extractor", lambda: _model("PPO", "Box", {"net_arch": [8], "features_extractor_class": _Scaled})),
    ]
    monkeypatch.setattr(doctor, "_models", lambda: models)
    out = io.StringIO()
    assert doctor.run(out) == 0
    paths = [line.split("path: ", 1)[1] for line in out.getvalue().splitlines() if "path: " in line]
    assert len(paths) == 2
    assert paths[0] == "lowered (diagonal Gaussian)"
    assert paths[1].startswith("not lowered, ActorCriticPolicy.pi_features_extractor is a _Scaled")


class _ScaledValueFeatures(ActorCriticPolicy):
    def extract_features(self, obs: Any, features_extractor: Any = None) -> Any:
        return super().extract_features(obs, features_extractor) * 3.0


def test_an_override_off_the_predict_path_keeps_the_lowered_path(lowered_calls: list[int]) -> None:
    # get_distribution calls super().extract_features (BaseModel's): the subclass's override is not
    # on _predict's path, so the lowered path is still SB3's
    model = _model("PPO", "Box", {"net_arch": [8]}, policy=_ScaledValueFeatures)
    _assert_parity(model, _observations(), True)
    _assert_parity(model, _observations(), False)
    assert len(lowered_calls) == 2 * 2 * 3


# -- in-place activations ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(lowering._IN_PLACE, key=lambda kind: kind.__name__), ids=lambda kind: kind.__name__)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_in_place_activation_writes_the_modules_values(kind: type, dtype: torch.dtype) -> None:
    # rows of special values and random ones, long enough for the vectorised loop and its tail
    special = torch.tensor([0.0, -0.0, 1e-45, -1e-45, 1e-30, 20.0, -20.0, 1e30, -1e30, float("inf"), float("-inf"), float("nan")], dtype=dtype)
    for values in (special, torch.randn(3, 67, dtype=dtype) * 5, special.reshape(3, 4)):
        want = kind()(values.clone())
        got = lowering._IN_PLACE[kind](values.clone())
        assert_same_bits(got, want)


def test_activation_first_in_a_sequential_leaves_the_observation_alone(lowered_calls: list[int]) -> None:
    # the input of a leading activation is the caller's observation (FlattenExtractor's output is a
    # view of it): it must run out of place
    model = _model("PPO", "Box", {"net_arch": [8]})
    linear = model.policy.mlp_extractor.policy_net[0]
    model.policy.mlp_extractor.policy_net = nn.Sequential(nn.Tanh(), linear, nn.Tanh())
    obs = torch.as_tensor(stack(sample_observations(observation_space("Box"), 3, 4)))
    kept = obs.clone()
    _assert_parity(model, [obs.numpy()], deterministic=True)
    with sb3_tensorpatch.patched():
        model.predict(obs, deterministic=True)
    assert lowered_calls
    assert_same_bits(obs, kept)


@pytest.mark.parametrize(
    "dtypes",
    [(torch.float32, torch.float32), (torch.float64, torch.float64), (torch.float32, torch.float64), (torch.float64, torch.float32)],
    ids=["f32", "f64", "f64-log_std", "f32-log_std"],
)
@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (7, 130)], ids=str)
@pytest.mark.parametrize("per_row", [False, True], ids=["log_std-row", "log_std-per-sample"])
def test_gaussian_sample_is_sb3_sample(dtypes: tuple[torch.dtype, torch.dtype], shape: tuple[int, int], per_row: bool) -> None:
    # the restated draw against SB3's distribution object itself: the same seed, the same bits, also
    # where a float64 log_std promotes (out of place) and where SAC gives one log_std per sample
    from stable_baselines3.common.distributions import DiagGaussianDistribution

    generator = torch.Generator().manual_seed(sum(shape))
    mean = torch.randn(shape, generator=generator, dtype=dtypes[0])
    log_std = torch.randn(shape if per_row else shape[1:], generator=generator, dtype=dtypes[1])
    distribution = DiagGaussianDistribution(shape[1]).proba_distribution(mean, log_std)
    torch.manual_seed(5)
    want = distribution.sample()
    torch.manual_seed(5)
    got = lowering._gaussian_sample(mean, lowering._gaussian_std(mean, log_std))
    assert_same_bits(got, want)
    assert not torch.equal(got, lowering._gaussian_sample(mean, lowering._gaussian_std(mean, log_std)))  # the seed matters
    # and SB3's log_prob of the draw, from the same std
    assert_same_bits(lowering._normal_log_prob(got, mean, lowering._gaussian_std(mean, log_std)).sum(dim=1), distribution.log_prob(got))

# -- the lowered forward (the on-device collect_rollouts) ----------------------------------------------


def _forward_model(algo: str, act_kind: str, obs_kind: str = "Box", **policy_kwargs: Any) -> Any:
    """A fresh small PPO or A2C (tests change it); image observations get ``CnnPolicy``'s NatureCNN."""
    if obs_kind.startswith("Image"):
        policy_kwargs.setdefault("features_extractor_kwargs", {"features_dim": 8})
    env = SpaceEnv(observation_space(obs_kind), action_space(act_kind))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        policy = policy_kwargs.pop("policy", "CnnPolicy" if obs_kind.startswith("Image") else "MlpPolicy")
        return algorithm_class(algo)(policy, env, device="cpu", seed=0, policy_kwargs={"net_arch": [8], **policy_kwargs})


def _forward_batch(policy: Any, count: int = 16, seed: int = 4) -> torch.Tensor:
    """A batch of observations of the policy's own (channel-first) observation space."""
    return torch.as_tensor(stack(sample_observations(copy.deepcopy(policy.observation_space), count, seed)))


def _assert_forward_parity(policy: Any, lowered: Any, obs: torch.Tensor, seed: int = 7) -> None:
    """``lowered.run(obs, deterministic)`` equals ``policy(obs, deterministic)`` bit for bit from the same
    seed, and leaves torch's generator where SB3's forward leaves it; the stochastic actions are draws."""
    outputs = {}
    for deterministic in (False, True):
        with torch.no_grad():
            torch.manual_seed(seed)
            want = policy(obs, deterministic)
            state = torch.get_rng_state()
            torch.manual_seed(seed)
            got = lowered.run(obs, deterministic)
        assert torch.equal(torch.get_rng_state(), state)
        assert len(got) == 3
        for mine, theirs in zip(got, want):
            assert mine.device == theirs.device
            assert_same_bits(mine, theirs.numpy())
        outputs[deterministic] = got[0]
    assert not torch.equal(outputs[False], outputs[True])


FORWARD_CASES = [(algo, act, shared) for algo in ("PPO", "A2C") for act in ("Box", "Discrete", "MultiDiscrete", "MultiBinary") for shared in (True, False)]


@pytest.mark.parametrize(
    "algo,act_kind,shared", FORWARD_CASES, ids=[f"{algo}-{act}-{'shared' if shared else 'separate'}" for algo, act, shared in FORWARD_CASES]
)
def test_lowered_forward_parity(algo: str, act_kind: str, shared: bool) -> None:
    model = _forward_model(algo, act_kind, share_features_extractor=shared, activation_fn=nn.ReLU if shared else nn.Tanh)
    lowered, what = plans.forward_for(model.policy)
    assert lowered is not None, what
    _assert_forward_parity(model.policy, lowered, _forward_batch(model.policy))
    assert lowered.live()


@pytest.mark.parametrize("algo,obs_kind,act_kind,shared", [("PPO", "ImageFirst", "Box", True), ("A2C", "ImageLast", "Discrete", False)])
def test_lowered_forward_parity_on_images(algo: str, obs_kind: str, act_kind: str, shared: bool) -> None:
    # NatureCNN after obs.float() / 255.0 (SB3 transposes a channel-last env: the policy sees channel-first)
    model = _forward_model(algo, act_kind, obs_kind, share_features_extractor=shared)
    lowered, what = plans.forward_for(model.policy)
    assert lowered is not None, what
    _assert_forward_parity(model.policy, lowered, _forward_batch(model.policy, count=4))


def test_lowered_forward_box_actions_of_two_dims_are_reshaped() -> None:
    # forward reshapes the Gaussian's (batch, 4) draws to (batch, 2, 2)
    env = SpaceEnv(observation_space("Box"), action_space("Box"))
    env.action_space = type(env.action_space)(low=-1.0, high=1.0, shape=(2, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = algorithm_class("PPO")("MlpPolicy", env, device="cpu", seed=0, policy_kwargs={"net_arch": [8]})
    lowered, what = plans.forward_for(model.policy)
    assert lowered is not None, what
    _assert_forward_parity(model.policy, lowered, _forward_batch(model.policy))
    assert lowered.run(_forward_batch(model.policy), True)[0].shape == (16, 2, 2)


class _OwnForward(ActorCriticPolicy):
    def forward(self, obs: torch.Tensor, deterministic: bool = False) -> Any:
        actions, values, log_prob = super().forward(obs, deterministic)
        return actions, values * 2.0, log_prob


class _OwnCritic(MlpExtractor):
    def forward_critic(self, features: torch.Tensor) -> torch.Tensor:
        return super().forward_critic(features) + 1.0


class _OwnCriticPolicy(ActorCriticPolicy):
    def _build_mlp_extractor(self) -> None:
        self.mlp_extractor = _OwnCritic(self.features_dim, net_arch=self.net_arch, activation_fn=self.activation_fn, device=self.device)


def _sde() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return algorithm_class("PPO")("MlpPolicy", SpaceEnv(observation_space("Box"), action_space("Box")), device="cpu", seed=0, use_sde=True)


def _hooked(model: Any, module: Any) -> Any:
    module.register_forward_hook(_doubling)
    return model


@pytest.mark.parametrize(
    "make,reason",
    [
        (lambda: _forward_model("PPO", "Box", policy=_OwnForward), "_OwnForward.forward is overridden"),
        (lambda: _forward_model("A2C", "Discrete", policy=_OwnCriticPolicy), "mlp_extractor is a _OwnCritic"),
        (lambda: _forward_model("PPO", "Discrete", activation_fn=_MyTanh), "_MyTanh"),
        (lambda: _forward_model("PPO", "Box", features_extractor_class=_Scaled, share_features_extractor=False), "_Scaled"),
        (_sde, "StateDependentNoiseDistribution is not lowered"),
        (lambda: (model := _forward_model("PPO", "Box")) and _hooked(model, model.policy), "has a hook"),
        (lambda: (model := _forward_model("A2C", "Box")) and _hooked(model, model.policy.mlp_extractor), "mlp_extractor has a hook"),
        (lambda: _forward_model("PPO", "Box", "Dict", policy="MultiInputPolicy"), "Dict observations"),
    ],
    ids=["override-forward", "override-forward_critic", "custom-activation", "custom-extractor", "gsde", "hook-on-policy", "hook-on-mlp_extractor", "dict"],
)
def test_lowered_forward_refuses_non_standard_policies(make: Any, reason: str) -> None:
    model = make()
    lowered, why = plans.forward_for(model.policy)
    assert lowered is None
    assert reason in why


def test_hook_on_a_separate_mlp_extractor_is_off_forwards_path() -> None:
    # without a shared extractor forward calls forward_actor / forward_critic, not the module: its hooks never run
    model = _forward_model("PPO", "Box", share_features_extractor=False)
    model.policy.mlp_extractor.register_forward_hook(_doubling)
    lowered, what = plans.forward_for(model.policy)
    assert lowered is not None, what
    _assert_forward_parity(model.policy, lowered, _forward_batch(model.policy))


@pytest.mark.parametrize(
    "change",
    [
        lambda policy: policy.register_forward_hook(_doubling),
        lambda policy: policy.register_forward_pre_hook(lambda module, args: (args[0] * 2,)),
        lambda policy: policy.mlp_extractor.register_forward_hook(_doubling),
        lambda policy: policy.mlp_extractor.value_net[0].register_forward_hook(_doubling),
        lambda policy: torch_module.register_module_forward_hook(_doubling),
        lambda policy: setattr(policy, "value_net", nn.Linear(8, 1)),
        lambda policy: setattr(policy, "forward", lambda obs, deterministic=False: None),
        lambda policy: setattr(policy, "share_features_extractor", False),
    ],
    ids=["policy-hook", "policy-pre-hook", "mlp_extractor-hook", "critic-layer-hook", "global-hook", "value_net", "instance-forward", "share-flag"],
)
def test_lowered_forward_is_not_live_after_a_change(change: Any) -> None:
    model = _forward_model("PPO", "Discrete")
    lowered, what = plans.forward_for(model.policy)
    assert lowered is not None and lowered.live(), what
    handle = change(model.policy)
    try:
        assert not lowered.live()
    finally:
        if handle is not None:
            handle.remove()
    assert lowered.live() == (handle is not None)  # a removed hook: SB3's forward is the lowered one again


def test_probe_refuses_a_forward_that_differs(monkeypatch: pytest.MonkeyPatch) -> None:
    # the guard against a torch whose distributions compute otherwise: a log_prob one ulp off is refused
    model = _forward_model("PPO", "Box")
    original = lowering._normal_log_prob
    monkeypatch.setattr(lowering, "_normal_log_prob", lambda *args: torch.nextafter(original(*args), torch.tensor(0.0)))
    torch.manual_seed(5)
    state = torch.get_rng_state()
    lowered, why = lowering.lower_forward(model.policy)
    assert lowered is None
    assert "log_prob differ from SB3's on the probe" in why
    assert torch.equal(torch.get_rng_state(), state)  # the probe's draws come from a forked generator


def test_probe_leaves_the_generator_alone() -> None:
    model = _forward_model("A2C", "MultiDiscrete")
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    lowered, what = lowering.lower_forward(model.policy)
    assert lowered is not None, what
    assert torch.equal(torch.rand(3), expected)


def test_the_switch_turns_the_lowered_forward_off(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _forward_model("PPO", "Box")
    assert plans.forward_for(model.policy)[0] is not None
    monkeypatch.setattr(lowering, "enabled", False)
    assert plans.forward_for(model.policy)[0] is not None  # cached until the plans are dropped
    plans.clear()
    assert plans.forward_for(model.policy) == (None, "lowering is turned off")


def test_lowered_forwards_do_not_keep_policies_alive() -> None:
    import gc
    import weakref

    model = _forward_model("PPO", "MultiBinary")
    assert plans.forward_for(model.policy)[0] is not None
    ref, key = weakref.ref(model.policy), id(model.policy)
    del model
    gc.collect()
    assert ref() is None
    assert key not in plans._forwards._entries
