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
    with pytest.raises(ValueError):
        bench._parse_batches("one")


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
