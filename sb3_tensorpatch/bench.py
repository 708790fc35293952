"""``python -m sb3_tensorpatch bench``: NumPy predict, the ``_predict`` workaround, tensor predict, and
two references without SB3 around them.

Five ways to get actions for a batch of observations, timed side by side in one process:

- ``numpy``: ``model.predict(obs_numpy)``, SB3's own path, with the patch disabled;
- ``workaround``: ``with torch.no_grad(): model.policy._predict(obs_tensor)``, with the patch disabled
  (what SB3 users are told to do; it skips clipping, unscaling and reshaping, so its actions are
  not the same);
- ``tensor``: ``model.predict(obs_tensor)`` with the patch enabled;
- ``eager``: the actor's modules alone, deterministic, under ``torch.no_grad()``, with the patch
  disabled (:mod:`sb3_tensorpatch.bench_reference`: what ``_predict(obs, deterministic=True)``
  computes before SB3's post-processing, always deterministic, also in a ``--stochastic`` run);
- ``traced``: the same actor exported with ``torch.jit.trace`` (traced once per case and batch
  size, outside the timed rounds), under ``torch.no_grad()``, with the patch disabled.

Before a case is timed, the two references' actions are checked against ``_predict(obs,
deterministic=True)``, bit for bit; a reference that fails the check, or cannot be traced, is left
out of that case with a note.

Each round times every method once, in turn (interleaved, the order turning every round), for a
fixed number of calls; the table shows the median per call over the rounds, and the medians over
the rounds of each round's ratios (:data:`RATIOS`: ``tensor / workaround``, ``numpy / tensor``,
``tensor / traced``; timings taken side by side share the machine's state, so their ratio is
steadier than a ratio of two medians on a machine whose speed drifts).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
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
METHODS = ("numpy", "workaround", "tensor", "eager", "traced")
#: the methods that run the reference actor (:mod:`sb3_tensorpatch.bench_reference`)
REFERENCES = ("eager", "traced")
#: ratio name: (numerator, denominator) methods; each is the median over the rounds of that round's ratio
RATIOS = {
    "tensor_vs_workaround": ("tensor", "workaround"),
    "numpy_vs_tensor": ("numpy", "tensor"),
    "tensor_vs_traced": ("tensor", "traced"),
}
#: calls per method per round at least, however long one call takes (large batches)
MIN_CALLS = 3
#: interleaved rounds per case and batch size unless ``--rounds`` says
ROUNDS = 41


@dataclass
class Result:
    """Medians for one case and batch size: seconds per call, and the ratios of each round.

    A method that was not measured (not asked for with ``--methods``, or a reference left out, see
    ``notes``) and a ratio that needs it are ``None``.
    """

    case: str
    batch: int
    single: bool
    device: str
    numpy: float | None
    workaround: float | None
    tensor: float | None
    eager: float | None
    traced: float | None
    #: median over the rounds of tensor / workaround, each round's two timings taken side by side
    tensor_vs_workaround: float | None
    #: median over the rounds of numpy / tensor
    numpy_vs_tensor: float | None
    #: median over the rounds of tensor / traced
    tensor_vs_traced: float | None
    #: why a method asked for was not measured
    notes: list[str] = field(default_factory=list)


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
    parser.add_argument(
        "--methods",
        type=_methods,
        default=METHODS,
        help=f"comma-separated subset of: {', '.join(METHODS)} (default: all)",
    )
    parser.add_argument(
        "--rounds",
        type=_positive_int,
        default=None,
        help=f"interleaved rounds per case and batch size (at least 1; default {ROUNDS}, with --train 5)",
    )
    parser.add_argument("--budget", type=_positive_seconds, default=0.01, help="target seconds per method per round (above 0)")
    parser.add_argument("--threads", type=_positive_int, default=1, help="torch.set_num_threads (at least 1; default 1)")
    parser.add_argument("--stochastic", action="store_true", help="deterministic=False")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 3 rounds, batches up to 16, two cases")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        default=None,
        help="also save a chart of the time per call by method, one panel per case (needs matplotlib)",
    )
    from . import bench_train

    bench_train.add_arguments(parser, _positive_int)


def _cases(text: str) -> tuple[tuple[str, str, str], ...]:
    """``--cases``: the named cases, in the table's order; an unknown name is an error."""
    wanted = {name.strip() for name in text.split(",")} - {""}
    unknown = sorted(wanted - {case[0] for case in CASES})
    if unknown or not wanted:
        given = f"unknown case(s): {', '.join(map(repr, unknown))}" if unknown else "no case given"
        raise argparse.ArgumentTypeError(f"{given}; choose from: {', '.join(case[0] for case in CASES)}")
    return tuple(case for case in CASES if case[0] in wanted)


