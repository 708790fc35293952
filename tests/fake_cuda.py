"""Fake CUDA on a CPU-only torch: run a policy "on cuda" and record every host sync it would make.

The CPU host-read count (``test_host_sync.py``) cannot see what makes a GPU wait: host<->device
copies, and ops whose CUDA kernels read a value or a size back to the host. This module makes
those visible without a GPU. Each piece exists for one reason:

- :class:`~torch._subclasses.fake_tensor.FakeTensorMode` creates tensors with ``device="cuda"``,
  a shape and a dtype but no data, and runs each op's shape rules instead of a kernel. Ops whose
  output depends on data (``item``, ``nonzero``...) raise there, after the recorder has seen them.
- A no-op CUDA device guard (:func:`fake_cuda_mode`): a CPU build of torch registers no device
  guard for CUDA, and ops that change device (a copy to cuda, ``nonzero``) ask for one. A
  two-line C++ extension registers c10's ``NoOpDeviceGuardImpl`` for CUDA when loaded. It is
  compiled once per torch version and Python into the user's cache directory (about 4 s with gcc;
  loading it from there takes 0.1 s). A torch built with CUDA is never given it (it would replace
  the real guard); without a compiler or ninja the tests skip, saying why, and never fail for it.
- :func:`on_fake_cuda` swaps a module's parameters and buffers in place with fake CUDA tensors
  (``torch.utils.swap_tensors``), so that every reference to them (the policy's sub-networks, the
  route's cached first parameter, an optimizer) sees a policy on cuda, and swaps them back after.
- :class:`SyncRecorder`, a ``TorchDispatchMode`` entered over the fake mode, sees every aten op
  first and records the syncing ones with the Python stack of the call (:data:`SCALAR_READS`,
  :data:`SYNCING_OPS`, copies between the host and the device), so a failure names the line.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, NamedTuple

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

try:
    from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily
except ImportError:  # pragma: no cover - torch without fake tensors
    FakeTensorMode = unset_fake_temporarily = None

#: ops that read a device value back to the host (a stream sync on a GPU)
SCALAR_READS = frozenset({"aten::_local_scalar_dense", "aten::item", "aten::is_nonzero", "aten::equal"})
#: ops whose CUDA kernels sync to size their output (``repeat_interleave`` only without
#: ``output_size``; boolean-mask indexing is recognised by its index dtype in :meth:`SyncRecorder._classify`)
SYNCING_OPS = frozenset(
    {
        "aten::nonzero", "aten::argwhere", "aten::masked_select", "aten::_unique", "aten::_unique2",
        "aten::unique_dim", "aten::unique_consecutive", "aten::unique_dim_consecutive", "aten::bincount",
        "aten::repeat_interleave",
    }
)
#: ops that copy between devices: ``(op, index of the source argument, index of the destination
#: argument or None for the output)``. ``torch.tensor(value, device="cuda")`` (a blocking upload)
#: is ``lift_fresh`` of a CPU tensor and then ``_to_copy``: it is recorded as that copy.
COPIES = {"aten::_to_copy": (0, None), "aten::copy_": (1, 0), "aten::_copy_from": (0, 1), "aten::_copy_from_and_resize": (0, 1)}
#: ops that index with tensors: a bool or uint8 index is a mask, which CUDA turns into indices with nonzero
INDEXING = frozenset({"aten::index", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_"})

HOST_TO_DEVICE = "host->device copy"
DEVICE_TO_HOST = "device->host copy"
SCALAR_READ = "scalar read"
SYNCING_OP = "syncing op"

_GUARD_SOURCE = """
// A CUDA device guard that does nothing: a CPU-only torch registers none, and fake CUDA tensors
// need one whenever an op changes device. Registered when the library is loaded.
#include <c10/core/impl/DeviceGuardImplInterface.h>
namespace {
C10_REGISTER_GUARD_IMPL(CUDA, c10::impl::NoOpDeviceGuardImpl<c10::DeviceType::CUDA>);
}
"""


class Event(NamedTuple):
    """One host sync: its kind, the aten op, and the Python stack that made it."""

    kind: str
    op: str
    stack: traceback.StackSummary

    @property
    def frames(self) -> list[traceback.FrameSummary]:
        """The frames outside torch and this module, outermost first: the last one made the sync."""
        return [frame for frame in self.stack if not _internal(frame.filename)]

    def __str__(self) -> str:
        return f"{self.kind}: {self.op}\n" + "".join(traceback.format_list(self.frames[-6:]))


def _internal(filename: str) -> bool:
    """Frames of torch itself and of this module say nothing about who made the sync."""
    return filename.startswith(_TORCH_DIR) or filename == __file__


_TORCH_DIR = os.path.dirname(torch.__file__)


def _device_type(value: Any) -> str | None:
    return value.device.type if isinstance(value, torch.Tensor) else None


class SyncRecorder(TorchDispatchMode):
    """Record the host syncs a CUDA run of the code would make (see the module docstring).

    Enter it inside a :class:`FakeTensorMode`, so that it sees each op before the fake mode does.
    The op then runs as usual: data-dependent ones raise in the fake mode, after being recorded.
    """

    def __init__(self) -> None:
        super().__init__()
        self.events: list[Event] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = func._schema.name
        kind = self._classify(name, func, args, kwargs)
        if kind is not None:
            self.events.append(Event(kind, str(func), traceback.extract_stack()[:-1]))
        return func(*args, **kwargs)

    @staticmethod
    def _classify(name: str, func: Any, args: Any, kwargs: dict[str, Any]) -> str | None:
        copy = COPIES.get(name)
        if copy is not None:
            source = _device_type(args[copy[0]])
            if copy[1] is None:
                target = kwargs.get("device")
                target = torch.device(target).type if target is not None else source
            else:
                target = _device_type(args[copy[1]])
            if source == "cpu" and target == "cuda":
                return HOST_TO_DEVICE
            if source == "cuda" and target == "cpu":
                return DEVICE_TO_HOST
            return None
        on_cuda = any(_device_type(arg) == "cuda" for arg in args)
        if not on_cuda:
            return None  # host code: no device to wait for
        if name in SCALAR_READS:
            return SCALAR_READ
        if name in SYNCING_OPS:
            if name == "aten::repeat_interleave" and kwargs.get("output_size") is not None:
                return None
            return SYNCING_OP
        if name in INDEXING:
            indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
            if any(index is not None and index.dtype in (torch.bool, torch.uint8) for index in indices):
                return SYNCING_OP
        return None


class Recording(NamedTuple):
    """What :func:`record` saw: the events, and the call's result or the exception it raised."""

    events: list[Event]
    error: BaseException | None
    result: Any = None

    def report(self) -> str:
        lines = [f"{len(self.events)} host sync(s):", *map(str, self.events)]
        if self.error is not None:
            lines.append(f"the call raised {type(self.error).__name__}: {self.error}")
        return "\n".join(lines)


