"""Journal, leases and the step runner (DESIGN.md rule 3: journal first, resume to the same end)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from aimctl.errors import OperatorError
from aimctl.failover.runner import (
    Step,
    StepCall,
    StepOutcome,
)
from aimctl.journal import (
    Journal,
)
from aimctl.journal import schema as journal_schema
from aimctl.secrets import register

REPO = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self, t: float = 1_795_400_000.0) -> None:  # 2026-11-23
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def journal(tmp_path: Path, clock: Clock) -> Any:
    j = Journal(tmp_path / "ctrl" / "journal.db", clock=clock)
    yield j
    j.close()


def ok_step(name: str, calls: list[tuple[str, bool]]) -> Step[None]:
    def fn(ctx: None, call: StepCall) -> StepOutcome:
        calls.append((name, call.resumed))
        return StepOutcome.ok()
    return Step(name, fn)


# -- the database ------------------------------------------------------------------------------


def test_wal_full_sync_schema_version_and_private_file(journal: Journal) -> None:
    db = sqlite3.connect(journal.path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == journal_schema.SCHEMA_VERSION
    assert journal._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert oct(journal.path.stat().st_mode & 0o777) == oct(0o600)
    db.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    Journal(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {journal_schema.SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(OperatorError, match="schema version"):
        Journal(path)


def test_records_are_append_only(journal: Journal) -> None:
    op = journal.open_operation("failover", "ex1")
    journal.intent(op, "confirm", {})
    db = sqlite3.connect(journal.path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE records SET step = 'x'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("DELETE FROM records")
    db.close()


def test_secrets_never_reach_the_journal(journal: Journal) -> None:
    register("s3cr3t-chap-value")
    op = journal.open_operation("failover", "ex1", {"note": "chap s3cr3t-chap-value"})
    journal.intent(op, "storage", {"secret": "s3cr3t-chap-value"})
    raw = journal.path.read_bytes() + Path(str(journal.path) + "-wal").read_bytes()
    assert b"s3cr3t-chap-value" not in raw
    assert journal.records(op)[0].detail == {"secret": "***"}


