"""Tensor observations: validate, transpose images, tell single from batched, add the batch dim.

This restates SB3's ``BaseModel.obs_to_tensor`` for tensors without leaving the device. The
single-vs-batched decision is made by SB3's own ``is_vectorized_*_observation`` helpers of the
installed release (they only read ``.shape``), so shape errors carry SB3's own messages.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from . import sb3
from .dlpack import is_foreign
from .errors import DictExpectedError, DictKeyError, ObservationTypeError, SizeMismatchError

Tensor = torch.Tensor
_STRIDED = torch.strided
_ndarray = np.ndarray

#: dtypes SB3's preprocessing can turn into network input (``.float()`` / ``.long()``); the wide
#: unsigned ones exist from torch 2.3 on. Complex observations are SB3's too: its ``.float()`` keeps
#: the real part (with torch's warning), on either path.
NUMERIC_DTYPES = frozenset(
    getattr(torch, name)
    for name in (
        "float16", "bfloat16", "float32", "float64", "complex64", "complex128",
        "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "bool",
    )
    if hasattr(torch, name)
)


#: what :func:`route_kind` says about an observation: SB3's own path, the tensor route, or the
#: tensor route through DLPack (:mod:`sb3_tensorpatch.dlpack`)
NOT_ROUTED, TENSOR, FOREIGN = 0, 1, 2


def route_kind(observation: object) -> int:
    """Return where ``observation`` goes: :data:`TENSOR` for a tensor or a dict holding one,
    :data:`FOREIGN` for another library's array (``__dlpack__``) or a dict holding one and no tensor,
    else :data:`NOT_ROUTED` (NumPy arrays among them: SB3's own input, told apart first).

    The wrapper asks this only after its own ``isinstance(observation, Tensor)`` failed.

    :param observation: the first argument given to ``predict``
    """
    if type(observation) is _ndarray:
        return NOT_ROUTED
    if isinstance(observation, Tensor):
        return TENSOR
    if isinstance(observation, dict):
        values = observation.values()
        for value in values:
            if isinstance(value, Tensor):
                return TENSOR
        # a second pass, so that a dict of NumPy arrays (SB3's Dict input) costs one type check more per key
        for value in values:
            if type(value) is not _ndarray and is_foreign(value):
                return FOREIGN
        return NOT_ROUTED
    return FOREIGN if is_foreign(observation) else NOT_ROUTED


def is_tensor_input(observation: object) -> bool:
    """Return whether ``observation`` takes the tensor route as it is: a tensor, or a dict holding one.

    :param observation: the first argument given to ``predict``
    """
    return route_kind(observation) == TENSOR


def _check_dtype(obs: Tensor, space: Any) -> None:
    if obs.dtype not in NUMERIC_DTYPES:
        raise TypeError(
            f"Error: Unexpected observation dtype {obs.dtype} for {space}: "
            "expected a numeric tensor (float, complex, int, uint8 or bool)."
        )


class _Shape:
    """Stands in for an array in SB3's shape checkers, which only read ``.shape``."""

    __slots__ = ("shape",)

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape


class LeafPlan:
    """How to prepare a tensor for one non-Dict observation space.

    :param space: the (sub-)space of the policy's observation space
    :param in_dict: whether ``space`` is a key of a Dict observation space (SB3 deep-copies those
        observations before transposing images, which can change their memory layout)
    """

    __slots__ = ("checker", "in_dict", "is_image", "layouts", "shape", "single", "space", "transposed")

    def __init__(self, space: Any, in_dict: bool = False) -> None:
        self.space = space
        self.shape = tuple(space.shape)
        self.is_image = sb3.is_image_space(space)
        self.in_dict = in_dict
        # the channel-last shape that SB3's maybe_transpose would turn into this space's shape
        self.transposed = (self.shape[1], self.shape[2], self.shape[0]) if self.is_image else None
        #: images: the :class:`_ImageLayout` for each input (shape, strides, dtype, on CPU)
        self.layouts: dict[tuple[Any, ...], _ImageLayout] = {}
        self.checker = sb3.vectorized_checker(space)
        # the shape SB3's checker calls a single observation, and (n, *single) a batch, asked once:
        # the routes take a tensor of either shape without calling the checker (``None`` for
        # images, which may need a transpose, and where the checker says otherwise)
        self.single: tuple[int, ...] | None = None
        if not self.is_image:
            try:
                if self.checker(_Shape(self.shape), space) is False and self.checker(_Shape((3, *self.shape)), space) is True:
                    self.single = self.shape
            except (ValueError, TypeError, AttributeError):
                pass

    def prepare(self, obs: Tensor) -> tuple[Tensor, bool]:
        """Validate ``obs`` and return it batched and channel-first, with whether it was batched.

        :raises ValueError: for a shape that fits neither a single nor a batched observation
        :raises TypeError: for a dtype SB3 cannot feed to the network
        """
        _check_dtype(obs, self.space)
        if obs.layout != torch.strided and not obs.is_nested:
            # sparse: SB3's path sees the dense values (``predict(obs.to_dense().numpy())``)
            obs = obs.to_dense()
        if self.is_image and not obs.is_nested:
            key = (obs.shape, obs.stride(), obs.dtype, obs.is_cpu)
            layout = self.layouts.get(key)
            if layout is None:
                layout = self._image_layout(obs, key)
            if layout.copy is not None:
                obs = torch.empty_strided(obs.shape, layout.copy, dtype=obs.dtype, device=obs.device).copy_(obs)
            elif layout.as_is:
                return obs, layout.vectorized
            return obs.as_strided(layout.size, layout.stride), layout.vectorized
        if self.is_image:  # a nested tensor: transposed as SB3 would, for the checker's message
            order = self._transpose_order(obs.shape)
            if order is not None:
                obs = obs.permute(order)
        try:
            vectorized = self.checker(obs, self.space)
        except ValueError:
            # again with a plain tuple shape, so the message reads as SB3's does for numpy arrays
            self.checker(_Shape(tuple(obs.shape)), self.space)
            raise
        except RuntimeError as exc:
            if obs.is_nested:
                raise TypeError(
                    f"Error: nested (ragged) tensors are not supported as observations for {self.space}: "
                    "pass a regular tensor."
                ) from exc
            raise
        if not vectorized:
            # the checker found obs.shape == space.shape: this is reshape((-1, *shape)), cheaper
            obs = obs.unsqueeze(0)
        return obs, vectorized

    def _transpose_order(self, shape: tuple[int, ...]) -> tuple[int, ...] | None:
        """The axes order of SB3's ``maybe_transpose`` for an image of ``shape`` (``None``: as it is)."""
        if shape == self.shape or shape[1:] == self.shape:
            return None
        if shape == self.transposed:
            return (2, 0, 1)
        if shape[1:] == self.transposed:
            return (0, 3, 1, 2)
        return None

    def _image_layout(self, obs: Tensor, key: tuple[Any, ...]) -> _ImageLayout:
        """Work out, once per input layout, the tensor SB3's NumPy path hands to the network.

        PyTorch picks its convolution kernel by the input's strides, size-1 dims included, so the
        route must give the network the very shape and strides that ``predict(obs.cpu().numpy())``
        would: NumPy's ``transpose`` and ``reshape((-1, *shape))`` (which re-derive the strides of
        size-1 dims by rules of their own), after ``copy.deepcopy`` for Dict observations and after
        ``.cpu()`` for tensors on another device (both copies may re-order a non-dense layout).
        These steps are replayed once on a stand-in array that has the input's strides and never
        reads its memory; then each call is at most one copy (where SB3's copies change the memory
        layout) and one ``as_strided``.
        """
        shape = tuple(obs.shape)
        order = self._transpose_order(shape)
        # SB3's checker on the transposed shape, with SB3's message for a shape that fits neither
        vectorized = self.checker(_Shape(shape if order is None else tuple(shape[axis] for axis in order)), self.space)
        itemsize = obs.element_size()
        strides = obs.stride()
        if not obs.is_cpu:
            # the strides .cpu() gives: the same rule for every pair of devices, replayed on ``meta``
            strides = torch.empty_strided(shape, strides, device="meta").to(device="meta", copy=True).stride()
        stand_in = np.lib.stride_tricks.as_strided(
            np.empty(1, dtype=f"u{itemsize}"), shape, tuple(stride * itemsize for stride in strides)
        )
        if self.in_dict:
            stand_in = np.empty_like(stand_in)  # deepcopy's layout (NumPy's "K" order), unfilled
        # the layout the network's input shares with the (possibly copied) observation's memory
        copied = tuple(stride // itemsize for stride in stand_in.strides)
        same_memory = any(size == 0 for size in shape) or all(
            size == 1 or mine == theirs for size, mine, theirs in zip(shape, obs.stride(), copied)
        )
        if order is not None:
            stand_in = np.transpose(stand_in, order)
        stand_in = _reshape_view(stand_in, (-1, *self.shape))
        size = tuple(stand_in.shape)
        stride = tuple(stride // itemsize for stride in stand_in.strides)
        as_is = same_memory and size == shape and stride == obs.stride()
        layout = _ImageLayout(size, stride, vectorized, None if same_memory else copied, as_is)
        if len(self.layouts) >= _MAX_LAYOUTS:
            self.layouts.clear()
        # a dict assignment is atomic: concurrent first calls at worst work the layout out twice
        self.layouts[key] = layout
        return layout


#: layouts kept per image leaf; a program sees a few (one per batch size), more means churn
_MAX_LAYOUTS = 64


class _ImageLayout:
    """The network input SB3's NumPy path makes of one image input layout (see ``_image_layout``).

    :param size: the batched, channel-first shape
    :param stride: its strides, as NumPy's transpose and reshape leave them
    :param vectorized: whether the input was a batch
    :param copy: the strides of the copy SB3's path makes first, or ``None`` where the input's own
        memory can be viewed
    :param as_is: whether the input itself is that tensor already (a channel-first batch, mostly)
    """

    __slots__ = ("as_is", "copy", "size", "stride", "vectorized")

    def __init__(
        self, size: tuple[int, ...], stride: tuple[int, ...], vectorized: bool, copy: tuple[int, ...] | None, as_is: bool
    ) -> None:
        self.size = size
        self.stride = stride
        self.vectorized = vectorized
        self.copy = copy
        self.as_is = as_is


def _reshape_view(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``array.reshape(shape)`` that must not copy: the stand-in arrays have no memory to read.

    Adding a leading 1 or keeping the shape never needs a copy; NumPy >= 2.1 is asked to make sure.
    """
    try:
        return np.reshape(array, shape, copy=False)  # type: ignore[call-arg,unused-ignore]
    except TypeError:  # pragma: no cover - NumPy < 2.1 has no ``copy``
        return array.reshape(shape)


class ObservationPlan:
    """How to prepare tensor observations for one policy's observation space.

    :param space: the policy's ``observation_space``
    """

    __slots__ = ("keys", "leaf", "leaves", "single", "space")

    def __init__(self, space: Any) -> None:
        self.space = space
        if isinstance(space, sb3.spaces.Dict):
            self.leaf = None
            self.keys = frozenset(space.spaces)
            self.leaves = tuple((key, LeafPlan(sub, in_dict=True)) for key, sub in space.spaces.items())
        else:
            self.leaf = LeafPlan(space)
            self.keys = frozenset()
            self.leaves = ()
        #: the shape of one observation, which needs nothing but a batch dim, and of each row of a
        #: batch, which needs nothing (``None``: every input takes the full check)
        self.single = self.leaf.single if self.leaf is not None else None

    def prepare(self, observation: Tensor | dict[str, Any]) -> tuple[Tensor | dict[str, Tensor], bool, torch.device]:
        """Validate and batch a tensor observation (or dict of them), without moving it.

        :param observation: a tensor, or a dict of tensors for a Dict observation space
        :return: the batched observation, whether the input was batched, and the input's device
        :raises ValueError: for shapes that fit neither single nor batched, or wrong dict keys
            (:class:`~sb3_tensorpatch.errors.DictKeyError`, also a ``KeyError`` as in SB3)
        :raises TypeError: for a dict where a tensor is expected and the other way round (also an
            ``AssertionError`` or ``IndexError``, as SB3 raises)
        """
        # the common case, decided from the shapes SB3's checker gave once: one dense tensor of one
        # observation's shape, or a batch of them
        single = self.single
        if (
            single is not None
            and observation.__class__ is Tensor
            and observation.dtype in NUMERIC_DTYPES
            and observation.layout is _STRIDED
            and not observation.is_nested
        ):
            shape = observation.shape
            if shape == single:
                return observation.unsqueeze(0), False, observation.device
            if shape[1:] == single:
                return observation, True, observation.device
        leaf = self.leaf
        if leaf is not None:
            if not isinstance(observation, Tensor):
                raise ObservationTypeError(
                    f"Error: the observation is a {type(observation).__name__} but the observation space "
                    f"is {self.space}: pass a tensor."
                )
            obs, vectorized = leaf.prepare(observation)
            return obs, vectorized, observation.device
        return self._prepare_dict(observation)

    def _prepare_dict(self, observation: Any) -> tuple[dict[str, Tensor], bool, torch.device]:
        if not isinstance(observation, dict):
            raise DictExpectedError(
                f"Error: the observation is a {type(observation).__name__} but the observation space "
                f"is {self.space}: pass a dict of tensors with the keys {sorted(self.keys)}."
            )
        given = observation.keys()
        if given != self.keys:
            missing = sorted(self.keys - given)
            extra = sorted(set(given) - self.keys, key=str)
            raise DictKeyError(
                f"Error: the Dict observation has the wrong keys (missing: {missing}, unexpected: {extra}); "
                f"the observation space expects exactly {sorted(self.keys)}."
            )
        device = None
        for value in observation.values():
            if isinstance(value, Tensor):
                device = value.device
                break
        assert device is not None  # the route is only taken when a value is a tensor
        prepared: dict[str, Tensor] = {}
        vectorized = False
        batch = None
        for key, leaf in self.leaves:
            value = observation[key]
            if not isinstance(value, Tensor):
                # numpy arrays (or lists, numbers) beside tensors are converted onto the tensors' device
                try:
                    value = torch.as_tensor(value, device=device)
                except (TypeError, RuntimeError, ValueError) as exc:
                    raise TypeError(
                        f"Error: the Dict observation's value for key {key!r} is a {type(value).__name__}, "
                        "which cannot become a tensor: pass a tensor or a numeric array."
                    ) from exc
            elif value.device != device:
                raise ValueError(
                    f"Error: the Dict observation's tensors are on different devices "
                    f"({device} and {value.device} for key {key!r}); put them on one device."
                )
            value, key_vectorized = leaf.prepare(value)
            vectorized = vectorized or key_vectorized
            if batch is None:
                batch = value.shape[0]
            elif value.shape[0] != batch:
                raise SizeMismatchError(
                    f"Error: the Dict observation's keys have different batch sizes "
                    f"({batch} and {value.shape[0]} for key {key!r})."
                )
            prepared[key] = value
        return prepared, vectorized, device


def batch_size(obs: Tensor | dict[str, Tensor]) -> int:
    """Return the batch size of a prepared (batched) observation."""
    if isinstance(obs, dict):
        return next(iter(obs.values())).shape[0]
    return obs.shape[0]


def copy_input(obs: Tensor | dict[str, Tensor]) -> Tensor | dict[str, Tensor]:
    """A copy of a prepared observation, for networks that may change their input in place.

    SB3's path always hands its networks a copy of the caller's array, so an in-place op in a custom
    features extractor never reaches the caller; the prepared tensor may share the caller's memory.
    """
    if isinstance(obs, dict):
        return {key: value.clone() for key, value in obs.items()}
    return obs.clone()


def check_reachable(source: torch.device, target: torch.device) -> None:
    """Raise before any work when a tensor on ``source`` cannot be used by a policy on ``target``.

    :raises ValueError: for ``meta`` tensors (they hold no data) or a ``meta`` policy
    """
    if source.type == "meta" or target.type == "meta":
        raise ValueError(
            f"Error: the observation is on device {source}, which the policy on {target} cannot use: "
            "meta tensors hold no data. Pass a tensor on a real device."
        )


def to_device(obs: Tensor | dict[str, Tensor], device: torch.device) -> Tensor | dict[str, Tensor]:
    """Move a prepared observation to ``device``.

    :raises ValueError: when the tensor cannot be moved there (for example a ``meta`` tensor)
    """
    try:
        if isinstance(obs, dict):
            return {key: value.to(device) for key, value in obs.items()}
        return obs.to(device)
    except (RuntimeError, NotImplementedError) as exc:
        source = obs.device if isinstance(obs, Tensor) else next(iter(obs.values())).device
        raise ValueError(
            f"Error: the observation is on device {source}, which the policy on {device} cannot use: {exc}"
        ) from exc
