"""What the tensor routes work out once per object, and the one place that prepares a policy's input.

A :class:`PolicyPlan` holds the observation and action plans, the parameter whose ``.device`` is
the policy's device (reading it does not walk the parameters), and the modules whose training flag
``set_training_mode(False)`` would change; :meth:`PolicyPlan.prepare` turns a tensor observation
into the policy's input. :data:`statistics` holds ``VecNormalize``'s statistics as device tensors
(see :mod:`sb3_tensorpatch.normalization`). Everything here is kept outside the objects it
describes (never as attributes, so never in a pickle), dropped when they are garbage-collected, and
dropped all at once by :func:`clear` when the patch is removed.
"""

from __future__ import annotations

import operator
import threading
import weakref
from typing import TYPE_CHECKING, Any, Callable

import torch

from . import host, lowering, sb3
from .actions import ActionPlan
from .notices import warn_once
from .observations import ObservationPlan, check_reachable, copy_input, to_device

if TYPE_CHECKING:
    from stable_baselines3.common.policies import BasePolicy


#: the device of a policy without parameters, as SB3's ``BaseModel.device`` reports it
CPU = torch.device("cpu")
_training = operator.attrgetter("training")
_training_item = operator.itemgetter("training")


class PolicyPlan:
    """Cached facts about one policy.

    A plan is rebuilt when the policy's spaces are replaced. It holds on to the policy's modules
    and first parameter, which ``load_state_dict``, ``set_parameters`` and ``.to(device)`` keep;
    a policy whose sub-networks are replaced by new modules after its first tensor predict needs
    ``disable()`` and ``enable()`` (which drop every plan). The lowered ``_predict`` notices such a
    replacement on its own path and hands the call to the policy's ``_predict`` (see
    :meth:`.lowering.Lowered.live`), so actions stay SB3's either way.

    :param policy: an SB3 ``BasePolicy``
    """

    __slots__ = (
        "__weakref__", "action_space", "actions", "copy_input", "flag", "flags", "host", "lowered", "lowering",
        "modules", "obs", "observation_space", "param", "random_host",
    )

    def __init__(self, policy: BasePolicy) -> None:
        self.observation_space = policy.observation_space
        self.action_space = policy.action_space
        self.obs = ObservationPlan(policy.observation_space)
        self.actions = ActionPlan(policy.action_space, bool(policy.squash_output))
        # nn.Module.to() moves parameters in place, so the first parameter keeps telling the device
        self.param: torch.nn.Parameter | None = next(iter(policy.parameters()), None)
        # the modules set_training_mode(False) sets; the policy itself is left out (the plan must
        # not keep the policy alive) and its own flag is read on every call
        self.modules = eval_modules(policy)
        # nn.Module keeps ``training`` in the instance ``__dict__``; reading it from there skips the
        # attribute lookup through the class. Modules that define ``training`` otherwise are read as
        # attributes. ``any(map(plan.flag, plan.flags))`` says whether a module is in training mode.
        self.flags: tuple[Any, ...] = self.modules
        self.flag: Callable[[Any], bool] = _training
        if all(_flag_in_instance_dict(module) for module in self.modules):
            self.flags = tuple(vars(module) for module in self.modules)
            self.flag = _training_item
        cls = type(policy)
        if host.first_override(cls, {"set_training_mode": _own_set_training_mode()}) is not None:
            # SB3 calls set_training_mode(False) on every predict; an override may do more than set
            # flags, so it is called on every predict too: a flag that always reads as training
            self.flags = (_ALWAYS_TRAINING,)
            self.flag = _training_item
        #: the overridden method that sends this policy's tensor predicts through the host, or ``None``
        self.host = host.first_override(cls, _numpy_methods(policy))
        #: the same for the random actions of DQN's epsilon-greedy ``predict``
        self.random_host = host.first_override(cls, {"is_vectorized_observation": (_base_policy().is_vectorized_observation,)})
        #: whether the caller's tensor must be copied before the network sees it: SB3's path always
        #: works on a copy, and code other than SB3's own (a custom features extractor, a hook) may
        #: work in place; SB3's own modules never do, so their common path stays copy-free
        self.copy_input = not _own_code(policy)
        #: ``_predict`` as direct op calls where it is provably SB3's standard one (see
        #: :mod:`.lowering`), else ``None``; ``lowering`` says which, or why not
        self.lowered, self.lowering = lowering.lower(policy)

    def device(self) -> torch.device:
        """The policy's device, as SB3's ``BaseModel.device`` would return it."""
        param = self.param
        return CPU if param is None else param.device

    def prepare(self, policy: BasePolicy, observation: Any) -> tuple[Any, bool, torch.device, torch.device]:
        """Validate and batch the observation, move it to the policy's device, set eval mode.

        :param policy: the policy this plan is for
        :param observation: a tensor, or a dict of tensors
        :return: the observation for ``_predict``, whether the input was batched, the input's device
            and the policy's device
        """
        obs, vectorized, device = self.obs.prepare(observation)
        param = self.param
        target = CPU if param is None else param.device
        if device != target:
            check_reachable(device, target)
            warn_once(
                ("moved", str(device), str(target)),
                f"the observation is on {device} but the policy is on {target}; "
                "moving it there and the actions back (warned once per pair of devices).",
            )
            obs = to_device(obs, target)  # a copy
        elif self.copy_input:
            obs = copy_input(obs)
        if policy.training or any(map(self.flag, self.flags)):
            policy.set_training_mode(False)
        return obs, vectorized, device, target


