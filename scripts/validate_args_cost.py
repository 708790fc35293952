"""What reading ``Distribution._validate_args`` costs everyone while the patch is enabled.

``enable()`` arms sb3-tensorpatch's per-thread descriptor (``sb3_tensorpatch/validation.py``) and
the first tensor predict that builds a distribution installs it as ``Distribution._validate_args``,
which every distribution built anywhere in the process reads (training included). This prints the
median nanoseconds per read of ``Distribution._validate_args`` and per ``Normal(loc, scale)``
construction in five situations:

- ``unpatched``: the patch disabled (torch's own class attribute);
- ``armed``: the patch enabled, no tensor predict has needed the descriptor yet (torch's own class
  attribute still: this column should match ``unpatched``);
- ``patched, other thread``: the descriptor installed, read in a thread that never used the tensor
  route (a fresh thread, as every thread but the one calling ``predict(tensor)`` is);
- ``patched, this thread``: the patch enabled, read in a thread that used the route before (its
  per-thread switch is set back to "on");
- ``patched, in the route``: inside the route's own switch (validation off for this thread).

Each round times every situation once, in turn (interleaved); the table shows the median over the
rounds. Run from the repository root::

    python scripts/validate_args_cost.py [--rounds 31] [--reads 200000] [--builds 20000]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from typing import Any, Callable

import torch
from torch.distributions import Distribution, Normal

import sb3_tensorpatch
from sb3_tensorpatch import validation

SITUATIONS = ("unpatched", "armed", "patched, other thread", "patched, this thread", "patched, in the route")


def _reads(count: int) -> float:
    cls = Distribution
    start = time.perf_counter_ns()
    for _ in range(count):
        cls._validate_args  # noqa: B018 -- the read is what is timed
    return (time.perf_counter_ns() - start) / count


def _builds(count: int) -> float:
    loc, scale = torch.zeros(4), torch.ones(4)
    start = time.perf_counter_ns()
    for _ in range(count):
        Normal(loc, scale, validate_args=None)
    return (time.perf_counter_ns() - start) / count


def _in_fresh_thread(measure: Callable[[int], float], count: int) -> float:
    """Time ``measure`` in a thread that never touched the route's per-thread switch."""
    result: list[float] = []
    thread = threading.Thread(target=lambda: result.append(measure(count)))
    thread.start()
    thread.join()
    return result[0]


def _in_route(measure: Callable[[int], float], count: int) -> float:
    # exactly what the tensor routes do around policy._predict (sb3_tensorpatch/routes.py)
    previous = getattr(validation._local, "off", False)
    validation._local.off = True
    try:
        return measure(count)
    finally:
        validation._local.off = previous


def _situation(name: str, measure: Callable[[int], float], count: int) -> float:
    if name == "unpatched":
        sb3_tensorpatch.disable()
        return _in_fresh_thread(measure, count)
    sb3_tensorpatch.enable()
    if name == "armed":
        sb3_tensorpatch.disable()  # armed again by enable(): not installed
        sb3_tensorpatch.enable()
        return _in_fresh_thread(measure, count)
    validation.install()  # what the first tensor predict that builds a distribution does
    if name == "patched, other thread":
        return _in_fresh_thread(measure, count)
    if name == "patched, this thread":
        _in_route(measure, 1)  # this thread has used the route: its switch exists and is off
        return measure(count)
    return _in_route(measure, count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--reads", type=int, default=200_000, help="reads of Distribution._validate_args per timing")
    parser.add_argument("--builds", type=int, default=20_000, help="Normal(...) constructions per timing")
    args = parser.parse_args()
    torch.set_num_threads(1)
    measures: dict[str, tuple[Callable[[int], float], int]] = {
        "read Distribution._validate_args": (_reads, args.reads),
        "Normal(loc, scale)": (_builds, args.builds),
    }
    samples: dict[tuple[str, str], list[float]] = {(m, s): [] for m in measures for s in SITUATIONS}
    for index in range(args.rounds):
        # the order turns every round, so that no situation always runs first
        order = SITUATIONS[index % len(SITUATIONS) :] + SITUATIONS[: index % len(SITUATIONS)]
        for measure_name, (measure, count) in measures.items():
            for situation in order:
                samples[(measure_name, situation)].append(_situation(situation, measure, count))
    sb3_tensorpatch.disable()
    info: dict[str, Any] = {"torch": torch.__version__, "rounds": args.rounds}
    print(f"median ns per operation over {info['rounds']} interleaved rounds, torch {info['torch']}")
    width = max(len(s) for s in SITUATIONS)
    print(f"{'':<34} " + " ".join(f"{s:>{width}}" for s in SITUATIONS))
    for measure_name in measures:
        cells = " ".join(f"{statistics.median(samples[(measure_name, s)]):>{width}.1f}" for s in SITUATIONS)
        print(f"{measure_name:<34} {cells}")


if __name__ == "__main__":
    main()
