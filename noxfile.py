"""The version matrix: the parity tests on every release of ``sb3_tensorpatch.table.RELEASES``.

One session per SB3 release, with its sb3-contrib and the test environment it needs::

    nox -l                                   # the sessions, one per release
    nox -s "matrix(2.9.2)"                   # one release
    nox -t matrix-0                          # half of the releases (matrix-1: the other half)
    nox -- tests/test_parity.py -x           # other test files or pytest options

Session arguments replace the default test files. A release the package must refuse (1.7.0) runs
only ``tests/test_versions.py``, which checks that it is refused with nothing patched. A release
that fails to install, fails a test or collects no tests (pytest exit 5) fails its session.

Every session shares one CPU torch: it is installed once with ``pip install --target`` next to the
session venvs and reached through a ``.pth`` file, so pip sees it as installed and never pulls
another build, and the matrix does not cost a torch install (about 1 GB) per release. numpy stays
in each venv (1.x for old releases, 2.x for new ones).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nox

REPO = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO))
from sb3_tensorpatch.table import RELEASES, Release  # noqa: E402  (import-light: no torch, no SB3)

# On the project machines torch 2.13.0 is a CPU wheel for Python 3.11 that lies on disk; an
# unpinned torch, or another Python, would download a multi-GB CUDA build.
TORCH = "torch==2.13.0"
TORCH_PYTHON = (3, 11)
TEST_DEPS = ("pytest", "hypothesis", "wrapt", "packaging", "cloudpickle")
TEST_FILES = (
    "tests/test_parity.py",
    "tests/test_contrib.py",
    "tests/test_vecnormalize.py",
    "tests/test_host_sync.py",
    "tests/test_route.py",
    "tests/test_versions.py",
    # the collect_rollouts rows differ by release, and TensorVecEnv by gymnasium release
    "tests/test_rollouts.py",
    "tests/test_vec_env.py",
)
REFUSAL_TESTS = ("tests/test_versions.py",)

# Run in each venv after the install: torch must come from the shared folder, SB3 and sb3-contrib
# must be the requested releases.
CHECK = """
import sys, torch
from importlib.metadata import version
torch_dir, sb3, contrib = sys.argv[1:]
found = (torch.__file__, version("stable-baselines3"), version("sb3-contrib"))
print("torch from", found[0], "| stable-baselines3", found[1], "| sb3-contrib", found[2])
sys.exit(0 if found[0].startswith(torch_dir) and found[1:] == (sb3, contrib) else 3)
"""

nox.options.sessions = ["matrix"]

#: ``.ci/run`` sets it to the versions its README test run had (``name==version`` pairs, space-separated):
#: a release whose SB3, sb3-contrib and pins are all among them was tested there with every test file.
COVERED = "SB3_TENSORPATCH_COVERED"


def _covered(release: Release) -> bool:
    """Whether the README test run of ``.ci/run`` covered ``release`` already (the same versions)."""
    covered = set(os.environ.get(COVERED, "").split())
    wanted = {f"stable-baselines3=={release.sb3}", f"sb3-contrib=={release.contrib}", *release.pins}
    return bool(covered) and release.supported and not release.pre and wanted <= covered


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path``: two nox processes may run halves of the matrix at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _shared_torch(session: nox.Session, shared: Path) -> tuple[Path, Path]:
    """Install torch once into ``shared`` (no-op when it is there); return its folder and a
    constraints file that pins it, so that pip never swaps it for another build."""
    target = shared / f"{TORCH.replace('==', '-')}-py{TORCH_PYTHON[0]}{TORCH_PYTHON[1]}"
    constraints = target / "constraints.txt"
    with _locked(shared / "torch.lock"):
        if not (target / "complete").exists():
            shutil.rmtree(target, ignore_errors=True)
            session.run("python", "-m", "pip", "install", "--no-input", "--target", str(target), TORCH)
            if (target / "numpy").exists():
                session.error(f"numpy ended up in {target}; it must stay in each venv (1.x for old SB3)")
            constraints.write_text(TORCH + "\n")
            (target / "complete").touch()
    return target, constraints


def _site_packages(session: nox.Session) -> Path:
    return Path(session.bin).parent / "lib" / f"python{TORCH_PYTHON[0]}.{TORCH_PYTHON[1]}" / "site-packages"


# The venv module's own pip, as the gym 0.21 steps expect; the venvs use the Python that runs nox.
@nox.session(venv_backend="venv")
@nox.parametrize(
    "release",
    [nox.param(release, id=release.sb3, tags=[f"matrix-{i % 2}"]) for i, release in enumerate(RELEASES)],
)
def matrix(session: nox.Session, release: Release) -> None:
    """Install one SB3 release with its sb3-contrib and pins, then run the parity tests there."""
    if not session.posargs and _covered(release):
        session.skip(f"the README test run covered these versions ({COVERED}): every test file, not only the matrix's")
    if sys.version_info[:2] != TORCH_PYTHON:
        session.error(f"run nox with Python {TORCH_PYTHON[0]}.{TORCH_PYTHON[1]}: the shared {TORCH} is built for it")
    # an outer PYTHONPATH could put another checkout's sb3_tensorpatch first
    session.env.update(PYTHONPATH=None, PYTHONNOUSERSITE="1")
    shared = Path(session.virtualenv.location).parent / "_shared"
    torch_dir, constraints = _shared_torch(session, shared)
    (_site_packages(session) / "_shared_torch.pth").write_text(f"{torch_dir}\n")
    # --no-compile: bytecode is written on first import instead, which saves about a quarter of the install
    pip_options = ("--no-input", "--no-compile", "-c", str(constraints))
    for step in release.pre:
        session.install(*pip_options, *step)
    session.install(
        *pip_options,
        f"stable-baselines3=={release.sb3}",
        f"sb3-contrib=={release.contrib}",
        *release.pins,
        *TEST_DEPS,
    )
    with _locked(shared / "project.lock"):  # an editable build writes sb3_tensorpatch.egg-info into the repo
        session.install(*pip_options, "--no-deps", "-e", str(REPO))
    if any(_site_packages(session).glob("torch-*.dist-info")):
        session.error("torch was installed into the venv instead of being shared")
    session.run("python", "-c", CHECK, str(torch_dir), release.sb3, release.contrib)
    files = REFUSAL_TESTS if not release.supported else (session.posargs or TEST_FILES)
    session.run("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", *files)
