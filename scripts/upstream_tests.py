#!/usr/bin/env python3
"""Run SB3's and sb3-contrib's own test files twice, plain and with sb3-tensorpatch enabled, and compare.

The claim being checked: with ``sb3_tensorpatch.enable()`` in force for a whole test run, the
upstream test suites of the *installed* stable-baselines3 / sb3-contrib pass exactly as they pass
without it (NumPy input goes to SB3's original code untouched).

What it does, per suite (``sb3``, ``contrib``):

1. Downloads the sdist of the installed version into ``WORKDIR/downloads`` (cached) with
   ``pip download --no-deps --no-binary :all:`` and unpacks it. If it ships no ``tests/``, older
   sdists of the same package are tried, newest first, and the version used is printed loudly.
2. Copies ``tests/`` and upstream's pytest configuration file into a fresh run folder, once for the
   plain run and once for the patched run, so that one run's leftovers cannot affect the other.
3. Runs the selected test files with the same interpreter twice, both with the
   ``sb3tp_upstream_plugin`` pytest plugin (``scripts/upstream/``): it leaves out the deselected
   tests and records the outcome of every test id. In the patched run it also enables the patch
   for the whole run, checks after every test that it is still on, and fails the session if it was
   ever found off. The two runs differ only in that.
4. Compares the outcome of every test id between the two runs.

Exit status: 0 when every test has the same outcome in both runs (and the patch stayed on; a test
that fails the same way in both runs is reported as an upstream/environment failure, not counted);
1 when any outcome differs, a test appears in only one run, or the patch was lost;
2 for a setup problem (missing package, download failure, pytest crashed or collected nothing).

Usage::

    python scripts/upstream_tests.py --list            # the selection and deselections, with reasons
    python scripts/upstream_tests.py                   # full selection (~15 min on 2 busy cores)
    python scripts/upstream_tests.py --budget          # CI subset (~6 min on 2 busy cores)
    python scripts/upstream_tests.py --self-check      # prove the harness catches injected faults (~15 s)
    python scripts/upstream_tests.py --python /path/to/venv/bin/python --suite sb3

Both runs get the same environment: ``PYTHONPATH=scripts/upstream:<repo root>`` (so the checkout's
``sb3_tensorpatch`` is the one tested), ``PYTHONHASHSEED=0``, ``OMP_NUM_THREADS=--threads`` (1 by
default: torch's default of one thread per core made these small-network tests ~5x slower on a
shared 2-core machine), and no ``PYTEST_ADDOPTS`` / ``PYTEST_PLUGINS``. Upstream's own pytest
configuration is used (``-c`` on its copy, which also keeps pytest from picking up this repository's
pyproject.toml), with ``-o addopts=`` so that a ``--cov`` added upstream cannot change the runs.
Test dependencies beyond SB3/sb3-contrib/pytest: ``tqdm`` and ``rich`` (``progress_bar=True`` in
sb3-contrib's ``test_invalid_actions.py::test_callback``); every module the selected files import
is checked before running.

Standard library only.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent
PLUGIN_DIR = Path(__file__).resolve().parent / "upstream"
PLUGIN_MODULE = "sb3tp_upstream_plugin"

# --------------------------------------------------------------------------------------------------
# The selection. Each file is there for a reason that matters to the patch; each deselection says
# why it is out. ``ci`` marks the files of the faster CI subset (``--budget ci``).
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UpstreamFile:
    name: str
    why: str
    ci: bool = True


@dataclass(frozen=True)
class Deselect:
    """Tests the plugin leaves out: those with an upstream ``marker``, or a test function ``name``."""

    kind: str  # "marker" or "name"
    value: str
    why: str
    ci_only: bool = False


@dataclass(frozen=True)
class Suite:
    key: str
    dist: str  # distribution name on PyPI
    module: str  # import name
    sdist_stem: str  # how the sdist's file name / top folder starts
    files: tuple[UpstreamFile, ...]
    deselect: tuple[Deselect, ...]
    # Modules the selected tests need at run time that an import scan of the files cannot see.
    runtime_modules: dict[str, tuple[str, str]] = field(default_factory=dict)


def _ci_only(test: str, why: str) -> Deselect:
    return Deselect("name", test, why, ci_only=True)


SUITES: dict[str, Suite] = {
    "sb3": Suite(
        key="sb3",
        dist="stable-baselines3",
        module="stable_baselines3",
        sdist_stem="stable_baselines3",
        files=(
            UpstreamFile(
                "test_predict.py", "predict(): single vs batched obs, devices, DQN epsilon-greedy, Gym-tuple error"
            ),
            UpstreamFile("test_dict_env.py", "Dict observation spaces (incl. images inside a Dict), predict on dicts"),
            UpstreamFile("test_spaces.py", "every observation/action space type, float64 actions, predict shapes"),
            UpstreamFile("test_train_eval_mode.py", "set_training_mode / BatchNorm+Dropout behaviour around predict"),
            UpstreamFile("test_cnn.py", "image obs: channel-last transpose, uint8, normalize_images, CnnPolicy"),
            UpstreamFile("test_custom_policy.py", "custom net_arch / features extractors / optimizers"),
            UpstreamFile("test_vec_normalize.py", "VecNormalize.normalize_obs/unnormalize_obs/... (patched targets)"),
            UpstreamFile(
                "test_identity.py", "learn then evaluate_policy on every action space (predict-driven)", ci=False
            ),
            UpstreamFile(
                "test_deterministic.py", "seeded training gives the same predictions (no extra RNG use)", ci=False
            ),
            UpstreamFile("test_sde.py", "gSDE: predict with state-dependent exploration", ci=False),
            UpstreamFile("test_save_load.py", "save/load then predict equality; pickling of patched classes", ci=False),
        ),
        deselect=(
            Deselect(
                "marker",
                "expensive",
                "upstream marks it expensive: test_save_load.py::test_save_load_large_model (a large net to disk)",
            ),
            # The CI subset (measured with --durations on the 2-core dev box): drop the slowest tests that
            # only train, keep every test that checks what predict() returns.
            _ci_only(
                "test_features_extractor_target_net",
                "CI: 34 s of off-policy CNN training; checks target nets, not predict",
            ),
            _ci_only("test_dict_vec_framestack", "CI: 25 s; VecFrameStack + Dict training (test_dict_spaces stays)"),
            _ci_only("test_multiprocessing", "CI: 22 s; SubprocVecEnv + Dict training"),
            _ci_only("test_identity_spaces", "CI: 24 s; learns to a reward threshold (test_action_spaces etc. stay)"),
            _ci_only("test_auto_wrap", "CI: 8 s; gym.Env auto-wrapping + learn(100), which the other files exercise"),
        ),
    ),
    "contrib": Suite(
        key="contrib",
        dist="sb3-contrib",
        module="sb3_contrib",
        sdist_stem="sb3_contrib",
        files=(
            UpstreamFile("test_lstm.py", "RecurrentPPO: predict with LSTM states and episode_start"),
            UpstreamFile("test_invalid_actions.py", "MaskablePPO: predict with action_masks, masked evaluation"),
            UpstreamFile("test_dict_env.py", "Dict observations for QRDQN/TQC/TRPO/ARS/MaskablePPO/RecurrentPPO"),
            UpstreamFile("test_cnn.py", "image observations for contrib algorithms"),
            UpstreamFile("test_train_eval_mode.py", "train/eval mode for contrib policies"),
            UpstreamFile("test_identity.py", "learn then evaluate on identity envs", ci=False),
            UpstreamFile(
                "test_deterministic.py", "seeded training gives the same predictions (contrib algos)", ci=False
            ),
            UpstreamFile("test_save_load.py", "save/load then predict equality for contrib algorithms", ci=False),
        ),
        deselect=(
            Deselect(
                "marker",
                "slow",
                "upstream marks it slow: test_lstm.py::test_ppo_lstm_performance (long training to a reward threshold)",
            ),
            _ci_only("test_dict_vec_framestack", "CI: 17 s; VecFrameStack + Dict training (test_dict_spaces stays)"),
            _ci_only("test_feature_extractor_target_net", "CI: 9 s; checks target nets, not predict"),
            _ci_only("test_supports_multi_envs", "CI: 11 s; SubprocVecEnv training (masked predict tests stay)"),
        ),
        runtime_modules={
            # test_invalid_actions.py::test_callback uses learn(..., progress_bar=True)
            "tqdm": ("tqdm", "learn(progress_bar=True) in test_invalid_actions.py::test_callback"),
            "rich": ("rich", "learn(progress_bar=True) in test_invalid_actions.py::test_callback"),
        },
    ),
}

# --self-check: a quick run of test_predict.py with faults injected into the patched run; the
# comparison must report the differences and the lost patch, or the harness proves nothing.
SELF_CHECK_FILES = ("test_predict.py",)
SELF_CHECK_DESELECT = (
    Deselect("name", "test_auto_wrap", "self-check: keep it quick"),
    Deselect("name", "test_subclassed_space_env", "self-check: keep it quick"),
)
SELF_CHECK_FAULTS = "numpy,disable"

# Import name -> PyPI name, for the "missing package" message.
PIP_NAMES = {
    "cv2": "opencv-python",
    "ale_py": "ale-py",
    "gymnasium": "gymnasium",
    "pytest": "pytest",
    "yaml": "pyyaml",
    "stable_baselines3": "stable-baselines3",
    "sb3_contrib": "sb3-contrib",
    "sb3_tensorpatch": "sb3-tensorpatch (pip install -e . from the repository)",
    "PIL": "pillow",
    "wrapt": "wrapt",
    "packaging": "packaging",
}


def selected_files(suite: Suite, budget: str) -> list[UpstreamFile]:
    return [f for f in suite.files if budget == "full" or f.ci]


def selected_deselects(suite: Suite, budget: str) -> list[Deselect]:
    return [d for d in suite.deselect if budget == "ci" or not d.ci_only]


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------


class SetupError(Exception):
    """A problem that stops the comparison before it means anything (exit status 2)."""


def log(msg: str = "") -> None:
    print(msg, flush=True)


def fmt_s(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{seconds:.1f}s"


PROBE = r"""
import importlib.util, json, sys
from importlib import metadata
out = {"python": sys.version.split()[0], "executable": sys.executable, "versions": {}, "modules": {}}
for dist in ("stable-baselines3", "sb3-contrib", "pytest", "torch", "gymnasium", "numpy", "sb3-tensorpatch", "pytest-xdist"):
    try:
        out["versions"][dist] = metadata.version(dist)
    except Exception:
        out["versions"][dist] = None
