"""``patched()`` scopes and ``enable()`` / ``disable()`` in many threads at once.

A scope held by one thread survives another thread's scope; an ``enable()`` from another thread
survives a scope's exit. Stress: tensor predicts inside per-thread ``patched()`` scopes, NumPy
predicts and ``enable()`` / ``disable()`` loops run at once; no exception, no wrong action, exact
undo at the end.
"""

from __future__ import annotations

import copy
import sys
import threading
import time
import traceback
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

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
    snapshot,
    takes_tensor_route,
)
from stable_baselines3.common.policies import BasePolicy

import sb3_tensorpatch
from sb3_tensorpatch.testing import to_tensor

# SB3's own numpy path turns a CPU tensor into an array with np.array() (and np.transpose() on a
# tensor image), which numpy 2 warns about: it happens in the stress test while a concurrent
# disable() sends a tensor to SB3's original.
pytestmark = [
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning"),
]

DICT = ("PPO", "Dict", "Discrete")


# -- scopes in threads ------------------------------------------------------------------------


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


# -- stress -----------------------------------------------------------------------------------


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
