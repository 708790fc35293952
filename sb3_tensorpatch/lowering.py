"""The lowered fast path: SB3's standard policies restated as direct calls of the ops their modules make.

Most of a batch-of-one tensor predict is Python around the arithmetic: ``nn.Module.__call__`` for
every layer, distribution objects built only to take their mode or one sample, and SB3's layers of
``forward`` helpers. :func:`lower` recognises SB3's standard module trees (``FlattenExtractor``,
``NatureCNN`` and ``Sequential`` stacks of ``Linear`` and torch's activations under ``ActorCriticPolicy``, DQN's
``QNetwork``, SAC's and TD3's ``Actor``) and returns a :class:`Lowered` that computes the actions
with the very calls those modules' ``forward`` methods make, in the same order, on the live
parameters (read from each module's ``_parameters`` on every call, so optimizer steps,
``load_state_dict`` with or without ``assign``, and ``.to(device)`` are all seen), and draws from
torch's generator exactly as SB3's distributions do (same calls, same order, so the same seed gives
the same actions).

It is used only where nothing can differ from SB3's own path: every module on the path is exactly
torch's or SB3's class (not a subclass), the policy's methods on the path are SB3's own functions,
and the observation space is a ``Box`` (preprocessing is ``obs.float()``, divided by 255 for
images). Anything else
is refused when the plan is built, with the reason. What may change later is checked on every call
by :meth:`Lowered.live`, in two C-level passes: no forward hook or pre-hook (per module or global),
no new attribute on a module or the policy (an instance-level method override), no sub-module
replaced, added or removed, and the plain attributes SB3's path reads (``action_dist``,
``observation_space``, ...) still the same objects. A call that fails the check takes SB3's
``_predict``.

The lowered path does not leave a distribution object on ``policy.action_dist`` (SB3's ``_predict``
does, as a by-product; nothing in SB3 reads it after ``predict``).

Set ``SB3_TENSORPATCH_LOWERING=0`` in the environment, or :data:`enabled` to ``False`` (then
``disable()`` and ``enable()``, or :func:`sb3_tensorpatch.plans.clear`), to build no lowered plans.
"""

from __future__ import annotations

import operator
import os
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _torch_module

from . import sb3

if TYPE_CHECKING:
    from stable_baselines3.common.policies import BasePolicy

Tensor = torch.Tensor
Step = Callable[[Tensor], Tensor]
#: ``actions(obs, deterministic)``: the raw actions ``policy._predict`` would return
Actions = Callable[[Tensor, bool], Tensor]

#: whether plans built from now on may be lowered (``SB3_TENSORPATCH_LOWERING=0`` turns it off)
enabled: bool = os.environ.get("SB3_TENSORPATCH_LOWERING", "1").strip().lower() not in ("0", "false", "off", "no")

_linear = torch._C._nn.linear  # what nn.Linear.forward calls (F.linear is this very function)
_conv2d = F.conv2d  # what nn.Conv2d._conv_forward calls with zero padding
_getitem = operator.getitem
_is = operator.is_

#: torch's process-wide forward hooks: any of them set, and every module call runs it. Backward
#: hooks are left out here and per module: with autograd off (SB3's ``predict`` and the routes run
#: under ``no_grad``) ``Module.__call__`` leaves the inputs and outputs untouched for them
#: (``BackwardHook`` hooks only tensors that require grad while grad is enabled).
_GLOBAL_HOOKS = (_torch_module._global_forward_hooks, _torch_module._global_forward_pre_hooks)


class Unlowerable(Exception):
    """Raised while building: the policy has something the lowered path does not restate."""


