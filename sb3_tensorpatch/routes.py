"""The tensor routes: SB3's ``predict`` algorithms restated for tensors on their device.

Each route factory takes SB3's original method and the table row's options (keyword-only) and
returns a function with the patched method's own parameters (``self`` first). The patcher calls it only for tensor input; everything else goes to
SB3's original method. A route validates its input first, then calls the policy's ``_predict``
with autograd off and argument validation off for SB3's distributions in this thread, then post-processes
on the device. It never reads a value back to the host.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from torch.distributions import Categorical

from . import host, normalization
from .errors import SizeMismatchError, StatePairError
from .observations import batch_size, check_reachable
from .plans import PolicyPlan, plan_for
from .rollouts import collect_rollouts_route
from .validation import _local as _validation
from .validation import _slot as _validation_slot
from .validation import install as _install_validation
from .wrappers import tensor_route

if TYPE_CHECKING:
    from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
    from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
    from stable_baselines3.common.policies import BasePolicy

Tensor = torch.Tensor
Route = Callable[..., Any]

_grad_enabled = torch.is_grad_enabled
_set_grad = torch._C._set_grad_enabled


def _finished(plan: PolicyPlan, vectorized: bool, reshape: bool, predict: Callable[..., Tensor], *args: Any, **kwargs: Any) -> Tensor:
    """``predict(*args, **kwargs)``, post-processed as SB3's ``predict`` does, on the policy's device.

    The routes run it through :func:`_quiet`: post-processing too runs with autograd off, where each
    op costs about half as much.
    """
    return plan.actions.finish(predict(*args, **kwargs), vectorized, reshape)


def _back(actions: Tensor, device: torch.device, target: torch.device) -> Tensor:
    """The actions on the input's ``device`` (they were computed on the policy's ``target``)."""
    return actions if device == target else actions.to(device)


def _quiet(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``call`` with autograd off and validation off for the distributions SB3 builds in this thread."""
    if not _validation_slot.installed:
        _install_validation()  # once per enable(): see validation.py
    grad = _grad_enabled()
    previous = _validation.off
    _set_grad(False)
    _validation.off = True
    try:
        return call(*args, **kwargs)
    finally:
        _validation.off = previous
        _set_grad(grad)


def _lowered_finished(plan: PolicyPlan, actions: Callable[[Tensor, bool], Tensor], vectorized: bool, reshape: bool, obs: Tensor, deterministic: bool) -> Tensor:
    """:func:`_finished` for a lowered ``_predict``, with autograd off (it builds no distribution, so
    validation needs no switching off)."""
    grad = _grad_enabled()
    _set_grad(False)
    try:
        return plan.actions.finish(actions(obs, deterministic), vectorized, reshape)
    finally:
        _set_grad(grad)


def policy_route(original: Route, *, reshape: bool = True) -> Route:
    """``BasePolicy.predict`` for tensors.

    :param original: SB3's ``predict``, for policies whose overrides need SB3's own path
    :param reshape: reshape the actions to the action shape first (every supported release)
    """

    def predict(
        policy: BasePolicy,
        observation: Tensor | dict[str, Tensor],
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = False,
    ) -> tuple[Tensor, Any]:
        plan = plan_for(policy)
        if plan.host is not None:
            return host.round_trip(original, policy, plan.host, observation, state, episode_start, deterministic)  # type: ignore[no-any-return]
        obs, vectorized, device, target = plan.prepare(policy, observation)
        lowered = plan.lowered
        if lowered is not None and lowered.live():
            actions = _lowered_finished(plan, lowered.run, vectorized, reshape, obs, deterministic)
        else:
            actions = _quiet(_finished, plan, vectorized, reshape, policy._predict, obs, deterministic=deterministic)
        return _back(actions, device, target), state

    return predict


