"""Hardening of the tensor route: bad input, NaN, odd but valid input.

Bad input must give a clear error (the exception type and a message naming what was expected),
raised before any work (the policy's ``_predict`` is never reached), with the patch state intact and
the next valid call working.

Odd but valid input must give the NumPy path's result.

(Concurrency, tensor predicts in many threads' scopes at once, is tested in ``test_scopes.py``.)

Every test starts with the patch enabled explicitly and ends with it disabled.
"""

from __future__ import annotations

import copy
import functools
import types
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pytest
import torch
from helpers import (
    assert_tensor_like,
    box_numpy,
    build,
    dict_numpy,
    numpy_dtype,
    observation_space,
    sample_observations,
    sb3_contrib,
    stack,
)

import sb3_tensorpatch
from sb3_tensorpatch import notices, plans, routes, validation
from sb3_tensorpatch.testing import assert_predict_parity, to_tensor

# SB3's own numpy path turns a CPU tensor into an array with np.array() (and np.transpose() on a
# tensor image), which numpy 2 warns about, wherever a tensor reaches SB3's original.
pytestmark = [
    pytest.mark.usefixtures("enabled"),
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning"),
]

needs_contrib = pytest.mark.skipif(sb3_contrib is None, reason="sb3-contrib is not installed")

BOX = ("PPO", "Box", "Box")
DICT = ("PPO", "Dict", "Discrete")
IMAGE = ("PPO", "ImageLast", "Discrete")
DISCRETE = ("PPO", "Discrete", "Discrete")
DQN = ("DQN", "Box", "Discrete")
MASK = ("MaskablePPO", "Box", "Discrete")
LSTM = ("RecurrentPPO", "Box", "Discrete", "MlpLstmPolicy")


# -- helpers ----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _own(*key: str) -> Any:
    """A private instance of a small model (tests here put spies on it): helpers' ``build`` caches by
    arguments, and no other test passes ``verbose=0`` (SB3's default). Not a deepcopy: models with
    ``VecTransposeImage`` cannot be deep-copied."""
    return build(*key, verbose=0)


def _dict_t(batch: int | None = None, **override: Any) -> dict[str, Any]:
    obs = to_tensor(dict_numpy(batch))
    obs.update(override)
    return obs  # type: ignore[no-any-return]


def _valid(key: tuple[str, ...]) -> tuple[Any, dict[str, Any]]:
    """A valid numpy observation (and extra predict arguments) for the model ``key``."""
    if key == DICT:
        return dict_numpy(), {}
    if key == IMAGE:
        return stack(sample_observations(observation_space("ImageLast"), 2, 7)), {}
    if key == MASK:
        masks = np.array([[True, False, True, True], [False, False, True, False]])
        return box_numpy(), {"action_masks": masks}
    if key == LSTM:
        return box_numpy(), {"episode_start": np.array([1.0, 0.0], dtype=np.float32)}
    return box_numpy(), {}


