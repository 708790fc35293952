"""Test helpers: envs with any observation/action space, small models, the parity grid.

Works on every supported SB3 release: gym 0.21 API for SB3 1.x, gymnasium for 2.x.
"""

from __future__ import annotations

import functools
import importlib
import warnings
from typing import Any

import numpy as np
import stable_baselines3 as sb3
from packaging.version import Version
from stable_baselines3.common import policies as _policies

spaces: Any = _policies.spaces
SB3_VERSION = Version(sb3.__version__)
GYMNASIUM = SB3_VERSION >= Version("2.0.0")
if GYMNASIUM:
    import gymnasium as gym
else:  # pragma: no cover - SB3 1.8 only
    import gym  # type: ignore[no-redef]

try:
    import sb3_contrib
except ImportError:  # pragma: no cover - matrix without contrib
    sb3_contrib = None

#: what a class's ``__dict__`` holds for an attribute it does not define (``None`` could be a value)
MISSING = object()
BASE_PREDICT = "stable_baselines3.common.policies:BasePolicy.predict"
#: torch's default, which the patch never changes (snapshots hold it, so that undo checks prove it)
VALIDATE = "torch.distributions:Distribution._validate_args"


class SpaceEnv(gym.Env):  # type: ignore[misc]
    """An env that returns samples of its observation space: enough to build any model."""

    metadata = {"render_modes": []}  # noqa: RUF012

    def __init__(self, observation_space: Any, action_space: Any) -> None:
        super().__init__()
        self.observation_space = observation_space
        self.action_space = action_space

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        if seed is not None:
            self.observation_space.seed(seed)
        obs = self.observation_space.sample()
        return (obs, {}) if GYMNASIUM else obs

    def step(self, action: Any) -> Any:
        obs = self.observation_space.sample()
        if GYMNASIUM:
            return obs, 0.0, False, False, {}
        return obs, 0.0, False, {}


IMAGE = (36, 36, 3)  # the smallest image NatureCNN accepts, channel-last


def observation_space(kind: str) -> Any:
    if kind == "Box":
        return spaces.Box(low=-2.0, high=3.0, shape=(3,), dtype=np.float32)
    if kind == "Discrete":
        return spaces.Discrete(5)
    if kind == "MultiDiscrete":
        return spaces.MultiDiscrete([3, 4])
    if kind == "MultiBinary":
        return spaces.MultiBinary(4)
    if kind == "ImageLast":
        return spaces.Box(low=0, high=255, shape=IMAGE, dtype=np.uint8)
    if kind == "ImageFirst":
        return spaces.Box(low=0, high=255, shape=(IMAGE[2], IMAGE[0], IMAGE[1]), dtype=np.uint8)
    if kind == "Dict":
        return spaces.Dict(
            {
                "vec": spaces.Box(low=-1.0, high=1.0, shape=(2,), dtype=np.float32),
                "disc": spaces.Discrete(3),
                "img": spaces.Box(low=0, high=255, shape=IMAGE, dtype=np.uint8),
            }
        )
    raise ValueError(kind)


def action_space(kind: str) -> Any:
    if kind == "Box":
        # asymmetric bounds, so that clipping and unscaling are not the identity
        return spaces.Box(low=np.array([-2.0, 0.0], dtype=np.float32), high=np.array([2.0, 5.0], dtype=np.float32))
    if kind == "BoxPow2":
        # every half-range a power of two (2, 1, 4): unscaling takes its two-op path
        return spaces.Box(low=np.array([-2.0, 0.5, -3.0], dtype=np.float32), high=np.array([2.0, 2.5, 5.0], dtype=np.float32))
    if kind == "BoxInt":
        # integer bounds: NumPy's promotion makes SB3's clipped and unscaled actions float64
        return spaces.Box(low=np.array([-2, 0], dtype=np.int64), high=np.array([2, 5], dtype=np.int64), dtype=np.int64)
    if kind == "Discrete":
        return spaces.Discrete(4)
    if kind == "MultiDiscrete":
        return spaces.MultiDiscrete([2, 3])
    if kind == "MultiBinary":
        return spaces.MultiBinary(3)
    raise ValueError(kind)


OBS_KINDS = ("Box", "Discrete", "MultiDiscrete", "MultiBinary", "Dict", "ImageLast", "ImageFirst")
#: SB3 builds every Box-action algorithm with integer bounds too (none refuses them)
ACTIONS = {
    "PPO": ("Box", "BoxInt", "Discrete", "MultiDiscrete", "MultiBinary"),
    "A2C": ("Box", "BoxInt", "Discrete", "MultiDiscrete", "MultiBinary"),
    "SAC": ("Box", "BoxPow2", "BoxInt"),
    "TD3": ("Box", "BoxPow2", "BoxInt"),
    "DDPG": ("Box", "BoxPow2", "BoxInt"),
    "DQN": ("Discrete",),
}
OFF_POLICY = {"SAC", "TD3", "DDPG", "DQN", "QRDQN", "TQC", "CrossQ"}


