"""``patched()`` scopes: nesting, exceptions, the decorator forms (on plain functions, generator
functions, ``async def`` functions and async generator functions) and scopes in many threads at once.

A scope restores the state it found on entry; ``disable()`` ends every scope at once. On a generator
or coroutine the scope opens when it starts running and closes when it finishes, is closed or raises;
``predict(tensor)`` inside returns a tensor.

Concurrency: tensor predicts inside per-thread ``patched()`` scopes, NumPy predicts and
``enable()`` / ``disable()`` loops run at once; no exception, no wrong action, exact undo at the end.
"""

from __future__ import annotations

import asyncio
import copy
import gc
import inspect
import sys
import threading
import time
import traceback
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Iterator

import numpy as np
import pytest
import torch
from helpers import (
    assert_originals,
    assert_patched,
    assert_tensor_like,
    box_numpy,
    build,
    dict_numpy,
    force_restore,
    sample_observations,
    snapshot,
    stack,
    takes_tensor_route,
)
from stable_baselines3.common.policies import BasePolicy

import sb3_tensorpatch
from sb3_tensorpatch import patched
from sb3_tensorpatch.testing import to_tensor

# SB3's own numpy path turns a CPU tensor into an array with np.array() (and np.transpose() on a
# tensor image), which numpy 2 warns about: it happens in the threads' tests while a concurrent
# disable() sends a tensor to SB3's original.
pytestmark = [
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning"),
]

DICT = ("PPO", "Dict", "Discrete")


@pytest.fixture(scope="module")
def model() -> Any:
    return build("PPO", "Box", "Box")


@pytest.fixture(scope="module")
def obs(model: Any) -> torch.Tensor:
    return torch.as_tensor(stack(sample_observations(model.observation_space, 3, seed=0)))


def _predict(model: Any, obs: torch.Tensor) -> Any:
    actions, _ = model.predict(obs, deterministic=True)
    return actions


def _check_tensor_actions(model: Any, obs: torch.Tensor, actions: Any) -> None:
    """A tensor, bit for bit what SB3's NumPy path returns for the same observations."""
    assert isinstance(actions, torch.Tensor), type(actions)
    expected = torch.as_tensor(model.predict(obs.numpy(), deterministic=True)[0])
    assert actions.dtype == expected.dtype and actions.shape == expected.shape and torch.equal(actions, expected)


# -- scopes -----------------------------------------------------------------------------------


def test_enable_then_scope_stays_enabled(originals: dict[str, Any]) -> None:
    sb3_tensorpatch.enable()
    before = snapshot()
    with sb3_tensorpatch.patched() as status:
        assert status.enabled
        for target in originals:
            assert snapshot()[target] is before[target]
    assert sb3_tensorpatch.is_enabled()
    after = snapshot()
    for target in originals:
        assert after[target] is before[target], f"{target} changed across a scope"
    sb3_tensorpatch.disable()
    assert_originals(originals)


def test_scope_without_enable(originals: dict[str, Any], ppo: Any, ppo_obs: np.ndarray) -> None:
    with sb3_tensorpatch.patched() as status:
        assert status.enabled is True
        assert sb3_tensorpatch.is_enabled()
        assert_patched(originals)
        assert takes_tensor_route(ppo, ppo_obs)
    assert not sb3_tensorpatch.is_enabled()
    assert_originals(originals)
    assert not takes_tensor_route(ppo, ppo_obs)


def test_nested_scopes(originals: dict[str, Any]) -> None:
    with sb3_tensorpatch.patched():
        outer = snapshot()
        with sb3_tensorpatch.patched():
            assert_patched(originals)  # no wrapper around a wrapper
            inner = snapshot()
            for target in originals:
                assert inner[target] is outer[target]
        assert sb3_tensorpatch.is_enabled()
        assert_patched(originals)
    assert not sb3_tensorpatch.is_enabled()
    assert_originals(originals)


def test_one_scope_object_reused_nested(originals: dict[str, Any]) -> None:
    scope = sb3_tensorpatch.patched()
    with scope:
        with scope:
            assert sb3_tensorpatch.is_enabled()
        assert sb3_tensorpatch.is_enabled()
    assert not sb3_tensorpatch.is_enabled()
    assert_originals(originals)


