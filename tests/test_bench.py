"""``python -m sb3_tensorpatch bench``: what it measures and reports (not how fast anything is)."""

from __future__ import annotations

import json
import statistics
import sys
from typing import Any, Callable

import pytest
import stable_baselines3
from packaging.version import Version

import sb3_tensorpatch
from sb3_tensorpatch import bench
from sb3_tensorpatch.__main__ import main

# the bench builds its models on gymnasium's Pendulum / CartPole ids
pytestmark = pytest.mark.skipif(
    Version(stable_baselines3.__version__) < Version("2.0.0"), reason="bench builds gymnasium envs (SB3 >= 2.0)"
)


def test_parse_batches() -> None:
    assert bench._parse_batches("single, 1,16") == ((1, True), (1, False), (16, False))
    for text in ("one", "0", "1,-2"):
        with pytest.raises(ValueError):
            bench._parse_batches(text)


def test_quick_json_run(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "--quick", "--json", "--cases", "DQN CartPole", "--budget", "0.0005"])
    assert code == 0
    captured = capsys.readouterr()
    data: dict[str, Any] = json.loads(captured.out)
    assert data["meta"]["rounds"] == 3 and data["meta"]["deterministic"] is True
    rows = data["results"]
    # --quick keeps the batches up to 16: the unbatched observation, one row and 16 rows
    assert [(row["batch"], row["single"]) for row in rows] == [(1, True), (1, False), (16, False)]
    for row in rows:
        assert row["case"] == "DQN CartPole" and row["device"] == "cpu"
        for key in (*bench.METHODS, *bench.RATIOS):
            assert row[key] > 0, key
        assert row["notes"] == []
    assert "[3/3] DQN CartPole, batch 16" in captured.err  # progress goes to stderr with --json
    assert not sb3_tensorpatch.is_enabled()  # the bench leaves the patch off


def test_table_labels_the_unbatched_row(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "--cases", "PPO Pendulum", "--batches", "single,2", "--rounds", "1", "--budget", "0.0005"])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines if line.startswith("PPO Pendulum")]
    assert [row[2] for row in rows] == ["single", "2"]
    assert all(row[3].endswith("us") and float(row[-1]) > 0 for row in rows)
    header = next(line for line in lines if line.startswith("case"))
    assert header.split()[2:] == [*bench.METHODS, "tensor/workaround", "numpy/tensor", "tensor/traced"]


