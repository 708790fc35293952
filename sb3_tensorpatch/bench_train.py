"""``python -m sb3_tensorpatch bench --train``: PPO training steps per second, SB3's host path, the patch on,
and (``--rsl-rl``) rsl_rl, side by side.

Every path trains PPO on :class:`~sb3_tensorpatch.bench_envs.TorchCartPole` with the continuous force
(``Box(-1, 1, (1,))``: rsl_rl has Gaussian policies only, and every path gets the same env), ``--envs``
environments (1,024), 32 steps per environment per rollout, [64, 64] networks, 10 epochs of 4 minibatches
(``batch_size = envs * 32 / 4``), SB3's default learning rate, gamma, GAE lambda and clip range:

- ``host``: SB3's PPO on a :class:`~sb3_tensorpatch.TensorVecEnv` with the patch disabled: SB3's own
  ``collect_rollouts``, the env's tensors copied to NumPy every step;
- ``device``: the same with the patch enabled: whatever route the patch has for ``collect_rollouts`` (on
  the env's device where the patch table has a ``collect_rollouts`` row; without one, this is SB3's host
  path again, which ``meta["device_route"]`` and a note under the table say);
- ``rsl_rl``: rsl_rl's own ``OnPolicyRunner`` and PPO (:mod:`sb3_tensorpatch.bench_rsl_rl`), the lean
  trainer Isaac Lab ships, on the same env through rsl_rl's ``VecEnv`` interface.

What is timed, per path and round, on a freshly built model (building it is not timed):

- **overall**: one ``learn()`` call (SB3: ``model.learn(iterations * envs * 32)``; rsl_rl:
  ``runner.learn(iterations)``), so env resets, rollouts, the updates and the trainers' logging;
- **collection**: the rollouts alone, each ending with the last value and the GAE returns. For SB3 the
  bench replaces ``collect_rollouts`` *on the model instance* by a function that times a call of the class's
  ``collect_rollouts``, looked up at every call (so the patched one, when the patch is on); for rsl_rl, the
  collection time that its runner measures itself (the step loop) plus the time of ``alg.compute_returns``
  (timed the same way on the algorithm instance), which SB3 does inside ``collect_rollouts``.

Steps per second count environment steps: ``iterations * envs * 32`` divided by the seconds. One warm-up
``learn()`` of one iteration per path comes first; then each round runs every path once, the order turning
every round, and the table shows the medians over the rounds, and the medians over the rounds of each
round's ratios (:data:`RATIOS`). On CUDA the device is synchronised at the end of every timed span.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

#: the training configuration every path uses
N_STEPS = 32
N_EPOCHS = 10
MINIBATCHES = 4
NET_ARCH = (64, 64)
#: the same, for the rsl_rl side (:mod:`.bench_rsl_rl` is handed it rather than importing this module)
SETUP = {"n_steps": N_STEPS, "n_epochs": N_EPOCHS, "minibatches": MINIBATCHES, "net_arch": NET_ARCH}
#: default and ``--quick`` sizes: (environments, iterations per learn(), rounds)
DEFAULT_SIZES = (1024, 5, 5)
QUICK_SIZES = (64, 2, 1)
PATHS = ("host", "device", "rsl_rl")
#: ratio name: (numerator, denominator) paths, of steps per second (above 1: the numerator is faster)
RATIOS = {
    "device_vs_host": ("device", "host"),
    "device_vs_rsl_rl": ("device", "rsl_rl"),
    "host_vs_rsl_rl": ("host", "rsl_rl"),
}
RSL_RL_MISSING = (
    "bench: --rsl-rl needs rsl_rl, which is not installed here: pip install rsl-rl-lib "
    "(or pip install 'sb3-tensorpatch[bench]'), keeping your torch"
)


@dataclass
class PathResult:
    """One path's timings: the medians over the rounds, and every round's seconds."""

    path: str
    #: median over the rounds of environment steps per second of ``learn()``
    steps_per_second: float
    #: median over the rounds of environment steps per second spent collecting rollouts
    collect_steps_per_second: float
    #: each round's seconds in ``learn()``
    seconds: list[float]
    #: each round's seconds collecting rollouts
    collect_seconds: list[float]


def add_arguments(parser: argparse.ArgumentParser, positive_int: Callable[[str], int]) -> None:
    """The options of ``bench --train`` (the bench's ``--device``, ``--rounds``, ``--threads``, ``--quick`` and
    ``--json`` apply too)."""
    parser.add_argument(
        "--train", action="store_true", help="time PPO training instead of predict (host path, patch on; see --rsl-rl)"
    )
    parser.add_argument("--rsl-rl", action="store_true", help="with --train: also time rsl_rl on the same env")
    parser.add_argument(
        "--envs", type=positive_int, default=None, help=f"with --train: environments (default {DEFAULT_SIZES[0]})"
    )
    parser.add_argument(
        "--iterations",
        type=positive_int,
        default=None,
        help=f"with --train: PPO iterations (rollout + update) per timed learn() (default {DEFAULT_SIZES[1]})",
    )


def misplaced_options(args: argparse.Namespace) -> str | None:
    """What is wrong with the combination of options: ``--plot`` with ``--train``, or an option of
    ``--train`` without it; ``None`` when nothing is."""
    if args.train:
        return "--plot charts the predict bench, not --train" if args.plot else None
    given = {"--rsl-rl": args.rsl_rl, "--envs": args.envs is not None, "--iterations": args.iterations is not None}
    misplaced = [option for option, present in given.items() if present]
    return f"{', '.join(misplaced)} only with --train" if misplaced else None


def rsl_rl_available() -> bool:
    """Whether rsl_rl (``rsl-rl-lib``) can be imported."""
    try:
        import rsl_rl.runners  # noqa: F401
    except ImportError:
        return False
    return True


def build_ppo(env: Any, device: str, seed: int = 0) -> Any:
    """SB3's PPO with the bench's configuration on ``env`` (a ``VecEnv``), SB3's defaults for the rest."""
    from stable_baselines3 import PPO

    return PPO(
        "MlpPolicy",
        env,
        n_steps=N_STEPS,
        batch_size=env.num_envs * N_STEPS // MINIBATCHES,
        n_epochs=N_EPOCHS,
        policy_kwargs={"net_arch": list(NET_ARCH)},
        device=device,
        seed=seed,
    )


