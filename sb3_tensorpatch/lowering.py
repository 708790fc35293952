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

:func:`lower_forward` lowers ``ActorCriticPolicy.forward`` the same way, for the on-device
``collect_rollouts`` (:mod:`sb3_tensorpatch.rollouts`), which calls ``policy(obs)`` on every step: the
actions, values and log-probabilities, with torch's ``Normal`` / ``Categorical`` / ``Bernoulli``
``log_prob`` restated op for op. The distribution restatements (:func:`_distribution`) and the
module-tree walk (:class:`_Path`) are shared with the lowered ``_predict``. A torch that computed its
distributions differently would be caught once, when the lowered forward is built: it is compared with
``policy(obs)`` on a probe batch, bit for bit, and refused if anything differs.

Set ``SB3_TENSORPATCH_LOWERING=0`` in the environment, or :data:`enabled` to ``False`` (then
``disable()`` and ``enable()``, or :func:`sb3_tensorpatch.plans.clear`), to build no lowered plans.
"""

from __future__ import annotations

import math
import operator
import os
from typing import TYPE_CHECKING, Any, Callable, Generic, TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import _reduction
from torch.nn.modules import module as _torch_module

from . import sb3

if TYPE_CHECKING:
    from stable_baselines3.common.policies import BasePolicy

Tensor = torch.Tensor
#: a function of one tensor: a chain of ops as :func:`_run` compiles it, or one in-place activation
Step = Callable[[Tensor], Tensor]
#: ``actions(obs, deterministic)``: the raw actions ``policy._predict`` would return
Actions = Callable[[Tensor, bool], Tensor]
#: ``forward(obs, deterministic)``: the ``(actions, values, log_prob)`` of ``ActorCriticPolicy.forward``
Forward = Callable[[Tensor, bool], tuple[Tensor, Tensor, Tensor]]
#: ``draw(out, deterministic)``: the actions of a distribution built from the action net's output ``out``
#: (``proba_distribution`` then ``get_actions``)
Draw = Callable[[Tensor, bool], Tensor]
#: ``draw_scored(out, deterministic)``: the same actions and SB3's ``log_prob`` of them
DrawScored = Callable[[Tensor, bool], tuple[Tensor, Tensor]]
Function = TypeVar("Function", Actions, Forward)

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


class Lowered(Generic[Function]):
    """A policy method (``_predict``, or ``forward``) as direct op calls, and the per-call check that
    it still applies.

    :param run: the method restated: :data:`Actions` for ``_predict``, :data:`Forward` for ``forward``
    :param path: what was recorded while building ``run``
    """

    __slots__ = ("_children", "_dicts", "_names", "_parents", "_sizes", "run")

    def __init__(self, run: Function, path: _Path) -> None:
        self.run: Function = run
        self._dicts = tuple(path.dicts)
        self._sizes = [len(d) for d in path.dicts]
        self._parents = tuple(parent for parent, _, _ in path.links)
        self._names = tuple(name for _, name, _ in path.links)
        self._children = [child for _, _, child in path.links]

    def live(self) -> bool:
        """Whether the policy is still exactly what :attr:`run` restates.

        The training flags are not checked: no module the lowering accepts reads its flag (dropout
        and batch norm are refused when building).

        Every hook dict must still be empty, and no instance ``__dict__`` of a module on the path
        (nor the policy's) and no ``Sequential`` may have gained or lost an entry: those sizes are
        all compared at once. And every sub-module on the path must be the very object found when
        the plan was built.
        """
        return list(map(len, self._dicts)) == self._sizes and all(map(_is, map(_getitem, self._parents, self._names), self._children))


class _Op:
    """One op of a lowered chain, as the line of source that makes it: ``template`` is an expression
    of the input ``x`` in which ``{0}``, ``{1}``, ... stand for ``objects`` (functions, and the live
    dicts the op reads on every call, such as a module's ``_parameters``)."""

    __slots__ = ("objects", "template")

    def __init__(self, template: str, *objects: Any) -> None:
        self.template = template
        self.objects = objects


def _run(ops: list[_Op]) -> Step:
    """The chain of ``ops`` as one generated function, ``x = op(x)`` line after line.

    At a batch of one row each op costs little more than the Python call that makes it: written out
    as straight-line code, the chain makes no Python call per op beyond the op itself. A function
    per op called in a loop took 3-7% longer for PPO's and TD3's actors (``python
    scripts/microbench.py chain``). The generated code only names the ops' objects, bound in its
    namespace; the templates are this module's own.
    """
    namespace: dict[str, Any] = {"__name__": __name__}
    names: dict[int, str] = {}

    def name(obj: Any) -> str:
        if id(obj) not in names:
            names[id(obj)] = f"_{len(names)}"
            namespace[names[id(obj)]] = obj
        return names[id(obj)]

    lines = [f"    x = {op.template.format(*map(name, op.objects))}" for op in ops]
    source = "\n".join(["def run(x):", *lines, "    return x", ""])
    exec(compile(source, "<sb3-tensorpatch lowered chain>", "exec"), namespace)
    run: Step = namespace["run"]
    return run


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
            self.called(module, f"{type(parent).__qualname__}.{name}")
        return module

    def called(self, module: nn.Module, what: str) -> None:
        """Require ``module``, which SB3 calls as ``module(x)``, to have no forward hook, and watch its hooks."""
        hooks = (module._forward_hooks, module._forward_pre_hooks)  # see _GLOBAL_HOOKS
        if any(hooks):
            raise Unlowerable(f"{what} has a hook")
        self.dicts.extend(hooks)

    def attribute(self, owner: Any, name: str) -> Any:
        """Return ``owner.name``, a plain instance attribute SB3's path reads on every call; it must
        still be this very object on every later call."""
        attributes = vars(owner)
        if name not in attributes:
            raise Unlowerable(f"{type(owner).__qualname__}.{name} is not an instance attribute")
        value = attributes[name]
        self.links.append((attributes, name, value))
        return value

    def linear(self, parent: nn.Module, name: str) -> _Op:
        """``parent.name(x)`` for an ``nn.Linear``: ``F.linear(x, weight, bias)`` on the live parameters."""
        return _Op("{0}(x, {1}['weight'], {1}['bias'])", _linear, self.child(parent, name, nn.Linear)._parameters)

    def sequential(self, parent: nn.Module, name: str) -> list[_Op]:
        """The ops of ``parent.name``, an ``nn.Sequential`` of ``Linear``, ``Conv2d``, ``Flatten``
        and activations."""
        sequential = self.child(parent, name, nn.Sequential)
        self.dicts.append(sequential._modules)  # an appended or deleted layer changes its size
        ops: list[_Op] = []
        fresh = False  # whether the last step made a new tensor, which no one else holds
        for key, module in sequential._modules.items():
            kind = type(module)
            if kind is nn.Linear:
                ops.append(self.linear(sequential, key))
            elif kind is nn.Conv2d:
                ops.append(self.conv2d(sequential, key))
            elif kind is nn.Flatten:
                ops.append(self.flatten(sequential, key))
            elif fresh and kind in _IN_PLACE:
                # on the new output of a Linear or Conv2d: the same kernel writes the same values in
                # place, and skips allocating a tensor the size of the layer's output
                self.child(sequential, key, kind)
                ops.append(_Op("{0}(x)", _IN_PLACE[kind]))
            elif kind in _ACTIVATIONS:
                self.child(sequential, key, kind)
                ops.append(_ACTIVATIONS[kind](vars(module)))
            else:
                raise Unlowerable(f"{kind.__qualname__} in {type(parent).__qualname__}.{name} is not lowered")
            fresh = kind is nn.Linear or kind is nn.Conv2d
        return ops

    def conv2d(self, parent: nn.Module, name: str) -> _Op:
        """``parent.name(x)`` for an ``nn.Conv2d`` with zero padding: ``F.conv2d`` with its live
        parameters and its stride, padding, dilation and groups read as ``_conv_forward`` reads them."""
        conv = self.child(parent, name, nn.Conv2d)
        if self.attribute(conv, "padding_mode") != "zeros":  # other modes pad with F.pad first
            raise Unlowerable(f"{type(parent).__qualname__}.{name} pads with {conv.padding_mode!r}")
        return _Op(
            "{0}(x, {1}['weight'], {1}['bias'], {2}['stride'], {2}['padding'], {2}['dilation'], {2}['groups'])",
            _conv2d, conv._parameters, vars(conv),
        )

    def flatten(self, parent: nn.Module, name: str) -> _Op:
        """``parent.name(x)`` for an ``nn.Flatten``: ``x.flatten(start_dim, end_dim)``."""
        return _Op("x.flatten({0}['start_dim'], {0}['end_dim'])", vars(self.child(parent, name, nn.Flatten)))

    def features(self, owner: Any, name: str) -> list[_Op]:
        """``owner.extract_features(obs, owner.name)`` (SB3's ``BaseModel.extract_features``) as ops.

        Only ``Box`` observations are lowered: ``preprocess_obs`` is ``obs.float() / 255.0`` for an
        image space when ``normalize_images`` is set, ``obs.float()`` otherwise. Only SB3's
        ``FlattenExtractor`` and ``NatureCNN`` are lowered.
        """
        from stable_baselines3.common.torch_layers import FlattenExtractor, NatureCNN

        space = self.attribute(owner, "observation_space")  # preprocess_obs reads it on every call
        if not isinstance(space, sb3.spaces.Box):
            raise Unlowerable(f"{type(space).__name__} observations are not lowered")
        normalize = self.attribute(owner, "normalize_images") and sb3.is_image_space(space)
        # preprocess_obs: an image Box with normalize_images is scaled to [0, 1]
        ops = [_Op("x.float() / 255.0" if normalize else "x.float()")]
        extractor = self.child(owner, name, FlattenExtractor, NatureCNN)
        if type(extractor) is FlattenExtractor:
            return [*ops, self.flatten(extractor, "flatten")]
        return ops + self.sequential(extractor, "cnn") + self.sequential(extractor, "linear")


def _activation(function: Callable[..., Tensor], *names: str) -> Callable[[dict[str, Any]], _Op]:
    """An op maker for an activation module whose ``forward`` is ``function(input, *attributes)``:
    the attributes are read from the module's ``__dict__`` on every call, as ``forward`` reads them."""
    template = "{0}(" + ", ".join(["x", *(f"{{1}}[{name!r}]" for name in names)]) + ")"

    def make(attributes: dict[str, Any]) -> _Op:
        return _Op(template, function, attributes)

    return make


#: torch's activation modules SB3's ``activation_fn`` takes, with what each ``forward`` calls
#: (checked against torch/nn/modules/activation.py: the positional order is the functional's)
_ACTIVATIONS: dict[type, Callable[[dict[str, Any]], _Op]] = {
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


def _gaussian_std(mean: Tensor, log_std: Tensor) -> Tensor:
    """The standard deviation of SB3's ``Normal``, element by element: SB3's ``proba_distribution`` gives
    it ``scale = ones_like(mean) * log_std.exp()``, of the broadcast shape.

    ``1.0 * x`` is ``x`` exactly, so where ``log_std`` has the mean's dtype, ``log_std.exp()`` (a row,
    or SAC's one per sample) holds the very values of ``scale`` and broadcasts to them in every op
    that follows, one op fewer and on a row instead of a batch. Where the dtypes differ, ``ones_like``
    would promote: then it is made as SB3 makes it.
    """
    std = log_std.exp()
    return std if std.dtype is mean.dtype else torch.ones_like(mean) * std


def _gaussian_sample(mean: Tensor, std: Tensor) -> Tensor:
    """One draw of SB3's ``DiagGaussianDistribution`` (``sample`` is ``Normal.rsample``), ``std`` from
    :func:`_gaussian_std`.

    ``rsample`` draws ``eps = torch.empty(shape, dtype=loc.dtype).normal_()`` in the batch shape (the
    mean's) and returns ``loc + eps * scale``. A contiguous ``empty_like`` of the mean is the tensor
    ``torch.empty(shape, ...)`` makes, so ``normal_`` fills it with the same draws in the same order;
    where no dtype is promoted, the product and the sum are made in place on ``eps`` (``eps * std +
    mean`` is ``mean + eps * std``: both are commutative).
    """
    eps = torch.empty_like(mean, memory_format=torch.contiguous_format).normal_()
    if std.dtype is mean.dtype:
        return eps.mul_(std).add_(mean)
    return mean + eps * std


#: the constant of ``Normal.log_prob``, computed as torch computes it
_LOG_SQRT_2PI = math.log(math.sqrt(2 * math.pi))


def _normal_log_prob(value: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
    """``Normal(loc, scale).log_prob(value)`` (torch 2.x, a tensor ``scale``), op for op; ``scale`` may be
    :func:`_gaussian_std`'s row, which holds the values of the ``Normal``'s scale and broadcasts to them."""
    var = scale**2
    log_scale = scale.log()
    return -((value - loc) ** 2) / (2 * var) - log_scale - _LOG_SQRT_2PI


def _normalised(logits: Tensor) -> Tensor:
    """``Categorical(logits=logits).logits``: the logits normalised by their log-sum-exp."""
    return logits - logits.logsumexp(dim=-1, keepdim=True)


def _categorical_actions(normalised: Tensor, deterministic: bool) -> Tensor:
    """SB3's ``CategoricalDistribution.get_actions`` for a ``Categorical`` of these normalised logits: the
    argmax of ``probs`` (``F.softmax(logits, dim=-1)``), or ``Categorical.sample()``."""
    probs = normalised.softmax(-1)
    if deterministic:
        return torch.argmax(probs, dim=1)
    return torch.multinomial(probs.reshape(-1, probs.size(-1)), 1, True).T.reshape(probs.shape[:-1])


def _categorical_log_prob(normalised: Tensor, actions: Tensor) -> Tensor:
    """``Categorical.log_prob(actions)`` of these normalised logits: the gathered logit. torch's
    ``value.long()`` and ``broadcast_tensors(value, logits)`` are identities here (the actions are the
    int64 draws of the same batch shape), so only the gather is made."""
    return normalised.gather(-1, actions.unsqueeze(-1)).squeeze(-1)


#: ``reduction="none"`` as ``F.binary_cross_entropy_with_logits`` passes it on
_NO_REDUCTION = _reduction.get_enum("none")


def _distribution(policy: Any, path: _Path) -> tuple[Draw, DrawScored, str]:
    """``policy._get_action_dist_from_latent`` after the action net, and ``get_actions`` (then ``log_prob``)
    of the distribution it builds, for SB3's Gaussian, categorical, multi-categorical and Bernoulli
    distributions.

    :return: the draw for ``_predict``, the draw with its log-probability for ``forward``, and what was lowered
    """
    from stable_baselines3.common.distributions import (
        BernoulliDistribution,
        CategoricalDistribution,
        DiagGaussianDistribution,
        MultiCategoricalDistribution,
    )

    action_dist = path.attribute(policy, "action_dist")  # _get_action_dist_from_latent dispatches on it
    kind = type(action_dist)
    if kind is DiagGaussianDistribution:
        params = policy._parameters

        def gaussian(mean: Tensor, deterministic: bool) -> Tensor:
            return mean if deterministic else _gaussian_sample(mean, _gaussian_std(mean, params["log_std"]))

        def gaussian_scored(mean: Tensor, deterministic: bool) -> tuple[Tensor, Tensor]:
            std = _gaussian_std(mean, params["log_std"])
            actions = mean if deterministic else _gaussian_sample(mean, std)
            # sum_independent_dims: the log-probabilities are (batch, action_dim), so summed over dim 1
            return actions, _normal_log_prob(actions, mean, std).sum(dim=1)

        return gaussian, gaussian_scored, "diagonal Gaussian"
    if kind is CategoricalDistribution:

        def categorical(logits: Tensor, deterministic: bool) -> Tensor:
            return _categorical_actions(_normalised(logits), deterministic)

        def categorical_scored(logits: Tensor, deterministic: bool) -> tuple[Tensor, Tensor]:
            normalised = _normalised(logits)
            actions = _categorical_actions(normalised, deterministic)
            return actions, _categorical_log_prob(normalised, actions)

        return categorical, categorical_scored, "categorical"
    if kind is MultiCategoricalDistribution:
        dims = vars(action_dist)
        path.attribute(action_dist, "action_dims")

        def parts(logits: Tensor) -> list[Tensor]:
            # one Categorical per split, each built (its logits normalised) before any is used
            return [_normalised(split) for split in torch.split(logits, list(dims["action_dims"]), dim=1)]

        def multi_categorical(logits: Tensor, deterministic: bool) -> Tensor:
            return torch.stack([_categorical_actions(part, deterministic) for part in parts(logits)], dim=1)

        def multi_categorical_scored(logits: Tensor, deterministic: bool) -> tuple[Tensor, Tensor]:
            normalised = parts(logits)
            actions = torch.stack([_categorical_actions(part, deterministic) for part in normalised], dim=1)
            log_probs = [_categorical_log_prob(part, action) for part, action in zip(normalised, torch.unbind(actions, dim=1))]
            return actions, torch.stack(log_probs, dim=1).sum(dim=1)

        return multi_categorical, multi_categorical_scored, "multi-categorical"
    if kind is BernoulliDistribution:
        # Bernoulli(logits=...).probs is sigmoid(logits); mode rounds them. Its sample is
        # bernoulli(probs.expand(batch_shape)), and the batch shape is the probs' own: the expand is the
        # same tensor, so it is left out (as is broadcast_all of one tensor, or of two of one shape)

        def bernoulli(logits: Tensor, deterministic: bool) -> Tensor:
            probs = torch.sigmoid(logits)
            return torch.round(probs) if deterministic else torch.bernoulli(probs)

        def bernoulli_scored(logits: Tensor, deterministic: bool) -> tuple[Tensor, Tensor]:
            actions = bernoulli(logits, deterministic)
            # Bernoulli.log_prob is -binary_cross_entropy_with_logits(logits, value, reduction="none")
            log_prob = -torch.binary_cross_entropy_with_logits(logits, actions, None, None, _NO_REDUCTION)
            return actions, log_prob.sum(dim=1)

        return bernoulli, bernoulli_scored, "Bernoulli"
    raise Unlowerable(f"{kind.__qualname__} is not lowered")


def _base_extract_features(policy: Any) -> None:
    """Require the ``extract_features`` after ``ActorCriticPolicy``'s (its ``super().extract_features``) to be
    ``BaseModel``'s."""
    from stable_baselines3.common.policies import ActorCriticPolicy, BaseModel

    if getattr(super(ActorCriticPolicy, policy).extract_features, "__func__", None) is not BaseModel.extract_features:
        raise Unlowerable(f"{type(policy).__qualname__} has an extract_features after ActorCriticPolicy's")


def _actor_critic(policy: Any, path: _Path) -> tuple[Actions, str]:
    """``ActorCriticPolicy._predict``: ``get_distribution(obs).get_actions(deterministic)``."""
    from stable_baselines3.common.policies import ActorCriticPolicy
    from stable_baselines3.common.torch_layers import MlpExtractor

    path.owner(policy, ActorCriticPolicy, "_predict", "get_distribution", "_get_action_dist_from_latent")
    _base_extract_features(policy)  # get_distribution calls super().extract_features
    features = path.features(policy, "pi_features_extractor")
    extractor = path.child(policy, "mlp_extractor", MlpExtractor, called=False)  # forward_actor is called, not the module
    path.owner(extractor, MlpExtractor, "forward_actor")
    out = _run(features + path.sequential(extractor, "policy_net") + [path.linear(policy, "action_net")])
    draw, _, what = _distribution(policy, path)

    def actions(obs: Tensor, deterministic: bool) -> Tensor:
        return draw(out(obs), deterministic)

    return actions, what


def _actor_critic_forward(policy: Any, path: _Path) -> tuple[Forward, str]:
    """``ActorCriticPolicy.forward`` as ``policy(obs, deterministic)`` calls it: ``(actions, values, log_prob)``."""
    from stable_baselines3.common.policies import ActorCriticPolicy
    from stable_baselines3.common.torch_layers import MlpExtractor

    if not isinstance(policy, ActorCriticPolicy):
        raise Unlowerable(f"{type(policy).__qualname__} is not an ActorCriticPolicy")
    path.owner(policy, nn.Module, "__call__")
    path.called(policy, type(policy).__qualname__)
    path.owner(policy, ActorCriticPolicy, "forward", "extract_features", "_get_action_dist_from_latent")
    _base_extract_features(policy)  # extract_features calls super().extract_features
    shared = path.attribute(policy, "share_features_extractor")
    if shared is not True and shared is not False:
        raise Unlowerable(f"share_features_extractor is {shared!r}, not a bool")
    # shared: self.mlp_extractor(features), so its hooks and forward; else forward_actor / forward_critic
    extractor = path.child(policy, "mlp_extractor", MlpExtractor, called=shared)
    path.owner(extractor, MlpExtractor, *(("forward",) if shared else ()), "forward_actor", "forward_critic")
    # each head as one chain: SB3 computes both latents before either head, an order that changes no
    # value (no op here draws from a generator, and none writes to a tensor the other chain reads)
    policy_net = [*path.sequential(extractor, "policy_net"), path.linear(policy, "action_net")]
    value_net = [*path.sequential(extractor, "value_net"), path.linear(policy, "value_net")]
    if shared:
        features = _run(path.features(policy, "features_extractor"))
        action_out, value_out = _run(policy_net), _run(value_net)

        def heads(obs: Tensor) -> tuple[Tensor, Tensor]:
            shared_features = features(obs)
            return action_out(shared_features), value_out(shared_features)

    else:
        action_out = _run(path.features(policy, "pi_features_extractor") + policy_net)
        value_out = _run(path.features(policy, "vf_features_extractor") + value_net)

        def heads(obs: Tensor) -> tuple[Tensor, Tensor]:
            return action_out(obs), value_out(obs)

    _, draw_scored, what = _distribution(policy, path)
    shape = (-1, *path.attribute(policy, "action_space").shape)  # forward reshapes the actions to it

    def forward(obs: Tensor, deterministic: bool) -> tuple[Tensor, Tensor, Tensor]:
        out, values = heads(obs)
        actions, log_prob = draw_scored(out, deterministic)
        return actions.reshape(shape), values, log_prob

    return forward, what


def _q_network(policy: Any, path: _Path) -> tuple[Actions, str]:
    from stable_baselines3.dqn.policies import DQNPolicy, QNetwork

    path.owner(policy, DQNPolicy, "_predict")
    q_net = path.child(policy, "q_net", QNetwork)  # QNetwork._predict calls self(observation)
    path.owner(q_net, QNetwork, "_predict", "forward", "extract_features")
    # QNetwork._predict: q_values.argmax(dim=1).reshape(-1)
    argmax = _Op("x.argmax(dim=1).reshape(-1)")
    greedy_actions = _run(path.features(q_net, "features_extractor") + path.sequential(q_net, "q_net") + [argmax])

    def greedy(obs: Tensor, deterministic: bool) -> Tensor:
        return greedy_actions(obs)

    return greedy, "greedy Q"


def _sac_actor(policy: Any, path: _Path) -> tuple[Actions, str]:
    from stable_baselines3.common.distributions import SquashedDiagGaussianDistribution
    from stable_baselines3.sac import policies

    path.owner(policy, policies.SACPolicy, "_predict")
    actor = path.child(policy, "actor", policies.Actor)  # SACPolicy._predict calls self.actor(...)
    path.owner(actor, policies.Actor, "forward", "get_action_dist_params", "extract_features")
    if path.attribute(actor, "use_sde") is not False or type(path.attribute(actor, "action_dist")) is not SquashedDiagGaussianDistribution:
        raise Unlowerable("SAC with gSDE is not lowered")
    latent_ops = path.features(actor, "features_extractor") + path.sequential(actor, "latent_pi")
    mu_op = path.linear(actor, "mu")
    # the squashed Gaussian's mode, tanh(mean), in place on the mean the Linear has just made
    mode = _run([*latent_ops, mu_op, _Op("{0}(x)", torch.tanh_)])
    latent, mu, log_std = _run(latent_ops), _run([mu_op]), _run([path.linear(actor, "log_std")])
    low, high = policies.LOG_STD_MIN, policies.LOG_STD_MAX

    def squashed(obs: Tensor, deterministic: bool) -> Tensor:
        if deterministic:
            return mode(obs)
        hidden = latent(obs)
        mean = mu(hidden)
        return torch.tanh(_gaussian_sample(mean, _gaussian_std(mean, torch.clamp(log_std(hidden), low, high))))

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


def _lowered_predict(policy: Any, path: _Path) -> tuple[Actions, str]:
    """The lowering of ``_predict`` for ``policy``'s kind, recognised by its ``_predict`` being SB3's own."""
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
            return builder(policy, path)
    raise Unlowerable(f"{type(policy).__qualname__}._predict is not one the lowering restates")


def _build(policy: BasePolicy, builder: Callable[[Any, _Path], tuple[Function, str]]) -> tuple[Lowered[Function] | None, str]:
    """Run ``builder`` on ``policy`` with a fresh :class:`_Path`: the lowered method and what it is, or
    ``None`` and why not."""
    if not enabled:
        return None, "lowering is turned off"
    path = _Path()
    try:
        if any(path.dicts):
            raise Unlowerable("a global module hook is set")
        run, what = builder(policy, path)
    except Unlowerable as why:
        return None, str(why)
    return Lowered(run, path), f"lowered ({what})"


def lower(policy: BasePolicy) -> tuple[Lowered[Actions] | None, str]:
    """Lower ``policy``'s ``_predict`` if it is provably the same as SB3's standard one.

    :param policy: an SB3 policy
    :return: the lowered ``_predict`` (``None`` where it cannot be) and a sentence saying what was
        lowered, or why not
    """
    return _build(policy, _lowered_predict)


#: the probe of :func:`lower_forward`: its batch size, and the seed of its observations and of its draws
PROBE_BATCH = 4
PROBE_SEED = 0


def lower_forward(policy: BasePolicy) -> tuple[Lowered[Forward] | None, str]:
    """Lower ``policy(obs, deterministic)`` (``ActorCriticPolicy.forward``: actions, values and
    log-probabilities, as PPO's and A2C's ``collect_rollouts`` calls it) where it is provably SB3's standard one.

    The tree and method checks are those of :func:`lower`. Then, as a guard against a torch whose
    distributions compute differently from what :func:`_distribution` restates, the lowered forward is
    compared once with ``policy(obs, deterministic)`` on a probe batch (:func:`_probe_observations`), both
    deterministic and stochastic from the same seed, bit for bit; the torch generator of the policy's
    device is forked for it, so the caller's draws are untouched. Call it with the policy in the training
    mode it will run in (the probe calls the policy's own ``forward``).

    :param policy: an SB3 policy
    :return: the lowered forward (``None`` where it cannot be) and a sentence saying what was lowered, or why not
    """
    lowered, what = _build(policy, _actor_critic_forward)
    if lowered is not None:
        differs = _probe(policy, lowered.run)
        if differs is not None:
            return None, differs
    return lowered, what


def _probe_observations(space: Any, device: torch.device) -> Tensor:
    """:data:`PROBE_BATCH` observations of the ``Box`` ``space``, from a generator of their own (the
    space's and torch's global generators are not drawn from): uniform where the space is bounded,
    standard normal clipped to the bounds elsewhere, in the space's dtype."""
    generator = torch.Generator().manual_seed(PROBE_SEED)
    low = torch.as_tensor(space.low)
    dtype, low, high = low.dtype, low.to(torch.float64), torch.as_tensor(space.high).to(torch.float64)
    shape = (PROBE_BATCH, *low.shape)
    uniform = low + torch.rand(shape, generator=generator, dtype=torch.float64) * (high - low)
    normal = torch.clamp(torch.randn(shape, generator=generator, dtype=torch.float64), low, high)
    return torch.where(torch.isfinite(low) & torch.isfinite(high), uniform, normal).to(dtype).to(device)


def _probe(policy: Any, forward: Forward) -> str | None:
    """Compare ``forward`` with ``policy(obs, deterministic)`` on probe observations: ``None`` where every
    output is the same (dtype, shape, device and bits), else why not."""
    device = policy.device
    if device.type == "cpu":
        generator, devices = torch.default_generator, []
    elif device.type == "cuda":
        index = torch.cuda.current_device() if device.index is None else device.index
        generator, devices = torch.cuda.default_generators[index], [index]
    else:
        return f"the probe of the lowered forward does not run on {device.type}"
    names = ("actions", "values", "log_prob")
    try:
        obs = _probe_observations(policy.observation_space, device)
        # fork_rng restores the generator; seeding only this one leaves the other devices' untouched
        with torch.random.fork_rng(devices, device_type="cuda"), torch.no_grad():
            for deterministic in (False, True):
                generator.manual_seed(PROBE_SEED)
                expected = policy(obs, deterministic)
                generator.manual_seed(PROBE_SEED)
                got = forward(obs, deterministic)
                for name, mine, theirs in zip(names, got, expected):
                    if mine.dtype != theirs.dtype or mine.shape != theirs.shape or mine.device != theirs.device or not torch.equal(mine, theirs):
                        return f"the lowered forward's {name} differ from SB3's on the probe (torch {torch.__version__})"
    except Exception as error:  # SB3's own forward fails the same way on such input: leave it to SB3's path
        return f"the probe of the lowered forward raised {type(error).__name__}: {error}"
    return None
