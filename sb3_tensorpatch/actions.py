"""On-device action post-processing: reshape, clip or unscale Box actions, drop the batch dim.

This restates the numpy tail of SB3's ``predict`` with the same arithmetic in the same order, so
that the results agree bit for bit: ``np.clip(actions, low, high)`` for Box actions, or
``low + 0.5 * (actions + 1.0) * (high - low)`` (``unscale_action``) when the policy squashes its
output.

**Dtypes.** NumPy promotes the policy's float32 actions with the bounds' dtype: float64 bounds, and
integer bounds of 32 bits or more, give float64 actions; float16 and narrower integer bounds keep
float32. Every operand is brought to NumPy's dtype for each step (the bounds once, in NumPy, with
NumPy's own casts: ``high - low`` wraps around in an integer dtype as it does for SB3), so the
route returns the dtype and the values SB3 returns. The dtypes are asked of NumPy itself, on empty
arrays, once per snapshot of the bounds.

**Fresh bounds.** ``action_space.low`` and ``high`` may be replaced or edited in place at any time.
Each call compares them with the snapshot the device tensors were made from (identity, then bytes:
host-side arrays, so nothing is read back from the device) and takes a new snapshot when they
changed, with its own decisions below.

**Fewer ops.** Every tensor op costs a few microseconds at batch size one, so where the whole
unscale stays in the actions' dtype it takes three ops, ``(actions + 1) * (0.5 * (high - low)) +
low``, instead of SB3's four (halving is exact, so ``0.5 * ((a + 1) * d)`` and ``(a + 1) * (0.5 *
d)`` are the same number), and two when every ``0.5 * (high - low)`` is a power of two: then the
product is exact and a fused multiply-add (``torch.addcmul``, which may use FMA on some devices)
rounds only once, where numpy rounds the sum, and the results still agree bit for bit.

**Signed zeros.** NumPy's clip returns the bound where an action equals it, ``torch.clamp`` the
action: ``-0.0`` clipped to a bound of ``0.0`` is ``0.0`` for SB3. Bounds with a zero take one op
more (see ``_clip_kind``); the others clamp in one op.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from . import sb3
from .host import NUMPY_DTYPES, TORCH_DTYPES

Tensor = torch.Tensor

CLIP = "clip"
UNSCALE = "unscale"

# how a snapshot post-processes actions of one dtype (see _Step)
_CLAMP = 0  # torch.clamp(actions, low, high), in numpy's result dtype
_FUSED = 1  # addcmul(low, actions + 1, half_range): exact products, one op fewer
_SCALED = 2  # (actions + 1) * half_range + low, in place on the fresh sum
_LITERAL = 3  # low + ((actions + 1.0) * 0.5) * (high - low), each step in numpy's dtype
_CLAMP_ZERO = 4  # clamp, then + zeros: -0.0 on a bound of 0.0 becomes 0.0, as numpy's clip makes it
_CLAMP_TIES = 5  # clamp, then the bound's own bits wherever the result equals a bound


class _Step:
    """How to post-process actions of one dtype on one device, for one snapshot of the bounds.

    :param kind: ``_CLAMP``, ``_FUSED``, ``_SCALED`` or ``_LITERAL``
    :param dtype: the actions' dtype this step is for
    :param cast: the dtype to bring the actions to first (numpy's clip dtype), or ``None``
    :param low: ``low`` in numpy's dtype for the step that uses it
    :param second: ``high`` (clip), ``0.5 * (high - low)`` (fused, scaled) or ``high - low`` (literal)
    :param one: a 0-d ``1.0``: ``actions + one`` adds the same 1.0 as ``actions + 1.0``, in the
        actions' dtype (a 0-d tensor does not promote a dimensioned one), without wrapping a Python
        number into a tensor on every call; for ``_CLAMP_ZERO``, the zeros to add instead
    """

    __slots__ = ("cast", "dtype", "kind", "low", "one", "second")

    def __init__(self, kind: int, dtype: torch.dtype, cast: torch.dtype | None, low: Tensor, second: Tensor, one: Tensor) -> None:
        self.kind = kind
        self.dtype = dtype
        self.cast = cast
        self.low = low
        self.second = second
        self.one = one


def _clip_kind(low: np.ndarray, high: np.ndarray) -> tuple[int, np.ndarray | None]:
    """How to clip exactly as numpy does, and the zeros ``_CLAMP_ZERO`` adds.

    NumPy's clip returns the bound where the action equals it, ``torch.clamp`` the action: the
    same number, but not the same bits for a zero of the other sign. Bounds with no zero need
    nothing more. Where every zero bound is ``+0.0``, adding ``+0.0`` there (and ``-0.0``, which
    changes nothing, elsewhere) turns a clamped ``-0.0`` into numpy's ``+0.0``: one op more. A
    ``-0.0`` bound takes the bound's bits wherever the result equals it.

    :param low: the lower bounds in numpy's result dtype, broadcast to the actions' row shape
    :param high: the upper bounds, likewise
    """
    zero = (low == 0) | (high == 0)
    if not zero.any():
        return _CLAMP, None
    if np.any(np.signbit(low[low == 0])) or np.any(np.signbit(high[high == 0])):
        return _CLAMP_TIES, None
    return _CLAMP_ZERO, np.where(zero, low.dtype.type(0.0), -low.dtype.type(0.0)).astype(low.dtype)


class _Bounds:
    """One snapshot of a Box's ``low`` and ``high``, and the steps made from it per device.

    :param low: the space's ``low`` as it is now
    :param high: the space's ``high`` as it is now
    :param mode: ``CLIP`` or ``UNSCALE``
    """

    __slots__ = ("high", "high_bytes", "high_ref", "low", "low_bytes", "low_ref", "mode", "ndarrays", "steps")

    def __init__(self, low: Any, high: Any, mode: str) -> None:
        # the objects, to notice an assignment, and their bytes, to notice an in-place edit
        self.low_ref = low
        self.high_ref = high
        # copies: the snapshot must not follow later in-place edits of the live arrays
        self.low = np.array(low)
        self.high = np.array(high)
        self.low_bytes = self.low.tobytes()
        self.high_bytes = self.high.tobytes()
        #: whether both are numpy arrays, whose tobytes() the freshness check calls (a Box always
        #: has arrays; anything else assigned there is compared anew on every call)
        self.ndarrays = type(low) is np.ndarray and type(high) is np.ndarray
        self.mode = mode
        #: the step of each device, for the last actions dtype seen there
        self.steps: dict[torch.device, _Step] = {}

    def step(self, device: torch.device, dtype: torch.dtype) -> _Step:
        """Work out the step for actions of ``dtype`` on ``device`` (once per pair, mostly)."""
        low, high = self.low, self.high
        # numpy's dtypes for SB3's expressions, asked of numpy itself on empty actions
        actions = np.zeros((0, *np.broadcast_shapes(low.shape, high.shape)), dtype=_numpy_dtype(dtype))
        one = torch.ones((), dtype=dtype, device=device)
        with np.errstate(all="ignore"):  # infinite or huge bounds: numpy's values, no warning
            if self.mode == CLIP:
                result = np.clip(actions, low, high).dtype
                cast = None if result == actions.dtype else _torch_dtype(result)
                row = actions.shape[1:]
                kind, zeros = _clip_kind(
                    np.broadcast_to(low.astype(result), row), np.broadcast_to(high.astype(result), row)
                )
                if zeros is not None:
                    one = _tensor(zeros, result, device)
                found = _Step(kind, dtype, cast, _tensor(low, result, device), _tensor(high, result, device), one)
            else:
                difference = high - low  # in the bounds' dtype, wrapping around as numpy's does
                product = 0.5 * (actions + 1.0) * difference
                scaled = product.dtype
                result = (low + product).dtype
                kind = _LITERAL
                second = difference
                half = difference.astype(scaled) * 0.5
                if result == scaled == actions.dtype and np.array_equal(half * 2, difference.astype(scaled), equal_nan=True):
                    # the whole unscale stays in the actions' dtype and halving the range is exact
                    kind = _FUSED if _powers_of_two(half) else _SCALED
                    second = half
                found = _Step(kind, dtype, None, _tensor(low, result, device), _tensor(second, scaled, device), one)
        # a dict assignment is atomic: concurrent first calls at worst build the step twice
        self.steps[device] = found
        return found


class ActionPlan:
    """How to post-process actions for one policy's action space.

    :param space: the policy's ``action_space``
    :param squash_output: the policy's ``squash_output``
    """

    __slots__ = ("_rank", "_snapshot", "batched_shape", "mode", "shape", "space")

    def __init__(self, space: Any, squash_output: bool) -> None:
        self.space = space
        self.shape = tuple(space.shape)
        self.batched_shape = (-1, *self.shape)
        self._rank = len(self.shape)
        self.mode: str | None = None
        self._snapshot: _Bounds | None = None
        if isinstance(space, sb3.spaces.Box):
            self.mode = UNSCALE if squash_output else CLIP
            self._snapshot = _Bounds(space.low, space.high, self.mode)

    def _current(self) -> _Bounds:
        """The snapshot of the space's bounds as they are now, taken anew when they changed."""
        space = self.space
        low = space.low
        high = space.high
        snapshot = self._snapshot
        if (
            snapshot is None
            or low is not snapshot.low_ref
            or high is not snapshot.high_ref
            or not snapshot.ndarrays
            or low.tobytes() != snapshot.low_bytes
            or high.tobytes() != snapshot.high_bytes
        ):
            # an attribute assignment is atomic: a concurrent call uses one snapshot or the other
            snapshot = self._snapshot = _Bounds(low, high, self.mode or CLIP)
        return snapshot

    def bounds(self, device: torch.device, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor, Tensor]:
        """Return the tensors post-processing uses for actions of ``dtype`` on ``device``, for the
        bounds as they are now: ``(low, high, one)`` for clipping, ``(low, 0.5 * (high - low), one)``
        or ``(low, high - low, one)`` for unscaling, each in numpy's dtype for its step.
        """
        step = self._step(self._current(), device, dtype)
        return step.low, step.second, step.one

    @property
    def fused(self) -> bool:
        """Whether actions in the bounds' dtype (float32 for bounds other than float32 and float64)
        are unscaled with one fused multiply-add, for the bounds as they are now."""
        if self.mode != UNSCALE:
            return False
        snapshot = self._current()
        dtype = torch.float64 if snapshot.low.dtype == np.float64 else torch.float32
        return self._step(snapshot, torch.device("cpu"), dtype).kind == _FUSED

    @staticmethod
    def _step(snapshot: _Bounds, device: torch.device, dtype: torch.dtype) -> _Step:
        step = snapshot.steps.get(device)
        if step is None or step.dtype is not dtype:
            step = snapshot.step(device, dtype)
        return step

    @staticmethod
    def _clamp_zeros(actions: Tensor, step: _Step) -> Tensor:
        """Clip with numpy's bits for bounds that are zeros (see ``_clip_kind``)."""
        if step.cast is not None:
            actions = actions.to(step.cast)
        low, high = step.low, step.second
        # in place on the fresh tensor clamp() made; the policy's own output is not touched
        actions = torch.clamp(actions, low, high)
        if step.kind == _CLAMP_ZERO:
            return actions.add_(step.one)
        actions = torch.where(actions == low, low, actions)
        return torch.where(actions == high, high, actions)

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
        if self.mode is not None:
            step = self._step(self._current(), actions.device, actions.dtype)
            kind = step.kind
            if kind == _CLAMP:
                if step.cast is not None:
                    actions = actions.to(step.cast)
                actions = torch.clamp(actions, step.low, step.second)
            elif kind >= _CLAMP_ZERO:
                actions = self._clamp_zeros(actions, step)
            elif kind == _FUSED:
                actions = torch.addcmul(step.low, torch.add(actions, step.one), step.second)
            elif kind == _SCALED:
                # in place on the fresh tensor ``actions + 1.0``; the policy's own output is not touched
                actions = torch.add(actions, step.one).mul_(step.second).add_(step.low)
            else:
                # numpy's order; torch's promotion of a dimensioned float tensor with a wider one is
                # numpy's here, and every conversion on the way is exact (float to a wider float)
                actions = step.low + torch.add(actions, step.one).mul_(0.5) * step.second
        if not vectorized:
            # reshaped rows of rank 0 (Discrete) are (1,) here: squeeze() costs less than squeeze(0)
            actions = actions.squeeze() if reshape and self._rank == 0 else actions.squeeze(0)
        return actions


def _numpy_dtype(dtype: torch.dtype) -> np.dtype[Any]:
    # bfloat16 and others without a numpy twin: numpy would see float32
    return NUMPY_DTYPES.get(dtype, np.dtype(np.float32))


def _torch_dtype(dtype: np.dtype[Any]) -> torch.dtype:
    return TORCH_DTYPES[np.dtype(dtype)]


def _tensor(values: np.ndarray, dtype: np.dtype[Any], device: torch.device) -> Tensor:
    """``values`` cast to ``dtype`` by numpy (numpy's rounding of large integers), on ``device``.

    At least one dim: a 0-d tensor would not take part in torch's type promotion (the bounds of a
    Box of shape ``()``), where numpy's 0-d arrays do.
    """
    return torch.as_tensor(np.ascontiguousarray(np.atleast_1d(values), dtype=dtype), device=device)


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
