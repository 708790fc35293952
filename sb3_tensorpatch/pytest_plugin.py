"""pytest plugin: the ``tensorpatch`` fixture and the ``tensorpatch`` marker.

Registered through the ``pytest11`` entry point, so it is loaded in every test run of everyone who
installs the package: it imports neither torch nor SB3 until a test asks for the fixture.

.. code-block:: python

    def test_gpu_rollout(tensorpatch):
        actions, _ = model.predict(obs_tensor)  # patched for this test only

    @pytest.mark.tensorpatch
    def test_marked():
        ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

    from .status import Status


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "tensorpatch: enable sb3-tensorpatch for this test (the same as the tensorpatch fixture)"
    )


def pytest_collection_modifyitems(items: list[Any]) -> None:
    for item in items:
        if item.get_closest_marker("tensorpatch") is not None:
            fixturenames = getattr(item, "fixturenames", None)
            if fixturenames is not None and "tensorpatch" not in fixturenames:
                fixturenames.insert(_first_argument_position(item, fixturenames), "tensorpatch")


def _first_argument_position(item: Any, fixturenames: list[str]) -> int:
    """Where pytest would have put ``tensorpatch`` in ``fixturenames`` as the test's first argument.

    pytest sets the fixtures up in the order of ``item.fixturenames``: the higher scopes first, then,
    within a scope, the autouse fixtures and those of ``usefixtures`` marks (with what they
    request) before the test's arguments. So the marker's fixture goes after every fixture of a
    higher scope and after every one the test does not name as an argument: one that calls
    ``disable()`` cannot undo it, and the fixtures among the test's arguments see the patch on.
    """
    info = getattr(item, "_fixtureinfo", None)  # pytest's record of the item's requests
    if info is None:
        return len(fixturenames)  # after everything: still after every autouse fixture
    before = set(info.initialnames) - set(info.argnames)  # autouse, then usefixtures
    position = 0
    for index, name in enumerate(fixturenames):
        definitions = info.name2fixturedefs.get(name)
        if name in before or (definitions and definitions[-1].scope != "function"):
            position = index + 1
    return position


@pytest.fixture
def tensorpatch() -> Iterator[Status]:
    """Enable sb3-tensorpatch for one test; afterwards the state found before the test is restored.

    Yields the :class:`sb3_tensorpatch.Status` after enabling.
    """
    import sb3_tensorpatch

    with sb3_tensorpatch.patched() as status:
        yield status