class Lowered:
    """A policy's ``_predict`` as direct op calls, and the per-call check that it still applies.

    :param actions: ``actions(obs, deterministic)``, the raw actions of ``_predict``
    :param path: what was recorded while building ``actions``
    """

    __slots__ = ("_children", "_dicts", "_names", "_parents", "_sizes", "actions")

    def __init__(self, actions: Actions, path: _Path) -> None:
        self.actions = actions
        self._dicts = tuple(path.dicts)
        self._sizes = [len(d) for d in path.dicts]
        self._parents = tuple(parent for parent, _, _ in path.links)
        self._names = tuple(name for _, name, _ in path.links)
        self._children = [child for _, _, child in path.links]

    def live(self) -> bool:
        """Whether the policy is still exactly what :attr:`actions` restates.

        Every hook dict must still be empty, and no instance ``__dict__`` of a module on the path
        (nor the policy's) and no ``Sequential`` may have gained or lost an entry: those sizes are
        all compared at once. And every sub-module on the path must be the very object found when
        the plan was built.
        """
        return list(map(len, self._dicts)) == self._sizes and all(map(_is, map(_getitem, self._parents, self._names), self._children))


class _Path:
    """What building a lowered function records: the dicts whose sizes and the links whose targets
    :meth:`Lowered.live` checks on every call."""

    def __init__(self) -> None:
        self.dicts: list[dict[Any, Any]] = list(_GLOBAL_HOOKS)
        #: (dict, key, value): ``dict[key] is value`` on every call (sub-modules and attributes)
        self.links: list[tuple[dict[str, Any], str, Any]] = []
        self._watched: set[int] = set()

    def watch(self, obj: Any) -> None:
        """Watch the size of ``obj``'s instance dict: a method set on the instance would be called instead."""
        if id(obj) not in self._watched:
            self._watched.add(id(obj))
            self.dicts.append(vars(obj))

    def owner(self, obj: nn.Module, base: type, *names: str) -> None:
        """Require the methods ``names`` of ``obj``'s class to be ``base``'s (SB3's own functions), and
        watch ``obj``'s instance dict for an override set on the instance."""
        cls = type(obj)
        for name in names:
            function = getattr(base, name, None)
            if function is None:
                raise Unlowerable(f"the installed {base.__qualname__} has no {name}")
            if getattr(cls, name, None) is not function:
                raise Unlowerable(f"{cls.__qualname__}.{name} is overridden")
            if name in vars(obj):
                raise Unlowerable(f"{name} is set on the {cls.__qualname__} instance")
        self.watch(obj)

    def child(self, parent: nn.Module, name: str, *classes: type, called: bool = True) -> Any:
        """Return ``parent``'s sub-module ``name``, which must be exactly one of ``classes``.

        :param called: whether SB3 calls the module (``module(x)``), so that its hooks run
        """
        module = parent._modules.get(name)
        if type(module) not in classes:
            raise Unlowerable(f"{type(parent).__qualname__}.{name} is a {type(module).__qualname__}, not {' or '.join(c.__qualname__ for c in classes)}")
        assert module is not None
        self.links.append((parent._modules, name, module))
        self.watch(module)
        if called:
            hooks = (module._forward_hooks, module._forward_pre_hooks)  # see _GLOBAL_HOOKS
            if any(hooks):
                raise Unlowerable(f"{type(parent).__qualname__}.{name} has a hook")
            self.dicts.extend(hooks)
        return module

    def attribute(self, owner: Any, name: str) -> Any:
        """Return ``owner.name``, a plain instance attribute SB3's path reads on every call; it must
        still be this very object on every later call."""
        attributes = vars(owner)
        if name not in attributes:
            raise Unlowerable(f"{type(owner).__qualname__}.{name} is not an instance attribute")
        value = attributes[name]
        self.links.append((attributes, name, value))
        return value

    def linear(self, parent: nn.Module, name: str) -> Step:
        """``parent.name(x)`` for an ``nn.Linear``: ``F.linear(x, weight, bias)`` on the live parameters."""
        params = self.child(parent, name, nn.Linear)._parameters

        def linear(x: Tensor) -> Tensor:
            return _linear(x, params["weight"], params["bias"])

        return linear

    def sequential(self, parent: nn.Module, name: str) -> list[Step]:
        """The steps of ``parent.name``, an ``nn.Sequential`` of ``Linear``, ``Conv2d``, ``Flatten``
        and activations."""
        sequential = self.child(parent, name, nn.Sequential)
        self.dicts.append(sequential._modules)  # an appended or deleted layer changes its size
        steps: list[Step] = []
        fresh = False  # whether the last step made a new tensor, which no one else holds
        for key, module in sequential._modules.items():
            kind = type(module)
            if kind is nn.Linear:
                steps.append(self.linear(sequential, key))
            elif kind is nn.Conv2d:
                steps.append(self.conv2d(sequential, key))
            elif kind is nn.Flatten:
                steps.append(self.flatten(sequential, key))
            elif fresh and kind in _IN_PLACE:
                # on the new output of a Linear or Conv2d: the same kernel writes the same values in
                # place, and skips allocating a tensor the size of the layer's output
                self.child(sequential, key, kind)
                steps.append(_IN_PLACE[kind])
            elif kind in _ACTIVATIONS:
                self.child(sequential, key, kind)
                steps.append(_ACTIVATIONS[kind](vars(module)))
            else:
                raise Unlowerable(f"{kind.__qualname__} in {type(parent).__qualname__}.{name} is not lowered")
            fresh = kind is nn.Linear or kind is nn.Conv2d
        return steps

    def conv2d(self, parent: nn.Module, name: str) -> Step:
        """``parent.name(x)`` for an ``nn.Conv2d`` with zero padding: ``F.conv2d`` with its live
        parameters and its stride, padding, dilation and groups read as ``_conv_forward`` reads them."""
        conv = self.child(parent, name, nn.Conv2d)
        if self.attribute(conv, "padding_mode") != "zeros":  # other modes pad with F.pad first
            raise Unlowerable(f"{type(parent).__qualname__}.{name} pads with {conv.padding_mode!r}")
        params, attributes = conv._parameters, vars(conv)

        def conv2d(x: Tensor) -> Tensor:
            return _conv2d(
                x, params["weight"], params["bias"], attributes["stride"], attributes["padding"], attributes["dilation"], attributes["groups"]
            )

        return conv2d

    def flatten(self, parent: nn.Module, name: str) -> Step:
        """``parent.name(x)`` for an ``nn.Flatten``: ``x.flatten(start_dim, end_dim)``."""
        attributes = vars(self.child(parent, name, nn.Flatten))

        def flatten(x: Tensor) -> Tensor:
            return x.flatten(attributes["start_dim"], attributes["end_dim"])

        return flatten

    def features(self, owner: Any, name: str) -> list[Step]:
        """``owner.extract_features(obs, owner.name)`` (SB3's ``BaseModel.extract_features``) as steps.

        Only ``Box`` observations are lowered: ``preprocess_obs`` is ``obs.float() / 255.0`` for an
        image space when ``normalize_images`` is set, ``obs.float()`` otherwise. Only SB3's
        ``FlattenExtractor`` and ``NatureCNN`` are lowered.
        """
        from stable_baselines3.common.torch_layers import FlattenExtractor, NatureCNN

        space = self.attribute(owner, "observation_space")  # preprocess_obs reads it on every call
        if not isinstance(space, sb3.spaces.Box):
            raise Unlowerable(f"{type(space).__name__} observations are not lowered")
        normalize = self.attribute(owner, "normalize_images") and sb3.is_image_space(space)
        steps: list[Step] = [_unit_range if normalize else Tensor.float]
        extractor = self.child(owner, name, FlattenExtractor, NatureCNN)
        if type(extractor) is FlattenExtractor:
            return [*steps, self.flatten(extractor, "flatten")]
        return steps + self.sequential(extractor, "cnn") + self.sequential(extractor, "linear")


