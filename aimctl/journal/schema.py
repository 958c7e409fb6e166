"""The journal's schema, versioned with ``PRAGMA user_version``; migrations only ever append.

A journal written by a newer aimctl is refused rather than half-understood: the controller's
state is the source of truth for the assignment, and guessing at an unknown schema could undo
a failover.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from aimctl.errors import OperatorError

# Each entry upgrades from version i to i + 1. Never edit a released entry: add one.
MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE operations (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL CHECK (kind IN ('failover', 'move', 'failback')),
            persona TEXT NOT NULL,
            from_server TEXT,
            to_server TEXT,
            state TEXT NOT NULL CHECK (state IN ('running', 'needs-operator', 'waiting-approval',
                                                 'done', 'failed', 'aborted')),
            result TEXT NOT NULL DEFAULT '',
            created REAL NOT NULL,
            updated REAL NOT NULL,
            facts TEXT NOT NULL DEFAULT '{}')""",
        "CREATE INDEX operations_state ON operations(state)",
        """CREATE TABLE records (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            op_id TEXT NOT NULL REFERENCES operations(id),
            seq INTEGER NOT NULL,
            step TEXT NOT NULL,
            phase TEXT NOT NULL CHECK (phase IN ('intent', 'result')),
            status TEXT CHECK (status IS NULL OR status IN ('ok', 'failed', 'skipped', 'retarget')),
            detail TEXT NOT NULL DEFAULT '{}',
            time REAL NOT NULL,
            UNIQUE (op_id, seq))""",
        # Append-only is enforced by the database, not by convention.
        """CREATE TRIGGER records_append_only_update BEFORE UPDATE ON records
           BEGIN SELECT RAISE(ABORT, 'journal records are append-only'); END""",
        """CREATE TRIGGER records_append_only_delete BEFORE DELETE ON records
           BEGIN SELECT RAISE(ABORT, 'journal records are append-only'); END""",
        """CREATE TABLE assignment (
            persona TEXT PRIMARY KEY,
            server TEXT,
            by TEXT NOT NULL,
            updated REAL NOT NULL)""",
        """CREATE TABLE servers (
            name TEXT PRIMARY KEY,
            quarantined INTEGER NOT NULL DEFAULT 0,
            reason TEXT NOT NULL DEFAULT '',
            by TEXT NOT NULL DEFAULT '',
            since REAL,
            failed INTEGER NOT NULL DEFAULT 0)""",
        """CREATE TABLE leases (
            name TEXT PRIMARY KEY,
            holder TEXT NOT NULL,
            acquired REAL NOT NULL,
            expires REAL NOT NULL)""",
        # Change records (aimctl.records.changes) live here so that an operation and its change
        # record are in one database; approvals are part of the record.
        """CREATE TABLE changes (
            number TEXT PRIMARY KEY,
            op_id TEXT UNIQUE,
            record TEXT NOT NULL,
            created REAL NOT NULL,
            updated REAL NOT NULL)""",
    ],
    [
        # The heartbeat receiver's replay memory, so a restart does not accept captured packets again:
        # per persona the current boot id, the last accepted sequence and the boot ids seen before.
        # Boot ids are unsigned 64-bit, past SQLite's signed INTEGER: kept as decimal text.
        """CREATE TABLE heartbeat_marks (
            persona TEXT PRIMARY KEY,
            boot TEXT NOT NULL,
            seq TEXT NOT NULL,
            old TEXT NOT NULL DEFAULT '[]',
            updated REAL NOT NULL)""",
    ],
    [
        # Version 3: drift repairs and the persona lifecycle are operations too. SQLite cannot change a
        # CHECK in place: the table is rebuilt (its documented 12-step procedure; ``migrate`` turns
        # foreign keys off around it and checks them before committing).
        """CREATE TABLE operations_v2 (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL CHECK (kind IN ('failover', 'move', 'failback', 'repair', 'archive', 'restore',
                                               'rehearsal', 'provision')),
            persona TEXT NOT NULL,
            from_server TEXT,
            to_server TEXT,
            state TEXT NOT NULL CHECK (state IN ('running', 'needs-operator', 'waiting-approval',
                                                 'done', 'failed', 'aborted')),
            result TEXT NOT NULL DEFAULT '',
            created REAL NOT NULL,
            updated REAL NOT NULL,
            facts TEXT NOT NULL DEFAULT '{}')""",
        "INSERT INTO operations_v2 SELECT id, kind, persona, from_server, to_server, state, result, created,"
        " updated, facts FROM operations",
        "DROP TABLE operations",
        "ALTER TABLE operations_v2 RENAME TO operations",
        "CREATE INDEX operations_state ON operations(state)",
        # Drift findings (aimctl.reconcile): one row per difference, kept after it resolves so
        # "since when" and "alerted once" survive a restart.
        """CREATE TABLE findings (
            key TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            persona TEXT,
            server TEXT,
            device TEXT NOT NULL,
            what TEXT NOT NULL,
            expected TEXT NOT NULL,
            observed TEXT NOT NULL,
            since REAL NOT NULL,
            seen REAL NOT NULL,
            alerted INTEGER NOT NULL DEFAULT 0,
            resolved REAL,
            repair_op TEXT)""",
        "CREATE INDEX findings_open ON findings(resolved)",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(db: sqlite3.Connection, path: Path) -> None:
    """Bring the database to SCHEMA_VERSION, each migration in its own transaction.

    Foreign keys are off while migrating (SQLite's recipe for rebuilding a table: its implicit
    DELETE on DROP would otherwise trip them) and checked before each commit.
    """
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise OperatorError(
            f"journal {path} has schema version {version}; this aimctl knows up to {SCHEMA_VERSION}"
            " (upgrade aimctl, or point --state at another directory)"
        )
    if version == SCHEMA_VERSION:
        return
    fk = db.execute("PRAGMA foreign_keys").fetchone()[0]
    db.execute("PRAGMA foreign_keys=OFF")
    try:
        _migrate(db, path, version)
    finally:
        db.execute(f"PRAGMA foreign_keys={'ON' if fk else 'OFF'}")


def _migrate(db: sqlite3.Connection, path: Path, version: int) -> None:
    for target in range(version, SCHEMA_VERSION):
        db.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have migrated while we waited for the write lock.
            if db.execute("PRAGMA user_version").fetchone()[0] > target:
                db.execute("COMMIT")
                continue
            for statement in MIGRATIONS[target]:
                db.execute(statement)
            broken = db.execute("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise OperatorError(f"journal {path}: migration to version {target + 1} broke "
                                    f"{len(broken)} foreign key(s); nothing was changed")
            db.execute(f"PRAGMA user_version = {target + 1}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
