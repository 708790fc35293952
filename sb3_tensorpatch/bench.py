"""``python -m sb3_tensorpatch bench``: NumPy predict, the ``_predict`` workaround and tensor predict.

Three ways to get actions for a batch of observations, timed side by side in one process:

- ``numpy``: ``model.predict(obs_numpy)``, SB3's own path, with the patch disabled;
- ``workaround``: ``with torch.no_grad(): model.policy._predict(obs_tensor)``, with the patch disabled
  (what SB3 users are told to do; it skips clipping, unscaling and reshaping, so its actions are
  not the same);
- ``tensor``: ``model.predict(obs_tensor)`` with the patch enabled.

Each round times every method once, in turn (interleaved), for a fixed number of calls; the table
shows the median per call over the rounds, and the ratios ``tensor / workaround`` and
``numpy / tensor``.
"""

from __future__ import annotations

import argparse
import json
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
BATCHES = (1, 16, 256, 4096)
METHODS = ("numpy", "workaround", "tensor")


@dataclass
class Result:
    """Median seconds per call for one case and batch size."""

    case: str
    batch: int
    device: str
    numpy: float
    workaround: float
    tensor: float

    @property
    def tensor_vs_workaround(self) -> float:
        return self.tensor / self.workaround

    @property
    def numpy_vs_tensor(self) -> float:
        return self.numpy / self.tensor


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="torch device for the policies and tensors (cpu, cuda)")
    parser.add_argument("--cases", default=None, help=f"comma-separated subset of: {', '.join(c[0] for c in CASES)}")
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)), help="comma-separated batch sizes")
    parser.add_argument("--rounds", type=int, default=21, help="interleaved rounds per case and batch size")
    parser.add_argument("--budget", type=float, default=0.02, help="target seconds per method per round")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--stochastic", action="store_true", help="deterministic=False")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 3 rounds, batches 1 and 16, two cases")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--plot", metavar="FILE.png", default=None, help="also save a bar chart (needs matplotlib)")


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


def measure(model: Any, batch: int, device: str, rounds: int, budget: float, deterministic: bool) -> dict[str, float]:
    """Return the median seconds per call of each method for ``model`` at ``batch``."""
    import numpy as np
    import torch

    import sb3_tensorpatch

    space = model.observation_space
    space.seed(0)
    obs_np = np.stack([space.sample() for _ in range(batch)])
    if batch == 1:
        obs_np = obs_np[0]  # one row: a single observation, as an env step would give
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

    calls = {}
    sb3_tensorpatch.disable()
    for name, function in (("numpy", numpy_call), ("workaround", workaround_call)):
        function()
        calls[name] = max(1, int(budget / max(_per_call(function, 3, sync), 1e-7)))
    sb3_tensorpatch.enable()
    tensor_call()
    calls["tensor"] = max(1, int(budget / max(_per_call(tensor_call, 3, sync), 1e-7)))
    samples: dict[str, list[float]] = {name: [] for name in METHODS}
    for _ in range(rounds):
        sb3_tensorpatch.disable()
        samples["numpy"].append(_per_call(numpy_call, calls["numpy"], sync))
        samples["workaround"].append(_per_call(workaround_call, calls["workaround"], sync))
        sb3_tensorpatch.enable()
        samples["tensor"].append(_per_call(tensor_call, calls["tensor"], sync))
    sb3_tensorpatch.disable()
    return {name: statistics.median(values) for name, values in samples.items()}


def _table(results: list[Result]) -> str:
    header = f"{'case':<14} {'batch':>5}  {'numpy':>10} {'workaround':>11} {'tensor':>10}  {'tensor/workaround':>17} {'numpy/tensor':>12}"
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(
            f"{r.case:<14} {r.batch:>5}  {r.numpy * 1e6:>8.1f}us {r.workaround * 1e6:>9.1f}us {r.tensor * 1e6:>8.1f}us"
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
    labels = [f"{r.case}\nbatch {r.batch}" for r in results]
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
    cases: tuple[tuple[str, str, str], ...] = CASES
    if args.cases:
        wanted = {name.strip() for name in args.cases.split(",")}
        cases = tuple(case for case in CASES if case[0] in wanted)
    batches = tuple(int(b) for b in args.batches.split(","))
    rounds = args.rounds
    if args.quick:
        cases, batches, rounds = cases[:2], tuple(b for b in batches if b <= 16) or (1,), 3
    progress = sys.stderr if args.json else sys.stdout
    results: list[Result] = []
    total = len(cases) * len(batches)
    for case, algorithm, env_id in cases:
        model = _build(algorithm, env_id, args.device)
        for batch in batches:
            print(f"[{len(results) + 1}/{total}] {case}, batch {batch} ...", file=progress, flush=True)
            medians = measure(model, batch, args.device, rounds, args.budget, not args.stochastic)
            results.append(Result(case, batch, args.device, **medians))
    if args.json:
        rows = [dict(asdict(r), tensor_vs_workaround=r.tensor_vs_workaround, numpy_vs_tensor=r.numpy_vs_tensor) for r in results]
        meta = {"torch": torch.__version__, "threads": args.threads, "rounds": rounds, "deterministic": not args.stochastic}
        print(json.dumps({"meta": meta, "results": rows}, indent=2))
    else:
        print()
        print(f"median per call, {rounds} interleaved rounds, torch {torch.__version__}, {args.threads} thread(s), device {args.device}")
        print(_table(results))
    if args.plot:
        _plot(results, args.plot)
    return 0
