"""The ``tensorpatch`` pytest fixture and marker, tested as a user would use them.

Each case runs a real pytest in a subprocess (``pytester.runpytest_subprocess``), so the plugin is
loaded fresh through its ``pytest11`` entry point, exactly as it is for everyone who installs the
package.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest_plugins = ["pytester"]

# hypothesis' plugin is slow to import and irrelevant to these runs (except the start-up check)
_FAST = ("-p", "no:hypothesispytest")


@pytest.fixture(autouse=True)
def _autoload(monkeypatch: pytest.MonkeyPatch) -> None:
    # the plugin reaches the inner runs through entry-point autoloading
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)


_MODEL_CONFTEST = """
import pytest

@pytest.fixture(scope="session")
def model():
    from stable_baselines3 import PPO
    return PPO("MlpPolicy", "CartPole-v1", device="cpu", policy_kwargs={"net_arch": [16]}, seed=0)
"""

_LIFECYCLE_TESTS = """
import numpy as np
import pytest
import torch
import sb3_tensorpatch

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
OBS = np.linspace(-0.1, 0.1, 8, dtype=np.float32).reshape(2, 4)


def check_tensor_predict(model):
    expected, _ = model.predict(OBS, deterministic=True)
    actions, _ = model.predict(torch.as_tensor(OBS), deterministic=True)
    assert isinstance(actions, torch.Tensor), type(actions)
    assert np.array_equal(actions.numpy(), expected)


def test_01_fixture(tensorpatch, model):
    assert sb3_tensorpatch.is_enabled()
    assert tensorpatch.enabled
    assert tensorpatch.patched
    check_tensor_predict(model)


def test_02_after_fixture(model):
    assert not sb3_tensorpatch.is_enabled()
    actions, _ = model.predict(torch.as_tensor(OBS), deterministic=True)
    assert not isinstance(actions, torch.Tensor)


def test_03_fails_inside_fixture(tensorpatch):
    assert sb3_tensorpatch.is_enabled()
    raise RuntimeError("boom inside the tensorpatch fixture")


def test_04_after_failure():
    assert not sb3_tensorpatch.is_enabled()


@pytest.mark.tensorpatch
def test_05_marker(model):
    assert sb3_tensorpatch.is_enabled()
    check_tensor_predict(model)


def test_06_after_marker():
    assert not sb3_tensorpatch.is_enabled()


@pytest.mark.tensorpatch
def test_07_marker_fails():
    assert sb3_tensorpatch.is_enabled()
    raise RuntimeError("boom inside a marked test")


def test_08_after_marked_failure():
    assert not sb3_tensorpatch.is_enabled()


@pytest.mark.tensorpatch
class TestMarkedClass:
    def test_09_class_marker(self):
        assert sb3_tensorpatch.is_enabled()


def test_10_after_class():
    assert not sb3_tensorpatch.is_enabled()


def test_11_enable_inside_fixture(tensorpatch):
    sb3_tensorpatch.enable()
    assert sb3_tensorpatch.is_enabled()


def test_12_state_before_the_test_is_restored():
    assert not sb3_tensorpatch.is_enabled()


def test_13_disable_inside_fixture(tensorpatch):
    sb3_tensorpatch.disable()
    assert not sb3_tensorpatch.is_enabled()


def test_14_after_disable_inside():
    assert not sb3_tensorpatch.is_enabled()
