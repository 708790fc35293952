"""``python -m sb3_tensorpatch bench``: NumPy predict, the ``_predict`` workaround and tensor predict.

Three ways to get actions for a batch of observations, timed side by side in one process:

- ``numpy``: ``model.predict(obs_numpy)``, SB3's own path, with the patch disabled;
- ``workaround``: ``with torch.no_grad(): model.policy._predict(obs_tensor)``, with the patch disabled
  (what SB3 users are told to do; it skips clipping, unscaling and reshaping, so its actions are
  not the same);
- ``tensor``: ``model.predict(obs_tensor)`` with the patch enabled.

Each round times every method once, in turn (interleaved, the order turning every round), for a
fixed number of calls; the table shows the median per call over the rounds, and the medians over
the rounds of each round's ratios ``tensor / workaround`` and ``numpy / tensor`` (timings taken
side by side share the machine's state, so their ratio is steadier than a ratio of two medians on
a machine whose speed drifts).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Callable

#: (case name, algorithm, environment id): the three target cases first
CASES = (
    ("PPO Pendulum", "PPO", "Pendulum-v1"),
    ("SAC Pendulum", "SAC", "Pendulum-v1"),
    ("DQN CartPole", "DQN", "CartPole-v1"),
    ("A2C CartPole", "A2C", "CartPole-v1"),
    ("TD3 Pendulum", "TD3", "Pendulum-v1"),
)
#: batch sizes: a batch of n rows has the shape ``(n, *observation_shape)``; ``single`` is one
#: observation without the batch dim, which predict accepts and the workaround does not (it is
#: given the same observation with the batch dim, so it skips the two reshapes predict makes)
BATCHES = ("single", "1", "16", "256", "4096")
SINGLE = "single"
METHODS = ("numpy", "workaround", "tensor")
#: calls per method per round at least, however long one call takes (large batches)
MIN_CALLS = 3


@dataclass
class Result:
    """Medians for one case and batch size: seconds per call, and the ratios of each round."""

    case: str
    batch: int
    single: bool
    device: str
    numpy: float
    workaround: float
    tensor: float
    #: median over the rounds of tensor / workaround, each round's two timings taken side by side
    tensor_vs_workaround: float
    #: median over the rounds of numpy / tensor
    numpy_vs_tensor: float


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # each option is checked as it is parsed: a bad value is an argparse error (usage, message, exit 2)
    parser.add_argument("--device", default="cpu", help="torch device for the policies and tensors (cpu, cuda)")
    parser.add_argument(
        "--cases", type=_cases, default=None, help=f"comma-separated subset of: {', '.join(c[0] for c in CASES)}"
    )
    parser.add_argument(
        "--batches",
        type=_batches,
        default=",".join(BATCHES),
        help="comma-separated batch sizes (rows, at least 1), and 'single' for one observation without the batch dim",
    )
    parser.add_argument("--rounds", type=_positive_int, default=41, help="interleaved rounds per case and batch size (at least 1)")
    parser.add_argument("--budget", type=_positive_seconds, default=0.01, help="target seconds per method per round (above 0)")
    parser.add_argument("--threads", type=_positive_int, default=1, help="torch.set_num_threads (at least 1; default 1)")
    parser.add_argument("--stochastic", action="store_true", help="deterministic=False")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 3 rounds, batches up to 16, two cases")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--plot", metavar="FILE.png", default=None, help="also save a bar chart (needs matplotlib)")


def _cases(text: str) -> tuple[tuple[str, str, str], ...]:
    """``--cases``: the named cases, in the table's order; an unknown name is an error."""
    wanted = {name.strip() for name in text.split(",")} - {""}
    unknown = sorted(wanted - {case[0] for case in CASES})
    if unknown or not wanted:
        given = f"unknown case(s): {', '.join(map(repr, unknown))}" if unknown else "no case given"
        raise argparse.ArgumentTypeError(f"{given}; choose from: {', '.join(case[0] for case in CASES)}")
    return tuple(case for case in CASES if case[0] in wanted)