def policy_name(obs_kind: str) -> str:
    if obs_kind == "Dict":
        return "MultiInputPolicy"
    if obs_kind.startswith("Image"):
        return "CnnPolicy"
    return "MlpPolicy"


def algorithm_class(name: str) -> Any:
    if hasattr(sb3, name):
        return getattr(sb3, name)
    if sb3_contrib is not None and hasattr(sb3_contrib, name):
        return getattr(sb3_contrib, name)
    return None


@functools.lru_cache(maxsize=None)
def build(algo: str, obs_kind: str, act_kind: str, policy: str | None = None, **extra: Any) -> Any:
    """A small untrained model (cached: tests must not change it, or must copy it)."""
    cls = algorithm_class(algo)
    env = SpaceEnv(observation_space(obs_kind), action_space(act_kind))
    kwargs: dict[str, Any] = {"device": "cpu", "seed": 0}
    policy_kwargs: dict[str, Any] = {"net_arch": [16]}
    if obs_kind == "Dict" or obs_kind.startswith("Image"):
        policy_kwargs["features_extractor_kwargs"] = {"features_dim": 16} if obs_kind != "Dict" else {"cnn_output_dim": 16}
    if algo in OFF_POLICY:
        kwargs["buffer_size"] = 16
        kwargs["learning_starts"] = 0
    if policy == "LinearPolicy":  # ARS's linear policy has no hidden layers
        policy_kwargs = {}
    if algo == "RecurrentPPO":
        policy_kwargs["lstm_hidden_size"] = 8
    kwargs.update(extra)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(policy or policy_name(obs_kind), env, policy_kwargs=policy_kwargs, **kwargs)


def saturate(model: Any, amount: float) -> Any:
    """A copy of the model whose first two Box action outputs are pushed to ``amount`` and ``-amount``
    (far outside [-1, 1] for a large ``amount``: the NumPy path then clips or unscales to the bounds)."""
    import copy

    import torch

    model = copy.deepcopy(model)
    policy = model.policy
    if hasattr(policy, "action_net"):  # PPO / A2C: the Gaussian mean
        layer = policy.action_net
    elif hasattr(policy.actor, "mu") and isinstance(policy.actor.mu, torch.nn.Linear):  # SAC
        layer = policy.actor.mu
    else:  # TD3 / DDPG: mu is Sequential(..., Linear, Tanh)
        layer = [module for module in policy.actor.mu if isinstance(module, torch.nn.Linear)][-1]
    with torch.no_grad():
        layer.bias.fill_(0.0)
        layer.bias[0] = amount
        layer.bias[1] = -amount
    return model


def assert_same_bits(got: Any, want: Any) -> None:
    """Assert bit-for-bit equality (the parity contract): same dtype, shape and bytes, except that a
    NaN matches a NaN in the same place whatever its bits; ``-0.0`` does not match ``0.0``.

    :param got: a tensor (read on the host) or an array
    :param want: an array (or a number)
    """
    import torch

    got = got.detach().cpu().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    want = np.asarray(want)
    assert got.dtype == want.dtype, f"dtype {got.dtype}, expected {want.dtype}"
    assert got.shape == want.shape, f"shape {got.shape}, expected {want.shape}"
    same = got == want
    if want.dtype.kind == "f":
        bits = f"u{want.dtype.itemsize}"
        same = (got.view(bits) == want.view(bits)) | (np.isnan(got) & np.isnan(want))
    assert np.all(same), f"not bit-identical:\n  got:      {got!r}\n  expected: {want!r}"


def sample_observations(space: Any, count: int, seed: int) -> list[Any]:
    space.seed(seed)
    return [space.sample() for _ in range(count)]


def stack(observations: list[Any]) -> Any:
    if isinstance(observations[0], dict):
        return {key: np.stack([obs[key] for obs in observations]) for key in observations[0]}
    return np.stack(observations)


def box_numpy(batch: int | None = 2, seed: int = 5) -> np.ndarray:
    """NumPy observations of ``observation_space("Box")``: a batch of ``batch``, or one for ``None``."""
    samples = sample_observations(observation_space("Box"), batch or 1, seed)
    return samples[0] if batch is None else stack(samples)


def dict_numpy(batch: int | None = None, seed: int = 3) -> dict[str, np.ndarray]:
    """NumPy observations of ``observation_space("Dict")``: a batch of ``batch``, or one for ``None``."""
    samples = sample_observations(observation_space("Dict"), batch or 1, seed)
    return {key: np.asarray(value) for key, value in samples[0].items()} if batch is None else stack(samples)


def numpy_dtype(tensor: Any) -> np.dtype[Any]:
    """The NumPy dtype of a tensor's dtype."""
    import torch

    return torch.empty(0, dtype=tensor.dtype).numpy().dtype