for mod in sys.argv[1:]:
    try:
        out["modules"][mod] = importlib.util.find_spec(mod) is not None
    except Exception:
        out["modules"][mod] = False
print(json.dumps(out))
"""


def probe_interpreter(python: str, modules: Sequence[str], env: dict[str, str]) -> dict[str, Any]:
    try:
        proc = subprocess.run([python, "-c", PROBE, *modules], capture_output=True, text=True, env=env, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SetupError(f"cannot run the interpreter {python!r}: {exc}") from exc
    if proc.returncode != 0:
        raise SetupError(f"cannot probe the interpreter {python!r}:\n{proc.stderr.strip()}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def module_imports(path: Path) -> list[str]:
    """Top-level module names imported at module level by a test file (function-level imports and
    ``pytest.importorskip`` are left out: those are upstream's optional dependencies)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return sorted(names)


# --------------------------------------------------------------------------------------------------
# Fetching upstream's tests
# --------------------------------------------------------------------------------------------------


def pip_cmd(python: str) -> list[str]:
    """``pip`` of the target interpreter when it has one, else of the interpreter running this script."""
    for candidate in (python, sys.executable):
        try:
            ok = subprocess.run([candidate, "-m", "pip", "--version"], capture_output=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if ok.returncode == 0:
            return [candidate, "-m", "pip"]
    raise SetupError("no pip found (neither in --python nor in the interpreter running this script)")


def unpacked_sdist(pip: list[str], workdir: Path, suite: Suite, version: str) -> Path:
    """Download (cached) and unpack the sdist of ``suite.dist==version``; return its top folder."""
    top = workdir / "src" / f"{suite.sdist_stem}-{version}"
    if top.is_dir():
        return top
    downloads = workdir / "downloads"
    archives = [downloads / f"{suite.sdist_stem}-{version}{ext}" for ext in (".tar.gz", ".zip")]
    if not any(path.exists() for path in archives):
        downloads.mkdir(parents=True, exist_ok=True)
        cmd = [*pip, "download", "--no-deps", "--no-binary", ":all:", f"{suite.dist}=={version}", "-d", str(downloads)]
        log(f"  [{suite.key}] $ {' '.join(cmd)}")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SetupError(
                f"pip download of {suite.dist}=={version} failed (exit {proc.returncode}):\n"
                + "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
                + f"\n(offline? put {suite.sdist_stem}-{version}.tar.gz from PyPI into {downloads})"
            )
    archive = next((path for path in archives if path.exists()), None)
    if archive is None:
        raise SetupError(f"no {suite.sdist_stem}-{version} sdist in {downloads} after pip download")
    # tarfile's "data" filter refuses links and paths that leave the folder (Python 3.8.17+, 3.11.4+)
    safe = {"filter": "data"} if hasattr(tarfile, "data_filter") and archive.suffix != ".zip" else {}
    shutil.unpack_archive(archive, workdir / "src", **safe)  # type: ignore[arg-type]
    if not top.is_dir():
        raise SetupError(f"{archive.name} does not unpack into {top.name}/")
    return top


def older_versions(pip: list[str], suite: Suite, version: str) -> list[str]:
    """Released versions older than ``version``, newest first (via ``pip index versions``)."""
    proc = subprocess.run([*pip, "index", "versions", suite.dist], capture_output=True, text=True)
    line = next((ln for ln in proc.stdout.splitlines() if ln.strip().startswith("Available versions:")), "")
    versions = [v.strip() for v in line.split(":", 1)[-1].split(",") if v.strip()]

    def key(v: str) -> tuple[int, ...]:
        return tuple(int(p) for p in v.split("."))

    final = [v for v in versions if re.fullmatch(r"\d+(\.\d+)*", v)]  # no pre-releases
    return sorted((v for v in final if key(v) < key(version)), key=key, reverse=True)


def fetch_tests(pip: list[str], workdir: Path, suite: Suite, version: str, max_fallbacks: int = 6) -> tuple[Path, str]:
    """Return (the unpacked source folder holding ``tests/``, the version it comes from)."""
    src = unpacked_sdist(pip, workdir, suite, version)
    if any((src / "tests").glob("test_*.py")):
        return src, version
    log(f"  [{suite.key}] !! the sdist of {suite.dist}=={version} ships no tests/ folder")
    for candidate in older_versions(pip, suite, version)[:max_fallbacks]:
        try:
            src = unpacked_sdist(pip, workdir, suite, candidate)
        except SetupError as exc:
            log(f"  [{suite.key}]    {candidate}: {exc.args[0].splitlines()[0]}")
            continue
        if any((src / "tests").glob("test_*.py")):
            log(
                f"  [{suite.key}] !! USING THE TESTS OF {suite.dist}=={candidate} (installed: {version}); "
                "failures in both runs may be version drift, differences still count"
            )
            return src, candidate
    raise SetupError(f"no sdist of {suite.dist} <= {version} on PyPI ships tests/ (tried {max_fallbacks})")


def pytest_config_file(src: Path) -> str | None:
    """Upstream's file holding its pytest configuration, if any (pyproject.toml, setup.cfg, ...)."""
    for name, marker in (
        ("pytest.ini", "[pytest]"),
        ("pyproject.toml", "[tool.pytest.ini_options]"),
        ("tox.ini", "[pytest]"),
        ("setup.cfg", "[tool:pytest]"),
    ):
        path = src / name
        if path.is_file() and marker in path.read_text(encoding="utf-8", errors="replace"):
            return name
    return None


# --------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------


@dataclass
class RunResult:
    suite: str
    mode: str
    returncode: int
    wall_s: float
    outcomes: dict[str, str]  # test id -> passed, failed, error, skipped, xfailed, xpassed ("+"-joined)
    details: dict[str, str]  # test id -> short reason, for everything but a pass
    log_path: Path
    plugin_report: dict[str, Any]


def prepare_run_dir(src: Path, run_dir: Path, config: str | None) -> str:
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    shutil.copytree(src / "tests", run_dir / "tests")
    if config is not None:
        shutil.copy2(src / config, run_dir / config)
        return config
    # No upstream config: an empty one stops pytest from walking up to this repository's pyproject.toml.
    (run_dir / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    return "pytest.ini"


def run_env(plugin_config: Path | None, threads: int = 0) -> dict[str, str]:
    """The environment of both runs; they differ only in the plugin's configuration file."""
    env = dict(os.environ)
    for var in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS", "SB3TP_UPSTREAM"):
        env.pop(var, None)
    paths = [str(PLUGIN_DIR), str(REPO_ROOT)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONHASHSEED"] = "0"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if threads > 0:
        # torch's intra-op threads: with the default (one per core) small RL nets spin on OpenMP
        # barriers as soon as the machine is shared; 1 thread was ~5x faster on a loaded 2-core box.
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(threads)
    if plugin_config is not None:
        env["SB3TP_UPSTREAM"] = str(plugin_config)
    return env


def run_suite_mode(
    python: str,
    suite: Suite,
    src: Path,
    config: str | None,
    targets: Sequence[str],
    deselects: Sequence[Deselect],
    base: Path,
    mode: str,
    jobs: int,
    timeout: float,
    threads: int,
    fault: str = "",
) -> RunResult:
    run_dir = base / mode
    cfg = prepare_run_dir(src, run_dir, config)
    log_path = base / f"{mode}.log"
    report = base / f"{mode}.outcomes.json"
    for path in (report, *base.glob(report.name + ".*")):
        path.unlink(missing_ok=True)
    plugin_config = base / f"{mode}.plugin-config.json"
    plugin_config.write_text(
        json.dumps(
            {
                "patch": mode == "patched",
                "fault": fault.split(",") if mode == "patched" and fault else [],
                "deselect": {
                    kind: [d.value for d in deselects if d.kind == kind[:-1]] for kind in ("markers", "names")
                },
                "report": str(report),
            }
        ),
        encoding="utf-8",
    )
    # upstream's config has no addopts today; an added `--cov` etc. must not change the runs
    cmd = [python, "-m", "pytest", "-c", cfg, "--rootdir", ".", "-p", "no:cacheprovider", "-o", "addopts="]
    cmd += ["-p", PLUGIN_MODULE, "-q", "-rfE", "--color=no", "--durations=15"]
    cmd += ["-n", str(jobs)] if jobs > 1 else []
    cmd += targets
    env = run_env(plugin_config, threads)
    what = f"{len(targets)} files" if all(t.endswith(".py") for t in targets) else f"{len(targets)} test ids"
    log(f"  [{suite.key}/{mode}] running {what} in {run_dir} (log: {log_path})")
    t0 = time.monotonic()
    with open(log_path, "w", encoding="utf-8") as out:
        out.write("$ " + " ".join(cmd) + f"\n# cwd={run_dir}\n# SB3TP_UPSTREAM={plugin_config}\n\n")
        out.flush()
        proc = subprocess.Popen(cmd, cwd=run_dir, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise SetupError(f"{suite.key}/{mode}: pytest ran past --timeout {timeout:.0f}s; see {log_path}") from None
    wall = time.monotonic() - t0
    tail = "\n".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-25:])
    if rc not in (0, 1) or not report.exists():
        raise SetupError(
            f"{suite.key}/{mode}: pytest exited {rc} (2 interrupted/collection error, 3 internal error, "
            f"4 usage error, 5 no tests collected); last lines of {log_path}:\n{tail}"
        )
    plugin_report = json.loads(report.read_text(encoding="utf-8"))
    # pytest-xdist: the tests ran in the workers, each of which checked the patch on its own.
    for worker_report in sorted(report.parent.glob(report.name + ".*")):
        part = json.loads(worker_report.read_text(encoding="utf-8"))
        if mode == "patched":
            plugin_report["enabled_at_finish"] = plugin_report["enabled_at_finish"] and part["enabled_at_finish"]
        plugin_report["lost_after"] += part["lost_after"]
        if part.get("error"):
            plugin_report["error"] = "; ".join(
                e for e in (plugin_report["error"], f"[{part['worker']}] {part['error']}") if e
            )
    outcomes = plugin_report["outcomes"]
    log(f"  [{suite.key}/{mode}] exit {rc} in {fmt_s(wall)}: {fmt_counts(count(outcomes))}")
    return RunResult(suite.key, mode, rc, wall, outcomes, plugin_report["details"], log_path, plugin_report)


def count(outcomes: dict[str, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for o in outcomes.values():
        out[o] = out.get(o, 0) + 1
    return out


def fmt_counts(counts: dict[str, int]) -> str:
    order = ["passed", "failed", "error", "skipped", "xfailed"]
    keys = [k for k in order if k in counts] + sorted(k for k in counts if k not in order)
    return ", ".join(f"{counts[k]} {k}" for k in keys) + f" ({sum(counts.values())} total)"


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def describe(deselect: Deselect) -> str:
    return f"upstream marker {deselect.value!r}" if deselect.kind == "marker" else f"tests named {deselect.value}"


def print_selection(budget: str, suites: Sequence[Suite]) -> None:
    log(f"Selection for --budget {budget}:")
    for suite in suites:
        log(f"\n[{suite.key}] {suite.dist} (its own tests/, from its sdist on PyPI)")
        chosen = selected_files(suite, budget)
        for f in chosen:
            log(f"  tests/{f.name:<26} {f.why}")
        for f in suite.files:
            if f not in chosen:
                log(f"  tests/{f.name:<26} (full budget only) {f.why}")
        dsel = selected_deselects(suite, budget)
        if dsel:
            log("  deselected by the plugin:")
            for d in dsel:
                log(f"    {describe(d)}: {d.why}")
        if suite.runtime_modules:
            log("  needs at run time: " + ", ".join(sorted({v[0] for v in suite.runtime_modules.values()})))
    log(
        "\nBoth runs: <python> -m pytest -c <upstream pytest config> --rootdir . -p no:cacheprovider -o addopts= "
        f"-p {PLUGIN_MODULE}, from a fresh copy of tests/ (cwd), PYTHONPATH=scripts/upstream:<repo>, "
        "PYTHONHASHSEED=0, OMP_NUM_THREADS=--threads.\nOnly the patched run enables the patch."
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run SB3's / sb3-contrib's own tests plain and with sb3-tensorpatch enabled; compare outcomes.",
    )
    parser.add_argument("--python", default=sys.executable, help="interpreter with SB3 installed (default: this one)")
    parser.add_argument(
        "--workdir",
        default=str(REPO_ROOT / ".upstream"),
        help="download cache and run folder (default: .upstream/ in the repository root)",
    )
    parser.add_argument(
        "--budget",
        nargs="?",
        const="ci",
        default="full",
        choices=["full", "ci"],
        help="'ci' (or the bare flag): the faster CI subset; 'full' (default): the whole selection",
    )
    parser.add_argument("--suite", choices=["all", "sb3", "contrib"], default="all", help="which upstream suite(s)")
    parser.add_argument("--list", action="store_true", help="print the chosen files and deselections, and exit")
    parser.add_argument(
        "--self-check",
        action="store_true",
        help="check the harness itself: inject faults into a quick patched run; passes when they are caught",
    )
    parser.add_argument("--jobs", type=int, default=1, help="pytest-xdist workers per run (default 1: no xdist)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="OMP_NUM_THREADS/MKL_NUM_THREADS for both runs (default 1; 0 leaves the environment as it is)",
    )
    parser.add_argument(
        "--recheck",
        type=int,
        default=2,
        help="re-run differing test ids this many times per mode to spot flaky upstream tests (default 2)",
    )
    parser.add_argument(
        "--allow-flaky",
        action="store_true",
        help="exit 0 when every difference was seen in both modes on recheck (default: any difference fails)",
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed for one pytest run")
    args = parser.parse_args(argv)

    suites = [SUITES[k] for k in (("sb3", "contrib") if args.suite == "all" else (args.suite,))]
    if args.self_check:
        suites = [SUITES["sb3"]]
    if args.list:
        print_selection(args.budget, suites)
        return 0

    workdir = Path(args.workdir)
    if not workdir.is_absolute():
        workdir = Path.cwd() / workdir
    try:
        return run(args, suites, workdir.resolve())
    except SetupError as exc:
        log(f"\nERROR: {exc}")
        return 2
    except KeyboardInterrupt:
        log("\ninterrupted")
        return 2


def check_interpreter(python: str, suites: Sequence[Suite], env: dict[str, str], jobs: int) -> dict[str, Any]:
    base_modules = ["pytest", "sb3_tensorpatch", "wrapt", "packaging", *(s.module for s in suites)]
    info = probe_interpreter(python, base_modules, env)
    log(f"interpreter: {info['executable']} (Python {info['python']})")
    log("  " + ", ".join(f"{k} {v or 'MISSING'}" for k, v in info["versions"].items()))
    missing = [m for m in base_modules if not info["modules"].get(m)]
    if missing:
        hint = "\n  (use --suite sb3 to leave sb3-contrib's tests out)" if missing == ["sb3_contrib"] else ""
        raise SetupError(
            f"missing in {python}:\n"
            + "\n".join(f"  {m:<18} pip install {PIP_NAMES.get(m, m)}" for m in missing)
            + hint
        )
    if jobs > 1 and not info["versions"].get("pytest-xdist"):
        raise SetupError(f"--jobs {jobs} needs pytest-xdist in {python} (pip install pytest-xdist)")
    return info


def check_test_dependencies(python: str, prepared: Sequence[Prepared], env: dict[str, str]) -> None:
    """What the selected files import at module level, and what they need at run time, must be importable."""
    wanted: dict[str, list[str]] = {}
    for p in prepared:
        for f in p.files:
            for mod in module_imports(p.src / "tests" / f):
                if mod not in sys.builtin_module_names and not (p.src / "tests" / f"{mod}.py").exists():
                    wanted.setdefault(mod, []).append(f"{p.suite.key}: imported by tests/{f}")
        for mod, (_pip_name, why) in p.suite.runtime_modules.items():
            wanted.setdefault(mod, []).append(f"{p.suite.key}: {why}")
    found = probe_interpreter(python, sorted(wanted), env)["modules"]
    problems = []
    for mod, whys in sorted(wanted.items()):
        if not found.get(mod):
            pip_name = next(
                (p.suite.runtime_modules[mod][0] for p in prepared if mod in p.suite.runtime_modules),
                PIP_NAMES.get(mod, mod),
            )
            problems.append(f"  {mod:<12} pip install {pip_name:<16} ({whys[0]})")
    if problems:
        raise SetupError(
            f"the selected upstream tests need packages that are missing in {python}:\n" + "\n".join(problems)
        )


@dataclass
class Prepared:
    suite: Suite
    src: Path
    version: str
    files: list[str]
    deselects: list[Deselect]
    installed: str


def run(args: argparse.Namespace, suites: list[Suite], workdir: Path) -> int:
    t_start = time.monotonic()
    python = args.python
    env = run_env(None)
    info = check_interpreter(python, suites, env, args.jobs)
    pip = pip_cmd(python)

    prepared: list[Prepared] = []
    for suite in suites:
        src, used = fetch_tests(pip, workdir, suite, info["versions"][suite.dist])
        if args.self_check:
            wanted, deselects = list(SELF_CHECK_FILES), list(SELF_CHECK_DESELECT)
        else:
            wanted = [f.name for f in selected_files(suite, args.budget)]
            deselects = selected_deselects(suite, args.budget)
        available = {p.name for p in (src / "tests").glob("test_*.py")}
        files = [f for f in wanted if f in available]
        absent = [f for f in wanted if f not in available]
        if absent:
            log(f"  [{suite.key}] not in {suite.dist} {used}'s tests/ (left out): {', '.join(absent)}")
        if not files:
            raise SetupError(f"none of the selected test files exist in {suite.dist} {used}'s tests/")
        prepared.append(Prepared(suite, src, used, files, deselects, info["versions"][suite.dist]))
    check_test_dependencies(python, prepared, env)

    label = "self-check" if args.self_check else args.budget
    fault = SELF_CHECK_FAULTS if args.self_check else ""
    results: list[tuple[Prepared, RunResult, RunResult, Rechecks]] = []
    for p in prepared:
        config = pytest_config_file(p.src)
        base = workdir / "runs" / f"{p.suite.key}-{p.version}-{label}"
        log(f"\n== {p.suite.dist} {p.version}: {len(p.files)} test files, {label}, pytest config: {config}")
        runs = []
        for mode in ("plain", "patched"):
            runs.append(
                run_suite_mode(
                    python,
                    p.suite,
                    p.src,
                    config,
                    [f"tests/{f}" for f in p.files],
                    p.deselects,
                    base,
                    mode,
                    args.jobs,
                    args.timeout,
                    args.threads,
                    fault,
                )
            )
        rechecks = recheck_differences(args, python, p, config, base, runs[0], runs[1], fault)
        results.append((p, runs[0], runs[1], rechecks))

    code, n_diffs, n_confirmed, lost = report(results, time.monotonic() - t_start, args.allow_flaky)
    if not args.self_check:
        return code
    log("\nSELF-CHECK (faults injected into the patched run: " + SELF_CHECK_FAULTS + ")")
    log(f"  outcome differences caught: {n_diffs} (expected > 0)")
    log(f"  reproduced on recheck     : {n_confirmed} (expected > 0, or --recheck 0)")
    log(f"  lost patch caught         : {lost} (expected True)")
    if n_diffs > 0 and (n_confirmed > 0 or args.recheck <= 0) and lost:
        log("SELF-CHECK PASSED: the comparison catches a changed NumPy path and a disabled patch")
        return 0
    log("SELF-CHECK FAILED: the harness let an injected fault through")
    return 1


def differing_ids(plain: RunResult, patched: RunResult) -> list[tuple[str, str, str]]:
    ids = sorted(set(plain.outcomes) | set(patched.outcomes))
    diffs = [(i, plain.outcomes.get(i, "absent"), patched.outcomes.get(i, "absent")) for i in ids]
    return [d for d in diffs if d[1] != d[2]]


Rechecks = Dict[str, Dict[str, List[str]]]  # test id -> mode -> outcomes (first run, then rechecks)


def recheck_differences(
    args: argparse.Namespace,
    python: str,
    p: Prepared,
    config: str | None,
    base: Path,
    plain: RunResult,
    patched: RunResult,
    fault: str = "",
) -> Rechecks:
    """Re-run only the differing test ids, ``--recheck`` times per mode, to tell a reproducible
    difference (a package bug) from an upstream test whose outcome is random (a flaky test)."""
    ids = [i for i, _a, _b in differing_ids(plain, patched)]
    out: Rechecks = {
        i: {"plain": [plain.outcomes.get(i, "absent")], "patched": [patched.outcomes.get(i, "absent")]} for i in ids
    }
    if not ids or args.recheck <= 0:
        return out
    log(f"  [{p.suite.key}] {len(ids)} differing test id(s): re-running them {args.recheck}x per mode")
    for k in range(args.recheck):
        for mode in ("plain", "patched"):
            try:
                res = run_suite_mode(
                    python,
                    p.suite,
                    p.src,
                    config,
                    ids,
                    p.deselects,
                    base / f"recheck-{k + 1}",
                    mode,
                    1,
                    args.timeout,
                    args.threads,
                    fault,
                )
            except SetupError as exc:
                log(f"  [{p.suite.key}] recheck {k + 1}/{mode} did not run: {exc.args[0].splitlines()[0]}")
                continue
            for i in ids:
                out[i][mode].append(res.outcomes.get(i, "absent"))
    return out


def report(
    results: list[tuple[Prepared, RunResult, RunResult, Rechecks]], total_s: float, allow_flaky: bool = False
) -> tuple[int, int, int, bool]:
    """Print the summary; return (exit code, differing test ids, of them reproduced on recheck, patch lost)."""
    n_diffs, lost = 0, False
    log("\n" + "=" * 100 + "\nSUMMARY\n" + "=" * 100)
    n_confirmed = 0
    for p, plain, patched, rechecks in results:
        drift = f" (TESTS OF {p.version}; INSTALLED {p.installed})" if p.version != p.installed else ""
        log(f"\n[{p.suite.key}] {p.suite.dist} {p.installed}{drift}: {', '.join(p.files)}")
        if p.deselects:
            log(f"  deselected ({plain.plugin_report['deselected']} tests): " + ", ".join(map(describe, p.deselects)))
        log(f"  plain   : {fmt_s(plain.wall_s):>7}  {fmt_counts(count(plain.outcomes))}")
        log(f"  patched : {fmt_s(patched.wall_s):>7}  {fmt_counts(count(patched.outcomes))}")
        rep = patched.plugin_report
        log(
            f"  patch   : {len(rep.get('patched_targets', []))} targets patched from pytest_configure on, "
            f"still enabled at session finish: {rep.get('enabled_at_finish')}"
        )
        if rep.get("error"):
            lost = True
            log(f"  !! PATCH LOST DURING THE RUN: {rep['error']}")
        ids = sorted(set(plain.outcomes) | set(patched.outcomes))
        diffs = differing_ids(plain, patched)
        n_diffs += len(diffs)
        if diffs:
            log(f"  !! {len(diffs)} of {len(ids)} test ids have a different outcome (plain -> patched):")
            for test_id, a, b in diffs:
                seen = rechecks.get(test_id) or {"plain": [a], "patched": [b]}
                flaky = len(seen["plain"]) > 1 and bool(set(seen["plain"]) & set(seen["patched"]))
                n_confirmed += not flaky
                log(f"    {test_id}: {a} -> {b}")
                if len(seen["plain"]) > 1:
                    verdict = (
                        "NOT REPRODUCIBLE: the same outcome occurs in both modes (a flaky upstream test, "
                        "or random state that differs with test order)"
                        if flaky
                        else "REPRODUCIBLE: a difference caused by the patch"
                    )
                    log(f"      recheck: plain {seen['plain']}, patched {seen['patched']}: {verdict}")
                for mode, res in (("plain", plain), ("patched", patched)):
                    if test_id in res.details:
                        log(f"      [{mode}] " + res.details[test_id].replace("\n", "\n      "))
        else:
            log(f"  outcomes: identical for all {len(ids)} test ids")
        baseline = sorted(i for i, o in plain.outcomes.items() if "failed" in o or "error" in o)
        same = [i for i in baseline if patched.outcomes.get(i) == plain.outcomes[i]]
        if same:
            log(f"  note: {len(same)} test(s) fail the same way in both runs (upstream/environment, not the patch):")
            for test_id in same:
                first = plain.details.get(test_id, "").splitlines()[:1]
                log(f"    {test_id}: {first[0] if first else plain.outcomes[test_id]}")
        log(f"  logs and outcomes: {plain.log_path.parent}")
    log(f"\ntotal time: {fmt_s(total_s)}")
    if lost or n_confirmed or (n_diffs and not allow_flaky):
        log("RESULT: DIFFERENT: the patched run does not match the plain run (see above)")
        return 1, n_diffs, n_confirmed, lost
    if n_diffs:
        log(f"RESULT: SAME but for {n_diffs} flaky upstream test(s) (--allow-flaky): see above")
        return 0, n_diffs, n_confirmed, lost
    log("RESULT: SAME: every selected upstream test has the same outcome with sb3-tensorpatch enabled")
    return 0, n_diffs, n_confirmed, lost


if __name__ == "__main__":
    sys.exit(main())
