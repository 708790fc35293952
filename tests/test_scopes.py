"""``patched()`` scopes: nesting, exceptions, and the decorator forms on plain functions, generator
functions, ``async def`` functions and async generator functions.

A scope restores the state it found on entry; ``disable()`` ends every scope at once. On a generator
or coroutine the scope opens when it starts running and closes when it finishes, is closed or raises;
``predict(tensor)`` inside returns a tensor. (Scopes in many threads at once: ``test_threads.py``.)
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import threading
from typing import Any, AsyncIterator, Iterator

import numpy as np
import pytest
import torch
from helpers import (
    assert_originals,
    assert_patched,
    build,
    sample_observations,
    snapshot,
    stack,
    takes_tensor_route,
)

import sb3_tensorpatch
from sb3_tensorpatch import patched

# SB3's own numpy path turns a CPU tensor into an array with np.array(), which numpy 2 warns about
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


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