def epsilon_greedy_route(original: Route) -> Route:
    """``DQN.predict`` / ``QRDQN.predict`` for tensors: random actions are drawn on the device.

    :param original: SB3's ``predict``, for policies whose overrides need SB3's own path
    """

    def predict(
        model: Any,
        observation: Tensor | dict[str, Tensor],
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = False,
    ) -> tuple[Tensor, Any]:
        policy = model.policy
        plan = plan_for(policy)
        if plan.random_host is not None:
            return host.round_trip(original, model, plan.random_host, observation, state, episode_start, deterministic)  # type: ignore[no-any-return]
        # the same draw from numpy's global generator as SB3, so seeding behaves the same
        if not deterministic and np.random.rand() < model.exploration_rate:
            obs, vectorized, device = plan.obs.prepare(observation)
            check_reachable(device, plan.device())
            space = model.action_space
            start = int(getattr(space, "start", 0))
            size = (batch_size(obs),) if vectorized else ()
            actions = torch.randint(start, start + int(space.n), size, device=device, dtype=torch.int64)
            return actions, state
        # straight to the policy's tensor route when its predict is ours (one wrapper pass, not two)
        direct = tensor_route(type(policy), "predict")
        if direct is not None:
            return direct(policy, observation, state, episode_start, deterministic)  # type: ignore[no-any-return]
        return policy.predict(observation, state, episode_start, deterministic)  # type: ignore[no-any-return]

    return predict


def _mask_width(space: Any) -> int:
    if hasattr(space, "nvec"):
        return int(np.sum(space.nvec))
    if hasattr(space, "n") and getattr(space, "shape", ()) != ():
        return 2 * int(np.prod(space.shape))  # MultiBinary: two logits per binary action
    return int(space.n)


#: how the maskable route applies the masks: with contrib's own ``apply_masking`` (which uploads a
#: constant on every call), or restated for contrib's standard classes with one sub-distribution
#: (Discrete actions) or several (MultiDiscrete, MultiBinary)
_CONTRIB_MASKING, _SINGLE, _MULTI = 0, 1, 2
_mask_kinds: dict[tuple[type, type], int] = {}


def _mask_kind(policy: MaskableActorCriticPolicy) -> int:
    """How to mask ``policy``'s distribution, decided once per (policy class, distribution class).

    The route restates the masking only where nothing can differ from contrib's: the policy's
    ``_predict`` and ``get_distribution`` and the distribution's ``proba_distribution`` and
    ``apply_masking`` are contrib's own (so the sub-distributions are contrib's ``MaskableCategorical``).
    """
    key = (type(policy), type(policy.action_dist))
    kind = _mask_kinds.get(key)
    if kind is None:
        from sb3_contrib.common.maskable import distributions
        from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy as Base

        kind = _CONTRIB_MASKING
        if all(getattr(key[0], name) is getattr(Base, name) for name in ("_predict", "get_distribution")):
            for cls, found in (
                (distributions.MaskableCategoricalDistribution, _SINGLE),
                (distributions.MaskableMultiCategoricalDistribution, _MULTI),  # MultiBinary's too
            ):
                if all(getattr(key[1], name) is getattr(cls, name) for name in ("proba_distribution", "apply_masking")):
                    kind = found
        _mask_kinds[key] = kind
    return kind


#: contrib's logit for a masked-out action
_HUGE_NEG = -1e8


def _masked_actions(
    policy: MaskableActorCriticPolicy, obs: Any, masks: Tensor, deterministic: bool, kind: int, constants: dict[tuple[torch.dtype, torch.device], Tensor]
) -> Tensor:
    """The maskable policy's ``_predict`` with ``masks`` (bool, on the policy's device), without a host sync.

    contrib's ``MaskableCategorical.apply_masking`` makes its ``-1e8`` with ``th.tensor(-1e8,
    device=...)`` for every sub-distribution on every call: a blocking host->device copy. This
    restates it with that constant made once per (dtype, device) in ``constants`` (the same
    expression, so the same value) and otherwise contrib's own ops in contrib's order: the masks
    reshaped to the logits, ``torch.where(masks, original logits, constant)``, the cached ``probs``
    dropped and ``Categorical.__init__`` run again on the masked logits. The distribution ends in the
    state contrib leaves it in, and deterministic and sampled actions (same torch seed) are the same.

    Relies on contrib's ``MaskableCategorical`` keeping the unmasked logits in ``_original_logits``
    and the masks in ``masks``, and on ``distribution`` / ``distributions`` and ``action_dims`` of
    its distributions, as in every release from 1.8.0 to 2.9.2 (1.8.0 recomputed ``probs`` eagerly
    after masking, to the same values as the lazy property).
    """
    distribution: Any = policy.get_distribution(obs)  # one of the two classes _mask_kind found
    if kind == _SINGLE:
        parts = [distribution.distribution]
        split: tuple[Tensor, ...] = (masks,)
    else:
        parts = distribution.distributions
        # ints: older contrib keeps action_dims as the space's numpy nvec, which torch.split refuses
        sizes = [int(size) for size in distribution.action_dims]
        split = torch.split(masks.reshape(parts[0].logits.shape[0], -1), sizes, dim=1)
    for part, mask in zip(parts, split):
        logits = part.logits
        key = (logits.dtype, logits.device)
        huge_neg = constants.get(key)
        if huge_neg is None:
            huge_neg = constants[key] = torch.tensor(_HUGE_NEG, dtype=logits.dtype, device=logits.device)
        part.masks = mask.reshape(logits.shape)
        part.__dict__.pop("probs", None)
        Categorical.__init__(part, logits=torch.where(part.masks, part._original_logits, huge_neg), validate_args=part._validate_args)
    return distribution.get_actions(deterministic=deterministic)  # type: ignore[no-any-return]


