"""Lab stories: one lab for the session, reset before each, a fresh controller per story."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.controller_proc import ControllerProcess
from lab.fixtures import LabHandle, lab  # noqa: F401 - the session lab fixture, defined once for tests/e2e
from tests.e2e.stories import controller_for


@pytest.fixture
def world(lab: LabHandle, tmp_path: Path) -> Iterator[tuple[LabHandle, ControllerProcess]]:  # noqa: F811 - the fixture above
    ctrl = controller_for(lab, tmp_path)
    try:
        yield lab, ctrl
    finally:
        ctrl.stop()
        verdict = lab.status()["observer"]
        assert verdict["double_access"] == 0, verdict["evidence"][:5]


