"""pytest plugin for ``scripts/upstream_tests.py``: one run of SB3's or sb3-contrib's own tests.

Loaded with ``-p sb3tp_upstream_plugin`` (this folder on ``PYTHONPATH``) in both runs, plain and
patched, and configured by the JSON file that ``$SB3TP_UPSTREAM`` names:

- ``deselect``: upstream markers and test function names to leave out (reported as deselected);
- ``patch``: in the patched run, ``pytest_configure`` calls ``sb3_tensorpatch.enable()`` before any
  test module is imported, and after every test the plugin checks that the patch is still enabled
  with the same targets (a test that disabled or partly undid it is recorded, the patch is put back
  so that the rest of the run is still patched, and the session fails); the plain run never
  imports sb3_tensorpatch;
- ``report``: where ``pytest_sessionfinish`` writes the outcome of every test id (from
  ``pytest_runtest_logreport``) and the patch's state. Under pytest-xdist each worker also writes
  ``<report>.<worker id>`` with its own patch state (the tests run there).
- ``fault``, for ``upstream_tests.py --self-check`` only: faults the comparison must catch
  (``numpy``: single NumPy observations are treated as batched, so SB3's NumPy path returns actions
  with an extra batch dimension; ``disable``: the patch is switched off after the first test).
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

_config: dict[str, Any] = {}
_state: dict[str, Any] = {
    "outcomes": {},  # test id -> outcome of each failing or skipping phase
    "details": {},  # test id -> short reason for everything but a pass
    "deselected": 0,
    "patched_targets": [],
    "lost_after": [],  # test ids after which the patch was found off or changed
    "enabled_at_finish": None,
    "error": None,
}


def _patched_targets() -> list[str]:
    import sb3_tensorpatch

    return sorted(sb3_tensorpatch.status().patched)


def pytest_configure(config: pytest.Config) -> None:
    path = os.environ.get("SB3TP_UPSTREAM")
    if not path:
        raise pytest.UsageError("sb3tp_upstream_plugin needs $SB3TP_UPSTREAM (set by scripts/upstream_tests.py)")
    with open(path, encoding="utf-8") as f:
        _config.update(json.load(f))
    if not _config["patch"]:
        return
    import sb3_tensorpatch

    status = sb3_tensorpatch.enable()
    _state["patched_targets"] = sorted(status.patched)
    _state["module"] = sb3_tensorpatch.__file__
    if not sb3_tensorpatch.is_enabled() or not _state["patched_targets"]:
        raise pytest.UsageError(f"sb3_tensorpatch.enable() did not patch anything:\n{status}")
    if "numpy" in _config["fault"]:
        _inject_numpy_fault()


def _inject_numpy_fault() -> None:
    from stable_baselines3.common.policies import BasePolicy

    original = BasePolicy.obs_to_tensor

    def obs_to_tensor(self: Any, observation: Any) -> Any:
        obs_tensor, _vectorized = original(self, observation)
        return obs_tensor, True  # never squeeze: single observations get batched actions

    BasePolicy.obs_to_tensor = obs_to_tensor  # type: ignore[method-assign]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    markers = _config["deselect"]["markers"]
    names = set(_config["deselect"]["names"])

    def left_out(item: pytest.Item) -> bool:
        name = getattr(item, "originalname", item.name)
        return name in names or any(item.get_closest_marker(marker) for marker in markers)

    deselected = [item for item in items if left_out(item)]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not left_out(item)]
    _state["deselected"] = len(deselected)


def _detail(report: pytest.TestReport, kind: str) -> str:
    """One line for a skip; for a failure: the exception line, its ``E`` lines (at most 4) and where."""
    if kind in ("skipped", "xfailed"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else getattr(report, "wasxfail", "")
        return f"{kind}: {reason}"
    crash = getattr(report.longrepr, "reprcrash", None)
    lines = [line.strip() for line in report.longreprtext.splitlines() if line.strip()]
    e_lines = [line for line in lines if line.startswith("E ")][:4]
    where = f"  at {crash.path}:{crash.lineno}" if crash else ""
    first = crash.message.splitlines()[0] if crash and crash.message else (lines[-1] if lines else "")
    return "\n".join(
        [f"{kind} ({report.when}): {first}", *(f"  {line}" for line in e_lines), *([where] if where else [])]
    )


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Record what each phase adds to the test's outcome; a test with none of these passed."""
    if report.passed and not hasattr(report, "wasxfail"):
        return
    if report.skipped:
        kind = "xfailed" if hasattr(report, "wasxfail") else "skipped"
    elif report.passed:
        kind = "xpassed"
    else:
        kind = "failed" if report.when == "call" else "error"
    kinds = _state["outcomes"].setdefault(report.nodeid, [])
    if kind not in kinds:
        kinds.append(kind)
        details = _state["details"]
        details[report.nodeid] = "\n".join(filter(None, (details.get(report.nodeid), _detail(report, kind))))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    if "disable" in _config["fault"] and not _state.get("fault_disabled"):
        import sb3_tensorpatch

        _state["fault_disabled"] = True
        sb3_tensorpatch.disable()


@pytest.hookimpl(trylast=True)
def pytest_runtest_logfinish(nodeid: str, location: Any) -> None:
    """Record the outcome of a passing test, and (patched run) check that the patch is still on."""
    _state["outcomes"].setdefault(nodeid, [])
    if not _config["patch"]:
        return
    import sb3_tensorpatch

    if sb3_tensorpatch.is_enabled() and _patched_targets() == _state["patched_targets"]:
        return
    _state["lost_after"].append(nodeid)
    # Put it back so that the remaining tests still run patched (the run is failed anyway).
    sb3_tensorpatch.disable()
    sb3_tensorpatch.enable()


def pytest_report_header(config: pytest.Config) -> list[str]:
    if not _config["patch"]:
        return ["sb3-tensorpatch: not enabled (plain run)"]
    return [
        "sb3-tensorpatch: ENABLED for the whole run by sb3tp_upstream_plugin "
        f"({len(_state['patched_targets'])} targets patched, from {_state.get('module')})"
    ]


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _config["patch"]:
        import sb3_tensorpatch

        _state["enabled_at_finish"] = sb3_tensorpatch.is_enabled()
        problems = []
        if not _state["enabled_at_finish"]:
            problems.append("sb3_tensorpatch.is_enabled() is False at the end of the session")
        if _state["lost_after"]:
            problems.append("the patch was found disabled or changed after: " + ", ".join(_state["lost_after"][:20]))
        if problems:
            _state["error"] = "; ".join(problems)
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
    path = _config["report"]
    _state["worker"] = os.environ.get("PYTEST_XDIST_WORKER")
    if _state["worker"]:
        path = f"{path}.{_state['worker']}"
    outcomes = {test_id: "+".join(sorted(kinds)) or "passed" for test_id, kinds in _state["outcomes"].items()}
    with open(path, "w", encoding="utf-8") as f:
        json.dump({**_state, "outcomes": outcomes}, f, indent=2)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _config["patch"]:
        return
    if _state["error"]:
        terminalreporter.section("sb3-tensorpatch", sep="=", red=True, bold=True)
        terminalreporter.line("FAILED: " + _state["error"], red=True)
    else:
        terminalreporter.section("sb3-tensorpatch", sep="-")
        terminalreporter.line(f"patch stayed enabled for the whole run ({len(_state['patched_targets'])} targets)")
