"""Fixtures the contract suites share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lab.storage.iscsi_session import HeldSession


@pytest.fixture
def held() -> Iterator[list[HeldSession]]:
    """Sessions a test logs in; dropped afterwards so tgtd never keeps a test's nexus."""
    sessions: list[HeldSession] = []
    yield sessions
    for s in sessions:
        s.drop()
