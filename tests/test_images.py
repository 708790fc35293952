"""Image observations reach the network exactly as SB3's NumPy path hands them over.

PyTorch chooses its convolution kernel by the input's strides (size-1 dims included), and kernels
differ in the last bits. So the tensor route must give the network a tensor of the very shape and
strides that ``predict(obs.cpu().numpy())`` gives it after NumPy's transpose and reshape (and, for
Dict observations, ``copy.deepcopy``): checked here on the network input itself and on the actions,
bit for bit, for 1, 3 and 4 channels, channel-last and channel-first, single / batch of 1 / batch of
5, Dict image keys, and non-contiguous input tensors.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable

import numpy as np
import pytest
import stable_baselines3 as sb3
import torch
from helpers import SpaceEnv, action_space, spaces

import sb3_tensorpatch
from sb3_tensorpatch.observations import ObservationPlan
from sb3_tensorpatch.testing import assert_predict_parity

SIDE = 36  # the smallest image NatureCNN accepts
CHANNELS = (1, 3, 4)
SHAPES = {"single": None, "batch1": 1, "batch5": 5}


def _image_space(channels: int, last: bool) -> Any:
    shape = (SIDE, SIDE, channels) if last else (channels, SIDE, SIDE)
    return spaces.Box(low=0, high=255, shape=shape, dtype=np.uint8)


@functools.lru_cache(maxsize=None)
def _model(channels: int, last: bool, in_dict: bool) -> Any:
    """PPO with Box actions: a clipped Gaussian mean shows the last bits of the features."""
    image = _image_space(channels, last)
    if in_dict:
        space = spaces.Dict({"img": image, "vec": spaces.Box(low=-1.0, high=1.0, shape=(2,), dtype=np.float32)})
        policy, extractor = "MultiInputPolicy", {"cnn_output_dim": 16}
    else:
        space, policy, extractor = image, "CnnPolicy", {"features_dim": 16}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sb3.PPO(
            policy,
            SpaceEnv(space, action_space("Box")),
            policy_kwargs={"net_arch": [16], "features_extractor_kwargs": extractor},
            device="cpu",
            seed=0,
        )


def _images(channels: int, last: bool, batch: int | None, seed: int) -> torch.Tensor:
    shape = (SIDE, SIDE, channels) if last else (channels, SIDE, SIDE)
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape if batch is None else (batch, *shape), dtype=torch.uint8, generator=generator)


def _observation(image: torch.Tensor, in_dict: bool, seed: int) -> Any:
    if not in_dict:
        return image
    batch = image.shape[:-3]
    vec = torch.rand((*batch, 2), generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return {"img": image, "vec": vec}


def _numpy(observation: Any) -> Any:
    """``tensor.numpy()``: the very array (same strides) the parity contract compares with."""
    if isinstance(observation, dict):
        return {key: value.numpy() for key, value in observation.items()}
    return observation.numpy()


def _network_inputs(model: Any, observation: Any) -> tuple[Any, Any]:
    """The observation ``_predict`` receives on SB3's NumPy path and on the tensor route."""
    policy = model.policy
    seen: list[Any] = []
    original = policy._predict

    def spy(obs: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(obs)
        return original(obs, *args, **kwargs)

    policy._predict = spy
    try:
        policy.predict(_numpy(observation), deterministic=True)
        with sb3_tensorpatch.patched():
            policy.predict(observation, deterministic=True)
    finally:
        del policy._predict
    assert len(seen) == 2
    return seen[0], seen[1]


def _assert_same_tensor(expected: torch.Tensor, actual: torch.Tensor, what: str) -> None:
    assert actual.shape == expected.shape, what
    assert actual.dtype == expected.dtype, what
    assert actual.stride() == expected.stride(), f"{what}: strides {actual.stride()}, SB3 gives {expected.stride()}"
    assert torch.equal(actual, expected), what


def _assert_parity(model: Any, observation: Any) -> None:
    """The network input has SB3's shape and strides, and the actions agree bit for bit."""
    expected, actual = _network_inputs(model, observation)
    if isinstance(observation, dict):
        _assert_same_tensor(expected["img"], actual["img"], "img")
        assert torch.equal(expected["vec"], actual["vec"])
    else:
        _assert_same_tensor(expected, actual, "image")
    assert_predict_parity(model, _numpy(observation), batched=True)
    assert_predict_parity(model.policy, _numpy(observation), batched=True)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("in_dict", [False, True], ids=["Box", "Dict"])
@pytest.mark.parametrize("last", [True, False], ids=["last", "first"])
@pytest.mark.parametrize("channels", CHANNELS)
def test_contiguous_images(channels: int, last: bool, in_dict: bool, shape: str) -> None:
    model = _model(channels, last, in_dict)
    for seed in range(2):
        _assert_parity(model, _observation(_images(channels, last, SHAPES[shape], seed), in_dict, seed))


def _channel_first_memory(channels: int, batch: int | None, seed: int) -> torch.Tensor:
    """Channel-last images viewed on channel-first memory (what ``permute`` of a CNN output gives)."""
    first = _images(channels, False, batch, seed)
    return first.permute(1, 2, 0) if batch is None else first.permute(0, 2, 3, 1)


def _every_other_image(channels: int, batch: int | None, seed: int) -> torch.Tensor:
    """Every other image of a batch (every other row of a single image): a gap between them."""
    if batch is None:
        tall = torch.randint(0, 256, (2 * SIDE, SIDE, channels), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
        return tall[::2]
    return _images(channels, True, 2 * batch, seed)[::2]


def _downsampled(channels: int, batch: int | None, seed: int) -> torch.Tensor:
    """Every other pixel of a 72x72 image: strided in both spatial dims."""
    shape = (2 * SIDE, 2 * SIDE, channels)
    generator = torch.Generator().manual_seed(seed)
    big = torch.randint(0, 256, shape if batch is None else (batch, *shape), dtype=torch.uint8, generator=generator)
    return big[..., ::2, ::2, :]


def _channel_slice(channels: int, batch: int | None, seed: int) -> torch.Tensor:
    """The first channels of a wider image: not dense."""
    wide = _images(channels + 2, True, batch, seed)
    return wide[..., 1 : channels + 1]


def _expanded(channels: int, batch: int | None, seed: int) -> torch.Tensor:
    """One image repeated without copying (stride 0 on the batch dim)."""
    one = _images(channels, True, None, seed)
    return one if batch is None else one.expand(batch, *one.shape)


LAYOUTS: dict[str, Callable[[int, int | None, int], torch.Tensor]] = {
    "channel_first_memory": _channel_first_memory,
    "every_other_image": _every_other_image,
    "downsampled": _downsampled,
    "channel_slice": _channel_slice,
    "expanded": _expanded,
}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("in_dict", [False, True], ids=["Box", "Dict"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("channels", [1, 3])
def test_non_contiguous_images(channels: int, layout: str, in_dict: bool, shape: str) -> None:
    image = LAYOUTS[layout](channels, SHAPES[shape], 3)
    if layout != "expanded" or shape == "batch5":  # expanding to 1 image or none changes nothing
        assert image.stride() != torch.empty(image.shape).stride()  # not a fresh tensor's layout
    before = image.clone()
    _assert_parity(_model(channels, True, in_dict), _observation(image, in_dict, 3))
    assert torch.equal(image, before)  # the caller's tensor is never modified


def test_channel_last_input_is_viewed_not_copied() -> None:
    """Outside a Dict SB3's path only transposes and reshapes: the route copies nothing either."""
    model = _model(3, True, False)
    plan = ObservationPlan(model.policy.observation_space)
    for batch in (None, 1, 5):
        image = _images(3, True, batch, 0)
        prepared, vectorized, _ = plan.prepare(image)
        assert vectorized == (batch is not None)
        assert prepared.shape == (batch or 1, 3, SIDE, SIDE)
        assert prepared.untyped_storage().data_ptr() == image.untyped_storage().data_ptr()


@pytest.mark.parametrize("in_dict", [False, True], ids=["Box", "Dict"])
@pytest.mark.parametrize("layout", ["channel_slice", "every_other_image", "expanded", "channel_first_memory"])
def test_tensor_on_another_device_gets_the_layout_of_its_cpu_copy(layout: str, in_dict: bool) -> None:
    """For a tensor on another device the contract compares with ``obs.cpu().numpy()``, and
    ``.cpu()`` makes a non-dense tensor dense: the route replays that (``meta`` stands in for
    the other device; ``clone()`` follows the same layout rule as ``.cpu()``)."""
    model = _model(3, True, in_dict)
    image = LAYOUTS[layout](3, 5, 0)
    cpu_copy = image.clone()
    key = "img" if in_dict else None
    numpy_obs = {"img": cpu_copy.numpy(), "vec": np.zeros((5, 2), np.float32)} if in_dict else cpu_copy.numpy()
    expected, _ = model.policy.obs_to_tensor(numpy_obs)
    on_meta = torch.empty_strided(image.shape, image.stride(), dtype=image.dtype, device="meta")
    observation = {"img": on_meta, "vec": torch.zeros((5, 2), device="meta")} if in_dict else on_meta
    prepared, vectorized, device = ObservationPlan(model.policy.observation_space).prepare(observation)
    if key is not None:
        expected, prepared = expected[key], prepared[key]
    assert vectorized and device.type == "meta"
    assert prepared.shape == expected.shape
    assert prepared.stride() == expected.stride()


def test_shape_errors_still_raise_every_time() -> None:
    model = _model(3, True, False)
    wrong = torch.zeros((SIDE, SIDE, 5), dtype=torch.uint8)
    with sb3_tensorpatch.patched():
        for _ in range(2):
            with pytest.raises(ValueError, match="Error: Unexpected observation shape"):
                model.predict(wrong)


def test_channel_first_batch_is_passed_as_it_is() -> None:
    """A contiguous channel-first batch is what SB3's path makes of it already: nothing to do."""
    model = _model(3, False, False)
    plan = ObservationPlan(model.policy.observation_space)
    image = _images(3, False, 5, 0)
    prepared, vectorized, _ = plan.prepare(image)
    assert prepared is image and vectorized
