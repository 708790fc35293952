#!/usr/bin/env python3
"""Run the test suite against several Stable-Baselines3 releases.

One virtual environment per SB3 release (with its matching sb3-contrib) is
created under the work directory (default ``.matrix/`` in the repo root) and
reused on later runs.  All environments share a single torch install: torch is
installed once with ``pip install --target`` into ``<workdir>/torch-<ver>/``
and every venv gets a ``.pth`` file pointing there, so ``import torch`` works
and pip sees torch (and its own deps) as already installed.  That directory
holds only torch and its dependencies (no numpy), so each venv can pick its own
numpy.  Each venv installs with its own pip (the one bundled with the Python),
whatever pip runs this script.

Usage::

    python scripts/matrix.py                       # all releases, default pytest args
    python scripts/matrix.py --releases 1.8.0,2.9  # a prefix picks the row (2.9 -> 2.9.2)
    python scripts/matrix.py --jobs 2 -- tests/test_x.py -q
    python scripts/matrix.py --list                # print the release table

Relative ``--workdir`` paths are taken from the repo root.  Pytest runs in the
repo root with the venv's python: ``python -m pytest <args>`` (default args
``tests -q -x -p no:cacheprovider``).  Exit status 1 if any release failed to
install or its tests did not pass (pytest exit 5, "no tests ran", is a
failure).

Standard library only.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import NamedTuple, Sequence


class Release(NamedTuple):
    sb3: str  # stable-baselines3 version
    contrib: str  # matching sb3-contrib version
    pins: tuple[str, ...] = ()  # extra requirements installed with SB3
    # pip-install argument lists run, in order, before the main install
    pre: tuple[tuple[str, ...], ...] = ()
    # test files run for this release instead of the command line's (None: the command line's)
    tests: tuple[str, ...] | None = None


# One row per release; adding a release is a one-row change.
_NP1 = "numpy==1.26.4"  # SB3 <= 2.4, gym 0.21 and gymnasium < 1.0 need numpy 1.x
_NP2 = "numpy==2.4.6"
# gym 0.21's setup.py only builds with old setuptools/wheel, and without
# build isolation so that those old versions are the ones used; pip >= 24.1
# rejects its metadata ("opencv-python (>=3.)").
_GYM021 = (("pip<24.1", "setuptools==65.5.0", "wheel==0.38.4"),
           ("--no-build-isolation", "gym==0.21.0", _NP1))
RELEASES: tuple[Release, ...] = (
    # unsupported: the package must refuse it, with nothing patched (tests/test_versions.py)
    Release("1.7.0", "1.7.0", ("gym==0.21.0", _NP1), pre=_GYM021,
            tests=("tests/test_versions.py", "-q", "-p", "no:cacheprovider")),
    Release("1.8.0", "1.8.0", ("gym==0.21.0", _NP1), pre=_GYM021),
    Release("2.0.0", "2.0.0", ("gymnasium==0.28.1", _NP1)),
    Release("2.1.0", "2.1.0", ("gymnasium==0.29.1", _NP1)),
    Release("2.2.1", "2.2.1", ("gymnasium==0.29.1", _NP1)),
    Release("2.3.2", "2.3.0", ("gymnasium==0.29.1", _NP1)),
    Release("2.4.1", "2.4.0", ("gymnasium==1.0.0", _NP1)),
    Release("2.5.0", "2.5.0", ("gymnasium==1.0.0", _NP2)),
    Release("2.6.0", "2.6.0", ("gymnasium==1.1.1", _NP2)),
    Release("2.7.1", "2.7.1", ("gymnasium==1.2.3", _NP2)),
    Release("2.8.0", "2.8.0", ("gymnasium==1.2.3", _NP2)),
    Release("2.9.2", "2.9.2", ("gymnasium==1.4.0", _NP2)),
)

# Installed in every environment next to SB3.
TEST_DEPS: tuple[str, ...] = ("pytest", "hypothesis", "wrapt", "packaging", "cloudpickle")

# Shared by all environments.  On the project machines torch==2.13.0 is a CPU
# wheel that lies on disk; an unpinned torch would download a multi-GB CUDA build.
TORCH = "torch==2.13.0"
TORCH_PYTHON = (3, 11)  # the Python the on-disk torch wheel is built for

DEFAULT_PYTEST_ARGS = ("tests", "-q", "-x", "-p", "no:cacheprovider")
REPO = Path(__file__).resolve().parent.parent
TAIL_LINES = 40
MARKER = "matrix-complete.json"

_print_lock = threading.Lock()
_project_lock = threading.Lock()  # editable builds write <name>.egg-info into the repo


def say(msg: str) -> None:
    with _print_lock:
        print(f"[matrix {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def tail(path: Path, n: int = TAIL_LINES) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n:])


class StepError(Exception):
    def __init__(self, what: str, log: Path):
        super().__init__(what)
        self.log = log


def run_logged(cmd: Sequence[str], log: Path, env: dict | None = None,
               cwd: Path | None = None) -> int:
    with log.open("a") as fh:
        fh.write(f"\n$ {' '.join(map(str, cmd))}\n")
        fh.flush()
        t0 = time.monotonic()
        proc = subprocess.run(list(map(str, cmd)), stdout=fh, stderr=subprocess.STDOUT,
                              env=env, cwd=cwd, stdin=subprocess.DEVNULL)
        fh.write(f"# exit {proc.returncode} after {time.monotonic() - t0:.1f}s\n")
    return proc.returncode


def clean_env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    env["PYTHONNOUSERSITE"] = "1"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    if extra:
        env.update(extra)
    return env


class Matrix:
    def __init__(self, workdir: Path, jobs: int, rebuild: bool):
        self.workdir = workdir
        self.jobs = jobs
        self.rebuild = rebuild
        self.logs = workdir / "logs"
        self.envs = workdir / "envs"
        tname = re.sub(r"[^A-Za-z0-9.]+", "-", TORCH)
        self.torch_dir = workdir / f"{tname}-py{TORCH_PYTHON[0]}{TORCH_PYTHON[1]}"
        self.constraints = workdir / "constraints.txt"

    # -- shared torch ----------------------------------------------------
    def ensure_torch(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.envs.mkdir(parents=True, exist_ok=True)
        # Pins torch for every pip call in the venvs: pip can never swap it for another build.
        self.constraints.write_text(TORCH + "\n")
        marker = self.torch_dir / MARKER
        if marker.exists():
            return
        log = self.logs / "torch-install.log"
        log.write_text("")
        if self.torch_dir.exists():
            shutil.rmtree(self.torch_dir)
        say(f"installing shared {TORCH} into {self.torch_dir}")
        t0 = time.monotonic()
        rc = run_logged([sys.executable, "-m", "pip", "install", "--no-input", "--target",
                         self.torch_dir, TORCH], log, env=clean_env())
        if rc == 0 and (self.torch_dir / "numpy").exists():
            # numpy must stay per-venv (1.x for old SB3, 2.x for new).
            with log.open("a") as fh:
                fh.write("ERROR: numpy ended up in the shared torch dir\n")
            rc = 1
        if rc != 0:
            raise StepError("shared torch install failed", log)
        marker.write_text(json.dumps({"torch": TORCH}) + "\n")
        say(f"shared torch ready ({time.monotonic() - t0:.1f}s)")

    # -- per-release environments ------------------------------------------
    def env_dir(self, rel: Release) -> Path:
        return self.envs / f"sb3-{rel.sb3}"

    def spec(self, rel: Release) -> dict:
        release = {k: v for k, v in rel._asdict().items() if k != "tests"}  # tests don't change the env
        spec = {"release": release, "test_deps": TEST_DEPS, "torch": TORCH,
                "torch_dir": str(self.torch_dir.resolve()), "python": sys.version.split()[0],
                "pip": "venv-bundled"}
        return json.loads(json.dumps(spec))  # tuples -> lists, comparable with the marker

    @staticmethod
    def project_key() -> str:
        h = hashlib.sha256(str(REPO).encode())  # another checkout -> reinstall the project
        for name in ("pyproject.toml", "setup.py", "setup.cfg"):
            p = REPO / name
            if p.exists():
                h.update(name.encode() + b"\0" + p.read_bytes())
        return h.hexdigest()

    @staticmethod
    def site_packages(envdir: Path) -> Path:
        return envdir / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"

    def pip(self, envdir: Path) -> list:
        # Each venv's own pip (the one bundled with this Python, pip 23.2.1 on 3.11.7), not the
        # caller's: pip >= 24.1 refuses gym 0.21's metadata, and CI upgrades its own pip.
        base = [envdir / "bin" / "python", "-m", "pip"]
        # --no-compile: bytecode gets written on first import instead (saves ~25% install time)
        return [*base, "install", "--no-input", "--no-compile", "-c", self.constraints]

    def install(self, rel: Release) -> tuple[float, bool]:
        """Create/refresh the venv; return (seconds, reused)."""
        envdir = self.env_dir(rel)
        log = self.logs / f"sb3-{rel.sb3}-install.log"
        marker = envdir / MARKER
        spec = self.spec(rel)
        t0 = time.monotonic()
        state = None
        if marker.exists() and not self.rebuild:
            try:
                state = json.loads(marker.read_text())
            except ValueError:
                state = None
        if state is not None and state.get("spec") == spec:
            if state.get("project") == self.project_key():
                return 0.0, True
            say(f"[{rel.sb3}] project metadata changed: reinstalling the project only")
            self._install_project(envdir, log)
            state["project"] = self.project_key()
            marker.write_text(json.dumps(state, indent=1) + "\n")
            return time.monotonic() - t0, True

        log.write_text(f"# SB3 {rel.sb3} environment, spec {json.dumps(spec)}\n")
        if envdir.exists():
            shutil.rmtree(envdir)
        say(f"[{rel.sb3}] install start (log {log})")
        if run_logged([sys.executable, "-m", "venv", envdir], log, env=clean_env()) != 0:
            raise StepError("venv creation failed", log)
        site = self.site_packages(envdir)
        if not site.is_dir():
            raise StepError(f"no site-packages at {site}", log)
        (site / "_matrix_shared_torch.pth").write_text(f"{self.torch_dir.resolve()}\n")

        env = clean_env()
        for step in rel.pre:
            if run_logged(self.pip(envdir) + list(step), log, env=env) != 0:
                raise StepError(f"pre-install step {' '.join(step)} failed", log)
        reqs = [f"stable-baselines3=={rel.sb3}", f"sb3-contrib=={rel.contrib}",
                *rel.pins, *TEST_DEPS]
        if run_logged(self.pip(envdir) + reqs, log, env=env) != 0:
            raise StepError("pip install failed", log)
        self._install_project(envdir, log)
        self._check(envdir, rel, log)
        marker.write_text(json.dumps({"spec": spec, "project": self.project_key()}, indent=1) + "\n")
        return time.monotonic() - t0, False

    def _install_project(self, envdir: Path, log: Path) -> None:
        site = self.site_packages(envdir)
        fallback = site / "_matrix_project_src.pth"
        if any((REPO / n).exists() for n in ("pyproject.toml", "setup.py")):
            fallback.unlink(missing_ok=True)
            with _project_lock:
                rc = run_logged([*self.pip(envdir), "--no-deps", "-e", REPO], log, env=clean_env())
            if rc != 0:
                raise StepError("editable install of the project failed", log)
        else:
            # No packaging metadata yet: put the repo root on sys.path instead.
            with log.open("a") as fh:
                fh.write(f"# no pyproject.toml/setup.py in {REPO}: adding it via {fallback.name}\n")
            fallback.write_text(f"{REPO}\n")

    def _check(self, envdir: Path, rel: Release, log: Path) -> None:
        """torch must come from the shared dir; versions must be the requested ones."""
        code = (
            "import importlib.metadata as m, sys, torch\n"
            "print('torch', torch.__version__, torch.__file__)\n"
            "print('sb3', m.version('stable-baselines3'), 'contrib', m.version('sb3-contrib'))\n"
            f"sys.exit(0 if torch.__file__.startswith({str(self.torch_dir.resolve())!r}) and "
            f"m.version('stable-baselines3') == {rel.sb3!r} and "
            f"m.version('sb3-contrib') == {rel.contrib!r} else 3)\n"
        )
        if run_logged([envdir / "bin" / "python", "-c", code], log, env=clean_env()) != 0:
            raise StepError("post-install check failed (torch location or versions)", log)
        if any(self.site_packages(envdir).glob("torch-*.dist-info")):
            raise StepError("torch was installed into the venv instead of shared", log)

    def test(self, rel: Release, pytest_args: Sequence[str]) -> tuple[float, int, str]:
        envdir = self.env_dir(rel)
        log = self.logs / f"sb3-{rel.sb3}-test.log"
        log.write_text("")
        extra = {"VIRTUAL_ENV": str(envdir),
                 "PATH": f"{envdir / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
        if self.jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
            # Keep parallel torch processes from oversubscribing the cores.
            extra["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.jobs))
        t0 = time.monotonic()
        rc = run_logged([envdir / "bin" / "python", "-m", "pytest", *pytest_args], log,
                        env=clean_env(extra), cwd=REPO)
        summary = ""
        for line in reversed(log.read_text(errors="replace").splitlines()):
            if re.search(r"\b(passed|failed|error|errors|skipped|no tests ran)\b", line):
                summary = line.strip().strip("=").strip()
                break
        return time.monotonic() - t0, rc, summary


def select(names: str | None) -> list[Release]:
    if not names:
        return list(RELEASES)
    picked = []
    for name in (n.strip() for n in names.split(",") if n.strip()):
        hits = [r for r in RELEASES if r.sb3 == name] or \
               [r for r in RELEASES if r.sb3.startswith(name + ".")]
        if len(hits) != 1:
            known = ", ".join(r.sb3 for r in RELEASES)
            raise SystemExit(f"matrix: unknown or ambiguous release {name!r} (known: {known})")
        if hits[0] not in picked:
            picked.append(hits[0])
    return picked


def print_table(releases: Sequence[Release]) -> None:
    print(f"{'stable-baselines3':<18} {'sb3-contrib':<12} extra pins / special steps")
    for r in releases:
        extra = " ".join(r.pins)
        for step in r.pre:
            extra += f"  [first: pip install {' '.join(step)}]"
        print(f"{r.sb3:<18} {r.contrib:<12} {extra}")
    print(f"all: {TORCH} (shared), {' '.join(TEST_DEPS)}, project with --no-deps -e")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    pytest_args: list[str] = list(DEFAULT_PYTEST_ARGS)
    if "--" in argv:
        i = argv.index("--")
        argv, rest = argv[:i], argv[i + 1:]
        if rest:
            pytest_args = rest
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 usage="%(prog)s [options] [-- pytest args]")
    ap.add_argument("--releases", help="comma-separated SB3 versions (or prefixes like 2.3)")
    ap.add_argument("--jobs", type=int, default=2, help="releases handled at once (default 2)")
    ap.add_argument("--workdir", default=".matrix", help="venvs, shared torch and logs "
                    "(relative to the repo root; default .matrix)")
    ap.add_argument("--list", action="store_true", help="print the release table and exit")
    ap.add_argument("--rebuild", action="store_true", help="recreate the selected venvs (delete "
                    "<workdir>/torch-* to reinstall the shared torch)")
    ap.add_argument("--install-only", action="store_true", help="set up the venvs, run no tests")
    ns = ap.parse_args(argv)

    releases = select(ns.releases)
    if ns.list:
        print_table(releases)
        return 0
    if sys.version_info[:2] != TORCH_PYTHON:
        print(f"matrix: run this with Python {TORCH_PYTHON[0]}.{TORCH_PYTHON[1]}: {TORCH} is "
              f"installed from a local CPU wheel for that version; another Python would pull "
              f"a multi-GB CUDA build.", file=sys.stderr)
        return 2
    workdir = Path(ns.workdir)
    if not workdir.is_absolute():
        workdir = REPO / workdir
    m = Matrix(workdir, max(1, ns.jobs), ns.rebuild)
    say(f"{len(releases)} release(s), jobs={m.jobs}, workdir={workdir}, "
        f"pytest args: {' '.join(pytest_args)}")
    t_start = time.monotonic()
    try:
        m.ensure_torch()
    except StepError as e:
        say(f"FAILED: {e}\n--- tail of {e.log} ---\n{tail(e.log)}")
        return 1

    results: dict[str, dict] = {}

    def work(rel: Release) -> None:
        res = results[rel.sb3] = {"install": None, "reused": False, "test": None,
                                  "result": "?", "summary": "", "log": None}
        try:
            res["install"], res["reused"] = m.install(rel)
        except StepError as e:
            res.update(result=f"INSTALL FAILED: {e}", log=e.log)
            say(f"[{rel.sb3}] INSTALL FAILED: {e}")
            return
        except Exception as e:  # report it, keep the other releases going
            res.update(result=f"INSTALL FAILED: {e!r}", log=m.logs / f"sb3-{rel.sb3}-install.log")
            say(f"[{rel.sb3}] INSTALL FAILED: {e!r}")
            return
        say(f"[{rel.sb3}] install " + ("reused" if res["reused"] and not res["install"]
                                       else f"done {res['install']:.1f}s"))
        if ns.install_only:
            res["result"] = "installed"
            return
        say(f"[{rel.sb3}] tests start")
        secs, rc, summary = m.test(rel, rel.tests if rel.tests is not None else pytest_args)
        res.update(test=secs, summary=summary)
        if rc == 0:
            res["result"] = "ok"
        else:
            res["result"] = "FAILED (no tests ran, exit 5)" if rc == 5 else f"FAILED (exit {rc})"
            res["log"] = m.logs / f"sb3-{rel.sb3}-test.log"
        say(f"[{rel.sb3}] tests {res['result']} {secs:.1f}s: {summary}")

    with concurrent.futures.ThreadPoolExecutor(max_workers=m.jobs) as pool:
        for f in [pool.submit(work, r) for r in releases]:
            f.result()

    failed = [r for r in releases if results[r.sb3]["result"] not in ("ok", "installed")]
    for r in failed:
        log = results[r.sb3]["log"]
        if log:
            print(f"\n----- {r.sb3}: {results[r.sb3]['result']} -- last {TAIL_LINES} lines "
                  f"of {log} -----\n{tail(log)}", flush=True)

    def fmt(x: float | None, reused: bool = False) -> str:
        if x is None:
            return "-"
        return "reused" if reused and not x else f"{x:.1f}"

    print(f"\n{'release':<8} {'contrib':<8} {'install s':>9} {'test s':>7}  result", flush=True)
    for r in releases:
        res = results[r.sb3]
        line = (f"{r.sb3:<8} {r.contrib:<8} {fmt(res['install'], res['reused']):>9} "
                f"{fmt(res['test']):>7}  {res['result']}")
        if res["summary"]:
            line += f"  ({res['summary']})"
        print(line)
    print(f"total {time.monotonic() - t_start:.1f}s; "
          f"{len(releases) - len(failed)}/{len(releases)} release(s) ok", flush=True)
    if not ns.install_only:
        # One plain closing line for tools that read the last test-count line.
        counts = {"passed": 0, "failed": 0, "skipped": 0}
        for r in releases:
            found = dict.fromkeys(counts, 0)
            for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?)\b",
                                      results[r.sb3]["summary"]):
                found["failed" if word.startswith("error") else word] += int(n)
            if r in failed and not found["failed"]:
                found["failed"] = 1  # install failure, no tests ran, crash
            for k in counts:
                counts[k] += found[k]
        print(f"matrix: {counts['passed']} passed, {counts['failed']} failed, "
              f"{counts['skipped']} skipped", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