def _tensors(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {key: to_tensor(value) for key, value in kwargs.items()}


def _assert_same(actual: tuple[Any, Any], expected: tuple[Any, Any]) -> None:
    """``predict`` results: tensor actions (and LSTM states) equal to the NumPy path's."""
    assert_tensor_like(actual[0], expected[0])
    if expected[1] is None:
        assert actual[1] is None
    else:
        assert len(actual[1]) == len(expected[1])
        for got, want in zip(actual[1], expected[1]):
            assert_tensor_like(got, want)


class Spy:
    """Counts calls and records their arguments, then calls through."""

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((args, kwargs))
        return self.function(*args, **kwargs)


def _work_spies(model: Any, key: tuple[str, ...], monkeypatch: pytest.MonkeyPatch) -> list[Spy]:
    """Spies on everything that counts as work for ``model``'s tensor route."""
    spies = [Spy(model.policy._predict)]
    monkeypatch.setattr(model.policy, "_predict", spies[0])
    if key == LSTM:  # the recurrent route runs the LSTM itself rather than through _predict
        spies.append(Spy(routes._recurrent_actions))
        monkeypatch.setattr(routes, "_recurrent_actions", spies[-1])
    if key == MASK:  # with masks, the maskable route masks contrib's distribution itself
        spies.append(Spy(routes._masked_actions))
        monkeypatch.setattr(routes, "_masked_actions", spies[-1])
    if key == DQN:  # exploring draws random actions on the device
        spies.append(Spy(torch.randint))
        monkeypatch.setattr(torch, "randint", spies[-1])
    return spies


def _exploring(model: Any) -> Any:
    model.exploration_rate = 1.0
    return model


# -- bad input --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    kind: str
    key: tuple[str, ...]
    call: Callable[[Any], Any]
    error: type[Exception]
    match: str
    marks: tuple[Any, ...] = field(default=())


_SHAPE = r"Unexpected observation shape {} for Box environment, please use \(3,\) or \(n_env, 3\)"
_IMAGE = (
    r"Unexpected observation shape \(36, 3, 36\) for Box environment, please use \(3, 36, 36\) or \(n_env, 3, 36, 36\)"
)

BAD = [
    Bad(
        "shape-fits-neither-single-nor-batched",
        BOX,
        lambda m: m.predict(torch.zeros(4)),
        ValueError,
        _SHAPE.format(r"\(4,\)"),
    ),
    Bad(
        "too-many-dimensions", BOX, lambda m: m.predict(torch.zeros(2, 2, 3)), ValueError, _SHAPE.format(r"\(2, 2, 3\)")
    ),
    Bad("zero-dim-for-box", BOX, lambda m: m.predict(torch.tensor(1.0)), ValueError, _SHAPE.format(r"\(\)")),
    Bad(
        "batch-with-wrong-feature-shape",
        BOX,
        lambda m: m.predict(torch.zeros(5, 4)),
        ValueError,
        _SHAPE.format(r"\(5, 4\)"),
    ),
    Bad(
        "dict-missing-key",
        DICT,
        lambda m: m.predict({k: v for k, v in _dict_t().items() if k != "vec"}),
        ValueError,
        r"wrong keys \(missing: \['vec'\], unexpected: \[\]\).*expects exactly \['disc', 'img', 'vec'\]",
    ),
    Bad(
        "dict-extra-key",
        DICT,
        lambda m: m.predict(_dict_t(extra=torch.zeros(2))),
        ValueError,
        r"wrong keys \(missing: \[\], unexpected: \['extra'\]\)",
    ),
    Bad(
        "dict-batch-with-wrong-feature-shape",
        DICT,
        lambda m: m.predict(_dict_t(2, vec=torch.zeros(2, 5))),
        ValueError,
        r"Unexpected observation shape \(2, 5\) for Box environment, please use \(2,\) or \(n_env, 2\)",
    ),
    Bad(
        "dict-keys-with-different-batch-sizes",
        DICT,
        lambda m: m.predict(_dict_t(2, vec=torch.zeros(3, 2))),
        ValueError,
        r"different batch sizes \(2 and 3 for key 'vec'\)",
    ),
    Bad(
        "dict-tensors-on-different-devices",
        DICT,
        lambda m: m.predict(_dict_t(vec=torch.zeros(2, device="meta"))),
        ValueError,
        r"tensors are on different devices \((cpu and meta|meta and cpu) for key '\w+'\)",
    ),
    Bad(
        "dict-all-on-unreachable-device",
        DICT,
        lambda m: m.predict({k: v.to("meta") for k, v in _dict_t().items()}),
        ValueError,
        r"observation is on device meta, which the policy on cpu cannot use",
    ),
    Bad(
        "dict-image-in-neither-channel-order",
        DICT,
        lambda m: m.predict(_dict_t(img=torch.zeros(36, 3, 36, dtype=torch.uint8))),
        ValueError,
        _IMAGE,
    ),
    Bad(
        "dict-numpy-value-of-object-dtype",
        DICT,
        lambda m: m.predict(_dict_t(disc=np.array([None], dtype=object))),
        TypeError,
        r"value for key 'disc' is a ndarray, which cannot become a tensor",
    ),
    Bad(
        "dict-complex32-value",
        DICT,
        lambda m: m.predict(_dict_t(vec=torch.zeros(2, dtype=torch.complex32))),
        TypeError,
        r"dtype torch.complex32 for Box\(-1.0, 1.0, \(2,\), float32\): expected a numeric tensor",
    ),
    Bad(
        "tensor-for-dict-space",
        DICT,
        lambda m: m.predict(torch.zeros(3)),
        TypeError,
        r"observation is a Tensor but the observation space is Dict.*pass a dict of tensors with the keys \['disc', 'img', 'vec'\]",
    ),
    Bad(
        "dict-for-box-space",
        BOX,
        lambda m: m.predict({"obs": torch.zeros(3)}),
        TypeError,
        r"observation is a dict but the observation space is Box\(.*\): pass a tensor",
    ),
    Bad(
        "image-in-neither-channel-order",
        IMAGE,
        lambda m: m.predict(torch.zeros(36, 3, 36, dtype=torch.uint8)),
        ValueError,
        _IMAGE,
    ),
    Bad(
        "complex32-dtype",  # NumPy has no complex32: SB3's path cannot take it either
        BOX,
        lambda m: m.predict(torch.zeros(3, dtype=torch.complex32)),
        TypeError,
        r"dtype torch.complex32 for Box\(-2.0, 3.0, \(3,\), float32\): expected a numeric tensor",
    ),
    Bad(
        "unreachable-device",
        BOX,
        lambda m: m.predict(torch.zeros(3, device="meta")),
        ValueError,
        r"observation is on device meta, which the policy on cpu cannot use",
    ),
    Bad(
        "dqn-exploring-wrong-shape",
        DQN,
        lambda m: _exploring(m).predict(torch.zeros(2, 4), deterministic=False),
        ValueError,
        _SHAPE.format(r"\(2, 4\)"),
    ),
    Bad(
        "action-masks-of-wrong-shape",
        MASK,
        lambda m: m.predict(torch.zeros(2, 3), action_masks=torch.ones(2, 3, dtype=torch.bool)),
        ValueError,
        r"Unexpected action_masks shape \(2, 3\): expected 8 values \(2 observation\(s\) x 4 per observation for Discrete\(4\)\)",
        (needs_contrib,),
    ),
    Bad(
        "action-masks-of-wrong-shape-policy-predict",
        MASK,
        lambda m: m.policy.predict(torch.zeros(3), action_masks=np.ones(5, dtype=bool)),
        ValueError,
        r"Unexpected action_masks shape \(5,\): expected 4 values",
        (needs_contrib,),
    ),
    Bad(
        "lstm-states-of-wrong-shape",
        LSTM,
        lambda m: m.predict(torch.zeros(2, 3), state=(torch.zeros(1, 3, 8), torch.zeros(1, 3, 8))),
        ValueError,
        r"Unexpected LSTM state shape \(1, 3, 8\): expected \(1, 2, 8\) \(n_lstm_layers, n_envs, lstm_hidden_size\)",
        (needs_contrib,),
    ),
    Bad(
        "lstm-states-of-wrong-hidden-size",
        LSTM,
        lambda m: m.predict(torch.zeros(3), state=(torch.zeros(1, 1, 7), torch.zeros(1, 1, 7))),
        ValueError,
        r"Unexpected LSTM state shape \(1, 1, 7\): expected \(1, 1, 8\)",
        (needs_contrib,),
    ),
    Bad(
        "lstm-state-not-a-pair",
        LSTM,
        lambda m: m.predict(torch.zeros(2, 3), state=torch.zeros(1, 2, 8)),
        ValueError,
        r"Unexpected LSTM state Tensor: expected a tuple \(hidden, cell\) of tensors of shape \(1, 2, 8\)",
        (needs_contrib,),
    ),
    Bad(
        "episode-start-of-wrong-shape",
        LSTM,
        lambda m: m.predict(torch.zeros(2, 3), episode_start=torch.zeros(3)),
        ValueError,
        r"Unexpected episode_start shape \(3,\): expected 2 value\(s\), one per environment",
        (needs_contrib,),
    ),
]


@pytest.mark.parametrize("case", [pytest.param(case, id=case.kind, marks=case.marks) for case in BAD])
def test_bad_input_raises_a_clear_error_before_any_work(case: Bad, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _own(*case.key)
    spies = _work_spies(model, case.key, monkeypatch)
    patched_before = sb3_tensorpatch.status().patched
    assert patched_before

    with warnings.catch_warnings():
        # the meta device cases also warn about moving (see test_unreachable_device_error_without_move_warning)
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(case.error, match=case.match):
            case.call(model)

    assert [len(spy.calls) for spy in spies] == [0] * len(spies), "work was done before the error"
    assert sb3_tensorpatch.is_enabled()
    assert sb3_tensorpatch.status().patched == patched_before
    assert torch.is_grad_enabled()
    assert not getattr(validation._local, "off", False)

    # the next valid call works, on the tensor route
    obs, kwargs = _valid(case.key)
    actual = model.predict(to_tensor(obs), deterministic=True, **_tensors(kwargs))
    assert sum(len(spy.calls) for spy in spies) >= 1
    _assert_same(actual, model.predict(obs, deterministic=True, **kwargs))


def test_error_inside_the_network_leaves_grad_mode_and_validation_as_they_were() -> None:
    """An out-of-range Discrete observation fails inside ``_predict`` (``one_hot``), as on the NumPy
    path: the route cannot check values without reading them back to the host. It must still
    restore grad mode and distribution validation for this thread."""
    model = build(*DISCRETE)
    with pytest.raises(RuntimeError, match="Class values must be smaller than num_classes"):
        model.predict(np.asarray(7), deterministic=True)
    with pytest.raises(RuntimeError, match="Class values must be smaller than num_classes"):
        model.predict(torch.tensor(7), deterministic=True)
    assert torch.is_grad_enabled()
    assert not getattr(validation._local, "off", False)
    from stable_baselines3.common import distributions

    validation.install()  # SB3's names hold the quiet classes, which read this thread's switch
    assert distributions.Normal is not torch.distributions.Normal
    with pytest.raises(ValueError):  # validation is on again in this thread
        distributions.Normal(torch.tensor(float("nan")), 1.0)
    _assert_same(model.predict(torch.tensor(2), deterministic=True), model.predict(np.asarray(2), deterministic=True))


def test_unreachable_device_error_without_move_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(notices, "_warned", set())  # the route warns once per pair of devices
    model = _own(*BOX)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match="device meta"):
            model.predict(torch.zeros(3, device="meta"))
    assert [str(w.message) for w in caught if "sb3-tensorpatch" in str(w.message)] == []


def test_dqn_exploring_rejects_an_unreachable_device_like_the_greedy_branch(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _own(*DQN)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(ValueError, match="device meta"):
            model.predict(torch.zeros(2, 3, device="meta"), deterministic=True)  # greedy: raises
        monkeypatch.setattr(model, "exploration_rate", 1.0)
        with pytest.raises(ValueError, match="device meta"):
            model.predict(torch.zeros(2, 3, device="meta"), deterministic=False)  # exploring: must too


def test_dict_value_that_is_no_array_gives_a_type_error_naming_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _own(*DICT)
    spies = _work_spies(model, DICT, monkeypatch)
    with pytest.raises(TypeError):  # the NumPy path's exception type for the same dict
        model.predict({**dict_numpy(), "disc": None})
    with pytest.raises(TypeError, match="'disc'"):
        model.predict(_dict_t(disc=None))
    assert len(spies[0].calls) == 0


def test_nested_tensor_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _own(*BOX)
    spies = _work_spies(model, BOX, monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch: nested tensors are a prototype
        nested = torch.nested.nested_tensor([torch.zeros(3), torch.zeros(3)])
    with pytest.raises((TypeError, ValueError), match="nested"):
        model.predict(nested)
    assert len(spies[0].calls) == 0


# -- NaN --------------------------------------------------------------------------------------

_NAN = np.full((2, 3), np.nan, dtype=np.float32)


@pytest.mark.parametrize("deterministic", [True, False], ids=["deterministic", "stochastic"])
@pytest.mark.parametrize("key", [("PPO", "Box", "Box"), ("A2C", "Box", "Box"), ("SAC", "Box", "Box")], ids="-".join)
def test_nan_observation_gives_nan_actions_where_numpy_raises(key: tuple[str, ...], deterministic: bool) -> None:
    """NaN in the observation, Gaussian (or squashed Gaussian) policies.

    SB3's NumPy path raises ``ValueError`` from ``torch.distributions`` argument validation
    ("Expected parameter loc ... to satisfy the constraint Real()"). The tensor route turns that
    validation off (it reads values back to the host), so it raises nothing and returns NaN
    actions, deterministic or not: clipping and unscaling keep NaN.
    """
    model = build(*key)
    with pytest.raises(ValueError, match="Expected parameter loc"):
        model.predict(_NAN, deterministic=deterministic)
    actions, _ = model.predict(torch.from_numpy(_NAN), deterministic=deterministic)
    assert isinstance(actions, torch.Tensor)
    assert actions.shape == (2, 2) and actions.dtype == torch.float32
    assert torch.isnan(actions).all()


def test_nan_rows_stay_in_their_rows() -> None:
    """Only the actions of observations holding a NaN are NaN; the others equal the NumPy path's."""
    model = build(*BOX)
    obs = box_numpy(4)
    actions, _ = model.predict(
        torch.from_numpy(np.where(np.arange(4)[:, None] == 1, np.nan, obs).astype(np.float32)), deterministic=True
    )
    assert torch.isnan(actions[1]).all()
    clean = [0, 2, 3]
    # against the clean batch of the same size: a batch of another size may take another matmul
    # kernel, whose last bits differ; each row's result does not depend on the other rows' values
    assert_tensor_like(actions[clean], model.predict(obs, deterministic=True)[0][clean])


@pytest.mark.parametrize("act", ["Discrete", "MultiDiscrete"])
def test_nan_observation_gives_action_zero_for_deterministic_categorical(act: str) -> None:
    """Categorical policies, deterministic: the NumPy path raises ``ValueError`` (validation of
    ``logits``); the tensor route returns ``argmax`` of NaN logits, which is index 0: a valid-looking
    action, with no error and no NaN to notice."""
    model = build("PPO", "Box", act)
    with pytest.raises(ValueError, match="Expected parameter logits"):
        model.predict(_NAN, deterministic=True)
    actions, _ = model.predict(torch.from_numpy(_NAN), deterministic=True)
    assert actions.dtype == torch.int64
    assert actions.shape == (2, *model.action_space.shape)
    assert (actions == 0).all()


def test_nan_observation_gives_nan_for_deterministic_multibinary() -> None:
    """Bernoulli policy, deterministic: ``round(sigmoid(NaN))`` is NaN, returned as is."""
    model = build("PPO", "Box", "MultiBinary")
    with pytest.raises(ValueError, match="Expected parameter logits"):
        model.predict(_NAN, deterministic=True)
    actions, _ = model.predict(torch.from_numpy(_NAN), deterministic=True)
    assert actions.shape == (2, 3) and torch.isnan(actions).all()


@pytest.mark.parametrize(
    "act,message",
    [
        ("Discrete", "probability tensor contains either `inf`, `nan` or element < 0"),
        ("MultiDiscrete", "probability tensor contains either `inf`, `nan` or element < 0"),
        ("MultiBinary", r"Expected p_in >= 0 && p_in <= 1"),
    ],
)
def test_nan_observation_stochastic_discrete_raises_torch_runtime_error(act: str, message: str) -> None:
    """Categorical / Bernoulli policies, stochastic: sampling fails inside torch with a
    ``RuntimeError`` (not the NumPy path's ``ValueError``), after ``_predict`` started. Grad mode,
    distribution validation and the patch are intact afterwards, and the next call works."""
    model = build("PPO", "Box", act)
    with pytest.raises(ValueError, match="Expected parameter logits"):
        model.predict(_NAN, deterministic=False)
    with pytest.raises(RuntimeError, match=message):
        model.predict(torch.from_numpy(_NAN), deterministic=False)
    assert torch.is_grad_enabled()
    assert not getattr(validation._local, "off", False)
    assert sb3_tensorpatch.is_enabled()
    obs = box_numpy()
    _assert_same(model.predict(torch.from_numpy(obs), deterministic=True), model.predict(obs, deterministic=True))


@pytest.mark.parametrize("deterministic", [True, False], ids=["deterministic", "stochastic"])
@pytest.mark.parametrize(
    "key", [("TD3", "Box", "Box"), ("DDPG", "Box", "Box"), ("DQN", "Box", "Discrete")], ids="-".join
)
def test_nan_observation_matches_numpy_without_distributions(key: tuple[str, ...], deterministic: bool) -> None:
    """Policies that build no distribution (TD3, DDPG: NaN actions; DQN: argmax of NaN Q-values,
    action 0) behave as on the NumPy path."""
    model = build(*key)
    expected = model.predict(_NAN, deterministic=deterministic)
    actual = model.predict(torch.from_numpy(_NAN), deterministic=deterministic)
    assert_tensor_like(actual[0], expected[0])  # NaN compares equal to NaN here


# -- odd but valid input ----------------------------------------------------------------------


@pytest.mark.parametrize("key", [BOX, ("SAC", "Box", "Box"), DQN], ids="-".join)
def test_requires_grad_observation_keeps_no_graph(key: tuple[str, ...]) -> None:
    model = build(*key)
    obs = box_numpy(3)
    tensor = torch.tensor(obs, requires_grad=True)
    actions, _ = model.predict(tensor, deterministic=True)
    assert not actions.requires_grad and actions.grad_fn is None
    assert not actions.is_inference()
    assert torch.is_grad_enabled()
    assert_tensor_like(actions, model.predict(obs, deterministic=True)[0])
    # the result works in ordinary autograd code, and nothing flows back into the observation
    weight = torch.ones(actions.shape, dtype=torch.float32, requires_grad=True)
    (actions.float() * weight).sum().backward()
    assert torch.equal(weight.grad, actions.float())
    assert tensor.grad is None


def test_requires_grad_dict_observation() -> None:
    model = build(*DICT)
    obs = dict_numpy(3)
    tensors = to_tensor(obs)
    tensors["vec"].requires_grad_(True)
    actions, _ = model.predict(tensors, deterministic=True)
    assert not actions.requires_grad
    assert_tensor_like(actions, model.predict(obs, deterministic=True)[0])


def _strided(array: np.ndarray) -> torch.Tensor:
    """``array`` as a non-contiguous view into a bigger tensor."""
    big = torch.zeros(tuple(2 * n for n in array.shape), dtype=torch.as_tensor(array).dtype)
    view = big[tuple(slice(None, None, 2) for _ in array.shape)]
    view.copy_(torch.as_tensor(array))
    return view


@pytest.mark.parametrize("how", ["transposed", "strided", "strided-single", "expanded"])
def test_non_contiguous_box_observation(how: str) -> None:
    model = build(*BOX)
    obs = box_numpy(5)
    if how == "transposed":
        tensor = torch.as_tensor(np.ascontiguousarray(obs.T)).t()
    elif how == "strided":
        tensor = _strided(obs)
    elif how == "strided-single":
        obs = obs[0]
        tensor = _strided(obs)
    else:
        obs = np.broadcast_to(obs[:1], (4, 3)).copy()
        tensor = torch.as_tensor(obs[0]).expand(4, 3)
    assert not tensor.is_contiguous()
    np.testing.assert_array_equal(tensor.numpy(), obs)
    _assert_same(model.predict(tensor, deterministic=True), model.predict(obs, deterministic=True))


@pytest.mark.parametrize("batched", [False, True])
def test_non_contiguous_channel_last_image(batched: bool) -> None:
    """A channel-last image that is a permuted view of a channel-first one."""
    model = build(*IMAGE)
    last = stack(sample_observations(observation_space("ImageLast"), 3, 9))
    first = np.ascontiguousarray(np.moveaxis(last, -1, 1))
    tensor = torch.as_tensor(first).permute(0, 2, 3, 1)
    if not batched:
        tensor = tensor[1]
    assert not tensor.is_contiguous()
    obs = np.ascontiguousarray(tensor.numpy())
    _assert_same(model.predict(tensor, deterministic=True), model.predict(obs, deterministic=True))


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.uint8, np.int8, np.int16, np.int32, np.int64])
@pytest.mark.parametrize("batched", [False, True])
def test_other_dtypes_for_a_float32_box(dtype: Any, batched: bool) -> None:
    model = build(*BOX)
    obs = box_numpy(4 if batched else None)
    if np.issubdtype(dtype, np.integer):
        obs = np.abs(obs * 2)  # in [0, 6): representable by every integer type
    assert_predict_parity(model, obs.astype(dtype))


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.uint64])
def test_wide_unsigned_dtypes_for_a_float32_box(dtype: Any) -> None:
    assert_predict_parity(build(*BOX), np.abs(box_numpy(4) * 1000).astype(dtype))


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.int16])
def test_integer_dtypes_for_discrete(dtype: Any) -> None:
    model = build(*DISCRETE)
    assert_predict_parity(model, np.array([0, 4, 2, 1], dtype=dtype))
    assert_predict_parity(model, [np.asarray(value, dtype=dtype) for value in range(5)])  # 0-d