def assert_tensor_like(got: Any, want: Any) -> None:
    """``got`` is a CPU tensor with the shape, dtype and bits of the NumPy path's result ``want``."""
    import torch

    want = np.asarray(want)
    assert isinstance(got, torch.Tensor), f"expected a tensor, got {type(got).__name__}"
    assert got.device.type == "cpu"
    assert tuple(got.shape) == want.shape, f"shape {tuple(got.shape)}, NumPy path gives {want.shape}"
    assert numpy_dtype(got) == want.dtype, f"dtype {got.dtype}, NumPy path gives {want.dtype}"
    assert_same_bits(got, want)


def raw_observation_space(model: Any) -> Any:
    """The space users' observations come from (channel-last for ImageLast, before VecTransposeImage)."""
    env = model.get_env()
    inner = getattr(env, "venv", None)
    return (inner or env).observation_space


# -- what enable() replaces, and checks that disable() put it back --------------------------------


def _resolve_owner(module: str, owner: str) -> Any:
    obj: Any = importlib.import_module(module)
    for part in owner.split("."):
        obj = getattr(obj, part)
    return obj


@functools.lru_cache(maxsize=None)
def patch_targets() -> dict[str, tuple[Any, str]]:
    """Every ``(class, attribute)`` the selection for the installed versions patches, by target name,
    plus the names quietened for distribution validation (``validation.NAMES``: a module and a name,
    or a class and ``_validate_args``) and ``Distribution._validate_args`` (under :data:`VALIDATE`).

    Cached on first use (with the real installed versions), so that tests which pretend other
    versions still check the real targets.
    """
    from torch.distributions import Distribution

    from sb3_tensorpatch import validation
    from sb3_tensorpatch.table import select_rows

    selection = select_rows()
    found = {row.target: (_resolve_owner(row.module, row.owner), row.attribute) for row in selection.rows}
    packages = {row.package for row in selection.rows}
    for name in validation.NAMES:
        if name.package in packages:
            module = importlib.import_module(name.module)
            found[name.target] = (getattr(module, name.name), "_validate_args") if name.own else (module, name.name)
    found[VALIDATE] = (Distribution, "_validate_args")
    return found


def quiet_targets() -> set[str]:
    """The targets of :func:`patch_targets` that distribution validation changes (no wrappers there)."""
    from sb3_tensorpatch import validation

    return {name.target for name in validation.NAMES} & set(patch_targets())


def snapshot() -> dict[str, Any]:
    """What each class's ``__dict__`` holds now for each target (:data:`MISSING` if nothing)."""
    return {target: owner.__dict__.get(name, MISSING) for target, (owner, name) in patch_targets().items()}


def assert_originals(originals: dict[str, Any]) -> None:
    """Undo is exact: every class holds the very object it held in ``originals`` (a :func:`snapshot`)."""
    for target, (owner, name) in patch_targets().items():
        assert owner.__dict__.get(name, MISSING) is originals[target], f"{target} was not restored by identity"


def assert_patched(originals: dict[str, Any]) -> None:
    """Every target holds our wrapper directly around the original; torch's ``Distribution`` is never
    changed; SB3's distribution names are quiet once a route needed them, their originals until then."""
    from sb3_tensorpatch import validation, wrappers

    quiet = quiet_targets()
    for target, (owner, name) in patch_targets().items():
        entry = owner.__dict__.get(name, MISSING)
        if target == VALIDATE:
            assert entry is originals[target], f"{target} changed"
            continue
        if target in quiet:
            # armed by enable(), installed by the first tensor predict that builds a distribution
            if validation.state() == "armed":
                assert entry is originals[target], f"{target} changed before a route needed it"
            else:
                assert validation.state() == "patched", target
                if name == "_validate_args":  # a class quietened in place: the descriptor itself
                    assert isinstance(entry, validation.QuietDefault), target
                else:  # a name rebound: the quiet subclass of what it held
                    assert entry.__bases__ == (originals[target],), target
                    assert isinstance(entry.__dict__["_validate_args"], validation.QuietDefault), target
            continue
        assert entry is not originals[target], f"{target} is not patched"
        assert wrappers.is_wrapper(entry), f"{target}: {type(entry)}"
        assert entry.__wrapped__ is originals[target], f"{target} wraps something other than the original"


def force_restore(originals: dict[str, Any]) -> None:
    """Put every original back by hand (cleanup after tests that expose undo bugs)."""
    for target, (owner, name) in patch_targets().items():
        if owner.__dict__.get(name, MISSING) is not originals[target]:
            if originals[target] is MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, originals[target])


def takes_tensor_route(model: Any, observation: np.ndarray) -> bool:
    """Whether ``model.predict`` takes the tensor route (a tensor comes back)."""
    import torch

    actions, _ = model.predict(torch.as_tensor(observation), deterministic=True)
    return isinstance(actions, torch.Tensor)
