"""What distribution validation costs while the patch is enabled, and who pays it.

``enable()`` arms sb3-tensorpatch's quiet distribution classes (``sb3_tensorpatch/validation.py``)
and the first tensor predict that builds a distribution rebinds SB3's names ``Normal`` /
``Categorical`` / ``Bernoulli`` (and quietens contrib's ``MaskableCategorical``). torch's own
``Distribution._validate_args`` is never changed. This prints the median nanoseconds of:

- ``read Distribution._validate_args``: what every distribution built anywhere in the process
  reads (must equal ``unpatched`` in every column);
- ``torch Normal(loc, scale)``: a plain ``torch.distributions.Normal``, as user code and every
  library but SB3 build it (must equal ``unpatched`` in every column);
- ``SB3 Normal(loc, scale)``: SB3's ``Normal`` through its module name
  (``stable_baselines3.common.distributions.Normal``), as SB3's ``DiagGaussianDistribution`` builds
  it: the quiet class once installed, which reads the per-thread switch.

in five situations:

- ``unpatched``: the patch disabled;
- ``armed``: the patch enabled, no tensor predict has needed the quiet classes yet;
- ``patched, other thread``: installed, in a thread that never used the tensor route;
- ``patched, this thread``: installed, in a thread that used the route before (its switch is back on);
- ``patched, in the route``: inside the route's own switch (validation off for this thread: the SB3
  construction skips its checks, so it is cheaper than unpatched).

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
from stable_baselines3.common import distributions as sb3_distributions
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


def _torch_builds(count: int) -> float:
    loc, scale = torch.zeros(4), torch.ones(4)
    start = time.perf_counter_ns()
    for _ in range(count):
        Normal(loc, scale)
    return (time.perf_counter_ns() - start) / count


def _sb3_builds(count: int) -> float:
    loc, scale = torch.zeros(4), torch.ones(4)
    module = sb3_distributions  # the name is looked up at each call, as SB3's own code does
    start = time.perf_counter_ns()
    for _ in range(count):
        module.Normal(loc, scale)
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
    previous = validation._local.off
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
        _in_route(measure, 1)  # this thread has used the route: its switch exists and is on again
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
        "torch Normal(loc, scale)": (_torch_builds, args.builds),
        "SB3 Normal(loc, scale)": (_sb3_builds, args.builds),
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