def test_zero_dim_discrete_observation_gives_a_zero_dim_action() -> None:
    model = build(*DISCRETE)
    for value in range(5):
        actions, _ = model.predict(torch.tensor(value), deterministic=True)
        assert actions.shape == () and actions.dtype == torch.int64
        assert actions.item() == model.predict(np.asarray(value), deterministic=True)[0]


def test_int32_for_multidiscrete() -> None:
    model = build("PPO", "MultiDiscrete", "Box")
    assert_predict_parity(model, np.array([[0, 3], [2, 1], [1, 0]], dtype=np.int32))
    assert_predict_parity(model, np.array([2, 3], dtype=np.int32))


@pytest.mark.parametrize("kind", ["Box", "Discrete", "MultiDiscrete", "MultiBinary"])
@pytest.mark.parametrize("batched", [False, True])
def test_bool_observation_matches_numpy(kind: str, batched: bool) -> None:
    """SB3's NumPy path accepts bool observations for every one of these spaces (Box: ``.float()``;
    Discrete / MultiDiscrete: ``.long()`` then one-hot; MultiBinary: ``.float()``), so the tensor
    route must give the same result rather than reject bool."""
    model = build("PPO", kind, "Discrete")
    samples = sample_observations(observation_space(kind), 3 if batched else 1, 13)
    obs = np.asarray(stack(samples) if batched else samples[0])
    obs = np.asarray(obs > (0 if kind == "Box" else obs.mean()))
    assert obs.dtype == np.bool_
    model.predict(obs, deterministic=True)  # the NumPy path accepts it
    assert_predict_parity(model, obs)