#: SB3's policies whose ``set_training_mode`` forwards to named sub-networks and then sets
#: ``self.training`` (every release from 1.2.0 on): (module, class, sub-network attributes)
_FORWARDING = (
    ("stable_baselines3.dqn.policies", "DQNPolicy", ("q_net",)),
    ("stable_baselines3.sac.policies", "SACPolicy", ("actor", "critic")),
    ("stable_baselines3.td3.policies", "TD3Policy", ("actor", "critic")),
    ("sb3_contrib.qrdqn.policies", "QRDQNPolicy", ("quantile_net",)),
    ("sb3_contrib.tqc.policies", "TQCPolicy", ("actor", "critic")),
    ("sb3_contrib.crossq.policies", "CrossQPolicy", ("actor", "critic")),
)


def eval_modules(policy: BasePolicy) -> tuple[torch.nn.Module, ...]:
    """Return the sub-modules whose training flag ``policy.set_training_mode(False)`` sets.

    ``BaseModel.set_training_mode`` is ``self.train(mode)``: every module. SB3's DQN, SAC, TD3
    (and contrib's QRDQN, TQC, CrossQ) policies forward it to their networks only, so the target
    networks keep their own mode; checking just the forwarded networks' modules gives the same
    observable result with fewer flags to read on every call. The forwarding is recognised by the
    identity of the installed class's method (a subclass that overrides it gets every module),
    and each network must itself use ``BaseModel``'s plain ``train(mode)``.
    """
    import sys

    from stable_baselines3.common.policies import BaseModel

    method = type(policy).set_training_mode
    for module_name, class_name, names in _FORWARDING:
        # a policy of one of these classes has its module imported already
        forwarding = getattr(getattr(sys.modules.get(module_name), class_name, None), "set_training_mode", None)
        if forwarding is None or method is not forwarding:
            continue
        networks: list[Any] = [getattr(policy, name, None) for name in names]
        if all(getattr(type(net), "set_training_mode", None) is BaseModel.set_training_mode for net in networks):
            return tuple(dict.fromkeys(module for net in networks for module in net.modules()))
        break
    return tuple(policy.modules())[1:]


#: what a flag of a policy with its own set_training_mode reads as (see PolicyPlan)
_ALWAYS_TRAINING = {"training": True}

#: modules whose classes come from these packages are SB3's own code (or torch's)
_OWN_PACKAGES = ("stable_baselines3.", "sb3_contrib.", "torch.", "builtins", "abc", "typing")


def _base_policy() -> Any:
    from stable_baselines3.common.policies import BasePolicy

    return BasePolicy


