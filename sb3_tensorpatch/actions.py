"""On-device action post-processing: reshape, clip or unscale Box actions, drop the batch dim.

This restates the numpy tail of SB3's ``predict`` with the same arithmetic in the same order, so
that the results agree bit for bit: ``np.clip(actions, low, high)`` for Box actions, or
``low + 0.5 * (actions + 1.0) * (high - low)`` (``unscale_action``) when the policy squashes its
output. The bounds become tensors once per (policy, device).

Every tensor op costs a few microseconds at batch size one, so unscaling takes two ops instead of
three when it can stay exact: when every ``0.5 * (high - low)`` is a power of two, multiplying by it
is exact, so a fused multiply-add (``torch.addcmul``, which may use FMA on some devices) rounds only
once, where numpy rounds the sum, and the results still agree bit for bit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from . import sb3

Tensor = torch.Tensor

CLIP = "clip"
UNSCALE = "unscale"


class ActionPlan:
    """How to post-process actions for one policy's action space.

    :param space: the policy's ``action_space``
    :param squash_output: the policy's ``squash_output``
    """

    __slots__ = ("_bounds", "_high", "_low", "_rank", "batched_shape", "fused", "mode", "shape", "space")

    def __init__(self, space: Any, squash_output: bool) -> None:
        self.space = space
        self.shape = tuple(space.shape)
        self.batched_shape = (-1, *self.shape)
        self._rank = len(self.shape)
        self.mode: str | None = None
        if isinstance(space, sb3.spaces.Box):
            self.mode = UNSCALE if squash_output else CLIP
            self._low = np.asarray(space.low)
            self._high = np.asarray(space.high)
        # unscale with one fused op after ``actions + 1.0`` (see the module docstring)
        self.fused = (
            self.mode == UNSCALE
            and self._low.dtype in (np.float32, np.float64)
            and _powers_of_two(_half_range(self._low, self._high))
        )
        self._bounds: dict[torch.device, tuple[Tensor, Tensor, Tensor]] = {}

    def bounds(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """Return ``(low, high, one)`` for clipping, or ``(low, 0.5 * (high - low), one)`` for unscaling,
        on ``device``, built once per device; ``one`` is a 0-d ``1.0`` in the bounds' dtype.

        ``0.5 * ((a + 1) * (high - low))`` and ``(a + 1) * (0.5 * (high - low))`` are the same
        floating-point number (halving is exact), so unscaling keeps numpy's result bit for bit.
        ``actions + one`` adds the same 1.0 as ``actions + 1.0`` with the same type promotion (a 0-d
        tensor does not promote a dimensioned one), without wrapping a Python number into a tensor
        on every call.
        """
        cached = self._bounds.get(device)
        if cached is None:
            low = torch.as_tensor(self._low, device=device)
            high = torch.as_tensor(self._high, device=device)
            second = (high - low) * 0.5 if self.mode == UNSCALE else high
            one = torch.ones((), dtype=low.dtype, device=device)
            # a dict assignment is atomic: concurrent first calls at worst build the triple twice
            cached = self._bounds[device] = (low, second, one)
        return cached

    def finish(self, actions: Tensor, vectorized: bool, reshape: bool = True) -> Tensor:
        """Post-process the raw output of ``_predict`` as SB3's ``predict`` does, on its device.

        The routes call it with autograd off, where each op is cheaper; the result is the same.

        :param actions: the actions returned by the policy's ``_predict``
        :param vectorized: whether the observation was batched (else the batch dim is dropped)
        :param reshape: reshape to ``(-1, *action_space.shape)`` first (SB3 >= 1.6.1; contrib's
            maskable and recurrent policies only from 2.8.0)
        """
        if reshape:
            # reshape((-1, *shape)) changes nothing when each row has the shape already; the test
            # reads one int where it can (slicing actions.shape costs more at batch size one)
            rank = self._rank
            if rank == 0:
                same = actions.dim() == 1
            elif rank == 1:
                same = actions.dim() == 2 and actions.size(1) == self.shape[0]
            else:
                same = actions.shape[1:] == self.shape
            if not same:
                actions = actions.reshape(self.batched_shape)
        mode = self.mode
        if mode is not None:
            device = actions.device
            low, second, one = self._bounds.get(device) or self.bounds(device)
            if mode == CLIP:
                actions = torch.clamp(actions, low, second)
            elif actions.dtype == low.dtype:
                if self.fused:
                    actions = torch.addcmul(low, torch.add(actions, one), second)
                else:
                    # in place on the fresh tensor ``actions + 1.0``; the policy's own output is not touched
                    actions = torch.add(actions, one).mul_(second).add_(low)
            else:  # numpy's type promotion, e.g. float32 actions and float64 bounds
                actions = low + (actions + 1.0) * second
        if not vectorized:
            # reshaped rows of rank 0 (Discrete) are (1,) here: squeeze() costs less than squeeze(0)
            actions = actions.squeeze() if reshape and self._rank == 0 else actions.squeeze(0)
        return actions


def _half_range(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """``(high - low) * 0.5`` in the bounds' dtype, as :meth:`ActionPlan.bounds` computes it."""
    with np.errstate(all="ignore"):  # infinite or huge bounds: not a power of two, no warning
        return np.asarray((high - low) * 0.5)


def _powers_of_two(values: np.ndarray) -> bool:
    """Return whether every value is a power of two far from overflow and underflow.

    Then ``x * value`` is exact in float32 and float64 for every ``x = actions + 1.0`` that is not
    within a factor 256 of overflow (``x`` is 0 or at least 2**-53).
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0 or not np.all(np.isfinite(values)) or np.any(values <= 0):
        return False
    mantissa, exponent = np.frexp(values)
    return bool(np.all(mantissa == 0.5) and np.all(np.abs(exponent) <= 8))