def time_collection(model: Any, sync: Callable[[], None]) -> list[float]:
    """Time every ``collect_rollouts`` of ``model`` from now on; return the list the seconds go to.

    The bound method is replaced on the instance by a function that calls the class's ``collect_rollouts``,
    looked up at each call: the route the patch installed on SB3's class when the patch is on, SB3's own
    otherwise. ``learn()`` calls ``self.collect_rollouts``, so it finds the timer first.
    """
    seconds: list[float] = []
    algorithm = type(model)

    def collect_rollouts(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        result = algorithm.collect_rollouts(model, *args, **kwargs)
        sync()
        seconds.append(time.perf_counter() - start)
        return result

    model.collect_rollouts = collect_rollouts
    return seconds


def time_sb3(envs: int, iterations: int, device: str, patched: bool, sync: Callable[[], None]) -> tuple[float, float]:
    """One timed ``learn()`` of SB3's PPO on a fresh model, with the patch on or off.

    :return: the seconds in ``learn()`` and the seconds of it spent in ``collect_rollouts``
    """
    import sb3_tensorpatch

    from .bench_envs import TorchCartPole

    if patched:
        sb3_tensorpatch.enable()
    else:
        sb3_tensorpatch.disable()
    try:
        model = build_ppo(sb3_tensorpatch.TensorVecEnv(TorchCartPole(envs, device, continuous=True)), device)
        collected = time_collection(model, sync)
        start = time.perf_counter()
        model.learn(iterations * envs * N_STEPS)
        sync()
        seconds = time.perf_counter() - start
    finally:
        sb3_tensorpatch.disable()
    return seconds, sum(collected)


def device_route() -> bool:
    """Whether the patch, when enabled, has a route for ``OnPolicyAlgorithm.collect_rollouts``."""
    import sb3_tensorpatch

    was_enabled = sb3_tensorpatch.is_enabled()
    report = sb3_tensorpatch.enable()
    if not was_enabled:
        sb3_tensorpatch.disable()
    return any(row.target.endswith(".collect_rollouts") and row.state == "patched" for row in report.rows)


def measure(
    envs: int, iterations: int, rounds: int, device: str, paths: tuple[str, ...], progress: Any = None
) -> tuple[list[PathResult], dict[str, dict[str, float]]]:
    """Time ``paths`` (of :data:`PATHS`) in interleaved rounds, after one untimed warm-up each.

    :return: one :class:`PathResult` per path, and per ratio of :data:`RATIOS` whose two paths were timed,
        ``{"overall": ..., "collection": ...}``: the medians over the rounds of each round's ratio of steps per
        second
    """
    import torch

    sync: Callable[[], None] = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)

    def timer(path: str) -> Callable[[int], tuple[float, float]]:
        if path == "rsl_rl":
            from . import bench_rsl_rl

            return lambda count: bench_rsl_rl.time_learn(envs, count, device, sync, SETUP)
        return lambda count: time_sb3(envs, count, device, path == "device", sync)

    timers = {path: timer(path) for path in paths}
    for path in paths:
        timers[path](1)  # warm-up: first calls, allocations, the patch's plans
    seconds: dict[str, list[float]] = {path: [] for path in paths}
    collect: dict[str, list[float]] = {path: [] for path in paths}
    for index in range(rounds):
        turn = index % len(paths)
        for path in paths[turn:] + paths[:turn]:
            if progress is not None:
                print(f"[round {index + 1}/{rounds}] {path} ...", file=progress, flush=True)
            overall, collection = timers[path](iterations)
            seconds[path].append(overall)
            collect[path].append(collection)
    steps = iterations * envs * N_STEPS
    results = [
        PathResult(
            path=path,
            steps_per_second=statistics.median(steps / s for s in seconds[path]),
            collect_steps_per_second=statistics.median(steps / s for s in collect[path]),
            seconds=seconds[path],
            collect_seconds=collect[path],
        )
        for path in paths
    ]
    ratios = {
        # steps per second: top / bottom = bottom's seconds / top's seconds, round by round
        name: {
            "overall": statistics.median(b / t for t, b in zip(seconds[top], seconds[bottom])),
            "collection": statistics.median(b / t for t, b in zip(collect[top], collect[bottom])),
        }
        for name, (top, bottom) in RATIOS.items()
        if top in paths and bottom in paths
    }
    return results, ratios


