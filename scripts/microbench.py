#!/usr/bin/env python3
"""Micro-benchmarks behind the design choices the docs state, so that each claim can be re-measured.

Every case times its variants in interleaved rounds (the order turns each round) and prints the
median time per call of each variant and the median of the per-round ratios to the first variant.
Absolute times drift between runs and machines; the ratios are what the docs quote.

Usage::

    python scripts/microbench.py                 # every case
    python scripts/microbench.py wrapper pickle  # some cases
    python scripts/microbench.py --rounds 61 --ms 20

Cases:

``wrapper``
    Calling a method through our generated wrapper, through a wrapt ``FunctionWrapper`` doing the same
    dispatch, and the bare method, in a tight loop (no network around it).
``wrapper-in-context``
    ``predict(tensor)`` at a batch of one row for PPO, SAC and DQN with our wrappers installed, and
    with the same routes behind a wrapt ``FunctionWrapper`` instead: the per-call cost of wrapt where
    it matters, with the network's forward pass between the calls.
``pickle``
    Whether ``pickle.dumps(policy.predict)`` works with each kind of wrapper (not a timing).
``unsqueeze``
    Adding the batch dim to one observation: ``unsqueeze(0)`` against ``view(1, *shape)``.
``eval-flags``
    The route's eval-mode check: reading the training flags from the modules' ``__dict__`` against
    reading them as attributes, and against calling ``set_training_mode(False)`` as SB3 does.
``activation``
    The lowered path's activation on a ``Linear``'s fresh output: ``torch.tanh_`` in place against
    ``torch.tanh`` into a new tensor, for batches of 1, 64, 1024 and 4096 rows of 64 features (the
    ``Linear`` is timed in both variants).
``chain``
    The lowered path's chain of ops at a batch of one row (PPO's actor up to the action net, TD3's actor):
    the generated straight-line function against the same ops each behind a function of its own,
    called in a loop (the lowered path before it generated its chains), and the actor's modules.
``parts``
    Where a batch-of-one ``predict(tensor)`` spends its time, for the bench's five cases: the traced
    actor (the bench's reference, deterministic), the ops the lowered path makes (network, distribution
    and SB3's post-processing, with autograd off: no checks), deterministic and stochastic, and the
    whole deterministic ``model.predict(tensor)``, whose difference from the deterministic ops is the
    route's checks (input validation, eval flags, the lowered path's liveness, the patch's dispatch).
``unscale``
    SAC's unscaling of one action row: ``addcmul`` after ``+ 1`` (two ops, used where every half-range
    is a power of two) against three ops, and adding a cached 0-d ``1.0`` against the Python float.
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import sys
import time
import warnings
from typing import Any, Callable

import torch

torch.set_num_threads(1)

Variant = Callable[[], Any]


def interleaved(variants: dict[str, Variant], rounds: int, ms: float) -> dict[str, tuple[float, float]]:
    """Median µs per call of each variant, and the median of its per-round ratio to the first variant."""
    names = list(variants)
    for variant in variants.values():  # warm up and size the loops
        variant()
    counts = {}
    for name, variant in variants.items():
        started = time.perf_counter()
        calls = 0
        while time.perf_counter() - started < ms / 1000:
            variant()
            calls += 1
        counts[name] = max(calls, 1)
    times: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        order = names[index % len(names):] + names[: index % len(names)]
        for name in order:
            variant, count = variants[name], counts[name]
            started = time.perf_counter()
            for _ in range(count):
                variant()
            times[name].append((time.perf_counter() - started) / count * 1e6)
    first = times[names[0]]
    return {
        name: (statistics.median(times[name]), statistics.median(t / f for t, f in zip(times[name], first)))
        for name in names
    }


def report(title: str, results: dict[str, tuple[float, float]]) -> None:
    first = next(iter(results))
    print(f"\n{title}")
    for name, (micros, ratio) in results.items():
        print(f"  {name:<34} {micros:9.3f} µs   {ratio:5.2f} x {first}")


def _wrapt_wrapper(original: Any, route: Any) -> Any:
    """A wrapt FunctionWrapper with the dispatch our generated wrapper does."""
    import wrapt

    from sb3_tensorpatch.observations import is_tensor_input

    def dispatch(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        observation = args[0] if args else kwargs.get("observation")
        if is_tensor_input(observation):
            return route(instance, *args, **kwargs)
        return wrapped(*args, **kwargs)

    return wrapt.FunctionWrapper(original, dispatch)


def case_wrapper(rounds: int, ms: float) -> None:
    from stable_baselines3.common.policies import BasePolicy

    import sb3_tensorpatch

    sb3_tensorpatch.enable()
    generated = BasePolicy.__dict__["predict"]
    sb3_tensorpatch.disable()

    class Target:
        def predict(self, observation: Any, state: Any = None, episode_start: Any = None, deterministic: bool = False) -> Any:
            return observation

    original = Target.__dict__["predict"]
    with_wrapt = type("WithWrapt", (Target,), {"predict": _wrapt_wrapper(original, original)})()
    # our generator, around the same trivial method (the wrapper of BasePolicy.predict, re-bound)
    from sb3_tensorpatch.wrappers import Record, make_wrapper

    record = Record(None, Target, "predict", original)
    ours = type("Ours", (Target,), {"predict": make_wrapper(original, original, "observation", record)})()
    bare = Target()
    obs = object()  # not a tensor: both wrappers pass the call to the original
    assert generated is not None
    report(
        "wrapper: one call through each kind of wrapper, non-tensor input, tight loop",
        interleaved(
            {"bare method": lambda: bare.predict(obs), "generated": lambda: ours.predict(obs), "wrapt": lambda: with_wrapt.predict(obs)},
            rounds,
            ms,
        ),
    )


def _models() -> list[tuple[str, Any, torch.Tensor]]:
    import stable_baselines3 as sb3

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [
            ("PPO Pendulum", sb3.PPO("MlpPolicy", "Pendulum-v1", device="cpu", seed=0), torch.zeros(1, 3)),
            ("SAC Pendulum", sb3.SAC("MlpPolicy", "Pendulum-v1", device="cpu", seed=0), torch.zeros(1, 3)),
            ("DQN CartPole", sb3.DQN("MlpPolicy", "CartPole-v1", device="cpu", seed=0), torch.zeros(1, 4)),
        ]


def case_wrapper_in_context(rounds: int, ms: float) -> None:
    import sb3_tensorpatch
    from sb3_tensorpatch.wrappers import tensor_route

    for name, model, obs in _models():
        sb3_tensorpatch.enable()
        owner = type(model.policy)
        # the class whose __dict__ holds the patched predict, and its route
        holder = next(klass for klass in owner.__mro__ if "predict" in vars(klass))
        generated = holder.__dict__["predict"]
        route = tensor_route(owner, "predict")
        original = generated.__wrapped__
        wrapt_wrapper = _wrapt_wrapper(original, route)

        def with_generated(model: Any = model, obs: torch.Tensor = obs, holder: Any = holder, generated: Any = generated) -> Any:
            holder.predict = generated
            return model.predict(obs, deterministic=True)

        def with_wrapt(model: Any = model, obs: torch.Tensor = obs, holder: Any = holder, wrapper: Any = wrapt_wrapper) -> Any:
            holder.predict = wrapper
            return model.predict(obs, deterministic=True)

        # each variant installs its wrapper first; the setattr is in both, so it cancels in the ratio
        results = interleaved({"generated": with_generated, "wrapt": with_wrapt}, rounds, ms)
        holder.predict = generated
        sb3_tensorpatch.disable()
        extra = results["wrapt"][0] - results["generated"][0]
        report(f"wrapper-in-context: {name}, predict(tensor), batch of 1 row (wrapt adds {extra:.2f} µs)", results)


def case_pickle(rounds: int, ms: float) -> None:
    import stable_baselines3 as sb3

    import sb3_tensorpatch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = sb3.PPO("MlpPolicy", "Pendulum-v1", device="cpu", seed=0)
    from stable_baselines3.common.policies import BasePolicy

    sb3_tensorpatch.enable()
    generated = BasePolicy.__dict__["predict"]
    print("\npickle: pickle.dumps(policy.predict)")
    for label, wrapper in (("generated", generated), ("wrapt", _wrapt_wrapper(generated.__wrapped__, generated))):
        BasePolicy.predict = wrapper
        try:
            size = len(pickle.dumps(model.policy.predict))
            print(f"  {label:<10} pickles ({size} bytes)")
        except Exception as exc:
            print(f"  {label:<10} {type(exc).__name__}: {exc}")
    BasePolicy.predict = generated
    sb3_tensorpatch.disable()


def case_unsqueeze(rounds: int, ms: float) -> None:
    obs = torch.zeros(3)
    report(
        "unsqueeze: one observation of shape (3,) to (1, 3)",
        interleaved({"unsqueeze(0)": lambda: obs.unsqueeze(0), "view(1, 3)": lambda: obs.view(1, 3)}, rounds, ms),
    )


def case_unscale(rounds: int, ms: float) -> None:
    actions = torch.zeros(1, 1)
    low = torch.tensor([-2.0])
    half = torch.tensor([2.0])
    one = torch.ones(())
    with torch.no_grad():
        report(
            "unscale: low + (a + 1) * half_range, one action row",
            interleaved(
                {
                    "addcmul(low, a + one, half)": lambda: torch.addcmul(low, torch.add(actions, one), half),
                    "(a + one) * half + low": lambda: torch.add(actions, one).mul_(half).add_(low),
                    "(a + 1.0) * half + low": lambda: torch.add(actions, 1.0).mul_(half).add_(low),
                },
                rounds,
                ms,
            ),
        )


def case_activation(rounds: int, ms: float) -> None:
    weight, bias = torch.randn(64, 64), torch.randn(64)
    linear = torch._C._nn.linear
    with torch.no_grad():
        for rows in (1, 64, 1024, 4096):
            x = torch.randn(rows, 64)
            report(
                f"activation: tanh of a Linear's output, {rows} x 64",
                interleaved(
                    {
                        "tanh(linear(x))": lambda x=x: torch.tanh(linear(x, weight, bias)),
                        "tanh_(linear(x))": lambda x=x: torch.tanh_(linear(x, weight, bias)),
                    },
                    rounds,
                    ms,
                ),
            )


def case_chain(rounds: int, ms: float) -> None:
    import stable_baselines3 as sb3

    from sb3_tensorpatch import lowering

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ppo = sb3.PPO("MlpPolicy", "Pendulum-v1", device="cpu", seed=0).policy.eval()
        td3 = sb3.TD3("MlpPolicy", "Pendulum-v1", device="cpu", seed=0).policy.eval()
    path = lowering._Path()
    chains = {
        "PPO actor": (
            [
                *path.features(ppo, "pi_features_extractor"),
                *path.sequential(ppo.mlp_extractor, "policy_net"),
                path.linear(ppo, "action_net"),
            ],
            torch.nn.Sequential(ppo.pi_features_extractor, ppo.mlp_extractor.policy_net, ppo.action_net),
        ),
        "TD3 actor": (
            [*path.features(td3.actor, "features_extractor"), *path.sequential(td3.actor, "mu")],
            torch.nn.Sequential(td3.actor.features_extractor, td3.actor.mu),
        ),
    }
    obs = torch.zeros(1, 3)
    with torch.no_grad():
        for title, (ops, modules) in chains.items():
            generated = lowering._run(ops)
            one_by_one = tuple(lowering._run([op]) for op in ops)

            def looped(x: torch.Tensor, steps: tuple[Any, ...] = one_by_one) -> torch.Tensor:
                for step in steps:
                    x = step(x)
                return x

            if not torch.equal(generated(obs), looped(obs)) or not torch.equal(generated(obs), modules(obs)):
                raise AssertionError(f"{title}: the variants differ")
            report(
                f"chain: {title}, {len(ops)} ops, one row",
                interleaved(
                    {
                        "generated chain": lambda run=generated: run(obs),
                        "a function per op, looped": lambda: looped(obs),
                        "the modules": lambda run=modules: run(obs),
                    },
                    rounds,
                    ms,
                ),
            )


def _parts(title: str, model: Any, rounds: int, ms: float) -> None:
    import sb3_tensorpatch
    from sb3_tensorpatch import bench_reference, routes
    from sb3_tensorpatch.plans import plan_for

    obs = torch.as_tensor(model.observation_space.sample()[None])
    traced = bench_reference.traced_actor(bench_reference.eager_actor(model.policy), obs)
    sb3_tensorpatch.enable()
    try:
        model.predict(obs, deterministic=True)
        plan = plan_for(model.policy)
        if plan.lowered is None:
            raise AssertionError(f"{title}: not lowered")
        run = plan.lowered.run

        def traced_call() -> Any:
            with torch.no_grad():  # as the bench calls it
                return traced(obs)

        report(
            f"parts: {title}, one row",
            interleaved(
                {
                    "traced actor": traced_call,
                    "the lowered ops, no checks": lambda: routes._lowered_finished(plan, run, True, True, obs, True),
                    "the same, stochastic": lambda: routes._lowered_finished(plan, run, True, True, obs, False),
                    "model.predict(tensor)": lambda: model.predict(obs, deterministic=True),
                },
                rounds,
                ms,
            ),
        )
    finally:
        sb3_tensorpatch.disable()


def case_parts(rounds: int, ms: float) -> None:
    from sb3_tensorpatch import bench

    for title, algorithm, env_id in bench.CASES:
        _parts(title, bench._build(algorithm, env_id, "cpu"), rounds, ms)


def case_eval_flags(rounds: int, ms: float) -> None:
    import operator

    import stable_baselines3 as sb3

    from sb3_tensorpatch.plans import eval_modules

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        policy = sb3.PPO("MlpPolicy", "Pendulum-v1", device="cpu", seed=0).policy
    policy.set_training_mode(False)
    modules = eval_modules(policy)
    dicts = tuple(vars(module) for module in modules)
    by_attribute = operator.attrgetter("training")
    by_item = operator.itemgetter("training")
    report(
        f"eval-flags: is any of PPO's {len(modules)} modules in training mode? (the route asks on every call)",
        interleaved(
            {
                "itemgetter on __dict__s": lambda: policy.training or any(map(by_item, dicts)),
                "attrgetter on modules": lambda: policy.training or any(map(by_attribute, modules)),
                "set_training_mode(False)": lambda: policy.set_training_mode(False),
            },
            rounds,
            ms,
        ),
    )


CASES: dict[str, Callable[[int, float], None]] = {
    "wrapper": case_wrapper,
    "wrapper-in-context": case_wrapper_in_context,
    "pickle": case_pickle,
    "unsqueeze": case_unsqueeze,
    "unscale": case_unscale,
    "activation": case_activation,
    "chain": case_chain,
    "parts": case_parts,
    "eval-flags": case_eval_flags,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="*", choices=[[], *CASES], metavar="CASE", help=f"one of {', '.join(CASES)}")
    parser.add_argument("--rounds", type=int, default=41, help="interleaved rounds (default 41)")
    parser.add_argument("--ms", type=float, default=10.0, help="milliseconds per variant per round (default 10)")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, Python {sys.version.split()[0]}, 1 torch thread")
    for name in args.cases or CASES:
        CASES[name](args.rounds, args.ms)
    return 0


if __name__ == "__main__":
    sys.exit(main())
