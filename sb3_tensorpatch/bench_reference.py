"""The bench's two reference columns: the actor's modules alone (``eager``) and that actor traced.

What a user who gives up SB3's ``predict`` runs instead: the policy's networks called directly, as in
SB3's export guide (``docs/guide/export.rst``), deterministic, with none of SB3's layers around them
(no ``predict``, no distribution objects where the algorithm does not build them itself, no
clipping, unscaling or reshaping). Its actions are therefore those of ``policy._predict(obs,
deterministic=True)`` before SB3's post-processing, which :func:`check_actions` verifies before a
case is timed.

Imported by the bench only, lazily: it imports torch and SB3 at module level.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from stable_baselines3.common.distributions import CategoricalDistribution, DiagGaussianDistribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.dqn.policies import DQNPolicy
from stable_baselines3.sac.policies import SACPolicy
from stable_baselines3.td3.policies import TD3Policy
from torch import nn


class OnPolicyActor(nn.Module):
    """PPO / A2C: ``pi_features_extractor`` -> ``mlp_extractor.policy_net`` -> ``action_net``.

    The Gaussian's mode is its mean (the output of ``action_net``); a Categorical's mode is the
    argmax of its logits (SB3 takes it of the probabilities, ``softmax(logits)``, which has the
    same argmax unless rounding makes two probabilities equal).
    """

    def __init__(self, policy: ActorCriticPolicy) -> None:
        super().__init__()
        if not isinstance(policy.action_dist, (DiagGaussianDistribution, CategoricalDistribution)):
            raise ValueError(f"no reference actor for {type(policy.action_dist).__name__}")
        self.features_extractor = policy.pi_features_extractor
        self.policy_net = policy.mlp_extractor.policy_net
        self.action_net = policy.action_net
        self.discrete = isinstance(policy.action_dist, CategoricalDistribution)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.action_net(self.policy_net(self.features_extractor(obs)))
        # a Python flag: tracing records only the branch taken
        return out.argmax(dim=1) if self.discrete else out


class SACActor(nn.Module):
    """SAC: ``features_extractor`` -> ``latent_pi`` -> ``mu``, squashed: ``tanh(mean)``, the mode of SB3's
    squashed Gaussian (``policy.actor(obs, deterministic=True)`` builds distribution objects to get it)."""

    def __init__(self, policy: SACPolicy) -> None:
        super().__init__()
        self.features_extractor = policy.actor.features_extractor
        self.latent_pi = policy.actor.latent_pi
        self.mu = policy.actor.mu

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.mu(self.latent_pi(self.features_extractor(obs))))


class TD3Actor(nn.Module):
    """TD3: ``features_extractor`` -> ``mu`` (which ends in ``Tanh``; deterministic by construction)."""

    def __init__(self, policy: TD3Policy) -> None:
        super().__init__()
        self.features_extractor = policy.actor.features_extractor
        self.mu = policy.actor.mu

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.mu(self.features_extractor(obs))
        return out


class DQNActor(nn.Module):
    """DQN: the greedy action, ``argmax`` of ``q_net.features_extractor`` -> ``q_net.q_net``."""

    def __init__(self, policy: DQNPolicy) -> None:
        super().__init__()
        self.features_extractor = policy.q_net.features_extractor
        self.q_net = policy.q_net.q_net

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.q_net(self.features_extractor(obs)).argmax(dim=1)
        return out


def eager_actor(policy: Any) -> nn.Module:
    """The reference actor of ``policy``'s algorithm, in eval mode, sharing the policy's modules.

    :param policy: a PPO / A2C ``ActorCriticPolicy`` (Box or Discrete actions), a SAC, TD3 or DQN policy
    :raises ValueError: for any other policy or action distribution
    """
    actor: nn.Module
    if isinstance(policy, ActorCriticPolicy):
        actor = OnPolicyActor(policy)
    elif isinstance(policy, SACPolicy):
        actor = SACActor(policy)
    elif isinstance(policy, TD3Policy):
        actor = TD3Actor(policy)
    elif isinstance(policy, DQNPolicy):
        actor = DQNActor(policy)
    else:
        raise ValueError(f"no reference actor for {type(policy).__name__}")
    # as SB3's export guide does before tracing; predict() puts the policy in eval mode on every call too
    return actor.eval()


def traced_actor(actor: nn.Module, example: torch.Tensor) -> Any:
    """``torch.jit.trace(actor, example)``, the export SB3's guide shows, traced under ``no_grad``.

    Tracing warns where Python reads a tensor (SAC's distribution argument checks, which the trace
    then leaves out) and torch may warn that TorchScript is deprecated: neither is the bench's
    business, so they are silenced.

    :raises Exception: whatever ``torch.jit.trace`` raises for a module it cannot trace
    """
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return torch.jit.trace(actor, example)  # type: ignore[no-untyped-call]  # torch ships it untyped


def check_actions(policy: Any, actor: Any, obs: torch.Tensor) -> str | None:
    """Compare ``actor(obs)`` with ``policy._predict(obs, deterministic=True)``, bit for bit.

    :return: ``None`` when they are equal (values, dtype, shape and device), else what differs
    """
    with torch.no_grad():
        expected = policy._predict(obs, deterministic=True)
        got = actor(obs)
    if got.dtype != expected.dtype or got.shape != expected.shape or got.device != expected.device:
        return (
            f"actions {got.dtype} {tuple(got.shape)} on {got.device}, "
            f"_predict gives {expected.dtype} {tuple(expected.shape)} on {expected.device}"
        )
    if not torch.equal(got, expected):
        return "actions differ from _predict(obs, deterministic=True)"
    return None