def maskable_route(original: Route, *, reshape: bool = True, returns_state: bool = True) -> Route:
    """``MaskableActorCriticPolicy.predict`` for tensors, with ``action_masks`` as a tensor.

    :param original: contrib's ``predict``, for policies whose overrides need SB3's own path
    :param reshape: reshape the actions before clipping (contrib >= 2.8.0)
    :param returns_state: return the given state, not ``None`` (contrib >= 2.3.0)
    """
    # the masking constant per (dtype, device), kept as long as the patch is (see _masked_actions)
    constants: dict[tuple[torch.dtype, torch.device], Tensor] = {}

    def predict(
        policy: MaskableActorCriticPolicy,
        observation: Tensor | dict[str, Tensor],
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = False,
        action_masks: Any = None,
    ) -> tuple[Tensor, Any]:
        plan = plan_for(policy)
        if plan.host is not None:
            return host.round_trip(original, policy, plan.host, observation, state, episode_start, deterministic, action_masks)  # type: ignore[no-any-return]
        obs, vectorized, device, target = plan.prepare(policy, observation)
        kind = _CONTRIB_MASKING  # without masks, contrib's _predict masks nothing
        if action_masks is not None:
            masks = action_masks if isinstance(action_masks, Tensor) else torch.as_tensor(np.asarray(action_masks))
            expected = batch_size(obs) * _mask_width(policy.action_space)
            if masks.numel() != expected:
                raise SizeMismatchError(
                    f"Error: Unexpected action_masks shape {tuple(masks.shape)}: expected {expected} values "
                    f"({batch_size(obs)} observation(s) x {expected // max(batch_size(obs), 1)} per observation "
                    f"for {policy.action_space})."
                )
            action_masks = masks.to(target, torch.bool)
            kind = _mask_kind(policy)
        if kind == _CONTRIB_MASKING:
            actions = _quiet(_finished, plan, vectorized, reshape, policy._predict, obs, deterministic=deterministic, action_masks=action_masks)
        else:
            actions = _quiet(_finished, plan, vectorized, reshape, _masked_actions, policy, obs, action_masks, deterministic, kind, constants)
        return _back(actions, device, target), (state if returns_state else None)

    return predict