@pytest.mark.parametrize("enabled_on_entry", [False, True])
def test_disable_inside_scope(originals: dict[str, Any], enabled_on_entry: bool) -> None:
    if enabled_on_entry:
        sb3_tensorpatch.enable()
    with sb3_tensorpatch.patched():
        with sb3_tensorpatch.patched():
            sb3_tensorpatch.disable()
            assert not sb3_tensorpatch.is_enabled()  # disabled right away, every scope ended
            assert_originals(originals)
        # each scope restores the state it found on entry: the inner one too
        assert sb3_tensorpatch.is_enabled() is enabled_on_entry
    assert sb3_tensorpatch.is_enabled() is enabled_on_entry
    if enabled_on_entry:
        assert_patched(originals)
    else:
        assert_originals(originals)


def test_enable_inside_scope(originals: dict[str, Any]) -> None:
    with sb3_tensorpatch.patched():
        status = sb3_tensorpatch.enable()
        assert status.enabled
        assert_patched(originals)
    # the scope restores the state found on entry: disabled
    assert not sb3_tensorpatch.is_enabled()
    assert_originals(originals)


def test_enable_inside_scope_entered_enabled(originals: dict[str, Any]) -> None:
    sb3_tensorpatch.enable()
    with sb3_tensorpatch.patched():
        sb3_tensorpatch.enable()
    assert sb3_tensorpatch.is_enabled()
    assert_patched(originals)


@pytest.mark.parametrize("enabled_on_entry", [False, True])
def test_exception_inside_scope(originals: dict[str, Any], enabled_on_entry: bool) -> None:
    if enabled_on_entry:
        sb3_tensorpatch.enable()
    with pytest.raises(KeyError, match="inside the scope"):
        with sb3_tensorpatch.patched():
            with sb3_tensorpatch.patched():
                assert sb3_tensorpatch.is_enabled()
                raise KeyError("inside the scope")
    assert sb3_tensorpatch.is_enabled() is enabled_on_entry
    if enabled_on_entry:
        assert_patched(originals)
    else:
        assert_originals(originals)


# -- decorator forms --------------------------------------------------------------------------


def test_decorator_with_call(originals: dict[str, Any]) -> None:
    @sb3_tensorpatch.patched()
    def inside(value: int) -> tuple[bool, int]:
        return sb3_tensorpatch.is_enabled(), value + 1

    assert not sb3_tensorpatch.is_enabled()  # decorating does not patch
    assert inside(1) == (True, 2)
    assert inside(2) == (True, 3)  # a fresh scope per call
    assert not sb3_tensorpatch.is_enabled()
    assert_originals(originals)


def test_bare_decorator(originals: dict[str, Any]) -> None:
    @sb3_tensorpatch.patched
    def inside(*, key: str) -> tuple[bool, str]:
        """Docstring kept."""
        return sb3_tensorpatch.is_enabled(), key

    assert inside.__name__ == "inside"
    assert inside.__doc__ == "Docstring kept."
    assert not sb3_tensorpatch.is_enabled()
    assert inside(key="k") == (True, "k")
    assert not sb3_tensorpatch.is_enabled()
    assert_originals(originals)


def test_decorated_function_called_recursively(originals: dict[str, Any]) -> None:
    seen: list[bool] = []

    @sb3_tensorpatch.patched
    def recurse(depth: int) -> int:
        seen.append(sb3_tensorpatch.is_enabled())
        return 0 if depth == 0 else 1 + recurse(depth - 1)

    assert recurse(5) == 5
    assert seen == [True] * 6
    assert not sb3_tensorpatch.is_enabled()
    assert_originals(originals)


def test_decorated_function_that_raises(originals: dict[str, Any]) -> None:
    @sb3_tensorpatch.patched()
    def fails() -> None:
        assert sb3_tensorpatch.is_enabled()
        raise ValueError("from the decorated function")

    with pytest.raises(ValueError, match="from the decorated function"):
        fails()
    assert not sb3_tensorpatch.is_enabled()
    assert_originals(originals)


def test_decorated_recursion_that_raises_at_the_bottom(originals: dict[str, Any]) -> None:
    @sb3_tensorpatch.patched
    def recurse(depth: int) -> None:
        if depth == 0:
            raise LookupError("bottom")
        recurse(depth - 1)

    with pytest.raises(LookupError, match="bottom"):
        recurse(3)
    assert not sb3_tensorpatch.is_enabled()
    assert_originals(originals)