@pytest.mark.parametrize(
    "key",
    [
        ("PPO", "Box", "Box"),
        ("PPO", "Box", "Discrete"),
        ("A2C", "Box", "Discrete"),
        ("PPO", "Box", "MultiDiscrete"),
        ("PPO", "Box", "MultiBinary"),
        ("SAC", "Box", "Box"),
        ("TD3", "Box", "Box"),
        ("DQN", "Box", "Discrete"),
        ("PPO", "Dict", "Box"),
        ("PPO", "ImageLast", "Box"),
        pytest.param(MASK, marks=needs_contrib),
        pytest.param(LSTM, marks=needs_contrib),
    ],
    ids="-".join,
)
@pytest.mark.parametrize("deterministic", [True, False], ids=["deterministic", "stochastic"])
def test_empty_batch_gives_an_empty_action_batch(key: tuple[str, ...], deterministic: bool) -> None:
    """A batch of 0 observations gives 0 actions of the NumPy path's dtype and per-action shape, also
    where the NumPy path itself fails on it (Categorical policies reshape to ``[0, -1]``)."""
    model = build(*key)
    space = observation_space(key[1])
    full = stack(sample_observations(space, 2, 17))
    empty = {k: v[:0] for k, v in full.items()} if isinstance(full, dict) else full[:0]
    reference, _ = model.predict(full, deterministic=deterministic)  # dtype and shape of 2 actions
    actions, state = model.predict(to_tensor(empty), deterministic=deterministic)
    assert isinstance(actions, torch.Tensor)
    assert tuple(actions.shape) == (0, *model.action_space.shape)
    assert numpy_dtype(actions) == reference.dtype
    if key == LSTM:
        assert [tuple(value.shape) for value in state] == [(1, 0, 8), (1, 0, 8)]
    try:
        expected, _ = model.predict(empty, deterministic=deterministic)
    except (RuntimeError, ValueError):
        return  # the NumPy path fails on an empty batch here
    assert expected.shape == tuple(actions.shape) and expected.dtype == reference.dtype


