"""An SB3 ``VecEnv`` around a vectorised env whose outputs are torch tensors on one device.

GPU simulators (Isaac Lab, ManiSkill3, Genesis, a hand-written torch env, gymnasium's ``NumpyToTorch``
over a vector env) step every environment at once and hand back tensors. SB3 trains on a ``VecEnv``:
NumPy observations, float32 rewards, bool dones and one info dict per environment, with the
``terminal_observation`` of every finished episode, ``TimeLimit.truncated`` for the timeout bootstrap
and a ``Monitor``'s ``episode`` statistics. :class:`TensorVecEnv` is that adapter, written once:

- :meth:`TensorVecEnv.step_tensors` steps the env and returns a :class:`TensorStep` of tensors on the
  env's device: observations in the observation space's dtypes, float32 rewards, bool flags, the
  terminal observations of the finished environments as one batch, and the episode statistics. It
  reads nothing back to the host.
- :meth:`TensorVecEnv.step_wait` (the ``VecEnv`` interface, what SB3 calls) converts such a step to
  SB3's NumPy form. This is the host path: a device to host copy per step.

Autoreset must be same-step (SB3's semantics: the observation returned for a finished environment is
already its next episode's first one, and the terminal observation travels in ``info``). Gymnasium's
vector envs default to next-step autoreset, whose step after an episode end returns the reset
observation with reward 0 and no flag set: SB3 would learn a transition that never happened, so such
an env is refused. An env whose ``metadata`` says nothing about autoreset (ManiSkill3) is taken as
same-step.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple, Sequence, Union

import numpy as np
import torch
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import VecEnv

from .host import TORCH_DTYPES
from .notices import warn_once
from .sb3 import spaces

Tensor = torch.Tensor
#: observations as tensors: one tensor, or a dict of tensors for a ``Dict`` space
TensorObs = Union[Tensor, "dict[str, Tensor]"]

#: where envs put the terminal observations of a same-step autoreset, with the key of their valid-row mask:
#: gymnasium (and Isaac Lab, which has no mask: the rows of the finished envs are valid), then ManiSkill3
FINAL_OBSERVATION_KEYS = (("final_obs", "_final_obs"), ("final_observation", "_final_observation"))

SAME_STEP_HINT = (
    "create the env in same-step mode, e.g. gymnasium.make_vec(env_id, num_envs=..., "
    'vector_kwargs={"autoreset_mode": gymnasium.vector.AutoresetMode.SAME_STEP}) or '
    "gymnasium.vector.SyncVectorEnv(env_fns, autoreset_mode=gymnasium.vector.AutoresetMode.SAME_STEP)"
)


class TensorStep(NamedTuple):
    """One step of a :class:`TensorVecEnv`, as tensors on the env's device (nothing read back to the host).

    ``observations``, ``rewards``, ``dones``, ``final_observations``, ``final_valid``, ``episode_returns``
    and ``episode_lengths`` are the caller's to keep: the env's own buffers (which some envs overwrite in
    place every step) are never handed out through them, except ``terminated``, ``truncated`` and
    ``infos``, which are what the env returned.
    """

    #: the next observations (for finished environments: the first of their next episode), in the
    #: observation space's dtypes
    observations: TensorObs
    #: float32, shape ``(num_envs,)``
    rewards: Tensor
    #: ``terminated | truncated``, bool
    dones: Tensor
    #: bool, shape ``(num_envs,)``
    terminated: Tensor
    #: bool, shape ``(num_envs,)``; may be true together with ``terminated`` (ManiSkill3)
    truncated: Tensor
    #: the observations in which environments finished, in the rows where ``final_valid`` is true, and
    #: ``observations``' rows elsewhere (never NaN); ``None`` on a step where the env gave none
    final_observations: TensorObs | None
    #: bool, shape ``(num_envs,)``: the rows of ``final_observations`` that are terminal observations
    final_valid: Tensor | None
    #: float64: each environment's undiscounted return up to and including this step (a finished
    #: environment's episode return, summed in float64 as SB3's ``Monitor`` does)
    episode_returns: Tensor
    #: int64: each environment's episode length up to and including this step
    episode_lengths: Tensor
    #: the env's own info dict for this step
    infos: dict[str, Any]


def autoreset_mode(env: Any) -> str | None:
    """The autoreset mode that ``env.metadata["autoreset_mode"]`` declares, normalised.

    Gymnasium >= 1.0 uses ``gymnasium.vector.AutoresetMode`` (whose values are ``"NextStep"``,
    ``"SameStep"``, ``"Disabled"``); strings in any case, with or without ``_`` or ``-``, are read too.

    :param env: the vector env
    :return: ``"samestep"``, ``"nextstep"``, ``"disabled"``, another string as found, or ``None`` when the
        env declares nothing
    """
    metadata = getattr(env, "metadata", None) or {}
    mode = metadata.get("autoreset_mode")
    if mode is None:
        return None
    mode = getattr(mode, "value", mode)  # an AutoresetMode member
    return str(mode).lower().replace("_", "").replace("-", "")


def _check_autoreset(env: Any) -> None:
    mode = autoreset_mode(env)
    if mode is None or mode == "samestep":
        return
    if mode == "nextstep":
        raise ValueError(
            f"TensorVecEnv needs same-step autoreset, but {env} uses next-step autoreset (gymnasium's default): "
            "the step after an episode ends returns the reset observation with reward 0 and no done flag, "
            f"a transition SB3 would learn although it never happened. To train with SB3, {SAME_STEP_HINT}."
        )
    raise ValueError(
        f"TensorVecEnv needs same-step autoreset (SB3's VecEnv semantics), but {env} declares "
        f"autoreset_mode={env.metadata['autoreset_mode']!r}. To train with SB3, {SAME_STEP_HINT}."
    )


def _check_final_observations_convert(env: Any) -> None:
    """Refuse a torch conversion wrapper directly over a same-step gymnasium vector env.

    gymnasium's ``SyncVectorEnv`` and ``AsyncVectorEnv`` in same-step mode put the terminal observations in a
    NumPy object array (one entry per env, ``None`` where none finished), which DLPack cannot take:
    ``NumpyToTorch`` (gymnasium 1.4.0) raises ``BufferError`` at the first episode end, after the step
    already happened. Said before training starts instead.
    """
    try:
        from gymnasium.error import DependencyNotInstalled
        from gymnasium.vector import AsyncVectorEnv, SyncVectorEnv, VectorWrapper
    except ImportError:  # gym-based SB3 1.x, or gymnasium < 1.0: no such wrapper exists
        return
    if not isinstance(env, VectorWrapper):
        return
    conversions: list[type] = []
    # gymnasium raises its own DependencyNotInstalled (not an ImportError) where a wrapper module's
    # optional dependency is missing (gymnasium 1.0's numpy_to_torch imports JAX's wrappers)
    try:
        from gymnasium.wrappers.vector.array_conversion import ArrayConversion  # gymnasium >= 1.1

        conversions.append(ArrayConversion)
    except (ImportError, DependencyNotInstalled):  # older gymnasium, or array-api-compat missing
        pass
    try:
        from gymnasium.wrappers.vector.numpy_to_torch import NumpyToTorch

        conversions.append(NumpyToTorch)
    except (ImportError, DependencyNotInstalled):
        pass
    layer: Any = env
    while isinstance(layer, VectorWrapper):
        inner = layer.env
        if (
            isinstance(layer, tuple(conversions))
            and isinstance(inner, (SyncVectorEnv, AsyncVectorEnv))
            and autoreset_mode(inner) == "samestep"
        ):
            raise ValueError(
                f"{type(layer).__name__} directly over a same-step {type(inner).__name__} cannot convert the "
                "terminal observations: gymnasium keeps them in a NumPy object array (info['final_obs'], one "
                "entry per env), and DLPack refuses it with a BufferError at the first episode end. Put a "
                "vector wrapper between the two that stacks info['final_obs'] into one array (see "
                "'Training on a torch-native vectorised env' in sb3-tensorpatch's usage guide), or use "
                "SB3's DummyVecEnv / SubprocVecEnv for a NumPy env."
            )
        layer = inner


def host_copy(tensor: Tensor) -> np.ndarray:
    """A NumPy copy of ``tensor`` that no later write to the tensor reaches (also for CPU tensors, whose
    ``.numpy()`` would share their memory with an env buffer that the next step overwrites)."""
    return tensor.detach().to("cpu", copy=True).numpy()


class TensorVecEnv(VecEnv):  # type: ignore[misc]
    """An SB3 ``VecEnv`` around a vectorised env whose observations, rewards, terminations and truncations
    are torch tensors on one device.

    ``env`` follows ``gymnasium.vector.VectorEnv``'s interface: ``num_envs``, ``single_observation_space``,
    ``single_action_space``, ``reset(seed=..., options=...) -> (obs, info)`` and ``step(actions) -> (obs,
    rewards, terminated, truncated, info)``, with tensors (a dict of tensors for a ``Dict`` observation
    space). It must reset finished environments in the same step (see the module's documentation).
    Terminal observations are read from ``info["final_obs"]`` (gymnasium; Isaac Lab's ``extras``) or
    ``info["final_observation"]`` (ManiSkill3): one tensor (or dict of tensors) for all environments,
    valid in the rows that ``info["_final_obs"]`` / ``info["_final_observation"]`` mark, or in the rows of
    the finished environments when the env gives no mask (other rows may hold anything, NaN included);
    or a NumPy object array with one entry per environment (``None`` for those that did not finish).

    SB3's algorithms see a plain ``VecEnv``: NumPy observations in the observation space's dtypes,
    float32 rewards, bool dones, and per environment an info dict with ``TimeLimit.truncated``
    (truncated and not terminated) and, for a finished episode, ``terminal_observation`` and
    ``episode`` (``{"r", "l", "t"}``, as SB3's ``Monitor`` computes them: the return summed in float64 and
    rounded to 6 digits, the length, the seconds since this ``VecEnv`` was made, rounded to 6 digits).
    The env's own info entries are not copied into the per-environment dicts. SB3's actions (NumPy)
    reach the env as a tensor on its device, in the action space's dtype.

    :param env: the vectorised env
    :param observation_key: for an env whose observations are a dict, the one entry to use as the
        observations (Isaac Lab hands ``{"policy": tensor, ...}``: ``observation_key="policy"`` gives SB3
        a ``Box`` space and ``MlpPolicy``, as Isaac Lab's own SB3 wrapper does). By default a dict is
        SB3's ``Dict`` observation (``MultiInputPolicy``).
    """

    def __init__(self, env: Any, observation_key: str | None = None) -> None:
        _check_autoreset(env)
        _check_final_observations_convert(env)
        self.env = env
        self.observation_key = observation_key
        observation_space = env.single_observation_space
        if observation_key is not None:
            if not isinstance(observation_space, spaces.Dict) or observation_key not in observation_space.spaces:
                raise ValueError(
                    f"observation_key={observation_key!r} needs a Dict observation space with that key, "
                    f"but the env's single_observation_space is {observation_space}"
                )
            observation_space = observation_space.spaces[observation_key]
        #: the keys of a Dict observation space, ``None`` for any other space
        self.keys: tuple[str, ...] | None = (
            tuple(observation_space.spaces) if isinstance(observation_space, spaces.Dict) else None
        )
        subspaces = observation_space.spaces if self.keys is not None else {None: observation_space}
        self._observation_dtypes = {key: TORCH_DTYPES[np.dtype(space.dtype)] for key, space in subspaces.items()}
        # (num_envs, 1, ...) for each observation: a per-env mask broadcast over one observation's shape
        self._row_shapes = {key: (-1,) + (1,) * len(space.shape) for key, space in subspaces.items()}
        action_space = env.single_action_space
        self._action_dtype = TORCH_DTYPES[np.dtype(action_space.dtype)]
        self._device: torch.device | None = None
        self._actions: Tensor | None = None
        self._returns: Tensor | None = None
        self._lengths: Tensor | None = None
        self._seed: int | None = None
        self._t_start = time.time()  # as Monitor: episode times count from the wrapper's construction
        super().__init__(env.num_envs, observation_space, action_space)
        # SB3 2.x's VecEnv has these (set_options() fills the options); 1.x's has neither
        self._options: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]

    # -- the tensor interface (no host reads) -----------------------------------------------------

    @property
    def device(self) -> torch.device:
        """The device of the env's tensors (known from the first :meth:`reset`)."""
        if self._device is None:
            raise RuntimeError("TensorVecEnv: the env's device is known after the first reset()")
        return self._device

    def reset_tensors(self) -> TensorObs:
        """Reset every environment (with the seed and options set since the last reset) and return the
        first observations as tensors on the env's device, in the observation space's dtypes."""
        kwargs: dict[str, Any] = {"seed": self._seed}
        options = self._options
        if any(options):
            if any(option != options[0] for option in options):
                raise ValueError(
                    "TensorVecEnv: a vectorised env takes one options dict for all its environments, "
                    "but set_options() was given different options per environment"
                )
            kwargs["options"] = options[0]
        observations, _ = self.env.reset(**kwargs)
        # the seed and the options are used once, as in SB3's own VecEnvs
        self._seed = None
        self._options = [{} for _ in range(self.num_envs)]
        self.reset_infos = [{} for _ in range(self.num_envs)]
        observations = self._observations(observations, keep=True, check=True)
        first = observations if isinstance(observations, Tensor) else next(iter(observations.values()))
        self._device = first.device
        self._returns = torch.zeros(self.num_envs, dtype=torch.float64, device=first.device)
        self._lengths = torch.zeros(self.num_envs, dtype=torch.int64, device=first.device)
        return observations

    def step_tensors(self, actions: Tensor) -> TensorStep:
        """Step every environment with ``actions`` (a tensor on the env's device, in the action space's
        dtype) and return the step as tensors; reads nothing back to the host.

        :param actions: shape ``(num_envs, *action_shape)``
        """
        return self._step(actions, keep=True)

    def _step(self, actions: Tensor, keep: bool) -> TensorStep:
        """:meth:`step_tensors`; with ``keep=False`` the observations and rewards may be the env's own
        buffers (for a caller that copies them at once, as the host path does)."""
        if self._returns is None or self._lengths is None:
            raise RuntimeError("TensorVecEnv: call reset() before step()")
        observations, rewards, terminated, truncated, infos = self.env.step(actions)
        observations = self._observations(observations, keep)
        terminated = terminated.to(torch.bool)
        truncated = truncated.to(torch.bool)
        dones = terminated | truncated
        final, valid = self._final_observations(infos, observations, dones)
        # Monitor's statistics: the return is a float64 sum of the env's own rewards
        episode_returns = self._returns + rewards.to(torch.float64)
        episode_lengths = self._lengths + 1
        self._returns = episode_returns.masked_fill(dones, 0.0)
        self._lengths = episode_lengths.masked_fill(dones, 0)
        return TensorStep(
            observations=observations,
            # float32 as SB3's VecEnvs; a copy when the env's rewards are float32 already (SB3 adds the
            # timeout bootstrap to its rewards in place)
            rewards=rewards.to(torch.float32, copy=keep),
            dones=dones,
            terminated=terminated,
            truncated=truncated,
            final_observations=final,
            final_valid=valid,
            episode_returns=episode_returns,
            episode_lengths=episode_lengths,
            infos=infos,
        )

    def _observations(self, observations: Any, keep: bool, check: bool = False) -> TensorObs:
        """The env's observations in the observation space's dtypes; copies of the env's buffers if ``keep``;
        their type checked if ``check`` (at reset: once, not per step)."""
        if self.observation_key is not None:
            observations = observations[self.observation_key]
        if check:
            self._check_tensors(observations)
        if self.keys is None:
            return self._cast(observations, None, keep)
        return {key: self._cast(observations[key], key, keep) for key in self.keys}

    def _cast(self, tensor: Tensor, key: str | None, keep: bool) -> Tensor:
        return tensor.to(self._observation_dtypes[key], copy=keep)

    def _check_tensors(self, observations: Any) -> None:
        values = [observations] if self.keys is None else [observations.get(key) for key in self.keys]
        if not all(isinstance(value, Tensor) for value in values):
            kind = "a dict of torch tensors" if self.keys is not None else "a torch tensor"
            raise TypeError(
                f"TensorVecEnv takes an env whose observations are torch tensors: expected {kind} "
                f"(keys {list(self.keys or ())}), got {type(observations).__name__}. For an env of NumPy "
                "arrays, use SB3's DummyVecEnv or SubprocVecEnv."
            )

    def _final_observations(
        self, infos: dict[str, Any], observations: TensorObs, dones: Tensor
    ) -> tuple[TensorObs | None, Tensor | None]:
        """The terminal observations found in ``infos`` as one batch, with their valid rows."""
        for key, mask_key in FINAL_OBSERVATION_KEYS:
            if key in infos:
                final, mask = infos[key], infos.get(mask_key)
                break
        else:
            return None, None
        if isinstance(final, np.ndarray) and final.dtype == object:
            return self._stack_final_rows(final, mask, observations)
        if self.observation_key is not None:
            final = final[self.observation_key]
        # without a mask, the finished environments' rows are the valid ones (Isaac Lab: every row is
        # an observation; ManiSkill3 and gymnasium give a mask)
        valid = dones if mask is None else torch.as_tensor(mask, device=dones.device).to(torch.bool)
        # where, not a product: the other rows may be NaN
        if self.keys is None:
            return self._fill(final, None, valid, observations), valid
        assert isinstance(observations, dict)
        return {key: self._fill(final[key], key, valid, observations[key]) for key in self.keys}, valid

    def _fill(self, final: Any, key: str | None, valid: Tensor, observations: Any) -> Tensor:
        final = torch.as_tensor(final, device=observations.device).to(self._observation_dtypes[key])
        return torch.where(valid.view(self._row_shapes[key]), final, observations)

    def _stack_final_rows(self, final: np.ndarray, mask: Any, observations: TensorObs) -> tuple[TensorObs, Tensor]:
        """Gymnasium's layout: an object array with one terminal observation (or ``None``) per environment.

        A host-side loop over the finished environments only; the entries may be tensors, arrays or dicts.
        """
        if mask is None:
            rows = [index for index, entry in enumerate(final) if entry is not None]
        else:
            mask = mask.detach().cpu().numpy() if isinstance(mask, Tensor) else np.asarray(mask)
            rows = np.flatnonzero(mask).tolist()
        stacked = (
            observations.clone()
            if isinstance(observations, Tensor)
            else {k: v.clone() for k, v in observations.items()}
        )
        for index in rows:
            entry = final[index]
            if self.observation_key is not None:
                entry = entry[self.observation_key]
            if isinstance(stacked, Tensor):
                stacked[index] = torch.as_tensor(entry, device=stacked.device)
            else:
                for key, batch in stacked.items():
                    batch[index] = torch.as_tensor(entry[key], device=batch.device)
        valid = torch.zeros(self.num_envs, dtype=torch.bool)
        valid[rows] = True
        return stacked, valid.to(self.device)

    # -- the VecEnv interface: the host path ------------------------------------------------------

    def reset(self) -> Any:
        """Reset every environment; return the first observations as NumPy arrays (a dict for ``Dict``)."""
        return self._host_observations(self.reset_tensors())

    def step_async(self, actions: np.ndarray) -> None:
        """Keep SB3's actions for :meth:`step_wait`, as a tensor on the env's device in the action space's dtype."""
        self._actions = torch.as_tensor(actions, dtype=self._action_dtype, device=self.device)

    def step_wait(self) -> tuple[Any, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        """Step with the actions of :meth:`step_async`; return SB3's ``(obs, rewards, dones, infos)`` in NumPy."""
        if self._actions is None:
            raise RuntimeError("TensorVecEnv: step_async() must be called before step_wait()")
        step = self._step(self._actions, keep=False)
        self._actions = None
        observations = self._host_observations(step.observations)
        rewards = host_copy(step.rewards)
        terminated = host_copy(step.terminated)
        truncated = host_copy(step.truncated)
        dones = terminated | truncated
        # as SB3's DummyVecEnv: in every info, true for a timeout only (bootstrap the value)
        infos: list[dict[str, Any]] = [{"TimeLimit.truncated": flag} for flag in (truncated & ~terminated).tolist()]
        finished = np.flatnonzero(dones).tolist()
        if finished:
            self._finish_episodes(step, finished, infos)
        return observations, rewards, dones, infos

    def _finish_episodes(self, step: TensorStep, finished: list[int], infos: list[dict[str, Any]]) -> None:
        """Add ``terminal_observation`` and Monitor's ``episode`` to the infos of the finished environments."""
        seconds = round(time.time() - self._t_start, 6)
        returns = host_copy(step.episode_returns).tolist()
        lengths = host_copy(step.episode_lengths).tolist()
        final = None if step.final_observations is None else self._host_observations(step.final_observations)
        valid = None if step.final_valid is None else host_copy(step.final_valid)
        missing = False
        for index in finished:
            info = infos[index]
            if final is not None and valid is not None and valid[index]:
                info["terminal_observation"] = (
                    final[index]
                    if isinstance(final, np.ndarray)
                    else {key: value[index] for key, value in final.items()}
                )
            else:
                missing = True
            info["episode"] = {"r": round(returns[index], 6), "l": lengths[index], "t": seconds}
        if missing:
            warn_once(
                ("final-obs", id(self.env)),
                "TensorVecEnv: environments finished without a terminal observation in the env's info "
                f"(looked for {', '.join(key for key, _ in FINAL_OBSERVATION_KEYS)}); their infos have no "
                "'terminal_observation', so SB3 does not bootstrap their timeouts",
            )

    def _host_observations(self, observations: TensorObs) -> Any:
        if isinstance(observations, Tensor):
            return host_copy(observations)
        return {key: host_copy(value) for key, value in observations.items()}

    def seed(self, seed: int | None = None) -> Sequence[int | None]:
        """Seed the next :meth:`reset` (SB3's VecEnv API): the env is reset with ``seed`` and, as gymnasium's
        vector envs do, seeds its environments ``seed``, ``seed + 1``, ...

        :param seed: the seed; ``None`` draws one from NumPy's global generator, as SB3 does
        :return: the seed of each environment
        """
        if seed is None:
            seed = int(np.random.randint(0, np.iinfo(np.uint32).max, dtype=np.uint32))
        self._seed = seed
        return [seed + index for index in range(self.num_envs)]

    def close(self) -> None:
        self.env.close()

    # A vectorised env is one object: its attributes and methods are those of all its environments at once.

    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        """The env's attribute ``attr_name``, once per environment of ``indices`` (the env is one object).

        :raises AttributeError: when the env has no such attribute
        """
        value = getattr(self.env, attr_name)
        return [value for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        """Set the env's attribute ``attr_name``: for all environments at once (``indices`` must cover them all)."""
        self._check_all(indices, "set an attribute")
        setattr(self.env, attr_name, value)

    def env_method(self, method_name: str, *method_args: Any, indices: Any = None, **method_kwargs: Any) -> list[Any]:
        """Call the env's method ``method_name`` once, for all environments (``indices`` must cover them all);
        return its result once per environment."""
        self._check_all(indices, "call a method")
        result = getattr(self.env, method_name)(*method_args, **method_kwargs)
        return [result for _ in range(self.num_envs)]

    def env_is_wrapped(self, wrapper_class: type, indices: Any = None) -> list[bool]:
        """Whether the environments are wrapped in ``wrapper_class``: true for SB3's ``Monitor`` only, whose
        ``episode`` statistics this VecEnv adds itself (so that ``evaluate_policy`` counts whole episodes)."""
        wrapped = isinstance(wrapper_class, type) and issubclass(Monitor, wrapper_class)
        return [wrapped for _ in self._get_indices(indices)]

    def _check_all(self, indices: Any, what: str) -> None:
        if sorted(set(self._get_indices(indices))) != list(range(self.num_envs)):
            raise ValueError(
                f"TensorVecEnv: cannot {what} for some of the environments only (indices={indices!r}): "
                "the vectorised env is one object"
            )
