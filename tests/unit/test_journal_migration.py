"""Schema version 2: the lifecycle's operation kinds, by rebuilding ``operations`` (SQLite cannot
change a CHECK in place). A journal written by version 1 keeps every operation and record."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from aimctl.journal import KINDS, Journal
from aimctl.journal import schema as journal_schema


def v1_journal(path: Path) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA foreign_keys=ON")
    for statement in journal_schema.MIGRATIONS[0]:
        db.execute(statement)
    db.execute("PRAGMA user_version = 1")
    db.execute("INSERT INTO operations(id, kind, persona, state, created, updated, facts) VALUES"
               " ('fo-20260101-0001', 'failover', 'exchange1', 'done', 1, 2, '{\"to\": \"r720-3\"}')")
    db.execute("INSERT INTO records(op_id, seq, step, phase, status, detail, time) VALUES"
               " ('fo-20260101-0001', 1, 'confirm', 'intent', NULL, '{}', 1)")
    with pytest.raises(sqlite3.IntegrityError):
        db.execute("INSERT INTO operations(id, kind, persona, state, created, updated) VALUES"
                   " ('ar-1', 'archive', 'exchange1', 'running', 1, 1)")
    db.close()


def test_v1_journal_migrates_keeping_everything(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    v1_journal(path)
    j = Journal(path)
    assert j.query("PRAGMA user_version")[0][0] == journal_schema.SCHEMA_VERSION == 3
    op = j.operation("fo-20260101-0001")
    assert (op.kind, op.state, op.facts) == ("failover", "done", {"to": "r720-3"})
    assert [r.step for r in j.records(op.id)] == ["confirm"]
    for kind in ("archive", "restore", "rehearsal", "provision"):
        assert kind in KINDS
        j.set_state(j.open_operation(kind, "exchange1"), "done")
    # Still enforced after the rebuild: foreign keys, append-only records, the kind check.
    assert j.query("PRAGMA foreign_keys")[0][0] == 1
    with pytest.raises(sqlite3.IntegrityError):
        with j.transaction() as db:
            db.execute("INSERT INTO records(op_id, seq, step, phase, detail, time) VALUES ('nope', 1, 's', 'intent',"
                       " '{}', 1)")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        with j.transaction() as db:
            db.execute("DELETE FROM records")
    with pytest.raises(sqlite3.IntegrityError):
        with j.transaction() as db:
            db.execute("INSERT INTO operations(id, kind, persona, state, created, updated) VALUES"
                       " ('x', 'reboot', 'exchange1', 'running', 1, 1)")
    j.close()
    Journal(path).close()  # opening again is a no-op