def test_decorator_when_already_enabled(originals: dict[str, Any]) -> None:
    sb3_tensorpatch.enable()

    @sb3_tensorpatch.patched
    def inside() -> bool:
        return sb3_tensorpatch.is_enabled()

    assert inside()
    assert sb3_tensorpatch.is_enabled()
    assert_patched(originals)


# -- generators -------------------------------------------------------------------------------


def test_generator_runs_with_the_patch_on(model: Any, obs: torch.Tensor) -> None:
    @patched
    def steps() -> Iterator[Any]:
        for _ in range(2):
            yield sb3_tensorpatch.is_enabled(), _predict(model, obs)

    generator = steps()
    assert not sb3_tensorpatch.is_enabled()  # nothing runs before the first next()
    results = list(generator)
    assert [enabled for enabled, _ in results] == [True, True]
    for _, actions in results:
        _check_tensor_actions(model, obs, actions)
    assert not sb3_tensorpatch.is_enabled()  # closed when it finished


def test_generator_scope_stays_open_while_suspended_and_closes_on_close() -> None:
    @patched()
    def steps() -> Iterator[int]:
        yield 1
        yield 2

    generator = steps()
    assert next(generator) == 1
    assert sb3_tensorpatch.is_enabled()  # suspended inside its scope
    generator.close()
    assert not sb3_tensorpatch.is_enabled()


def test_generator_that_raises_closes_its_scope() -> None:
    @patched
    def steps() -> Iterator[int]:
        yield 1
        raise RuntimeError("boom")

    generator = steps()
    next(generator)
    with pytest.raises(RuntimeError, match="boom"):
        next(generator)
    assert not sb3_tensorpatch.is_enabled()


def test_generator_delegates_send_throw_and_return_value() -> None:
    @patched
    def echo() -> Iterator[Any]:
        received = []
        try:
            while True:
                value = yield len(received)
                received.append(value)
        except KeyError:
            yield "caught"
        return received

    generator = echo()
    assert next(generator) == 0
    assert generator.send("a") == 1
    assert generator.throw(KeyError("k")) == "caught"
    assert sb3_tensorpatch.is_enabled()
    with pytest.raises(StopIteration) as stop:
        next(generator)
    assert stop.value.value == ["a"]
    assert not sb3_tensorpatch.is_enabled()


def test_unfinished_generator_closes_its_scope_when_collected() -> None:
    @patched
    def steps() -> Iterator[int]:
        yield 1
        yield 2

    generator = steps()
    next(generator)
    assert sb3_tensorpatch.is_enabled()
    del generator
    gc.collect()
    assert not sb3_tensorpatch.is_enabled()


def test_generator_never_started_opens_no_scope() -> None:
    @patched
    def steps() -> Iterator[int]:
        yield 1

    generator = steps()
    assert not sb3_tensorpatch.is_enabled()
    generator.close()
    assert not sb3_tensorpatch.is_enabled()


def test_generator_resumed_and_finished_in_another_thread() -> None:
    @patched
    def steps() -> Iterator[bool]:
        yield sb3_tensorpatch.is_enabled()
        yield sb3_tensorpatch.is_enabled()

    generator = steps()
    assert next(generator) is True
    seen: list[Any] = []
    thread = threading.Thread(target=lambda: seen.extend(generator))
    thread.start()
    thread.join()
    assert seen == [True]
    assert not sb3_tensorpatch.is_enabled()  # the other thread closed the scope this one opened


def test_interleaved_generators_in_one_thread() -> None:
    @patched
    def steps() -> Iterator[int]:
        yield 1
        yield 2

    first, second = steps(), steps()
    next(first)
    next(second)
    assert list(first) == [2]
    assert sb3_tensorpatch.is_enabled()  # the second one's scope is still open
    assert list(second) == [2]
    assert not sb3_tensorpatch.is_enabled()


def test_callers_enable_between_steps_stands() -> None:
    @patched
    def steps() -> Iterator[int]:
        yield 1

    generator = steps()
    next(generator)
    sb3_tensorpatch.enable()  # the caller's, not the generator's
    assert list(generator) == []
    assert sb3_tensorpatch.is_enabled()