def _methods(text: str) -> tuple[str, ...]:
    """``--methods``: the named methods, in the table's order; an unknown name is an error."""
    wanted = {name.strip() for name in text.split(",")} - {""}
    unknown = sorted(wanted - set(METHODS))
    if unknown or not wanted:
        given = f"unknown method(s): {', '.join(map(repr, unknown))}" if unknown else "no method given"
        raise argparse.ArgumentTypeError(f"{given}; choose from: {', '.join(METHODS)}")
    return tuple(name for name in METHODS if name in wanted)


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
    model: Any,
    batch: int,
    device: str,
    rounds: int,
    budget: float,
    deterministic: bool,
    single: bool = False,
    methods: tuple[str, ...] = METHODS,
) -> tuple[dict[str, float | None], list[str]]:
    """Time ``methods`` for ``model`` at ``batch``, interleaved.

    :param single: one observation without the batch dim (``batch`` must be 1); the workaround and
        the references get it with the batch dim, as they need
    :param methods: the methods to time, a subset of :data:`METHODS`
    :return: the median seconds per call of every method in :data:`METHODS` and the median per-round
        ratios of :data:`RATIOS` (``None`` for a method not timed and a ratio that needs one), and
        the notes saying why a reference asked for was left out
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
    _switch("numpy")
    references, notes = _references(policy, batched_t, [name for name in methods if name in REFERENCES])

    # each method is a closure named after it (tests tell the methods apart by the name)
    def numpy_call() -> Any:
        return model.predict(obs_np, deterministic=deterministic)

    def workaround_call() -> Any:
        with torch.no_grad():
            return policy._predict(batched_t, deterministic=deterministic)

    def tensor_call() -> Any:
        return model.predict(obs_t, deterministic=deterministic)

    # the references are deterministic whatever ``deterministic`` says: they are what an export runs
    # (the eager actor's forward is called directly: no wrapper around the actor's own modules)
    eager_forward: Any = references["eager"].forward if "eager" in references else None
    traced: Any = references.get("traced")

    def eager_call() -> Any:
        with torch.no_grad():
            return eager_forward(batched_t)

    def traced_call() -> Any:
        with torch.no_grad():
            return traced(batched_t)

    every = {
        "numpy": numpy_call,
        "workaround": workaround_call,
        "tensor": tensor_call,
        "eager": eager_call,
        "traced": traced_call,
    }
    timed = tuple(name for name in methods if name not in REFERENCES or name in references)
    functions = {name: every[name] for name in timed}
    calls = {}
    for name, function in functions.items():
        _switch(name)
        function()
        calls[name] = max(MIN_CALLS, int(budget / max(_per_call(function, 3, sync), 1e-7)))
    samples: dict[str, list[float]] = {name: [] for name in timed}
    for index in range(rounds):
        # the order turns every round, so that no method always runs first (or right after another)
        turn = index % len(timed)
        for name in timed[turn:] + timed[:turn]:
            _switch(name)
            functions[name]()  # untimed: after enable() the policy's plan is built once
            samples[name].append(_per_call(functions[name], calls[name], sync))
    _switch("numpy")  # leave the patch off
    return _medians(samples), notes


def _references(policy: Any, example: Any, wanted: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Build the reference actors in ``wanted`` (``eager``, ``traced``) for ``policy``, each checked
    against ``_predict(example, deterministic=True)``; one that cannot be built or fails the check
    is left out, with a note saying why."""
    if not wanted:
        return {}, []
    from . import bench_reference

    try:
        eager = bench_reference.eager_actor(policy)
    except ValueError as exc:
        return {}, [f"{' and '.join(wanted)} not measured: {exc}"]
    candidates: dict[str, Any] = {"eager": eager}
    notes = []
    if "traced" in wanted:
        try:
            candidates["traced"] = bench_reference.traced_actor(eager, example)
        except Exception as exc:  # torch.jit.trace raises many kinds; whatever it is, the case goes on without it
            notes.append(f"traced not measured: torch.jit.trace failed: {type(exc).__name__}: {exc}")
    references = {}
    for name in wanted:
        if name not in candidates:
            continue
        problem = bench_reference.check_actions(policy, candidates[name], example)
        if problem is None:
            references[name] = candidates[name]
        else:
            notes.append(f"{name} not measured: {problem}")
    return references, notes


def _medians(samples: dict[str, list[float]]) -> dict[str, float | None]:
    """Per method, the median of its per-call times; per ratio of :data:`RATIOS` whose two methods
    were timed, the median over the rounds of that round's ratio; ``None`` for the others."""
    medians: dict[str, float | None] = {
        name: statistics.median(samples[name]) if name in samples else None for name in METHODS
    }
    for ratio, (top, bottom) in RATIOS.items():
        if top in samples and bottom in samples:
            medians[ratio] = statistics.median(t / b for t, b in zip(samples[top], samples[bottom]))
        else:
            medians[ratio] = None
    return medians


def _switch(method: str) -> None:
    """The patch on for the tensor method, off for the others."""
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


