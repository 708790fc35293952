"""pytest plugin for ``scripts/upstream_tests.py``: keeps sb3-tensorpatch enabled for a whole run.

Loaded with ``-p sb3tp_upstream_plugin`` (this folder on ``PYTHONPATH``) in the *patched* run of
SB3's / sb3-contrib's own test files:

- ``pytest_configure`` calls ``sb3_tensorpatch.enable()`` before any test module is imported;
- after every test it checks that the patch is still enabled and that the same targets are patched
  (a test that disabled or partly undid it is recorded, and the patch is put back so that the
  rest of the run is still patched);
- ``pytest_sessionfinish`` fails the session if the patch was ever found off, and writes a JSON
  report to ``$SB3TP_UPSTREAM_REPORT`` (when set) for the driver script; under pytest-xdist each
  worker writes ``$SB3TP_UPSTREAM_REPORT.<worker id>`` too (the tests run there), and the driver
  reads them all.

``$SB3TP_UPSTREAM_FAULT`` is for ``upstream_tests.py --self-check`` only: it injects faults that the
comparison must catch (``numpy``: single NumPy observations are treated as batched, so SB3's NumPy
path returns actions with an extra batch dimension; ``disable``: the patch is switched off after the
first test). Never set it otherwise.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

_state: dict[str, Any] = {
    "enabled_at_configure": False,
    "patched_targets": [],
    "versions": {},
    "lost_after": [],  # test ids after which the patch was found off or changed
    "enabled_at_finish": None,
    "error": None,
}


def _patched_targets() -> list[str]:
    import sb3_tensorpatch

    return sorted(sb3_tensorpatch.status().patched)


def pytest_configure(config: pytest.Config) -> None:
    import sb3_tensorpatch

    status = sb3_tensorpatch.enable()
    _state["enabled_at_configure"] = sb3_tensorpatch.is_enabled()
    _state["patched_targets"] = sorted(status.patched)
    _state["versions"] = dict(status.versions)
    _state["module"] = getattr(sb3_tensorpatch, "__file__", None)
    if not _state["enabled_at_configure"] or not _state["patched_targets"]:
        raise pytest.UsageError(f"sb3_tensorpatch.enable() did not patch anything:\n{status}")
    _state["faults"] = [f for f in os.environ.get("SB3TP_UPSTREAM_FAULT", "").split(",") if f]
    if "numpy" in _state["faults"]:
        _inject_numpy_fault()


def _inject_numpy_fault() -> None:
    from stable_baselines3.common.policies import BasePolicy

    original = BasePolicy.obs_to_tensor

    def obs_to_tensor(self: Any, observation: Any) -> Any:
        obs_tensor, _vectorized = original(self, observation)
        return obs_tensor, True  # never squeeze: single observations get batched actions

    BasePolicy.obs_to_tensor = obs_to_tensor  # type: ignore[method-assign]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    if "disable" in _state.get("faults", ()) and not _state.get("fault_disabled"):
        import sb3_tensorpatch

        _state["fault_disabled"] = True
        sb3_tensorpatch.disable()


@pytest.hookimpl(trylast=True)
def pytest_runtest_logfinish(nodeid: str, location: Any) -> None:
    import sb3_tensorpatch

    if sb3_tensorpatch.is_enabled() and _patched_targets() == _state["patched_targets"]:
        return
    _state["lost_after"].append(nodeid)
    # Put it back so that the remaining tests still run patched (the run is failed anyway).
    sb3_tensorpatch.disable()
    sb3_tensorpatch.enable()


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [
        "sb3-tensorpatch: ENABLED for the whole run by sb3tp_upstream_plugin "
        f"({len(_state['patched_targets'])} targets patched, from {_state.get('module')})"
    ]


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
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
    path = os.environ.get("SB3TP_UPSTREAM_REPORT")
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if path and worker:
        path = f"{path}.{worker}"
    _state["worker"] = worker
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(_state, f, indent=2)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _state["error"]:
        terminalreporter.section("sb3-tensorpatch", sep="=", red=True, bold=True)
        terminalreporter.line("FAILED: " + _state["error"], red=True)
    else:
        terminalreporter.section("sb3-tensorpatch", sep="-")
        terminalreporter.line(f"patch stayed enabled for the whole run ({len(_state['patched_targets'])} targets)")
