"""Per-policy facts the tensor route needs on every call, worked out once.

A :class:`PolicyPlan` holds the observation and action plans, the parameter whose ``.device`` is
the policy's device (reading it does not walk the parameters), and the modules whose training flag
``set_training_mode(False)`` would change. Plans are kept outside the policy (never as attributes,
so they never end up in a pickle) and dropped when the policy is garbage-collected.
"""

from __future__ import annotations

import operator
import threading
import weakref
from typing import Any, Callable

import torch

from .actions import ActionPlan
from .observations import ObservationPlan

_CPU = torch.device("cpu")
_training = operator.attrgetter("training")
_training_item = operator.itemgetter("training")


class PolicyPlan:
    """Cached facts about one policy.

    :param policy: an SB3 ``BasePolicy``
    """

    __slots__ = (
        "__weakref__", "action_space", "actions", "flag", "flags", "modules", "obs", "observation_space", "param",
        "rows", "single",
    )

    def __init__(self, policy: Any) -> None:
        self.observation_space = policy.observation_space
        self.action_space = policy.action_space
        self.obs = ObservationPlan(policy.observation_space)
        self.actions = ActionPlan(policy.action_space, bool(policy.squash_output))
        #: the shape of one observation, which needs nothing but a batch dim, and of each row of a
        #: batch, which needs nothing (``None``: ask ``obs``)
        self.single = self.obs.leaf.single if self.obs.leaf is not None else None
        self.rows = self.obs.leaf.rows if self.obs.leaf is not None else None
        # nn.Module.to() moves parameters in place, so the first parameter keeps telling the device
        self.param: torch.nn.Parameter | None = next(iter(policy.parameters()), None)
        # the policy itself is left out: the plan must not keep the policy alive
        self.modules = tuple(policy.modules())[1:]
        # nn.Module keeps ``training`` in the instance ``__dict__``; reading it from there skips the
        # attribute lookup through the class. Modules that define ``training`` otherwise are read as
        # attributes. ``any(map(plan.flag, plan.flags))`` says whether a module is in training mode.
        self.flags: tuple[Any, ...] = self.modules
        self.flag: Callable[[Any], bool] = _training
        if all(_plain_flag(module) for module in self.modules):
            self.flags = tuple(vars(module) for module in self.modules)
            self.flag = _training_item

    def device(self) -> torch.device:
        """The policy's device, as SB3's ``BaseModel.device`` would return it."""
        param = self.param
        return _CPU if param is None else param.device

    def ensure_eval(self, policy: Any) -> None:
        """Call ``policy.set_training_mode(False)`` unless every module is already in eval mode.

        SB3's ``predict`` calls it every time; when nothing is in training mode the call changes
        nothing, and skipping it saves walking the module tree.
        """
        if policy.training or any(map(self.flag, self.flags)):
            policy.set_training_mode(False)


def _plain_flag(module: torch.nn.Module) -> bool:
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
#: the plan of a policy by ``id()``, for the routes' inlined fast lookup (``plan_for`` does the rest)
cached_plan = _plans._entries.get


def plan_for(policy: Any) -> PolicyPlan:
    """Return the plan for ``policy``, building it on first use or when its spaces were replaced."""
    plan: PolicyPlan | None = _plans.get(policy)
    if (
        plan is not None
        and plan.observation_space is policy.observation_space
        and plan.action_space is policy.action_space
    ):
        return plan
    return _plans.put(policy, PolicyPlan(policy))  # type: ignore[no-any-return]


def clear() -> None:
    """Drop every cached plan (``disable()`` calls this)."""
    _plans.clear()