def test_cuda_without_a_gpu_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(["bench", "--device", "cuda", "--quick"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--cases", "PPO CartPole"], "argument --cases: unknown case(s): 'PPO CartPole'; choose from: PPO Pendulum, SAC Pendulum"),
        (["--cases", " , "], "argument --cases: no case given; choose from: PPO Pendulum"),
        (["--batches", "0"], "argument --batches: batch sizes are whole numbers of at least 1 or 'single', got '0'"),
        (["--batches", "single,-4"], "argument --batches: batch sizes are whole numbers of at least 1 or 'single', got '-4'"),
        (["--batches", "one"], "argument --batches: batch sizes are whole numbers of at least 1 or 'single', got 'one'"),
        (["--rounds", "0"], "argument --rounds: must be at least 1, got 0"),
        (["--rounds", "1.5"], "argument --rounds: expected a whole number of at least 1, got '1.5'"),
        (["--threads", "0"], "argument --threads: must be at least 1, got 0"),
        (["--budget", "0"], "argument --budget: must be a finite number of seconds above 0, got 0"),
        (["--budget", "-1"], "argument --budget: must be a finite number of seconds above 0, got -1"),
        (["--budget", "nan"], "argument --budget: must be a finite number of seconds above 0, got nan"),
        (["--budget", "inf"], "argument --budget: must be a finite number of seconds above 0, got inf"),
    ],
)
def test_bad_arguments_are_usage_errors(arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--quick", *arguments])
    assert exit_.value.code == 2  # argparse's exit status for a usage error, before any model is built
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("usage: python -m sb3_tensorpatch bench")
    assert f"python -m sb3_tensorpatch bench: error: {message}" in captured.err


def test_cases_keep_the_table_order() -> None:
    by_name = {case[0]: case for case in bench.CASES}
    assert bench._cases("DQN CartPole, PPO Pendulum") == (by_name["PPO Pendulum"], by_name["DQN CartPole"])


def test_methods_option_times_only_those(capsys: pytest.CaptureFixture[str]) -> None:
    arguments = ["--cases", "TD3 Pendulum", "--batches", "1", "--rounds", "1", "--budget", "0.0005"]
    code = main(["bench", *arguments, "--methods", "traced, tensor", "--json"])
    assert code == 0
    data: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert data["meta"]["methods"] == ["tensor", "traced"]  # in the table's order
    (row,) = data["results"]
    assert row["tensor"] > 0 and row["traced"] > 0 and row["tensor_vs_traced"] > 0
    for key in ("numpy", "workaround", "eager", "tensor_vs_workaround", "numpy_vs_tensor"):
        assert row[key] is None, key


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("numpy,jax", "unknown method(s): 'jax'; choose from: numpy, workaround, tensor, eager, traced"),
        (",", "no method given; choose from: numpy"),
    ],
)
def test_bad_methods_are_usage_errors(text: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--quick", "--methods", text])
    assert exit_.value.code == 2
    assert f"argument --methods: {message}" in capsys.readouterr().err


def test_ratios_are_medians_of_each_rounds_ratio(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a fake clock: each column is the median of its method's times, each ratio the median over the
    rounds of that round's ratio (not the ratio of two medians, which these times make different)."""
    # per method, one time per round (calibration times come first and are not among them)
    times = {
        "numpy": [9.0, 1.0, 5.0, 7.0, 2.0],
        "workaround": [4.0, 8.0, 1.0, 3.0, 6.0],
        "tensor": [2.0, 7.0, 3.0, 9.0, 4.0],
        "eager": [5.0, 5.0, 4.0, 1.0, 8.0],
        "traced": [1.0, 3.0, 9.0, 2.0, 4.0],
    }
    timed: dict[str, list[float]] = {name: [] for name in times}

    def fake_per_call(function: Callable[[], Any], calls: int, sync: Callable[[], None]) -> float:
        name = function.__name__.rsplit("_call", 1)[0]  # measure's closures are named after their method
        if name not in calibrated:  # measure calibrates each method once, before the rounds
            calibrated.add(name)
            return 1e-3
        timed[name].append(times[name][len(timed[name])])
        return timed[name][-1]

    calibrated: set[str] = set()
    monkeypatch.setattr(bench, "_per_call", fake_per_call)
    model = bench._build("PPO", "Pendulum-v1", "cpu")
    medians, notes = bench.measure(model, 1, "cpu", rounds=5, budget=0.003, deterministic=True)
    assert notes == [] and timed == times  # every method timed once a round
    for name, values in times.items():
        assert medians[name] == statistics.median(values)
    for ratio, (top, bottom) in bench.RATIOS.items():
        expected = statistics.median(t / b for t, b in zip(times[top], times[bottom]))
        assert medians[ratio] == expected, ratio
        assert expected != statistics.median(times[top]) / statistics.median(times[bottom])
    assert medians["tensor_vs_traced"] == 2.0  # by hand: 2/1, 7/3, 3/9, 9/2, 4/4 -> median 2.0


@pytest.mark.parametrize("case", bench.CASES, ids=[case[0] for case in bench.CASES])
def test_references_give_predicts_actions_bit_for_bit(case: tuple[str, str, str]) -> None:
    """The eager actor and its trace give ``_predict(obs, deterministic=True)``'s actions exactly,
    so the bench times the same computation three ways."""
    import numpy as np
    import torch

    from sb3_tensorpatch import bench_reference

    model = bench._build(case[1], case[2], "cpu")
    space = model.observation_space
    space.seed(1)
    obs = torch.as_tensor(np.stack([space.sample() for _ in range(64)]))
    eager = bench_reference.eager_actor(model.policy)
    traced = bench_reference.traced_actor(eager, obs[:1])  # traced on one row, run on 64 and on one
    with torch.no_grad():
        expected = model.policy._predict(obs, deterministic=True)
        for rows in (obs, obs[:1]):
            got_eager, got_traced = eager(rows), traced(rows)
            assert got_traced.dtype == got_eager.dtype and got_traced.shape == got_eager.shape
            assert torch.equal(got_traced, got_eager)
        assert torch.equal(eager(obs), expected) and eager(obs).dtype == expected.dtype
    assert bench_reference.check_actions(model.policy, eager, obs) is None
    assert bench_reference.check_actions(model.policy, traced, obs) is None


def test_a_reference_that_differs_is_left_out_with_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from sb3_tensorpatch import bench_reference

    model = bench._build("DQN", "CartPole-v1", "cpu")
    original = bench_reference.traced_actor

    def traced_off_by_one(actor: Any, example: Any) -> Any:
        traced = original(actor, example)
        return lambda obs: traced(obs) + 1

    monkeypatch.setattr(bench_reference, "traced_actor", traced_off_by_one)
    medians, notes = bench.measure(model, 1, "cpu", rounds=1, budget=0.0005, deterministic=True)
    assert notes == ["traced not measured: actions differ from _predict(obs, deterministic=True)"]
    assert medians["traced"] is None and medians["tensor_vs_traced"] is None
    assert medians["eager"] is not None and medians["eager"] > 0

    def untraceable(actor: Any, example: Any) -> Any:
        raise torch.jit.Error("cannot trace this")

    monkeypatch.setattr(bench_reference, "traced_actor", untraceable)
    medians, notes = bench.measure(model, 1, "cpu", rounds=1, budget=0.0005, deterministic=True)
    assert notes == ["traced not measured: torch.jit.trace failed: Error: cannot trace this"]
    assert medians["traced"] is None and medians["eager"] is not None


def test_table_shows_a_missing_reference_and_its_note() -> None:
    notes = ["traced not measured: why"]
    result = bench.Result("SAC Pendulum", 1, False, "cpu", 4e-4, 2e-4, 1e-4, 5e-5, None, 0.5, 4.0, None, notes)
    lines = bench._table([result]).splitlines()
    assert lines[2].split()[2:] == ["1", "400.0us", "200.0us", "100.0us", "50.0us", "-", "0.50", "4.00", "-"]
    assert lines[-1] == "SAC Pendulum, batch 1: traced not measured: why"


def test_plot_writes_a_png(tmp_path: Any) -> None:
    pytest.importorskip("matplotlib")
    results = [
        # a reference missing for one batch size leaves a gap in its line
        bench.Result(case, batch, single, "cpu", 4e-4, 2e-4, 1e-4, 5e-5, None if single else 3e-5, 0.5, 4.0, None)
        for case in ("PPO Pendulum", "DQN CartPole")
        for batch, single in ((1, True), (1, False), (4096, False))
    ]
    path = tmp_path / "bench.png"
    bench._plot(results, str(path), "a title")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_is_refused_before_the_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    monkeypatch.setattr(bench, "_build", lambda *args: pytest.fail("a model was built"))
    assert main(["bench", "--quick", "--plot", str(tmp_path / "bench.png")]) == 2
    assert "bench: --plot needs matplotlib, which is not installed: pip install matplotlib" in capsys.readouterr().err
    assert not (tmp_path / "bench.png").exists()


# -- bench --train ------------------------------------------------------------------------------------

TRAIN_QUICK = ["bench", "--train", "--quick", "--json", "--envs", "8", "--iterations", "2"]


def _check_train_report(data: dict[str, Any], paths: list[str]) -> None:
    from sb3_tensorpatch import bench_train

    meta = data["meta"]
    assert meta["envs"] == 8 and meta["iterations"] == 2 and meta["rounds"] == 1
    assert (meta["n_steps"], meta["n_epochs"], meta["batch_size"], meta["net_arch"]) == (32, 10, 64, [64, 64])
    assert meta["steps_per_learn"] == 2 * 8 * 32 and meta["device"] == "cpu" and meta["threads"] == 1
    assert isinstance(meta["device_route"], bool)
    # the note says when the "device" path cannot be on the device
    assert any("no collect_rollouts route" in note for note in data["notes"]) == (not meta["device_route"])
    assert [row["path"] for row in data["results"]] == paths
    for row in data["results"]:
        assert len(row["seconds"]) == len(row["collect_seconds"]) == 1
        # collection is part of learn(): less time, more steps per second
        assert 0 < row["collect_seconds"][0] < row["seconds"][0], row
        assert row["steps_per_second"] == meta["steps_per_learn"] / row["seconds"][0]
        assert row["collect_steps_per_second"] == meta["steps_per_learn"] / row["collect_seconds"][0]
    expected = [name for name, pair in bench_train.RATIOS.items() if set(pair) <= set(paths)]
    assert list(data["ratios"]) == expected
    for values in data["ratios"].values():
        assert values["overall"] > 0 and values["collection"] > 0
    assert not sb3_tensorpatch.is_enabled()  # the bench leaves the patch off


def test_train_quick_json_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(TRAIN_QUICK) == 0
    captured = capsys.readouterr()
    _check_train_report(json.loads(captured.out), ["host", "device"])
    assert "[round 1/1] host ..." in captured.err  # progress goes to stderr with --json


def test_train_with_rsl_rl(capsys: pytest.CaptureFixture[str]) -> None:
    from sb3_tensorpatch import bench_train

    if not bench_train.rsl_rl_available():
        pytest.skip("rsl_rl is not installed (pip install rsl-rl-lib)")
    from torch.distributions import Distribution

    validate = Distribution._validate_args
    assert main([*TRAIN_QUICK, "--rsl-rl"]) == 0
    data = json.loads(capsys.readouterr().out)
    _check_train_report(data, ["host", "device", "rsl_rl"])
    assert data["meta"]["rsl_rl"]
    # rsl_rl switches distribution validation off for the process; the bench puts it back
    assert Distribution._validate_args is validate


def test_train_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--train", "--quick", "--envs", "4", "--iterations", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("PPO on TorchCartPole (continuous force), 4 envs x 32 steps") for line in lines)
    header = lines.index(next(line for line in lines if line.startswith("path")))
    assert lines[header].split() == ["path", "overall", "steps/s", "collection", "steps/s"]
    rows = [line.split() for line in lines[header + 2 :] if line and not line.startswith("note:")]
    assert [row[0] for row in rows] == ["host", "device", "device"]  # the last one: device / host
    for row in rows[:2]:
        overall, collection = (float(value.replace(",", "")) for value in row[1:])
        assert 0 < overall < collection
    assert rows[2][:3] == ["device", "/", "host"] and all(float(value) > 0 for value in rows[2][3:])


def test_train_without_rsl_rl_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sb3_tensorpatch import bench_train

    monkeypatch.setitem(sys.modules, "rsl_rl", None)  # import rsl_rl now raises ImportError
    monkeypatch.setattr(bench_train, "measure", lambda *args: pytest.fail("the bench ran"))
    assert main(["bench", "--train", "--rsl-rl", "--quick"]) == 2
    assert "--rsl-rl needs rsl_rl, which is not installed here: pip install rsl-rl-lib" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--rsl-rl"], "bench: --rsl-rl only with --train"),
        (["--envs", "8", "--iterations", "2"], "bench: --envs, --iterations only with --train"),
        (["--train", "--plot", "chart.png"], "bench: --plot charts the predict bench, not --train"),
    ],
)
def test_train_options_out_of_place(arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", *arguments]) == 2
    assert message in capsys.readouterr().err


def test_time_collection_calls_the_class_method_of_the_moment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The timer looks ``collect_rollouts`` up on the class at every call: a patch installed on the class
    after the timer (as ``enable()`` installs the rollout route) is what runs."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm

    from sb3_tensorpatch import TensorVecEnv, bench_train
    from sb3_tensorpatch.bench_envs import TorchCartPole

    model = bench_train.build_ppo(TensorVecEnv(TorchCartPole(4, continuous=True)), "cpu")
    seconds = bench_train.time_collection(model, lambda: None)
    calls = []
    original = OnPolicyAlgorithm.collect_rollouts

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PPO, "collect_rollouts", counting, raising=False)
    model.learn(3 * 4 * 32)
    assert calls == [model] * 3
    assert len(seconds) == 3 and all(s > 0 for s in seconds)
