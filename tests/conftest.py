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


# `make test` runs the files on two workers (`-n 2 --dist loadfile`, each with its own lab on free
# ports): the longest lab stories go first, so that none of them starts last and runs alone.
_LONGEST_FIRST = ("tests/e2e/test_failover.py", "tests/e2e/test_cluster.py", "tests/e2e/test_chaos_soak.py",
                  "tests/e2e/test_fault_catalogue.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        return next((n for n, f in enumerate(_LONGEST_FIRST) if item.nodeid.startswith(f)), len(_LONGEST_FIRST))
    items.sort(key=rank)
