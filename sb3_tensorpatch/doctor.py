"""``python -m sb3_tensorpatch doctor``: versions, table rows, and a live parity self-check."""

from __future__ import annotations

import sys
import time
import warnings
from typing import Any, Callable, TextIO


def _small() -> dict[str, Any]:
    # a fresh dict per model: SB3 writes into policy_kwargs
    return {"net_arch": [16]}


def _models() -> list[tuple[str, Callable[[], Any]]]:
    """Small untrained models covering the routes, built on the installed SB3 (and sb3-contrib)."""
    import stable_baselines3 as sb3

    kwargs: dict[str, Any] = {"device": "cpu", "seed": 0}
    models: list[tuple[str, Callable[[], Any]]] = [
        ("PPO CartPole (Discrete)", lambda: sb3.PPO("MlpPolicy", "CartPole-v1", policy_kwargs=_small(), **kwargs)),
        ("PPO Pendulum (Box, clipped)", lambda: sb3.PPO("MlpPolicy", "Pendulum-v1", policy_kwargs=_small(), **kwargs)),
        ("SAC Pendulum (Box, unscaled)", lambda: sb3.SAC("MlpPolicy", "Pendulum-v1", policy_kwargs=_small(), **kwargs)),
        ("DQN CartPole (epsilon-greedy)", lambda: sb3.DQN("MlpPolicy", "CartPole-v1", policy_kwargs=_small(), **kwargs)),
    ]
    try:
        import sb3_contrib
    except ImportError:
        return models
    models += [
        ("QRDQN CartPole", lambda: sb3_contrib.QRDQN("MlpPolicy", "CartPole-v1", policy_kwargs=_small(), **kwargs)),
        ("TQC Pendulum", lambda: sb3_contrib.TQC("MlpPolicy", "Pendulum-v1", policy_kwargs=_small(), **kwargs)),
        ("RecurrentPPO Pendulum", lambda: sb3_contrib.RecurrentPPO("MlpLstmPolicy", "Pendulum-v1", policy_kwargs={"lstm_hidden_size": 8, "net_arch": [16]}, **kwargs)),
    ]
    return models


def run(out: TextIO = sys.stdout) -> int:
    """Print the report and run the self-check; return the process exit code (0 ok, 1 failed)."""
    import numpy as np

    import sb3_tensorpatch
    from sb3_tensorpatch.plans import plan_for
    from sb3_tensorpatch.testing import assert_predict_parity

    status = sb3_tensorpatch.status()
    print(f"sb3-tensorpatch {sb3_tensorpatch.__version__}", file=out)
    print(str(status), file=out)
    if status.error:
        print(f"\nFAIL: {status.error}", file=out)
        return 1
    import torch

    print(f"  torch: {torch.__version__} (CUDA available: {torch.cuda.is_available()})", file=out)
    print("\nparity self-check (tensor route vs NumPy path, deterministic, bit for bit, single and batched):", file=out)
    failures = 0
    rng = np.random.default_rng(0)
    for name, build in _models():
        started = time.perf_counter()
        model = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = build()
            space = model.observation_space
            space.seed(int(rng.integers(1 << 31)))
            single = [space.sample() for _ in range(3)]
            batch = np.stack([space.sample() for _ in range(5)])
            assert_predict_parity(model, single)
            assert_predict_parity(model, batch)
            assert_predict_parity(model.policy, batch)
            verdict = "ok"
        except Exception as exc:
            failures += 1
            verdict = f"FAILED\n{exc}"
        print(f"  {name:<32} {verdict}  ({time.perf_counter() - started:.1f} s)", file=out)
        if model is not None:
            # the path a tensor predict of this model takes: lowered, or not and why
            lowering = plan_for(model.policy).lowering
            path = lowering if lowering.startswith("lowered") else f"not lowered, {lowering}"
            print(f"  {'':<32} path: {path}", file=out)
    print(f"\n{'FAIL' if failures else 'OK'}: {failures} failing model(s)", file=out)
    return 1 if failures else 0