def _unit_range(obs: Tensor) -> Tensor:
    """``preprocess_obs`` for an image ``Box`` with ``normalize_images``."""
    return obs.float() / 255.0


def _activation(function: Callable[..., Tensor], *names: str) -> Callable[[dict[str, Any]], Step]:
    """A step maker for an activation module whose ``forward`` is ``function(input, *attributes)``:
    the attributes are read from the module's ``__dict__`` on every call, as ``forward`` reads them."""

    def make(attributes: dict[str, Any]) -> Step:
        if not names:
            return function  # type: ignore[return-value]
        if len(names) == 1:
            (first,) = names

            def one(x: Tensor) -> Tensor:
                return function(x, attributes[first])

            return one

        def several(x: Tensor) -> Tensor:
            return function(x, *[attributes[name] for name in names])

        return several

    return make


#: torch's activation modules SB3's ``activation_fn`` takes, with what each ``forward`` calls
#: (checked against torch/nn/modules/activation.py: the positional order is the functional's)
_ACTIVATIONS: dict[type, Callable[[dict[str, Any]], Step]] = {
    nn.Tanh: _activation(torch.tanh),
    nn.Sigmoid: _activation(torch.sigmoid),
    nn.ReLU: _activation(F.relu, "inplace"),
    nn.ELU: _activation(F.elu, "alpha", "inplace"),
    nn.LeakyReLU: _activation(F.leaky_relu, "negative_slope", "inplace"),
    nn.SiLU: _activation(F.silu, "inplace"),
    nn.GELU: _activation(lambda x, approximate: F.gelu(x, approximate=approximate), "approximate"),
}