def record(call: Callable[[], Any]) -> Recording:
    """Run ``call`` (inside :func:`fake_cuda_mode`) and return the host syncs it made.

    An exception from the call is returned, not raised: a data-dependent op raises in the fake
    mode right after it has been recorded, and the recording is what the test reports.
    """
    recorder = SyncRecorder()
    with recorder:
        try:
            result = call()
        except Exception as exc:
            return Recording(recorder.events, exc)
    return Recording(recorder.events, None, result)


# -- the fake mode and the device guard ------------------------------------------------------------


#: a build lock older than this was left by an interrupted build (a build takes seconds)
_STALE_LOCK_SECONDS = 300


def _build_directory() -> Path:
    """A writable directory for the compiled guard, one per torch version and Python."""
    key = f"torch-{torch.__version__}-py{sys.version_info[0]}{sys.version_info[1]}".replace("+", "_")
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sb3-tensorpatch" / "fake-cuda-guard"
    for root in (base, Path(tempfile.gettempdir()) / "sb3-tensorpatch-fake-cuda-guard"):
        try:
            (root / key).mkdir(parents=True, exist_ok=True)
            if os.access(root / key, os.W_OK):
                return root / key
        except OSError:
            continue
    raise OSError("no writable cache or temporary directory for the compiled guard")


def _guard_works() -> bool:
    """Whether fake tensors can change device to cuda in this process."""
    try:
        with FakeTensorMode():
            torch.empty(1).to("cuda")
    except (RuntimeError, AssertionError):
        return False
    return True


@functools.lru_cache(maxsize=None)
def _unavailable() -> str | None:
    """Make fake CUDA tensors work in this process; return why not, or ``None``."""
    if FakeTensorMode is None:
        return "this torch has no FakeTensorMode"
    if _guard_works():
        return None
    if torch.backends.cuda.is_built() or getattr(torch.version, "hip", None):
        # a no-op guard would replace the real one of this CUDA build
        return "this torch is built with CUDA but has no usable device; fake CUDA needs a CPU-only torch or a GPU"
    reason = _load_guard()
    if reason is None and not _guard_works():
        return "the no-op CUDA device guard was loaded but fake tensors still cannot move to cuda"
    return reason


