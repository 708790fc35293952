"""Distribution argument validation while the patch is on: off for SB3's distributions on the tensor
route, untouched everywhere else.

torch's ``Distribution._validate_args`` is never changed: a read, and a plain ``torch.distributions``
construction, cost what they cost unpatched. ``enable()`` only arms the patch; the first tensor
predict that builds a distribution quietens the names SB3 and contrib build theirs by
(``validation.NAMES``), and ``disable()`` puts back the very objects. The per-thread switch the
routes use (``validation._local.off``) keeps its interface and meaning. Inside the route SB3's
distributions skip validation; outside it they follow the default, whenever the user sets it.
"""

from __future__ import annotations

import copy
import pickle
import threading
from typing import Any, Callable

import numpy as np
import pytest
import torch
from helpers import MISSING, VALIDATE, sb3_contrib, snapshot, takes_tensor_route
from stable_baselines3.common import distributions as sb3_distributions
from torch.distributions import Bernoulli, Categorical, Distribution, Normal

import sb3_tensorpatch
from sb3_tensorpatch import table, validation

needs_contrib = pytest.mark.skipif(sb3_contrib is None, reason="sb3-contrib is not installed")


def _in_new_thread(function: Callable[[], Any]) -> Any:
    """Run ``function`` in a thread that never touched the switch; return its result or raise its error."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = function()
        except BaseException as exc:  # handed to the caller
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@pytest.fixture
def default() -> Any:
    sb3_tensorpatch.disable()
    return Distribution.__dict__["_validate_args"]


@pytest.fixture
def validating(default: Any) -> Any:
    if not default:
        pytest.skip("argument validation is off by default here (python -O)")
    return default


def _quiet_names() -> dict[str, Any]:
    """What each quietened name (or class attribute) holds now, by target."""
    return {target: entry for target, entry in snapshot().items() if target in {name.target for name in validation.NAMES}}


def _rows() -> dict[str, Any]:
    return {row.target: row for row in sb3_tensorpatch.status().rows if row.route == "validation"}


def _installed() -> None:
    sb3_tensorpatch.enable()
    validation.install()  # what the first tensor predict that builds a distribution does


def _maskable() -> Any:
    from sb3_contrib.common.maskable import distributions

    return distributions


# -- the switch -------------------------------------------------------------------------------


def test_switch_reads_off_in_a_thread_that_never_set_it() -> None:
    # a plain attribute read: no AttributeError to raise (and swallow, as getattr(..., False) did)
    assert _in_new_thread(lambda: validation._local.off) is False
    sb3_tensorpatch.enable()
    assert _in_new_thread(lambda: validation._local.off) is False


def test_switch_keeps_the_routes_interface() -> None:
    def use_like_a_route() -> list[Any]:
        seen = [getattr(validation._local, "off", False)]
        validation._local.off = True
        seen.append(getattr(validation._local, "off", False))
        seen.append(_in_new_thread(lambda: validation._local.off))  # per thread
        validation._local.off = False
        seen.append(validation._local.off)
        return seen

    assert _in_new_thread(use_like_a_route) == [False, True, False, False]


# -- when: armed by enable(), installed on first need, undone by disable() --------------------


def test_enable_only_arms_it(default: Any, originals: dict[str, Any], ppo: Any, ppo_obs: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    from sb3_tensorpatch import lowering

    before = _quiet_names()
    assert len(before) == (4 if sb3_contrib is not None else 3)
    assert {row.state for row in _rows().values()} <= {"selected", "skipped"}
    sb3_tensorpatch.enable()
    # nothing changes yet: SB3's names hold torch's own classes
    assert _quiet_names() == before and sb3_distributions.Normal is Normal
    assert {(row.state, row.versions) for target, row in _rows().items() if target in before} == {("armed", "any")}
    assert not set(before) & set(sb3_tensorpatch.status().patched)
    ppo.predict(ppo_obs)  # NumPy: SB3's path, builds a distribution and leaves it armed
    assert _quiet_names() == before
    # a lowered predict (SB3's standard policy) builds no distribution: still armed
    assert lowering.enabled and takes_tensor_route(ppo, ppo_obs)
    assert _quiet_names() == before and validation.state() == "armed"
    # a predict through the policy's own _predict builds one: installed
    monkeypatch.setattr(lowering, "enabled", False)
    sb3_tensorpatch.disable()
    sb3_tensorpatch.enable()
    assert takes_tensor_route(ppo, ppo_obs)
    installed = _quiet_names()
    assert all(installed[target] is not before[target] for target in before)
    assert sb3_distributions.Normal.__bases__ == (Normal,)
    assert {row.state for target, row in _rows().items() if target in before} == {"patched"}
    assert set(before) <= set(sb3_tensorpatch.status().patched)
    assert takes_tensor_route(ppo, ppo_obs)
    assert _quiet_names() == installed  # installed once, not per call
    # torch's own class is never changed
    assert Distribution.__dict__["_validate_args"] is default is originals[VALIDATE]
    sb3_tensorpatch.disable()
    assert _quiet_names() == before and {row.state for target, row in _rows().items() if target in before} == {"selected"}
    sb3_tensorpatch.enable()
    assert _quiet_names() == before  # armed again, not installed
    sb3_tensorpatch.disable()
    assert _quiet_names() == before and Distribution.__dict__["_validate_args"] is default


def test_armed_and_never_needed_leaves_everything_alone(default: Any) -> None:
    before = _quiet_names()
    sb3_tensorpatch.enable()
    sb3_tensorpatch.disable()
    assert _quiet_names() == before
    validation.install()  # a late install after disable() does nothing
    assert _quiet_names() == before and validation.state() == "off"
    assert Distribution.__dict__["_validate_args"] is default


def test_installed_once_by_threads_racing() -> None:
    before = _quiet_names()
    sb3_tensorpatch.enable()
    start = threading.Barrier(8)
    seen: list[dict[str, Any]] = []

    def race() -> None:
        start.wait(timeout=30)
        validation.install()
        seen.append(_quiet_names())

    threads = [threading.Thread(target=race) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(seen) == 8 and all(entry == seen[0] for entry in seen)
    assert all(seen[0][target] is not before[target] for target in before)
    sb3_tensorpatch.disable()
    assert _quiet_names() == before


def test_quiet_classes_are_made_once_per_process() -> None:
    # objects built under one enable() have the type of those built under the next, and torch's
    # KL dispatch cache (keyed by type pairs) does not grow with every enable()
    _installed()
    first = {target: entry for target, entry in _quiet_names().items() if isinstance(entry, type)}
    assert len(first) == 3  # SB3's names (contrib's class holds a descriptor: its type never changes)
    sb3_tensorpatch.disable()
    _installed()
    assert all(_quiet_names()[target] is entry for target, entry in first.items())
    assert validation.quiet_class(Normal) is sb3_distributions.Normal


def test_names_replaced_by_someone_else_are_left_alone(originals: dict[str, Any]) -> None:
    _installed()
    theirs = type("Normal", (Normal,), {})
    sb3_distributions.Normal = theirs  # type: ignore[misc]
    try:
        sb3_tensorpatch.disable()
        assert sb3_distributions.Normal is theirs  # as a wrapper on top of ours is left in place
        assert sb3_distributions.Categorical is Categorical and sb3_distributions.Bernoulli is Bernoulli
        if sb3_contrib is not None:
            assert "_validate_args" not in _maskable().MaskableCategorical.__dict__
    finally:
        sb3_distributions.Normal = Normal  # type: ignore[misc]


@needs_contrib
def test_contrib_attribute_replaced_by_someone_else_is_left_alone() -> None:
    cls = _maskable().MaskableCategorical
    _installed()
    cls._validate_args = True
    try:
        sb3_tensorpatch.disable()
        assert cls.__dict__["_validate_args"] is True
    finally:
        del cls._validate_args
    assert sb3_distributions.Normal is Normal


def test_without_contrib_only_sb3s_names(originals: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    real = table.installed_version
    monkeypatch.setattr(table, "installed_version", lambda package: None if package == table.CONTRIB else real(package))
    _installed()
    rows = _rows()
    contrib = [name.target for name in validation.NAMES if name.package == table.CONTRIB]
    assert [(rows[target].state, rows[target].reason) for target in contrib] == [("skipped", "sb3-contrib is not installed")]
    assert {rows[name.target].state for name in validation.NAMES if name.package == table.SB3} == {"patched"}
    if sb3_contrib is not None:
        assert "_validate_args" not in _maskable().MaskableCategorical.__dict__
    sb3_tensorpatch.disable()
    assert sb3_distributions.Normal is Normal


def test_every_name_builds_a_torch_distribution_in_the_installed_release() -> None:
    # the premise of validation.NAMES: SB3's names are torch's classes, contrib's is its own class
    # (so it is quietened in place: a subclass behind its own name would break pickling it)
    import importlib

    for name in validation.NAMES:
        if name.package == table.CONTRIB and sb3_contrib is None:
            continue
        module = importlib.import_module(name.module)
        cls = getattr(module, name.name)
        assert issubclass(cls, Distribution), name
        assert (cls.__module__ == name.module) is name.own, name
        assert "_validate_args" not in cls.__dict__, name


# -- what: SB3's distributions skip validation inside the route, follow the default outside ---


def _invalid_sb3_normal() -> Any:
    return sb3_distributions.Normal(torch.zeros(1), -torch.ones(1))  # scale must be positive


def _invalid_torch_normal() -> Any:
    return torch.distributions.Normal(torch.zeros(1), -torch.ones(1))


def test_quiet_classes_read_the_default_off_the_route(validating: Any) -> None:
    _installed()
    assert sb3_distributions.Normal._validate_args is True
    assert _in_new_thread(lambda: sb3_distributions.Categorical._validate_args) is True

    def inside_the_route() -> tuple[Any, ...]:
        with validation.no_validation():
            built = sb3_distributions.Normal(torch.zeros(2), torch.ones(2))
            return sb3_distributions.Bernoulli._validate_args, built._validate_args, Distribution._validate_args

    assert _in_new_thread(inside_the_route) == (False, False, True)
    assert sb3_distributions.Normal._validate_args is True
    # an instance given validate_args= keeps its own value (the descriptor is a non-data one)
    with validation.no_validation():
        assert sb3_distributions.Normal(torch.zeros(2), torch.ones(2), validate_args=True)._validate_args is True


def test_validation_still_raises_off_the_route(validating: Any) -> None:
    _installed()
    with pytest.raises(ValueError):
        _in_new_thread(_invalid_sb3_normal)
    with pytest.raises(ValueError):
        _invalid_sb3_normal()
    with validation.no_validation():
        _invalid_sb3_normal()  # this thread's switch is off: no check
        with validation.no_validation():
            pass
        _invalid_sb3_normal()  # nested: still off after the inner one
        with pytest.raises(ValueError):
            _invalid_torch_normal()  # torch's own class, built by other code, still validates
    with pytest.raises(ValueError):
        _invalid_sb3_normal()


def test_the_error_message_is_sb3s(validating: Any) -> None:
    with pytest.raises(ValueError) as unpatched:
        _invalid_sb3_normal()
    _installed()
    with pytest.raises(ValueError) as patched:
        _invalid_sb3_normal()
    assert str(patched.value) == str(unpatched.value)
    assert "of distribution Normal(loc: tensor([0.]), scale: tensor([-1.]))" in str(patched.value)


def test_methods_validate_off_the_route(validating: Any) -> None:
    """``log_prob`` / ``entropy`` / ``sample`` of a distribution built inside or outside the route:
    an invalid value raises ``ValueError`` outside the route, as without the patch."""
    _installed()
    built_outside = sb3_distributions.Categorical(logits=torch.zeros(2, 3))
    with validation.no_validation():
        built_inside = sb3_distributions.Categorical(logits=torch.zeros(2, 3))
    for distribution in (built_outside, built_inside):
        assert distribution.sample().shape == (2,) and distribution.entropy().shape == (2,)
        assert distribution.log_prob(torch.tensor([0, 2])).shape == (2,)
        with pytest.raises(ValueError):
            distribution.log_prob(torch.tensor([0, 5]))  # outside the support
        with validation.no_validation():
            distribution.log_prob(torch.tensor([0, 1]))
    with validation.no_validation():
        built_inside.log_prob(torch.tensor([0, 2]) + 0.5)  # not an integer: no check inside the route


def test_user_default_set_before_the_first_predict_applies(default: Any, ppo: Any, ppo_obs: np.ndarray) -> None:
    sb3_tensorpatch.enable()
    try:
        Distribution.set_default_validate_args(not default)
        validation.install()  # what the first predict through _predict does: nothing recorded
        assert sb3_distributions.Normal._validate_args is (not default)
        assert takes_tensor_route(ppo, ppo_obs)
        sb3_tensorpatch.disable()
        assert Distribution.__dict__["_validate_args"] is (not default)  # the user's, never ours
    finally:
        Distribution._validate_args = default


def test_user_default_set_while_enabled_applies_outside_the_route(validating: Any, originals: dict[str, Any]) -> None:
    _installed()
    try:
        Distribution.set_default_validate_args(False)
        assert _in_new_thread(lambda: sb3_distributions.Normal._validate_args) is False
        _invalid_sb3_normal()  # the user's setting applies
        _invalid_torch_normal()
        Distribution.set_default_validate_args(True)
        with pytest.raises(ValueError):
            _invalid_sb3_normal()
        with validation.no_validation():
            _invalid_sb3_normal()  # inside the route validation stays off: disable() to debug there
        Distribution.set_default_validate_args(False)
        sb3_tensorpatch.disable()
        assert Distribution.__dict__["_validate_args"] is False  # disable() leaves the user's value alone
        _invalid_sb3_normal()
    finally:
        Distribution._validate_args = originals[VALIDATE]
    with pytest.raises(ValueError):
        _invalid_sb3_normal()


def test_validation_untouched_outside_the_route(originals: dict[str, Any], ppo: Any, ppo_obs: np.ndarray) -> None:
    before = Distribution._validate_args
    assert before is True  # torch's default (``__debug__``)
    with pytest.raises(ValueError):
        _invalid_torch_normal()
    sb3_tensorpatch.enable()
    assert Distribution._validate_args == before
    with pytest.raises(ValueError):
        _invalid_torch_normal()
    assert takes_tensor_route(ppo, ppo_obs)  # the route switches validation off only for its own call
    validation.install()
    assert Distribution._validate_args == before and sb3_distributions.Normal._validate_args == before
    with pytest.raises(ValueError):
        _invalid_torch_normal()
    with pytest.raises(ValueError):
        _invalid_sb3_normal()
    sb3_tensorpatch.disable()
    assert Distribution.__dict__["_validate_args"] is originals[VALIDATE]
    with pytest.raises(ValueError):
        _invalid_sb3_normal()


def test_validation_off_in_one_thread_only(originals: dict[str, Any]) -> None:
    _installed()
    inside = threading.Event()
    release = threading.Event()
    seen: dict[str, Any] = {}

    def routed_thread() -> None:
        with validation.no_validation():  # what the tensor route does for its own thread
            seen["validate_args"] = sb3_distributions.Normal._validate_args
            try:
                _invalid_sb3_normal()
                seen["raised"] = False
            except ValueError:
                seen["raised"] = True
            inside.set()
            release.wait(timeout=30)

    thread = threading.Thread(target=routed_thread)
    thread.start()
    try:
        assert inside.wait(timeout=30)
        assert seen == {"validate_args": False, "raised": False}
        # this thread, at the same moment, still validates
        assert sb3_distributions.Normal._validate_args is True
        with pytest.raises(ValueError):
            _invalid_sb3_normal()
    finally:
        release.set()
        thread.join(timeout=30)
    sb3_tensorpatch.disable()
    assert Distribution.__dict__["_validate_args"] is originals[VALIDATE]


def test_thread_local_switch_has_no_effect_when_disabled() -> None:
    _installed()
    sb3_tensorpatch.disable()
    validation._local.off = True
    try:
        with pytest.raises(ValueError):
            _invalid_sb3_normal()  # SB3's name holds torch's class again
        with pytest.raises(ValueError):
            _invalid_torch_normal()
    finally:
        validation._local.off = False


# -- types: SB3's distribution objects are instances of the quiet classes while installed ------


def _sb3_distributions(seed: int = 0) -> list[Any]:
    """One SB3 action distribution of each kind, with its torch distribution(s) built."""
    from stable_baselines3.common.distributions import (
        BernoulliDistribution,
        CategoricalDistribution,
        DiagGaussianDistribution,
        MultiCategoricalDistribution,
        SquashedDiagGaussianDistribution,
    )

    generator = torch.Generator().manual_seed(seed)
    mean, logits = torch.randn(3, 2, generator=generator), torch.randn(3, 5, generator=generator)
    built = [
        DiagGaussianDistribution(2).proba_distribution(mean, torch.zeros(2)),
        SquashedDiagGaussianDistribution(2).proba_distribution(mean, torch.zeros(2)),
        CategoricalDistribution(5).proba_distribution(logits),
        MultiCategoricalDistribution([2, 3]).proba_distribution(logits),
        BernoulliDistribution(5).proba_distribution(logits),
    ]
    if sb3_contrib is not None:
        from sb3_contrib.common.maskable.distributions import MaskableCategoricalDistribution

        masked = MaskableCategoricalDistribution(5).proba_distribution(logits)
        masked.apply_masking(np.array([[True, False, True, True, False]] * 3))
        built.append(masked)
    return built


def _parts(distribution: Any) -> list[Any]:
    parts = distribution.distribution
    return list(parts) if isinstance(parts, list) else [parts]


def _params(part: Any) -> dict[str, torch.Tensor]:
    return {key: value for key, value in vars(part).items() if isinstance(value, torch.Tensor)}


def _assert_same_params(one: Any, other: Any) -> None:
    mine, theirs = _params(one), _params(other)
    assert mine.keys() == theirs.keys() and mine
    for key in mine:
        assert torch.equal(mine[key], theirs[key]), key


def test_quiet_objects_are_sb3s_types() -> None:
    plain = [[type(part) for part in _parts(distribution)] for distribution in _sb3_distributions()]
    _installed()
    for distribution, types in zip(_sb3_distributions(), plain):
        for part, cls in zip(_parts(distribution), types):
            assert isinstance(part, cls)
            assert type(part).__name__ == cls.__name__ and type(part).__qualname__ == cls.__qualname__
            assert repr(part).startswith(f"{cls.__name__}(")
    assert repr(sb3_distributions.Normal(torch.zeros(2), torch.ones(2))) == repr(Normal(torch.zeros(2), torch.ones(2)))


@pytest.mark.parametrize("inside", [False, True], ids=["outside the route", "inside the route"])
def test_pickle_and_deepcopy(inside: bool) -> None:
    """Copies and pickles of SB3's distributions are of torch's (and contrib's) own classes: a pickle
    made with the patch on names no sb3-tensorpatch class, and loads with the patch off."""
    plain = [[type(part) for part in _parts(distribution)] for distribution in _sb3_distributions()]
    _installed()
    if inside:
        with validation.no_validation():
            built = _sb3_distributions()
    else:
        built = _sb3_distributions()
    pickles = []
    for distribution, types in zip(built, plain):
        data = pickle.dumps(distribution)
        assert b"sb3_tensorpatch" not in data
        pickles.append(data)
        for copied in (pickle.loads(data), copy.deepcopy(distribution)):
            for part, original, cls in zip(_parts(copied), _parts(distribution), types):
                assert type(part) is cls
                _assert_same_params(part, original)
        for part, cls in zip(_parts(copy.copy(distribution)), types):
            assert isinstance(part, cls)
    sb3_tensorpatch.disable()
    for data, distribution, types in zip(pickles, built, plain):
        loaded = pickle.loads(data)
        assert [type(part) for part in _parts(loaded)] == types
        assert [type(part) for part in _parts(pickle.loads(pickle.dumps(distribution)))] == types  # after disable() too


def test_pickle_and_deepcopy_a_policy_after_a_route_predict(ppo: Any, ppo_obs: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    """The policy keeps its last distribution (``action_dist.distribution``): built on the route, it
    is a quiet one, and ``pickle`` / ``deepcopy`` of the whole policy still work."""
    from sb3_tensorpatch import lowering

    monkeypatch.setattr(lowering, "enabled", False)
    sb3_tensorpatch.enable()
    actions, _ = ppo.predict(torch.as_tensor(ppo_obs), deterministic=True)
    assert type(ppo.policy.action_dist.distribution) is sb3_distributions.Categorical is not Categorical
    for copied in (pickle.loads(pickle.dumps(ppo.policy)), copy.deepcopy(ppo.policy)):
        assert type(copied.action_dist.distribution) is Categorical
        copied_actions, _ = copied.predict(torch.as_tensor(ppo_obs), deterministic=True)
        assert torch.equal(copied_actions, actions)


def test_kl_divergence() -> None:
    """SB3's ``kl_divergence`` (TRPO's) between two of SB3's distributions, and torch's between a quiet
    one and a plain one, either way round: the values without the patch."""
    from stable_baselines3.common.distributions import kl_divergence

    plain, plain_other = _sb3_distributions(0), _sb3_distributions(1)
    expected = [kl_divergence(one, other) for one, other in zip(plain, plain_other)]
    _installed()
    with validation.no_validation():
        quiet, quiet_other = _sb3_distributions(0), _sb3_distributions(1)
        assert all(torch.equal(kl_divergence(one, other), value) for one, other, value in zip(quiet, quiet_other, expected))
    assert all(torch.equal(kl_divergence(one, other), value) for one, other, value in zip(quiet, quiet_other, expected))
    for quiet_one, plain_one, plain_two in zip(quiet, plain, plain_other):
        for mine, same, other in zip(_parts(quiet_one), _parts(plain_one), _parts(plain_two)):
            reference = torch.distributions.kl_divergence(same, other)
            assert torch.equal(torch.distributions.kl_divergence(mine, other), reference)
            assert torch.equal(torch.distributions.kl_divergence(other, mine), torch.distributions.kl_divergence(other, same))


def test_expand() -> None:
    plain = _sb3_distributions()
    _installed()
    quiet = _sb3_distributions()
    for quiet_one, plain_one in zip(quiet, plain):
        for mine, theirs in zip(_parts(quiet_one), _parts(plain_one)):
            shape = (4, *theirs.batch_shape)
            try:
                expected = theirs.expand(shape)
            except NotImplementedError as exc:  # contrib's MaskableCategorical defines __init__: torch refuses
                with pytest.raises(NotImplementedError) as info:
                    mine.expand(shape)
                assert str(info.value) == str(exc)
                continue
            expanded = mine.expand(shape)
            assert type(expanded) is type(mine) and expanded.batch_shape == expected.batch_shape
            _assert_same_params(expanded, expected)
            assert expanded._validate_args is expected._validate_args


@needs_contrib
def test_masking_on_the_route_is_quiet(validating: Any) -> None:
    """contrib's ``apply_masking`` runs ``Categorical.__init__`` again, reading ``_validate_args``
    through the instance (2.9.2 passes ``validate_args=self._validate_args``, 1.8.0 to 2.2.1 pass
    nothing): ``False`` inside the route, the default outside it."""
    from sb3_contrib.common.maskable.distributions import MaskableCategoricalDistribution

    masks = np.array([[True, False, True]])
    _installed()
    with validation.no_validation():
        inside = MaskableCategoricalDistribution(3).proba_distribution(torch.zeros(1, 3))
        inside.apply_masking(masks)
        assert inside.distribution._validate_args is False
    outside = MaskableCategoricalDistribution(3).proba_distribution(torch.zeros(1, 3))
    outside.apply_masking(masks)
    assert outside.distribution._validate_args is True
    assert torch.equal(inside.distribution.probs, outside.distribution.probs)


def test_torch_class_is_never_changed(default: Any) -> None:
    """The point of the design: the attribute every distribution in the process reads stays torch's."""
    _installed()
    with validation.no_validation():
        assert Distribution.__dict__["_validate_args"] is default
        assert Normal(torch.zeros(1), torch.ones(1))._validate_args is default
    assert Distribution.__dict__.get("_validate_args", MISSING) is default