def _batches(text: str) -> tuple[tuple[int, bool], ...]:
    """``--batches``: :func:`_parse_batches`, its errors as argparse errors."""
    try:
        return _parse_batches(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, got {text!r}") from None
    if not 0 < value < math.inf:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds above 0, got {text}")
    return value


def _build(algorithm: str, env_id: str, device: str) -> Any:
    import stable_baselines3 as sb3

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(sb3, algorithm)("MlpPolicy", env_id, device=device, seed=0)


def _per_call(function: Callable[[], Any], calls: int, sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    for _ in range(calls):
        function()
    sync()
    return (time.perf_counter() - start) / calls


def measure(
    model: Any, batch: int, device: str, rounds: int, budget: float, deterministic: bool, single: bool = False
) -> dict[str, float]:
    """Return the median seconds per call of each method for ``model`` at ``batch``, and the
    median per-round ratios ``tensor_vs_workaround`` and ``numpy_vs_tensor``.

    :param single: one observation without the batch dim (``batch`` must be 1); the workaround
        gets it with the batch dim, as it needs
    """
    import numpy as np
    import torch

    space = model.observation_space
    space.seed(0)
    obs_np = np.stack([space.sample() for _ in range(batch)])
    if single:
        obs_np = obs_np[0]  # one observation, as a single (not vectorized) env step would give
    obs_t = torch.as_tensor(obs_np, device=device)
    batched_t = obs_t.reshape((-1, *space.shape))
    policy = model.policy
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)

    def numpy_call() -> Any:
        return model.predict(obs_np, deterministic=deterministic)

    def workaround_call() -> Any:
        with torch.no_grad():
            return policy._predict(batched_t, deterministic=deterministic)

    def tensor_call() -> Any:
        return model.predict(obs_t, deterministic=deterministic)

    functions = {"numpy": numpy_call, "workaround": workaround_call, "tensor": tensor_call}
    calls = {}
    for name, function in functions.items():
        _switch(name)
        function()
        calls[name] = max(MIN_CALLS, int(budget / max(_per_call(function, 3, sync), 1e-7)))
    samples: dict[str, list[float]] = {name: [] for name in METHODS}
    for index in range(rounds):
        # the order turns every round, so that no method always runs first (or right after another)
        for name in METHODS[index % 3 :] + METHODS[: index % 3]:
            _switch(name)
            functions[name]()  # untimed: after enable() the policy's plan is built once
            samples[name].append(_per_call(functions[name], calls[name], sync))
    _switch("numpy")  # leave the patch off
    medians = {name: statistics.median(values) for name, values in samples.items()}
    rounds_of = list(zip(samples["numpy"], samples["workaround"], samples["tensor"]))
    medians["tensor_vs_workaround"] = statistics.median(t / w for _, w, t in rounds_of)
    medians["numpy_vs_tensor"] = statistics.median(n / t for n, _, t in rounds_of)
    return medians


def _switch(method: str) -> None:
    """The patch on for the tensor method, off for the two baselines."""
    import sb3_tensorpatch

    if method == "tensor":
        sb3_tensorpatch.enable()
    else:
        sb3_tensorpatch.disable()


def _label(result: Result) -> str:
    return SINGLE if result.single else str(result.batch)


def _parse_batches(text: str) -> tuple[tuple[int, bool], ...]:
    """``"single,1,16"`` to ``((1, True), (1, False), (16, False))``.

    :raises ValueError: for an item that is neither ``single`` nor a whole number of at least 1
    """
    batches = []
    for item in text.split(","):
        item = item.strip()
        if item == SINGLE:
            batches.append((1, True))
            continue
        try:
            rows = int(item)
        except ValueError:
            rows = 0
        if rows < 1:
            raise ValueError(f"batch sizes are whole numbers of at least 1 or {SINGLE!r}, got {item!r}")
        batches.append((rows, False))
    return tuple(batches)


def _table(results: list[Result]) -> str:
    header = f"{'case':<14} {'batch':>6}  {'numpy':>10} {'workaround':>11} {'tensor':>10}  {'tensor/workaround':>17} {'numpy/tensor':>12}"
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(
            f"{r.case:<14} {_label(r):>6}  {r.numpy * 1e6:>8.1f}us {r.workaround * 1e6:>9.1f}us {r.tensor * 1e6:>8.1f}us"
            f"  {r.tensor_vs_workaround:>17.2f} {r.numpy_vs_tensor:>12.2f}"
        )
    return "\n".join(lines)


def _plot(results: list[Result], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--plot needs matplotlib: pip install matplotlib", file=sys.stderr)
        return
    labels = [f"{r.case}\nbatch {_label(r)}" for r in results]
    fig, ax = plt.subplots(figsize=(max(6, len(results) * 0.9), 4))
    width = 0.27
    for offset, name in enumerate(METHODS):
        xs = [index + (offset - 1) * width for index in range(len(results))]
        ax.bar(xs, [getattr(r, name) * 1e6 for r in results], width, label=name)
    ax.set_xticks(range(len(results)), labels, fontsize=7, rotation=45, ha="right")
    ax.set_ylabel("median µs per call")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def run(args: argparse.Namespace) -> int:
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench: --device cuda asked for, but CUDA is not available here", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    cases: tuple[tuple[str, str, str], ...] = args.cases or CASES
    # argparse passes a string default through the option's type too: the batches come parsed
    batches: tuple[tuple[int, bool], ...] = args.batches
    rounds = args.rounds
    if args.quick:
        cases, batches, rounds = cases[:2], tuple(b for b in batches if b[0] <= 16) or ((1, False),), 3
    progress = sys.stderr if args.json else sys.stdout
    results: list[Result] = []
    total = len(cases) * len(batches)
    for case, algorithm, env_id in cases:
        model = _build(algorithm, env_id, args.device)
        for batch, single in batches:
            label = SINGLE if single else str(batch)
            print(f"[{len(results) + 1}/{total}] {case}, batch {label} ...", file=progress, flush=True)
            medians = measure(model, batch, args.device, rounds, args.budget, not args.stochastic, single)
            results.append(Result(case, batch, single, args.device, **medians))
    if args.json:
        rows = [asdict(r) for r in results]
        meta = {"torch": torch.__version__, "threads": args.threads, "rounds": rounds, "deterministic": not args.stochastic}
        print(json.dumps({"meta": meta, "results": rows}, indent=2))
    else:
        print()
        print(f"medians of {rounds} interleaved rounds (ratios: median of the rounds' ratios), torch {torch.__version__}, {args.threads} thread(s), device {args.device}")
        print(_table(results))
    if args.plot:
        _plot(results, args.plot)
    return 0
