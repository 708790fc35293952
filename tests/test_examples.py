"""Every script in ``examples/`` runs, as a user would run it, with small sizes.

Each example runs in a fresh interpreter (the patch is process-wide state, and a user runs the
scripts on their own), and must exit 0 and print what it promises.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import stable_baselines3
from packaging.version import Version

# The examples are written for today's SB3 (gymnasium, SB3 >= 2.0); the 1.x releases of the test
# matrix use gym 0.21 and skip them.
pytestmark = pytest.mark.skipif(
    Version(stable_baselines3.__version__) < Version("2.0.0"), reason="the examples use gymnasium (SB3 >= 2.0)"
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TIMEOUT = 300  # seconds; each takes well under a minute on a 2-core CI machine


def _run(*args: str) -> str:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")  # small networks: threads only add contention here
    env["PYTHONWARNINGS"] = "ignore::DeprecationWarning"
    env.pop("PYTEST_DISABLE_PLUGIN_AUTOLOAD", None)  # the fixture example needs the plugin's entry point
    result = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(args)} exited {result.returncode}:\n{output}"
    return output


def test_examples_are_all_covered() -> None:
    """A new example needs a smoke test here."""
    covered = {
        "torch_cartpole.py",
        "scoped_evaluation.py",
        "test_with_fixture.py",
        "why_not_predict.py",
        "on_device_inference.py",
        "jax_env_inference.py",
        "train_on_device.py",
    }
    present = {path.name for path in EXAMPLES.glob("*.py")}
    assert present <= covered, f"examples without a smoke test: {sorted(present - covered)}"


@pytest.mark.slow
def test_torch_cartpole() -> None:
    output = _run("examples/torch_cartpole.py", "--n-envs", "32", "--train-steps", "4096")
    assert "trained PPO for 4096 steps" in output
    assert "random policy:  mean episode return" in output
    assert "OK: trained policy is" in output, output


@pytest.mark.slow
def test_scoped_evaluation() -> None:
    output = _run("examples/scoped_evaluation.py", "--n-envs", "8", "--steps", "50", "--train-steps", "512")
    assert "with patched()" in output and "@patched" in output
    assert "patch enabled after: True" not in output
    assert "OK: scoped tensor evaluation matches SB3's NumPy path" in output, output


@pytest.mark.slow
def test_fixture_example_under_pytest() -> None:
    """The user's test file, run by pytest; the plugin comes in through its entry point."""
    output = _run("-m", "pytest", "examples/test_with_fixture.py", "-v", "-p", "no:cacheprovider")
    assert "test_actions_stay_tensors PASSED" in output
    assert "test_actions_within_bounds PASSED" in output
    assert "5 passed" in output, output


@pytest.mark.slow
def test_fixture_example_as_script() -> None:
    output = _run("examples/test_with_fixture.py", "-q", "-p", "no:cacheprovider")
    assert "5 passed" in output, output


@pytest.mark.slow
def test_why_not_predict() -> None:
    """The five cases of the docs page: the workaround fails each, the patched predict agrees."""
    output = _run("examples/why_not_predict.py", "--n", "400")
    assert "OK: the patched predict(tensor) agreed with predict(numpy) in all 6 runs" in output, output
    workaround = [line.strip() for line in output.splitlines() if line.strip().startswith("policy._predict(tensor):")]
    assert len(workaround) == 6, output
    assert workaround[0].split(":", 1)[1].strip().startswith("WRONG"), output  # 1. outside the bounds
    for line in workaround[1:3]:  # 2. SAC and TD3: left in [-1, 1], half the action on Pendulum
        assert "WRONG" in line and "median ratio to predict(numpy) 0.50" in line, output
    assert "IndexError" in workaround[3], output  # 3. a single observation
    assert "RuntimeError" in workaround[4] and "channels" in workaround[4], output  # 4. channel-last image
    assert "IndexError" in workaround[5], output  # 5. an unbatched Dict


@pytest.mark.slow
@pytest.mark.skipif(
    not (EXAMPLES / "on_device_inference.py").exists(), reason="examples/on_device_inference.py not there yet"
)
def test_on_device_inference() -> None:
    output = _run("examples/on_device_inference.py", "--steps", "20")
    assert "inference steps" in output, output


@pytest.mark.slow
def test_jax_env_inference() -> None:
    """A JAX env steps on its device and PPO predicts on JAX arrays (the DLPack entry)."""
    pytest.importorskip("jax", reason="jax is not installed: `pip install -e '.[jax]'` runs this example")
    output = _run("examples/jax_env_inference.py", "--steps", "20", "--n-envs", "16", "--timesteps", "512")
    assert "every action was bit-identical to predict(numpy.asarray(obs))" in output, output
    assert "mean return over the steps" in output, output


@pytest.mark.slow
def test_train_on_device() -> None:
    """PPO with the patch off and on, on the torch CartPole: both runs print their figures, and their
    parameters are bit-identical."""
    output = _run("examples/train_on_device.py", "--n-envs", "16", "--timesteps", "1024")
    for name in ("patch off", "patch on"):
        assert f"{name}: 1024 steps in" in output and "steps/s), final mean episode return" in output, output
    assert "OK: parameters bit-identical, same episodes, same num_timesteps with the patch off and on" in output, output