#: the activations SB3 uses by default (``Tanh`` on-policy, ``ReLU`` off-policy and in ``NatureCNN``)
#: and ``Sigmoid``, as their in-place twins: used on a tensor the lowered path has just made. ``ReLU``'s
#: ``inplace`` flag chooses between these very two functions, which give the same values.
_IN_PLACE: dict[type, Step] = {nn.Tanh: torch.tanh_, nn.ReLU: torch.relu_, nn.Sigmoid: torch.sigmoid_}


def _run(steps: list[Step]) -> Step:
    """One step for a chain of steps."""
    chain = tuple(steps)

    def run(x: Tensor) -> Tensor:
        for step in chain:
            x = step(x)
        return x

    return run


def _gaussian_sample(mean: Tensor, log_std: Tensor) -> Tensor:
    """One draw of SB3's ``DiagGaussianDistribution`` (``proba_distribution`` then ``sample``).

    SB3 builds ``scale = ones_like(mean) * log_std.exp()`` and ``Normal(mean, scale)``, whose
    ``rsample`` draws ``eps = torch.empty(shape, dtype=loc.dtype).normal_()`` in the batch shape (the
    mean's: ``log_std`` is a row, or the mean's own shape for SAC) and returns ``loc + eps * scale``.
    Two ops fewer, the same numbers: ``1.0 * x`` is ``x`` exactly, so ``eps * log_std.exp()``
    (broadcast) equals ``eps * scale`` element by element, in the same dtype; and a contiguous
    ``empty_like`` of the mean is the tensor ``torch.empty(shape, ...)`` makes, so ``normal_`` fills
    it with the same draws in the same order. Where no dtype is promoted, the product and the sum are
    made in place on ``eps`` (``eps * std + mean`` is ``mean + eps * std``: both are commutative).
    """
    eps = torch.empty_like(mean, memory_format=torch.contiguous_format).normal_()
    if log_std.dtype is mean.dtype:
        return eps.mul_(log_std.exp()).add_(mean)
    return mean + eps * log_std.exp()