def test_empty_batch_discrete_actions_for_ppo() -> None:
    model = build("PPO", "Box", "Discrete")
    with pytest.raises(RuntimeError):
        model.predict(np.zeros((0, 3), dtype=np.float32), deterministic=True)  # the NumPy path fails
    actions, _ = model.predict(torch.zeros(0, 3), deterministic=True)
    assert actions.shape == (0,) and actions.dtype == torch.int64


@pytest.mark.parametrize("batch", [None, 3], ids=["single", "batch3"])
@pytest.mark.parametrize("numpy_key", ["vec", "disc", "img", "disc-as-python-int"])
def test_dict_mixing_tensors_and_arrays_gives_the_numpy_result(batch: int | None, numpy_key: str) -> None:
    """A Dict whose values are partly tensors, partly numpy arrays: the arrays are converted onto
    the tensors' device, and the result is the NumPy path's for the all-numpy dict."""
    if numpy_key == "disc-as-python-int" and batch is not None:
        pytest.skip("a python int is a single Discrete observation")
    model = build(*DICT)
    obs = dict_numpy(batch)
    mixed: dict[str, Any] = {key: torch.as_tensor(value) for key, value in obs.items()}
    if numpy_key == "disc-as-python-int":
        mixed["disc"] = int(obs["disc"])
    else:
        mixed[numpy_key] = obs[numpy_key]
    assert any(isinstance(value, torch.Tensor) for value in mixed.values())
    assert not all(isinstance(value, torch.Tensor) for value in mixed.values())
    _assert_same(model.predict(mixed, deterministic=True), model.predict(obs, deterministic=True))


