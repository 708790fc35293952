"""A reload of the package or of its modules while the patch is on (``importlib.reload``, IPython's
``%autoreload``) keeps the state: ``is_enabled()`` tells the truth and ``disable()`` restores SB3's
classes exactly.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any, Callable

import pytest
import torch
from helpers import BASE_PREDICT, VALIDATE, assert_originals, build, patch_targets, sample_observations, snapshot, stack
from stable_baselines3.common import distributions as sb3_distributions
from torch.distributions import Distribution

import sb3_tensorpatch
from sb3_tensorpatch import _state, patcher, routes, validation, wrappers


def _autoreload(module: types.ModuleType) -> None:
    """What IPython's ``%autoreload`` does to a module whose file changed: clear its namespace, then
    ``importlib.reload`` it (IPython then also updates the old functions and classes in place)."""
    kept = {name: module.__dict__[name] for name in ("__name__", "__loader__")}
    module.__dict__.clear()
    module.__dict__.update(kept)
    importlib.reload(module)
    # a cleared package has lost its submodule attributes, which a re-import does not set again;
    # put them back, so that the rest of the test session sees the package as imported
    prefix = module.__name__ + "."
    for name, submodule in list(sys.modules.items()):
        if name.startswith(prefix) and "." not in name[len(prefix) :]:
            module.__dict__.setdefault(name[len(prefix) :], submodule)  # not over a name the module defines


RELOADS: dict[str, Callable[[], None]] = {
    "package": lambda: importlib.reload(sb3_tensorpatch),
    "patcher": lambda: importlib.reload(patcher),
    "wrappers": lambda: importlib.reload(wrappers),
    "validation": lambda: importlib.reload(validation),
    "state": lambda: importlib.reload(_state),
    "autoreload package": lambda: _autoreload(sb3_tensorpatch),
    "autoreload patcher": lambda: _autoreload(patcher),
    "autoreload wrappers": lambda: _autoreload(wrappers),
    "autoreload validation": lambda: _autoreload(validation),
    "all of them": lambda: [reload() for name, reload in RELOADS.items() if name != "all of them"] and None,
}


@pytest.fixture(scope="module")
def model() -> Any:
    return build("PPO", "Box", "Box")


@pytest.fixture(scope="module")
def obs(model: Any) -> torch.Tensor:
    return torch.as_tensor(stack(sample_observations(model.observation_space, 3, seed=0)))


def _assert_restored(originals: dict[str, Any]) -> None:
    assert not sb3_tensorpatch.is_enabled()
    assert_originals(originals)


def _assert_patched_and_routing(originals: dict[str, Any], model: Any, obs: torch.Tensor) -> None:
    assert sb3_tensorpatch.is_enabled()
    assert sb3_tensorpatch.status().patched
    actions, _ = model.predict(obs, deterministic=True)
    validation.install()  # what a predict through the policy's own _predict does (this one is lowered)
    for target, entry in snapshot().items():
        if target == VALIDATE:  # torch's default: never changed
            assert entry is originals[target]
        else:
            assert entry is not originals[target], f"{target} is not patched"
    expected = torch.as_tensor(model.predict(obs.numpy(), deterministic=True)[0])
    assert isinstance(actions, torch.Tensor) and actions.dtype == expected.dtype and torch.equal(actions, expected)
    # the route's validation switch is the one the quiet classes read
    assert routes._validation is validation._local
    routes._validation.off = True
    try:
        assert sb3_distributions.Normal._validate_args is False
        assert Distribution._validate_args is originals[VALIDATE]
    finally:
        routes._validation.off = False
    assert sb3_distributions.Normal._validate_args is originals[VALIDATE]


@pytest.mark.parametrize("reload", list(RELOADS))
def test_reload_while_enabled(reload: str, originals: dict[str, Any], model: Any, obs: torch.Tensor) -> None:
    sb3_tensorpatch.enable()
    RELOADS[reload]()
    _assert_patched_and_routing(originals, model, obs)
    sb3_tensorpatch.disable()
    _assert_restored(originals)
    sb3_tensorpatch.enable()  # and again, after the reload
    _assert_patched_and_routing(originals, model, obs)
    sb3_tensorpatch.disable()
    _assert_restored(originals)


@pytest.mark.parametrize("reload", list(RELOADS))
def test_reload_inside_a_scope(reload: str, originals: dict[str, Any], model: Any, obs: torch.Tensor) -> None:
    with sb3_tensorpatch.patched():
        RELOADS[reload]()
        _assert_patched_and_routing(originals, model, obs)
        with sb3_tensorpatch.patched():  # a scope opened after the reload nests in the one before
            _assert_patched_and_routing(originals, model, obs)
        assert sb3_tensorpatch.is_enabled()
    _assert_restored(originals)
    with sb3_tensorpatch.patched():
        _assert_patched_and_routing(originals, model, obs)
    _assert_restored(originals)


@pytest.mark.parametrize("reload", list(RELOADS))
def test_reload_while_disabled(reload: str, originals: dict[str, Any], model: Any, obs: torch.Tensor) -> None:
    RELOADS[reload]()
    _assert_restored(originals)
    sb3_tensorpatch.enable()
    _assert_patched_and_routing(originals, model, obs)
    sb3_tensorpatch.disable()
    _assert_restored(originals)


def test_reload_keeps_a_wrapper_installed_before_it_recognised(originals: dict[str, Any]) -> None:
    sb3_tensorpatch.enable()
    owner, name = patch_targets()[BASE_PREDICT]
    wrapper = owner.__dict__[name]
    importlib.reload(patcher)
    assert wrappers.is_wrapper(wrapper)
    assert wrappers.tensor_route(owner, name) is not None  # the routes' shortcut still finds it
    sb3_tensorpatch.disable()
    _assert_restored(originals)
