"""Shared test plumbing. Lab fixtures live with the lab (``lab.fixtures``) and are imported where used."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEFINITIONS = REPO / "personas"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # The definitions cache must never leak between tests (or into the developer's home).
    monkeypatch.setenv("AIMCTL_CACHE", str(tmp_path_factory.getbasetemp() / "aimctl-cache"))


@pytest.fixture
def defs_copy(tmp_path: Path) -> Path:
    """A writable copy of the reference definitions."""
    dst = tmp_path / "personas"
    shutil.copytree(DEFINITIONS, dst)
    return dst


def pytest_report_header(config: pytest.Config) -> str:
    return f"aimctl repo: {REPO} (CI={os.environ.get('CI', '')})"