def test_disable_closes_a_suspended_generators_scope() -> None:
    @patched
    def steps() -> Iterator[bool]:
        yield sb3_tensorpatch.is_enabled()
        yield sb3_tensorpatch.is_enabled()

    generator = steps()
    assert next(generator) is True
    sb3_tensorpatch.disable()  # a hard off, also for suspended scopes
    assert list(generator) == [False]
    assert not sb3_tensorpatch.is_enabled()
    with patched():  # and the count is not thrown off by the generator's late exit
        assert sb3_tensorpatch.is_enabled()
    assert not sb3_tensorpatch.is_enabled()


# -- coroutines and async generators ----------------------------------------------------------


def test_coroutine_runs_with_the_patch_on(model: Any, obs: torch.Tensor) -> None:
    @patched
    async def evaluate() -> Any:
        await asyncio.sleep(0)
        return sb3_tensorpatch.is_enabled(), _predict(model, obs)

    assert inspect.iscoroutinefunction(evaluate)
    enabled, actions = asyncio.run(evaluate())
    assert enabled is True
    _check_tensor_actions(model, obs, actions)
    assert not sb3_tensorpatch.is_enabled()


def test_coroutine_that_raises_closes_its_scope() -> None:
    @patched()
    async def fails() -> None:
        await asyncio.sleep(0)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        asyncio.run(fails())
    assert not sb3_tensorpatch.is_enabled()


def test_another_tasks_enable_stands_after_a_coroutine_finishes() -> None:
    @patched
    async def evaluate(started: asyncio.Event, release: asyncio.Event) -> None:
        started.set()
        await release.wait()

    async def main() -> bool:
        started, release = asyncio.Event(), asyncio.Event()
        task = asyncio.ensure_future(evaluate(started, release))
        await started.wait()
        sb3_tensorpatch.enable()  # another task, same thread
        release.set()
        await task
        return sb3_tensorpatch.is_enabled()

    assert asyncio.run(main()) is True


def test_async_generator_runs_with_the_patch_on(model: Any, obs: torch.Tensor) -> None:
    @patched
    async def steps() -> AsyncIterator[Any]:
        for _ in range(2):
            await asyncio.sleep(0)
            yield sb3_tensorpatch.is_enabled(), _predict(model, obs)

    assert inspect.isasyncgenfunction(steps)

    async def main() -> list[Any]:
        return [item async for item in steps()]

    results = asyncio.run(main())
    assert [enabled for enabled, _ in results] == [True, True]
    for _, actions in results:
        _check_tensor_actions(model, obs, actions)
    assert not sb3_tensorpatch.is_enabled()


def test_async_generator_delegates_asend_athrow_and_aclose() -> None:
    closed: list[bool] = []

    @patched
    async def echo() -> AsyncIterator[Any]:
        received = 0
        try:
            while True:
                try:
                    value = yield received
                except KeyError:
                    yield "caught"
                    continue
                received += value
        finally:
            closed.append(True)

    async def main() -> list[Any]:
        generator = echo()
        seen = [await generator.__anext__(), await generator.asend(2), await generator.asend(3)]
        seen.append(await generator.athrow(KeyError("k")))
        seen.append(sb3_tensorpatch.is_enabled())
        await generator.aclose()
        seen.append(sb3_tensorpatch.is_enabled())
        return seen

    assert asyncio.run(main()) == [0, 2, 5, "caught", True, False]
    assert closed == [True]  # aclose() reached the decorated body


def test_async_generator_that_raises_closes_its_scope() -> None:
    @patched
    async def steps() -> AsyncIterator[int]:
        yield 1
        raise RuntimeError("boom")

    async def main() -> None:
        async for _ in steps():
            assert sb3_tensorpatch.is_enabled()

    with pytest.raises(RuntimeError, match="boom"):
        asyncio.run(main())
    assert not sb3_tensorpatch.is_enabled()


def test_decorated_kinds_keep_their_kind_and_metadata() -> None:
    def plain() -> None:
        """Plain."""

    def generator() -> Iterator[int]:
        """Generator."""
        yield 1

    async def coroutine() -> None:
        """Coroutine."""

    async def async_generator() -> AsyncIterator[int]:
        """Async generator."""
        yield 1

    for function, check in (
        (plain, inspect.isfunction),
        (generator, inspect.isgeneratorfunction),
        (coroutine, inspect.iscoroutinefunction),
        (async_generator, inspect.isasyncgenfunction),
    ):
        decorated = patched(function)
        assert check(decorated), function.__name__
        assert decorated.__name__ == function.__name__ and decorated.__doc__ == function.__doc__
        assert decorated.__wrapped__ is function  # type: ignore[attr-defined]