def _own_set_training_mode() -> tuple[Any, ...]:
    """``set_training_mode`` as SB3 and sb3-contrib define it (see :data:`_FORWARDING`)."""
    import sys

    own = [_base_policy().set_training_mode]
    for module_name, class_name, _ in _FORWARDING:
        cls = getattr(sys.modules.get(module_name), class_name, None)
        if cls is not None:
            own.append(cls.set_training_mode)
    return tuple(own)


def _numpy_methods(policy: BasePolicy) -> dict[str, tuple[Any, ...]]:
    """The methods SB3's ``predict`` calls with NumPy arrays for this policy, with SB3's own function for each."""
    base = _base_policy()
    methods = {"obs_to_tensor": (base.obs_to_tensor,)}
    if isinstance(policy.action_space, sb3.spaces.Box) and policy.squash_output:
        methods["unscale_action"] = (base.unscale_action,)
    return methods


def _own_code(policy: BasePolicy) -> bool:
    """Whether every class on the policy's path is SB3's, sb3-contrib's or torch's, and no forward hook is set."""
    from torch.nn.modules import module as torch_module

    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return False
    for module in policy.modules():  # the policy itself first
        if module._forward_hooks or module._forward_pre_hooks:
            return False
        if not all(klass.__module__.startswith(_OWN_PACKAGES) for klass in type(module).__mro__):
            return False
    return True


def _flag_in_instance_dict(module: torch.nn.Module) -> bool:
    """Return whether ``module.training`` is a plain entry of the instance ``__dict__``."""
    return "training" in vars(module) and not any("training" in vars(klass) for klass in type(module).__mro__)


class ObjectCache:
    """A cache keyed by object identity that drops an entry when its object is garbage-collected.

    Lookups are a plain dict access by ``id()``; the value is never stored on the object itself.
    Values must not hold a strong reference to their key object.
    """

    def __init__(self) -> None:
        self._entries: dict[int, Any] = {}
        self._watched: set[int] = set()
        self._lock = threading.Lock()

    def get(self, obj: object) -> Any:
        """Return the value cached for ``obj``, or ``None``."""
        return self._entries.get(id(obj))

    def put(self, obj: object, value: Any) -> Any:
        """Cache ``value`` for ``obj`` and return it."""
        key = id(obj)
        with self._lock:
            if key not in self._watched:
                self._watched.add(key)
                weakref.finalize(obj, self._forget, key)
            self._entries[key] = value
        return value

    def _forget(self, key: int) -> None:
        with self._lock:
            self._entries.pop(key, None)
            self._watched.discard(key)

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._entries.clear()


_plans = ObjectCache()

#: ``VecNormalize`` statistics as device tensors, per ``RunningMeanStd`` (see :mod:`.normalization`)
statistics = ObjectCache()


def plan_for(policy: BasePolicy) -> PolicyPlan:
    """Return the plan for ``policy``, building it on first use or when its spaces were replaced."""
    plan: PolicyPlan | None = _plans.get(policy)
    if (
        plan is not None
        and plan.observation_space is policy.observation_space
        and plan.action_space is policy.action_space
    ):
        return plan
    return _plans.put(policy, PolicyPlan(policy))  # type: ignore[no-any-return]


#: per policy: (observation space, action space, lowered forward or ``None``, what was lowered or why not)
_forwards = ObjectCache()


def forward_for(policy: BasePolicy) -> tuple[lowering.Lowered[lowering.Forward] | None, str]:
    """Return ``policy``'s lowered ``forward`` (see :func:`.lowering.lower_forward`) or ``None``, and what
    was lowered or why not; built on first use, and again when the policy's spaces were replaced (as
    :func:`plan_for` does). Build it with the policy in eval mode: its probe runs SB3's own ``forward``.
    """
    found = _forwards.get(policy)
    if found is None or found[0] is not policy.observation_space or found[1] is not policy.action_space:
        found = _forwards.put(policy, (policy.observation_space, policy.action_space, *lowering.lower_forward(policy)))
    return found[2], found[3]


def clear() -> None:
    """Drop every plan, lowered forward and statistics tensor (``disable()`` calls this)."""
    _plans.clear()
    _forwards.clear()
    statistics.clear()
