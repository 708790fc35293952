"""``python -m sb3_tensorpatch bench``: what it measures and reports (not how fast anything is)."""

from __future__ import annotations

import json
from typing import Any

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
        for key in ("numpy", "workaround", "tensor", "tensor_vs_workaround", "numpy_vs_tensor"):
            assert row[key] > 0, key
    assert "[3/3] DQN CartPole, batch 16" in captured.err  # progress goes to stderr with --json
    assert not sb3_tensorpatch.is_enabled()  # the bench leaves the patch off


def test_table_labels_the_unbatched_row(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "--cases", "PPO Pendulum", "--batches", "single,2", "--rounds", "1", "--budget", "0.0005"])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines if line.startswith("PPO Pendulum")]
    assert [row[2] for row in rows] == ["single", "2"]
    assert all(row[3].endswith("us") and float(row[-1]) > 0 for row in rows)


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
