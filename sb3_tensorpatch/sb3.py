"""The pieces of the installed SB3 that the routes reuse, resolved once.

SB3 1.8.0 uses ``gym.spaces``; 2.x uses ``gymnasium.spaces``. ``spaces`` here is whichever module
the installed ``stable_baselines3.common.policies`` uses, so ``isinstance`` checks agree with SB3's.
"""

from __future__ import annotations

from typing import Any, Callable

from stable_baselines3.common import policies as _policies
from stable_baselines3.common import preprocessing as _preprocessing
from stable_baselines3.common import utils as _utils

spaces: Any = getattr(_policies, "spaces")  # noqa: B009 (gym.spaces or gymnasium.spaces)
is_image_space: Callable[..., bool] = _preprocessing.is_image_space


def vectorized_checker(space: Any) -> Callable[[Any, Any], bool]:
    """Return SB3's single-vs-batched checker for a non-Dict space (it only reads ``.shape``).

    The checker raises SB3's own ``ValueError`` for a shape that fits neither.

    :param space: an observation space of the installed SB3's ``spaces`` module
    """
    checkers = (
        (spaces.Box, _utils.is_vectorized_box_observation),
        (spaces.Discrete, _utils.is_vectorized_discrete_observation),
        (spaces.MultiDiscrete, _utils.is_vectorized_multidiscrete_observation),
        (spaces.MultiBinary, _utils.is_vectorized_multibinary_observation),
    )
    for space_type, checker in checkers:
        if isinstance(space, space_type):
            return checker

    def unsupported(observation: Any, observation_space: Any) -> bool:
        # SB3's generic function raises its own message for any other space type
        return bool(_utils.is_vectorized_observation(observation, observation_space))

    return unsupported