def _load_guard() -> str | None:
    """Compile (once per torch version) and load the no-op CUDA device guard; return why not, or ``None``."""
    path = os.environ.get("PATH", "")
    try:
        from torch.utils.cpp_extension import load_inline

        if shutil.which("ninja") is None:
            # torch builds with ninja from PATH: the test extra's pip package, when its venv is not activated
            with contextlib.suppress(ImportError):
                import ninja

                os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + path
        options: dict[str, Any] = {}
        if "no_implicit_headers" in inspect.signature(load_inline).parameters:
            options["no_implicit_headers"] = True  # with torch/extension.h: over a minute, not seconds
        directory = _build_directory()
        lock = directory / "lock"
        if lock.exists() and time.time() - lock.stat().st_mtime > _STALE_LOCK_SECONDS:
            # left by an interrupted build: torch would wait for it forever
            lock.unlink(missing_ok=True)
        load_inline(
            "sb3_tensorpatch_fake_cuda_guard",
            [_GUARD_SOURCE],
            is_python_module=False,
            build_directory=str(directory),
            **options,
        )
    except Exception as exc:  # no compiler, no ninja, no writable directory...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"cannot compile the no-op CUDA device guard ({type(exc).__name__}: {first})"
    finally:
        os.environ["PATH"] = path
    return None


@contextlib.contextmanager
def fake_cuda_mode() -> Iterator[Any]:
    """Enter a fake mode where tensors can live on cuda; skip the test where that is impossible.

    Real tensors are allowed in: the code under test may hold CPU constants.
    """
    reason = _unavailable()
    if reason is not None:
        pytest.skip(f"fake CUDA unavailable: {reason}")
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        yield mode


def to_fake_cuda(value: Any) -> Any:
    """A fake CUDA tensor (or dict or tuple of them) with the dtype and shape of ``value``.

    Call it inside :func:`fake_cuda_mode`; numpy arrays and tensors are accepted.
    """
    if isinstance(value, dict):
        return {key: to_fake_cuda(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return tuple(to_fake_cuda(item) for item in value)
    return torch.as_tensor(value).to("cuda")


@contextlib.contextmanager
def on_fake_cuda(module: torch.nn.Module) -> Iterator[None]:
    """Put ``module``'s parameters and buffers on fake cuda, in place, and back on exit.

    Call it inside :func:`fake_cuda_mode`. Each tensor object keeps its identity: its contents are
    swapped with a fake CUDA tensor of the same shape, strides, dtype and ``requires_grad``, and
    swapped back on exit, so the module ends exactly as it was (values, devices, classes; recurrent
    modules' weak references to their weights are made again).
    """
    swapped: list[tuple[torch.Tensor, torch.Tensor]] = []
    seen: set[int] = set()
    # recurrent modules keep weak references to their weights, which swap_tensors refuses: dropped
    # and rebuilt around each swap, as torch's own Module._apply does
    recurrent = [sub for sub in module.modules() if isinstance(sub, torch.nn.RNNBase)]
    try:
        for rnn in recurrent:
            rnn._flat_weight_refs = []
        for submodule in module.modules():
            for store in (submodule._parameters, submodule._buffers):
                for tensor in store.values():
                    if tensor is None or id(tensor) in seen:
                        continue
                    seen.add(id(tensor))
                    # a factory call, not Parameter(fake) or from_tensor(): those leave weak
                    # references behind, and swap_tensors refuses tensors that have any
                    fake = torch.empty_strided(
                        tensor.shape, tensor.stride(), dtype=tensor.dtype, device="cuda", requires_grad=tensor.requires_grad
                    )
                    torch.utils.swap_tensors(tensor, fake)
                    swapped.append((tensor, fake))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "compiled without cuDNN": the weights look like cuda ones
            for rnn in recurrent:
                rnn._init_flat_weights()
        yield
    finally:
        for rnn in recurrent:
            rnn._flat_weight_refs = []
        for tensor, fake in reversed(swapped):
            torch.utils.swap_tensors(tensor, fake)
        for rnn in recurrent:
            rnn._init_flat_weights()