@pytest.mark.parametrize(
    "key",
    [BOX, DICT, DQN, pytest.param(MASK, marks=needs_contrib), pytest.param(LSTM, marks=needs_contrib)],
    ids="-".join,
)
def test_observation_on_another_device_is_moved_with_one_warning(
    key: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The move path, on a CPU-only machine.

    Two real devices cannot be made without a GPU, so the policy's device is reported as
    ``cpu:0``: a ``torch.device`` unequal to ``cpu`` that tensors can really be moved to
    (``.to("cpu:0")`` gives a CPU tensor). That drives the route's real move code: the mismatch is
    detected, the observation goes through ``to_device(obs, target)``, the one-time warning fires,
    and the actions (and LSTM states) are moved back to the input's device. The copy itself is a
    no-op here; :func:`test_observation_on_cuda_policy_on_cpu_and_back` moves real data when a GPU
    is present.
    """
    model = _own(*key)
    target = torch.device("cpu", 0)
    # the plan finds the policy's device through one of its parameters: stand in for it
    plan = plans.plan_for(model.policy)
    monkeypatch.setattr(plan, "param", types.SimpleNamespace(device=target))
    monkeypatch.setattr(notices, "_warned", set())
    moves = Spy(plans.to_device)
    monkeypatch.setattr(plans, "to_device", moves)
    obs, kwargs = _valid(key)
    with pytest.warns(UserWarning, match=r"observation is on cpu but the policy is on cpu:0; moving it there") as record:
        actual = model.predict(to_tensor(obs), deterministic=True, **_tensors(kwargs))
    # the warning points at the caller's line, past our routes and SB3's BaseAlgorithm.predict
    assert [entry.filename for entry in record if "sb3-tensorpatch" in str(entry.message)] == [__file__]
    assert len(moves.calls) == 1 and moves.calls[0][0][1] == target
    _assert_same(actual, model.predict(obs, deterministic=True, **kwargs))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = model.predict(to_tensor(obs), deterministic=True, **_tensors(kwargs))
    assert [str(w.message) for w in caught if "sb3-tensorpatch" in str(w.message)] == [], "warned twice"
    assert len(moves.calls) == 2
    _assert_same(again, actual)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: a CPU-only machine has one real device")
@pytest.mark.parametrize("key", [BOX, DICT, pytest.param(LSTM, marks=needs_contrib)], ids="-".join)
def test_observation_on_cuda_policy_on_cpu_and_back(key: tuple[str, ...]) -> None:
    """Real moves both ways: CUDA observations for a CPU policy, CPU observations for a CUDA policy."""
    model = build(*key)
    obs, kwargs = _valid(key)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert_predict_parity(model, obs, device="cuda", batched=True, **kwargs)
        policy = copy.deepcopy(model.policy).to("cuda")
        assert_predict_parity(policy, obs, device="cpu", batched=True, **kwargs)