def _actor_critic(policy: Any, path: _Path) -> tuple[Actions, str]:
    from stable_baselines3.common.distributions import (
        BernoulliDistribution,
        CategoricalDistribution,
        DiagGaussianDistribution,
        MultiCategoricalDistribution,
    )
    from stable_baselines3.common.policies import ActorCriticPolicy, BaseModel
    from stable_baselines3.common.torch_layers import MlpExtractor

    path.owner(policy, ActorCriticPolicy, "_predict", "get_distribution", "_get_action_dist_from_latent")
    # get_distribution calls super().extract_features: the next one after ActorCriticPolicy's
    if getattr(super(ActorCriticPolicy, policy).extract_features, "__func__", None) is not BaseModel.extract_features:
        raise Unlowerable(f"{type(policy).__qualname__} has an extract_features after ActorCriticPolicy's")
    features = path.features(policy, "pi_features_extractor")
    extractor = path.child(policy, "mlp_extractor", MlpExtractor, called=False)  # forward_actor is called, not the module
    path.owner(extractor, MlpExtractor, "forward_actor")
    latent = _run(features + path.sequential(extractor, "policy_net"))
    head = path.linear(policy, "action_net")
    action_dist = path.attribute(policy, "action_dist")  # _get_action_dist_from_latent dispatches on it
    kind = type(action_dist)
    if kind is DiagGaussianDistribution:
        params = policy._parameters

        def gaussian(obs: Tensor, deterministic: bool) -> Tensor:
            mean = head(latent(obs))
            return mean if deterministic else _gaussian_sample(mean, params["log_std"])

        return gaussian, "diagonal Gaussian"
    if kind is CategoricalDistribution:

        def categorical(obs: Tensor, deterministic: bool) -> Tensor:
            probs = _categorical_probs(head(latent(obs)))
            return torch.argmax(probs, dim=1) if deterministic else _categorical_sample(probs)

        return categorical, "categorical"
    if kind is MultiCategoricalDistribution:
        dims = vars(action_dist)
        path.attribute(action_dist, "action_dims")

        def multi_categorical(obs: Tensor, deterministic: bool) -> Tensor:
            # one Categorical per split, each built (its logits normalised) before any is used
            parts = [_normalised(split) for split in torch.split(head(latent(obs)), list(dims["action_dims"]), dim=1)]
            if deterministic:
                return torch.stack([torch.argmax(part.softmax(-1), dim=1) for part in parts], dim=1)
            return torch.stack([_categorical_sample(part.softmax(-1)) for part in parts], dim=1)

        return multi_categorical, "multi-categorical"
    if kind is BernoulliDistribution:

        def bernoulli(obs: Tensor, deterministic: bool) -> Tensor:
            # Bernoulli(logits=...).probs is sigmoid(logits); mode rounds them. Its sample is
            # bernoulli(probs.expand(batch_shape)), and the batch shape is the probs' own: the
            # expand is the same tensor, so it is left out.
            probs = torch.sigmoid(head(latent(obs)))
            return torch.round(probs) if deterministic else torch.bernoulli(probs)

        return bernoulli, "Bernoulli"
    raise Unlowerable(f"{kind.__qualname__} is not lowered")


def _normalised(logits: Tensor) -> Tensor:
    """``Categorical(logits=logits).logits``: the logits normalised by their log-sum-exp."""
    return logits - logits.logsumexp(dim=-1, keepdim=True)


def _categorical_probs(logits: Tensor) -> Tensor:
    """``Categorical(logits=logits).probs``: ``F.softmax(normalised logits, dim=-1)``."""
    return _normalised(logits).softmax(-1)


def _categorical_sample(probs: Tensor) -> Tensor:
    """``Categorical.sample()`` (``sample_shape`` empty) for these probabilities."""
    return torch.multinomial(probs.reshape(-1, probs.size(-1)), 1, True).T.reshape(probs.shape[:-1])