"""


def test_fixture_and_marker_enable_for_one_test_only(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(_MODEL_CONFTEST)
    pytester.makepyfile(test_lifecycle_user=_LIFECYCLE_TESTS)
    result = pytester.runpytest_subprocess(*_FAST, "-v", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=12, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*::test_01_fixture PASSED*",
            "*::test_02_after_fixture PASSED*",
            "*::test_03_fails_inside_fixture FAILED*",
            "*::test_04_after_failure PASSED*",
            "*::test_05_marker PASSED*",
            "*::test_06_after_marker PASSED*",
            "*::test_07_marker_fails FAILED*",
            "*::test_08_after_marked_failure PASSED*",
            "*::TestMarkedClass::test_09_class_marker PASSED*",
            "*::test_10_after_class PASSED*",
            "*::test_11_enable_inside_fixture PASSED*",
            "*::test_12_state_before_the_test_is_restored PASSED*",
            "*::test_13_disable_inside_fixture PASSED*",
            "*::test_14_after_disable_inside PASSED*",
        ]
    )
    # the two failures are the ones raised on purpose, not errors of the fixture's teardown
    result.stdout.fnmatch_lines(["*RuntimeError: boom inside the tensorpatch fixture*"])
    result.stdout.fnmatch_lines(["*RuntimeError: boom inside a marked test*"])
    result.stdout.no_fnmatch_line("*ERROR at teardown*")


def test_marker_is_registered(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.tensorpatch
        def test_marked():
            pass
        """
    )
    # --strict-markers turns an unknown marker into an error; the plugin registers it
    result = pytester.runpytest_subprocess(*_FAST, "--strict-markers", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result = pytester.runpytest_subprocess(*_FAST, "--markers", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["@pytest.mark.tensorpatch:*"])


def test_fixture_leaves_a_global_enable_in_place(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import sb3_tensorpatch

        sb3_tensorpatch.enable()  # a user enabling the patch for the whole run
        """
    )
    pytester.makepyfile(
        test_global="""
        import pytest
        import sb3_tensorpatch


        def test_1_before():
            assert sb3_tensorpatch.is_enabled()


        def test_2_fixture(tensorpatch):
            assert sb3_tensorpatch.is_enabled()
            assert tensorpatch.enabled


        def test_3_still_enabled():
            assert sb3_tensorpatch.is_enabled()
            assert sb3_tensorpatch.status().patched


        @pytest.mark.tensorpatch
        def test_4_marker_fails():
            raise RuntimeError("boom")


        def test_5_still_enabled():
            assert sb3_tensorpatch.is_enabled()
        """
    )
    result = pytester.runpytest_subprocess(*_FAST, "-v", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*::test_1_before PASSED*",
            "*::test_2_fixture PASSED*",
            "*::test_3_still_enabled PASSED*",
            "*::test_4_marker_fails FAILED*",
            "*::test_5_still_enabled PASSED*",
        ]
    )


def test_importing_the_plugin_does_not_import_torch_or_sb3() -> None:
    code = (
        "import sys, sb3_tensorpatch.pytest_plugin; "
        "assert 'torch' not in sys.modules and 'stable_baselines3' not in sys.modules, "
        "sorted(name for name in sys.modules if name.split('.')[0] in ('torch', 'stable_baselines3'))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr


def test_pytest_start_up_does_not_import_torch_or_sb3(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import json
        import sys

        HEAVY = ("torch", "stable_baselines3", "sb3_contrib")


        def _record(session, when):
            record = {
                "heavy": sorted(name for name in HEAVY if name in sys.modules),
                "plugin": "sb3_tensorpatch.pytest_plugin" in sys.modules,
                "registered": session.config.pluginmanager.has_plugin("tensorpatch"),
            }
            path = session.config.rootpath / "modules.json"
            data = json.loads(path.read_text()) if path.exists() else {}
            data[when] = record
            path.write_text(json.dumps(data))


        def pytest_sessionstart(session):
            _record(session, "sessionstart")


        def pytest_sessionfinish(session):
            _record(session, "sessionfinish")
        """
    )
    pytester.makepyfile(
        test_trivial="""
        import sys


        def test_1_trivial():
            # collection did not import them either
            assert "torch" not in sys.modules
            assert "stable_baselines3" not in sys.modules


        def test_2_uses_the_fixture(tensorpatch):
            # the control: asking for the fixture is what imports them
            assert "torch" in sys.modules
            assert "stable_baselines3" in sys.modules
        """
    )
    # hypothesis' plugin stays on here: start-up is checked with every installed plugin loaded
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    data = json.loads((pytester.path / "modules.json").read_text())
    assert data["sessionstart"] == {"heavy": [], "plugin": True, "registered": True}
    # the detector is not blind: after a test used the fixture, both are loaded
    assert data["sessionfinish"]["plugin"] is True
    assert {"torch", "stable_baselines3"} <= set(data["sessionfinish"]["heavy"])



def test_marker_is_set_up_after_autouse_fixtures_like_the_fixture_argument(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import pytest
        import sb3_tensorpatch

        ORDERS = {}


        @pytest.fixture(autouse=True)
        def _patch_off():
            # like many projects' conftest: every test starts with the patch off
            sb3_tensorpatch.disable()
            yield
            sb3_tensorpatch.disable()


        @pytest.fixture(scope="session")
        def session_resource():
            return "shared"


        @pytest.fixture
        def disabling():
            sb3_tensorpatch.disable()


        @pytest.fixture
        def seen_at_setup():
            # a fixture the test asks for: it sees the patch on, as after a fixture argument
            return sb3_tensorpatch.is_enabled()


        def pytest_sessionfinish(session):
            import json

            (session.config.rootpath / "orders.json").write_text(json.dumps(ORDERS))
        """
    )
    pytester.makepyfile(
        test_order="""
        import pytest
        import sb3_tensorpatch
        from conftest import ORDERS


        @pytest.fixture(autouse=True)
        def _module_patch_off():
            sb3_tensorpatch.disable()


        @pytest.mark.tensorpatch
        def test_1_marker(request, session_resource, seen_at_setup):
            ORDERS["marker"] = list(request.fixturenames)
            assert seen_at_setup
            assert sb3_tensorpatch.is_enabled()


        def test_2_argument(tensorpatch, request, session_resource, seen_at_setup):
            ORDERS["argument"] = list(request.fixturenames)
            assert seen_at_setup
            assert sb3_tensorpatch.is_enabled()


        @pytest.mark.tensorpatch
        def test_3_marker_alone():
            assert sb3_tensorpatch.is_enabled()


        @pytest.mark.tensorpatch
        @pytest.mark.usefixtures("disabling")
        def test_3b_marker_after_usefixtures():
            assert sb3_tensorpatch.is_enabled()


        @pytest.mark.tensorpatch
        class TestMarkedClass:
            @pytest.fixture(autouse=True)
            def _class_patch_off(self):
                sb3_tensorpatch.disable()

            def test_4_class_marker(self):
                assert sb3_tensorpatch.is_enabled()


        def test_5_after():
            assert not sb3_tensorpatch.is_enabled()
        """
    )
    result = pytester.runpytest_subprocess(*_FAST, "-v", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=6)
    orders = json.loads((pytester.path / "orders.json").read_text())
    # the same setup order as asking for the fixture by its first argument
    assert orders["marker"] == orders["argument"]
    assert orders["marker"].index("tensorpatch") > orders["marker"].index("_module_patch_off")