def _check_states(state: Any, shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    if not (isinstance(state, (tuple, list)) and len(state) == 2):
        raise StatePairError(
            f"Error: Unexpected LSTM state {type(state).__name__}: expected a tuple (hidden, cell) of "
            f"tensors of shape {shape}."
        )
    pair = tuple(value if isinstance(value, Tensor) else torch.as_tensor(np.asarray(value)) for value in state)
    for value in pair:
        if tuple(value.shape) != shape:
            raise SizeMismatchError(
                f"Error: Unexpected LSTM state shape {tuple(value.shape)}: expected {shape} "
                "(n_lstm_layers, n_envs, lstm_hidden_size)."
            )
    return pair  # type: ignore[return-value]


def _recurrent_actions(policy: RecurrentActorCriticPolicy, obs: Any, states: tuple[Tensor, Tensor], starts: Tensor, deterministic: bool) -> Any:
    """The recurrent policy's ``_predict`` for one step, without its host read.

    contrib's ``_process_sequence`` picks between two equivalent code paths with
    ``if th.all(episode_starts == 0.0)``: a host read on every call. For the one-step sequences of
    ``predict`` both paths compute the same values (the reset multiplies the states by exactly 1.0
    where no episode starts), so the route always takes the resetting one, with no branch on a
    tensor. Subclasses that override any of these methods get their own ``_predict`` instead.
    """
    if not _standard_recurrent(type(policy)):
        return policy._predict(obs, lstm_states=states, episode_starts=starts, deterministic=deterministic)
    from stable_baselines3.common.policies import BaseModel

    features = BaseModel.extract_features(policy, obs, policy.pi_features_extractor)
    keep = (1.0 - starts).view(1, starts.shape[0], 1)
    hidden, new_states = policy.lstm_actor(features.unsqueeze(dim=0), (keep * states[0], keep * states[1]))
    latent = policy.mlp_extractor.forward_actor(_flatten_steps(hidden))
    return policy._get_action_dist_from_latent(latent).get_actions(deterministic=deterministic), new_states


def _flatten_steps(hidden: Tensor) -> Tensor:
    """(1, n_envs, hidden) LSTM output to (n_envs, hidden), as contrib's ``_process_sequence``."""
    return torch.flatten(hidden.transpose(0, 1), start_dim=0, end_dim=1)


_standard: dict[type, bool] = {}


def _standard_recurrent(cls: type) -> bool:
    known = _standard.get(cls)
    if known is None:
        from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy as Base

        names = ("_predict", "get_distribution", "_process_sequence", "extract_features")
        known = _standard[cls] = all(getattr(cls, name) is getattr(Base, name) for name in names)
    return known


def recurrent_route(original: Route, *, reshape: bool = True) -> Route:
    """``RecurrentActorCriticPolicy.predict`` for tensors: LSTM states in and out as tensors.

    :param original: contrib's ``predict``, for policies whose overrides need SB3's own path
    :param reshape: reshape the actions before clipping (contrib >= 2.8.0)
    """

    def predict(
        policy: RecurrentActorCriticPolicy,
        observation: Tensor | dict[str, Tensor],
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = False,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        plan = plan_for(policy)
        if plan.host is not None:
            return host.round_trip(original, policy, plan.host, observation, state, episode_start, deterministic)  # type: ignore[no-any-return]
        obs, vectorized, device, target = plan.prepare(policy, observation)
        n_envs = batch_size(obs)
        layers, _, hidden = policy.lstm_hidden_state_shape
        shape = (layers, n_envs, hidden)
        if state is None:
            zeros = torch.zeros(shape, dtype=torch.float32, device=target)
            states = (zeros, zeros)
        else:
            checked = _check_states(state, shape)
            states = (checked[0].to(target, torch.float32), checked[1].to(target, torch.float32))
        if episode_start is None:
            starts = torch.zeros(n_envs, dtype=torch.float32, device=target)
        else:
            starts = episode_start if isinstance(episode_start, Tensor) else torch.as_tensor(np.asarray(episode_start))
            if starts.numel() != n_envs:
                raise SizeMismatchError(
                    f"Error: Unexpected episode_start shape {tuple(starts.shape)}: expected {n_envs} value(s), "
                    "one per environment."
                )
            # contrib takes any shape with one value per env (a bool, (n_envs,), (1, n_envs), ...)
            starts = starts.to(target, torch.float32).reshape(n_envs)
        raw, new_states = _quiet(_recurrent_actions, policy, obs, states, starts, deterministic)
        actions = _back(_quiet(plan.actions.finish, raw, vectorized, reshape), device, target)
        if device != target:
            new_states = tuple(value.to(device) for value in new_states)
        return actions, (new_states[0], new_states[1])

    return predict


def _fixed(function: Callable[..., Any]) -> Callable[..., Route]:
    """A route factory for a route that takes neither options nor the original."""

    def factory(original: Route) -> Route:
        return function

    return factory


#: route name (as written in the patch table) to route factory: ``factory(SB3's original, **row options)``;
#: the options are keyword-only, so an option the factory does not know fails at ``enable()``
ROUTES: dict[str, Callable[..., Route]] = {
    "policy": policy_route,
    "epsilon_greedy": epsilon_greedy_route,
    "maskable": maskable_route,
    "recurrent": recurrent_route,
    "normalize_obs": normalization.normalize_obs_route,
    "unnormalize_obs": normalization.unnormalize_obs_route,
    "normalize_reward": normalization.normalize_reward_route,
    "unnormalize_reward": _fixed(normalization.unnormalize_reward),
    "collect_rollouts": collect_rollouts_route,
}