def _table(results: list[Result], methods: tuple[str, ...] = METHODS) -> str:
    """The results as a text table: a column per method in ``methods``, then one per ratio of
    :data:`RATIOS` whose two methods are in ``methods``; ``-`` where a value is ``None``."""
    ratios = [ratio for ratio, pair in RATIOS.items() if set(pair) <= set(methods)]
    widths = {name: max(10, len(name)) for name in methods}
    titles = {ratio: ratio.replace("_vs_", "/") for ratio in ratios}
    header = f"{'case':<14} {'batch':>6} " + "".join(f" {name:>{widths[name]}}" for name in methods)
    header += " " + "".join(f" {titles[ratio]:>{len(titles[ratio])}}" for ratio in ratios)
    lines = [header, "-" * len(header)]
    for r in results:
        line = f"{r.case:<14} {_label(r):>6} "
        for name in methods:
            seconds = getattr(r, name)
            line += f" {'-' if seconds is None else f'{seconds * 1e6:.1f}us':>{widths[name]}}"
        line += " "
        for ratio in ratios:
            value = getattr(r, ratio)
            line += f" {'-' if value is None else f'{value:.2f}':>{len(titles[ratio])}}"
        lines.append(line)
    notes = [f"{r.case}, batch {_label(r)}: {note}" for r in results for note in r.notes]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


def _pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend (no display needed).

    :raises ImportError: where matplotlib is not installed (it is optional: the dev extra has it)
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def _plot(results: list[Result], path: str, title: str) -> None:
    """Save a chart of the median time per call: one panel per case, the batch sizes along x, the
    time on a log scale (shared by all panels) and one line per method, colour and marker fixed per
    method across the panels.

    :raises ImportError: where matplotlib is not installed
    """
    pyplot = _pyplot()
    cases = list(dict.fromkeys(r.case for r in results))
    methods = [name for name in METHODS if any(getattr(r, name) is not None for r in results)]
    columns = min(3, len(cases))
    rows = math.ceil(len(cases) / columns)
    figure, axes = pyplot.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows + 0.6), sharey=True, squeeze=False)
    lines = {}
    for index, case in enumerate(cases):
        ax = axes[index // columns][index % columns]
        of_case = [r for r in results if r.case == case]
        xs = range(len(of_case))
        for name in methods:
            # nan leaves a gap where a method was not measured for one batch size
            ys = [math.nan if getattr(r, name) is None else getattr(r, name) * 1e6 for r in of_case]
            marker = "osD^v"[METHODS.index(name)]
            # the patched route drawn thicker: it is what the chart is about
            width = 2.5 if name == "tensor" else 1.5
            (lines[name],) = ax.plot(xs, ys, marker=marker, color=f"C{METHODS.index(name)}", linewidth=width)
        ax.set_xticks(list(xs), [_label(r) for r in of_case])
        ax.set_yscale("log")
        ax.set_title(case, fontsize=10)
        ax.grid(True, which="both", axis="y", alpha=0.3)
        ax.set_xlabel("batch (rows)")
        if index % columns == 0:
            ax.set_ylabel("median µs per call")
    for index in range(len(cases), rows * columns):
        axes[index // columns][index % columns].set_visible(False)
    figure.suptitle(title, fontsize=9)
    figure.legend(
        [lines[name] for name in methods], methods, loc="lower center", ncol=len(methods), frameon=False, fontsize=9
    )
    figure.tight_layout(rect=(0, 0.07 / rows, 1, 1))
    figure.savefig(path, dpi=120)
    pyplot.close(figure)


def run(args: argparse.Namespace) -> int:
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench: --device cuda asked for, but CUDA is not available here", file=sys.stderr)
        return 2
    from . import bench_train

    misplaced = bench_train.misplaced_options(args)
    if misplaced:
        print(f"bench: {misplaced}", file=sys.stderr)
        return 2
    if args.train:
        return bench_train.run(args)
    if args.plot:
        # checked before the (long) run, not after it
        try:
            _pyplot()
        except ImportError:
            print("bench: --plot needs matplotlib, which is not installed: pip install matplotlib", file=sys.stderr)
            return 2
    torch.set_num_threads(args.threads)
    cases: tuple[tuple[str, str, str], ...] = args.cases or CASES
    # argparse passes a string default through the option's type too: the batches come parsed
    batches: tuple[tuple[int, bool], ...] = args.batches
    methods: tuple[str, ...] = args.methods
    rounds = args.rounds or ROUNDS
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
            medians, notes = measure(
                model, batch, args.device, rounds, args.budget, not args.stochastic, single, methods
            )
            results.append(Result(case, batch, single, args.device, **medians, notes=notes))
    mode = "stochastic" if args.stochastic else "deterministic"
    summary = (
        f"medians of {rounds} interleaved rounds (ratios: median of the rounds' ratios), torch {torch.__version__}, "
        f"{args.threads} thread(s), device {args.device}, {mode} (eager and traced: always deterministic)"
    )
    if args.json:
        rows = [asdict(r) for r in results]
        meta = {
            "torch": torch.__version__,
            "threads": args.threads,
            "rounds": rounds,
            "deterministic": not args.stochastic,
            "methods": list(methods),
        }
        print(json.dumps({"meta": meta, "results": rows}, indent=2))
    else:
        print()
        print(summary)
        print(_table(results, methods))
    if args.plot:
        title = f"median time per call, {rounds} interleaved rounds, {mode}, {args.device}, {args.threads} thread(s), torch {torch.__version__}"
        _plot(results, args.plot, title)
        print(f"chart saved to {args.plot}", file=progress)
    return 0