def test_numpy_inside_a_decorated_generator_is_untouched(model: Any, obs: torch.Tensor) -> None:
    @patched
    def steps() -> Iterator[Any]:
        yield model.predict(obs.numpy(), deterministic=True)[0]

    (actions,) = list(steps())
    expected, _ = model.predict(obs.numpy(), deterministic=True)
    assert isinstance(actions, np.ndarray) and np.array_equal(actions, expected) and actions.dtype == expected.dtype


# -- threads ----------------------------------------------------------------------------------


def test_concurrent_scopes_and_numpy_predicts(originals: dict[str, Any], ppo: Any, ppo_obs: np.ndarray) -> None:
    expected, _ = ppo.predict(ppo_obs, deterministic=True)
    tensor_obs = torch.as_tensor(ppo_obs)
    errors: list[str] = []
    counts = {"tensor": 0, "numpy": 0}
    lock = threading.Lock()
    start = threading.Barrier(10)
    tensor_done = threading.Event()
    finished = [0]

    def tensor_worker() -> None:
        try:
            start.wait()
            for _ in range(50):
                with sb3_tensorpatch.patched():
                    actions, _ = ppo.predict(tensor_obs, deterministic=True)
                assert isinstance(actions, torch.Tensor), f"got {type(actions)} inside a scope"
                assert np.array_equal(actions.numpy(), expected)
                with lock:
                    counts["tensor"] += 1
        except BaseException as exc:
            errors.append(repr(exc))
        finally:
            with lock:
                finished[0] += 1
                if finished[0] == 8:
                    tensor_done.set()

    def numpy_worker() -> None:
        try:
            start.wait()
            iterations = 0
            while not tensor_done.is_set() or iterations < 20:
                actions, _ = ppo.predict(ppo_obs, deterministic=True)
                assert isinstance(actions, np.ndarray), f"numpy input gave {type(actions)}"
                assert np.array_equal(actions, expected)
                iterations += 1
            with lock:
                counts["numpy"] += iterations
        except BaseException as exc:
            errors.append(repr(exc))

    threads = [threading.Thread(target=tensor_worker) for _ in range(8)]
    threads += [threading.Thread(target=numpy_worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert counts["tensor"] == 8 * 50
    assert counts["numpy"] >= 40
    assert not sb3_tensorpatch.is_enabled()
    assert_originals(originals)


def test_scope_held_by_one_thread_survives_another_threads_scope(
    originals: dict[str, Any], ppo: Any, ppo_obs: np.ndarray
) -> None:
    entered = threading.Event()
    other_done = threading.Event()
    seen: dict[str, Any] = {}

    def holder() -> None:
        with sb3_tensorpatch.patched():
            entered.set()
            other_done.wait(timeout=30)
            seen["enabled"] = sb3_tensorpatch.is_enabled()
            seen["routes"] = takes_tensor_route(ppo, ppo_obs)

    thread = threading.Thread(target=holder)
    thread.start()
    assert entered.wait(timeout=30)

    def visitor() -> None:
        with sb3_tensorpatch.patched():
            seen["visitor"] = sb3_tensorpatch.is_enabled()

    other = threading.Thread(target=visitor)
    other.start()
    other.join(timeout=30)
    assert seen["visitor"] is True
    assert sb3_tensorpatch.is_enabled()  # the holder's scope is still open
    assert_patched(originals)
    other_done.set()
    thread.join(timeout=30)
    assert seen == {"visitor": True, "enabled": True, "routes": True}
    assert not sb3_tensorpatch.is_enabled()
    assert_originals(originals)


def test_first_scopes_opened_concurrently_share_one_patcher(originals: dict[str, Any]) -> None:
    """The patcher exists from import on: threads opening their first scopes at once share it."""
    start = threading.Barrier(8, timeout=30)

    def worker() -> None:
        start.wait()
        for _ in range(20):
            with sb3_tensorpatch.patched():
                pass

    threads = [threading.Thread(target=worker) for _ in range(8)]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a stacked wrapper would warn on disable()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
            sb3_tensorpatch.disable()
        assert_originals(originals)
    finally:
        force_restore(originals)


def test_enable_from_another_thread_survives_a_scope_exit(originals: dict[str, Any]) -> None:
    entered = threading.Event()
    leave = threading.Event()

    def holder() -> None:
        with sb3_tensorpatch.patched():
            entered.set()
            leave.wait(timeout=30)

    thread = threading.Thread(target=holder)
    thread.start()
    assert entered.wait(timeout=30)
    sb3_tensorpatch.enable()  # this thread never calls disable()
    leave.set()
    thread.join(timeout=30)
    assert sb3_tensorpatch.is_enabled()
    assert_patched(originals)


# -- concurrency: stress ----------------------------------------------------------------------


@dataclass
class Job:
    key: tuple[str, ...]
    model: Any
    numpy_obs: Any
    tensor_obs: Any
    numpy_actions: np.ndarray
    tensor_actions: torch.Tensor

    def owner(self) -> tuple[Any, Any]:
        """A private copy for one thread: ``(model or None, policy)``.

        SB3 policies are not thread-safe to share, with or without this package: ``_predict`` stores
        the distribution it builds on the policy (``policy.action_dist.distribution``) and reads it
        back, so two threads predicting with one policy can get each other's actions. Measured on
        SB3 2.9.2 with ``sb3_tensorpatch`` never imported: 2 wrong results (and a squeeze
        ``ValueError``) in 5144 numpy predicts by 10 threads sharing one PPO policy. Hence one copy
        per thread. Models wrapped in ``VecTransposeImage`` (the Dict job) cannot be deep-copied:
        their threads copy the policy only.
        """
        if self.key == DICT:
            return None, copy.deepcopy(self.model.policy)
        model = copy.deepcopy(self.model)
        return model, model.policy


def _jobs() -> list[Job]:
    """Fixed observations with their expected actions, precomputed single-threaded."""
    cases = [
        (("PPO", "Box", "Box"), box_numpy(None)),  # clipped Box actions, single observation
        (("PPO", "Box", "Box"), box_numpy(6)),
        (("SAC", "Box", "Box"), box_numpy(5)),  # unscaled Box actions
        (("DQN", "Box", "Discrete"), box_numpy(4)),  # DQN.predict over BasePolicy.predict
        (DICT, dict_numpy(3)),
    ]
    jobs = []
    for key, obs in cases:
        model = build(*key)
        numpy_actions, _ = model.predict(obs, deterministic=True)
        with sb3_tensorpatch.patched():
            tensor_actions, _ = model.predict(to_tensor(obs), deterministic=True)
        assert_tensor_like(tensor_actions, numpy_actions)
        jobs.append(Job(key, model, obs, to_tensor(obs), numpy_actions, tensor_actions))
    # the Box jobs must actually be clipped / unscaled, so that a raw _predict output would be wrong
    for job in jobs[1:3]:
        with torch.no_grad():  # a graph left on the shared policy's distribution would block deepcopy
            raw = job.model.policy._predict(job.tensor_obs, deterministic=True)
        assert not torch.allclose(raw, job.tensor_actions)
    return jobs


def _verdict(actions: Any, state: Any, job: Job) -> str:
    """'tensor' (the route's right result), 'numpy' (SB3's original path's right result) or 'wrong'."""
    if state is not None:
        return "wrong"
    if isinstance(actions, torch.Tensor):
        want = job.tensor_actions
        ok = (
            actions.device == want.device
            and actions.shape == want.shape
            and actions.dtype == want.dtype
            and torch.equal(actions, want)
        )
        return "tensor" if ok else "wrong"
    if isinstance(actions, np.ndarray):
        want_np = job.numpy_actions
        ok = (
            actions.shape == want_np.shape
            and actions.dtype == want_np.dtype
            and np.array_equal(actions, want_np)
        )
        return "numpy" if ok else "wrong"
    return "wrong"


def _stress(duration: float, disabling: bool) -> tuple[Counter[str], list[str]]:
    """8 threads predict tensors in their own scopes, 2 predict numpy, 2 toggle the patch.

    With ``disabling``, the togglers alternate ``enable()`` / ``disable()``; otherwise they call
    ``enable()`` and open and close their own scopes, and never disable. Tensor threads alternate
    ``model.predict`` and ``model.policy.predict`` (looked up on every call: a bound method taken
    while the patch is off keeps SB3's original).
    """
    jobs = _jobs()
    stop = threading.Event()
    counts: Counter[str] = Counter()
    problems: list[str] = []
    lock = threading.Lock()

    def record(name: str, problem: str | None = None) -> None:
        with lock:
            counts[name] += 1
            if problem is not None and len(problems) < 20:
                problems.append(problem)

    def guarded(body: Callable[[int], None]) -> Callable[[], None]:
        def run() -> None:
            calls = 0
            try:
                while not stop.is_set():
                    body(calls)
                    calls += 1
            except BaseException:
                record("exception", traceback.format_exc())

        return run

    def tensor_worker(index: int) -> Callable[[int], None]:
        job = jobs[index % len(jobs)]
        model, policy = job.owner()

        def body(call: int) -> None:
            with sb3_tensorpatch.patched():
                if not disabling and not sb3_tensorpatch.is_enabled():
                    record("scope broken", f"thread {index}: patch off inside an open scope")
                if model is not None and call % 2 == 0:
                    actions, state = model.predict(job.tensor_obs, deterministic=True)
                else:
                    actions, state = policy.predict(job.tensor_obs, deterministic=True)
            verdict = _verdict(actions, state, job)
            bad = verdict == "wrong" or (verdict == "numpy" and not disabling)
            record(verdict, f"thread {index} ({job.key}): {verdict} result {actions!r}" if bad else None)

        return body

    def numpy_worker(index: int) -> Callable[[int], None]:
        job = jobs[(2 * index + 1) % len(jobs)]
        model, _ = job.owner()

        def body(call: int) -> None:
            actions, state = model.predict(job.numpy_obs, deterministic=True)
            ok = _verdict(actions, state, job) == "numpy"
            record("numpy calls", None if ok else f"numpy thread {index} ({job.key}): {actions!r}")

        return body

    def toggler(call: int) -> None:
        sb3_tensorpatch.enable()
        time.sleep(0.0005)
        if disabling:
            sb3_tensorpatch.disable()
        else:
            with sb3_tensorpatch.patched():
                pass
        time.sleep(0.0005)
        record("toggles")

    bodies = [tensor_worker(i) for i in range(8)] + [numpy_worker(i) for i in range(2)] + [toggler, toggler]
    threads = [threading.Thread(target=guarded(body), daemon=True) for body in bodies]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)  # switch threads 50x more often than by default: more interleavings
    try:
        for thread in threads:
            thread.start()
        time.sleep(duration)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        sys.setswitchinterval(interval)
    assert not any(thread.is_alive() for thread in threads), "a thread hangs"
    print(f"\nstress ({'enable/disable' if disabling else 'enable only'}, {duration} s, 12 threads): {dict(counts)}")
    return counts, problems


def test_stress_tensor_scopes_numpy_and_enable_disable() -> None:
    """A tensor predict in a scope either returns the right tensor actions, or, only while a
    concurrent ``disable()`` (a hard off that ends every scope) races it, goes to SB3's original path
    and returns the right NumPy actions. Never an exception, a wrong or half-processed result."""
    sb3_tensorpatch.disable()
    originals = snapshot()
    base_predict = BasePolicy.__dict__["predict"]

    counts, problems = _stress(3.0, disabling=True)

    assert problems == []
    assert counts["wrong"] == 0 and counts["exception"] == 0
    assert counts["tensor"] > 0, "no tensor predict ever took the tensor route"
    assert counts["tensor"] + counts["numpy"] >= 8 * 3
    assert counts["numpy calls"] >= 2 * 3
    assert counts["toggles"] >= 2 * 3
    sb3_tensorpatch.disable()
    assert not sb3_tensorpatch.is_enabled()
    assert BasePolicy.__dict__["predict"] is base_predict
    assert_originals(originals)
    # and the patch still works afterwards
    job = _jobs()[1]
    assert not sb3_tensorpatch.is_enabled()
    with sb3_tensorpatch.patched():
        assert _verdict(*job.model.predict(job.tensor_obs, deterministic=True), job) == "tensor"


def test_stress_enable_only_never_breaks_a_scope() -> None:
    """Without ``disable()``, every tensor predict in a scope takes the tensor route."""
    sb3_tensorpatch.disable()
    originals = snapshot()

    counts, problems = _stress(1.5, disabling=False)

    assert problems == []
    assert counts["numpy"] == 0 and counts["wrong"] == 0 and counts["scope broken"] == 0
    assert counts["exception"] == 0
    assert counts["tensor"] >= 8 * 3
    assert counts["toggles"] >= 2 * 3
    sb3_tensorpatch.disable()
    assert_originals(originals)
