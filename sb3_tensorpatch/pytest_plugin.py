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
                fixturenames.insert(0, "tensorpatch")


@pytest.fixture
def tensorpatch() -> Iterator[Status]:
    """Enable sb3-tensorpatch for one test; afterwards the state found before the test is restored.

    Yields the :class:`sb3_tensorpatch.Status` after enabling.
    """
    import sb3_tensorpatch

    with sb3_tensorpatch.patched() as status:
        yield status