def _table(results: list[PathResult], ratios: dict[str, dict[str, float]]) -> str:
    header = f"{'path':<16} {'overall steps/s':>16} {'collection steps/s':>19}"
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(f"{r.path:<16} {r.steps_per_second:>16,.0f} {r.collect_steps_per_second:>19,.0f}")
    for name, values in ratios.items():
        lines.append(f"{name.replace('_vs_', ' / '):<16} {values['overall']:>16.2f} {values['collection']:>19.2f}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """``bench --train`` (the options checked by :func:`misplaced_options` already): measure, print a table
    or JSON."""
    import stable_baselines3
    import torch

    if args.rsl_rl and not rsl_rl_available():
        print(RSL_RL_MISSING, file=sys.stderr)
        return 2
    envs, iterations, rounds = QUICK_SIZES if args.quick else DEFAULT_SIZES
    envs = args.envs or envs
    iterations = args.iterations or iterations
    rounds = args.rounds or rounds
    torch.set_num_threads(args.threads)
    paths = PATHS if args.rsl_rl else PATHS[:2]
    routed = device_route()
    progress = sys.stderr if args.json else sys.stdout
    results, ratios = measure(envs, iterations, rounds, args.device, paths, progress)
    notes = []
    if not routed:
        notes.append(
            "the patch has no collect_rollouts route in this version: 'device' is SB3's host path with the patch on"
        )
    meta: dict[str, Any] = {
        "env": "TorchCartPole(continuous=True)",
        "envs": envs,
        "n_steps": N_STEPS,
        "n_epochs": N_EPOCHS,
        "batch_size": envs * N_STEPS // MINIBATCHES,
        "net_arch": list(NET_ARCH),
        "iterations": iterations,
        "steps_per_learn": iterations * envs * N_STEPS,
        "rounds": rounds,
        "device": args.device,
        "threads": args.threads,
        "torch": torch.__version__,
        "stable_baselines3": stable_baselines3.__version__,
        "rsl_rl": _rsl_rl_version() if args.rsl_rl else None,
        "device_route": routed,
    }
    if args.json:
        report = {"meta": meta, "results": [asdict(r) for r in results], "ratios": ratios, "notes": notes}
        print(json.dumps(report, indent=2))
        return 0
    print()
    print(
        f"PPO on TorchCartPole (continuous force), {envs} envs x {N_STEPS} steps, {N_EPOCHS} epochs x {MINIBATCHES} "
        f"minibatches, net_arch {list(NET_ARCH)}, {iterations} iterations per learn(); medians of {rounds} "
        f"interleaved round(s) (ratios: median of the rounds' ratios), device {args.device}, {args.threads} "
        f"thread(s), torch {torch.__version__}, SB3 {stable_baselines3.__version__}"
        + (f", rsl_rl {meta['rsl_rl']}" if args.rsl_rl else "")
    )
    print(_table(results, ratios))
    for note in notes:
        print(f"note: {note}")
    return 0


def _rsl_rl_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rsl-rl-lib")
    except PackageNotFoundError:
        return None