def _q_network(policy: Any, path: _Path) -> tuple[Actions, str]:
    from stable_baselines3.dqn.policies import DQNPolicy, QNetwork

    path.owner(policy, DQNPolicy, "_predict")
    q_net = path.child(policy, "q_net", QNetwork)  # QNetwork._predict calls self(observation)
    path.owner(q_net, QNetwork, "_predict", "forward", "extract_features")
    q_values = _run(path.features(q_net, "features_extractor") + path.sequential(q_net, "q_net"))

    def greedy(obs: Tensor, deterministic: bool) -> Tensor:
        return q_values(obs).argmax(dim=1).reshape(-1)

    return greedy, "greedy Q"


def _sac_actor(policy: Any, path: _Path) -> tuple[Actions, str]:
    from stable_baselines3.common.distributions import SquashedDiagGaussianDistribution
    from stable_baselines3.sac import policies

    path.owner(policy, policies.SACPolicy, "_predict")
    actor = path.child(policy, "actor", policies.Actor)  # SACPolicy._predict calls self.actor(...)
    path.owner(actor, policies.Actor, "forward", "get_action_dist_params", "extract_features")
    if path.attribute(actor, "use_sde") is not False or type(path.attribute(actor, "action_dist")) is not SquashedDiagGaussianDistribution:
        raise Unlowerable("SAC with gSDE is not lowered")
    latent = _run(path.features(actor, "features_extractor") + path.sequential(actor, "latent_pi"))
    mu = path.linear(actor, "mu")
    log_std = path.linear(actor, "log_std")
    low, high = policies.LOG_STD_MIN, policies.LOG_STD_MAX

    def squashed(obs: Tensor, deterministic: bool) -> Tensor:
        hidden = latent(obs)
        mean = mu(hidden)
        if deterministic:
            return torch.tanh(mean)
        return torch.tanh(_gaussian_sample(mean, torch.clamp(log_std(hidden), low, high)))

    return squashed, "squashed diagonal Gaussian"


def _td3_actor(policy: Any, path: _Path) -> tuple[Actions, str]:
    from stable_baselines3.td3 import policies

    path.owner(policy, policies.TD3Policy, "_predict")
    actor = path.child(policy, "actor", policies.Actor)  # TD3Policy._predict calls self.actor(...)
    path.owner(actor, policies.Actor, "forward", "extract_features")
    mu = _run(path.features(actor, "features_extractor") + path.sequential(actor, "mu"))

    def deterministic_actor(obs: Tensor, deterministic: bool) -> Tensor:
        return mu(obs)

    return deterministic_actor, "deterministic actor"


def _builder(policy: BasePolicy) -> Callable[[Any, _Path], tuple[Actions, str]]:
    """The lowering for ``policy``'s kind, recognised by its ``_predict`` being SB3's own."""
    from stable_baselines3.common.policies import ActorCriticPolicy
    from stable_baselines3.dqn.policies import DQNPolicy
    from stable_baselines3.sac.policies import SACPolicy
    from stable_baselines3.td3.policies import TD3Policy

    predict = type(policy)._predict
    for base, builder in (
        (ActorCriticPolicy, _actor_critic),
        (DQNPolicy, _q_network),
        (SACPolicy, _sac_actor),
        (TD3Policy, _td3_actor),
    ):
        if predict is base._predict:
            return builder
    raise Unlowerable(f"{type(policy).__qualname__}._predict is not one the lowering restates")


def lower(policy: BasePolicy) -> tuple[Lowered | None, str]:
    """Lower ``policy``'s ``_predict`` if it is provably the same as SB3's standard one.

    :param policy: an SB3 policy
    :return: the lowered ``_predict`` (``None`` where it cannot be) and a sentence saying what was
        lowered, or why not
    """
    if not enabled:
        return None, "lowering is turned off"
    path = _Path()
    try:
        if any(path.dicts):
            raise Unlowerable("a global module hook is set")
        actions, what = _builder(policy)(policy, path)
    except Unlowerable as why:
        return None, str(why)
    return Lowered(actions, path), f"lowered ({what})"
