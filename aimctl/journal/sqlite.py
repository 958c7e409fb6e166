"""The embedded journal backend: one SQLite database (WAL), the source of truth for what it did.

DESIGN.md rule 3: each workflow step writes its intent (committed) before acting and its result
after; a restarted controller replays the records to resume. Records are append-only (triggers
refuse UPDATE/DELETE). The assignment (persona -> server) and server marks change in the *same
transaction* as the step result that changed them, so the journal can never say "the switch step
succeeded" without the assignment that follows from it, or the reverse.

Durability: ``synchronous=FULL``. In WAL mode ``NORMAL`` is crash-safe for the process but may lose
the last commits on power loss of the controller host. An intent that vanishes after its action
reached a switch or a target would make a resumed controller act blind, so every record that
describes the world pays one fsync (~ms; a failover writes a few dozen). Only lease renewals,
which are re-derived on resume, use NORMAL.

Crash seams for tests: ``AIMCTL_CRASH_AT_RECORD=N`` makes the process ``os._exit(97)`` right after
its Nth committed write transaction (counted process-wide, across Journal objects; ``commits()``
reads the count). In process, ``Journal(on_commit=f)`` calls ``f(n)`` after each commit; ``f`` may
raise to stop its caller right there, as a crash would.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aimctl.errors import OperatorError
from aimctl.journal import schema
from aimctl.journal.base import (
    TERMINAL,
    UNFINISHED,
    ChangeFn,
    JournalStore,
    Operation,
    Record,
    UnknownOperation,
    after_commit,
    after_record,
    check_kind,
    check_end,
    check_state,
    check_status,
    dumps,
    next_change_number,
    result_detail,
)
from aimctl.journal.findings import FindingsMixin
from aimctl.journal.state import ServerMark, StateMixin
from aimctl.secrets import mask, write_private

__all__ = ["Journal"]

SECRET_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-][A-Za-z0-9_.-]{0,200})+\Z")
_after_commit, _after_record, _dumps = after_commit, after_record, dumps


class Journal(StateMixin, FindingsMixin, JournalStore):
    def __init__(
        self,
        path: Path | str,
        *,
        clock: Callable[[], float] = time.time,
        on_commit: Callable[[int], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Wall clock, not monotonic: created/expiry times must mean the same after a restart.
        self._clock = clock
        self._on_commit = on_commit
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10)
        self._db.row_factory = sqlite3.Row
        os.chmod(self.path, 0o600)  # WAL and shm files inherit the database's mode
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise OperatorError(f"journal {self.path}: cannot switch to WAL mode (got {mode})")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=10000")
        schema.migrate(self._db, self.path)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @property
    def where(self) -> str:
        return str(self.path)

    # -- transactions -------------------------------------------------------------------------

    @contextmanager
    def transaction(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One committed write transaction = one journal record for the crash seam."""
        with self._lock:
            if not durable:
                self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            finally:
                if not durable:
                    self._db.execute("PRAGMA synchronous=FULL")
            _after_commit(self._on_commit)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def now(self) -> float:
        return self._clock()

    # -- operations ---------------------------------------------------------------------------

    def open_operation(
        self,
        kind: str,
        persona: str,
        facts: Mapping[str, Any] | None = None,
        *,
        from_server: str | None = None,
        to_server: str | None = None,
        leases: Sequence[str] = (),
        ttl_s: float = 3600.0,
    ) -> str:
        """Create an operation in state running; its leases are taken in the same transaction."""
        short = check_kind(kind)
        now = self._clock()
        prefix = f"{short}-{time.strftime('%Y%m%d', time.gmtime(now))}-"
        with self.transaction() as db:
            row = db.execute(
                "SELECT MAX(CAST(substr(id, ?) AS INTEGER)) FROM operations WHERE id LIKE ?",
                (len(prefix) + 1, prefix + "%"),
            ).fetchone()
            op_id = f"{prefix}{(row[0] or 0) + 1:04d}"
            db.execute(
                "INSERT INTO operations(id, kind, persona, from_server, to_server, state, result,"
                " created, updated, facts) VALUES (?,?,?,?,?,'running','',?,?,?)",
                (op_id, kind, persona, from_server, to_server, now, now, _dumps(facts)),
            )
            self._take_leases(db, leases, op_id, ttl_s, now)
        return op_id

    def operation(self, op_id: str) -> Operation:
        rows = self.query("SELECT * FROM operations WHERE id = ?", (op_id,))
        if not rows:
            raise UnknownOperation(f"no operation {op_id} in journal {self.path}")
        return _operation(rows[0])

    def operations(self, limit: int = 50, persona: str | None = None) -> list[Operation]:
        where, params = ("WHERE persona = ?", [persona]) if persona else ("", [])
        rows = self.query(
            f"SELECT * FROM operations {where} ORDER BY created DESC, id DESC LIMIT ?", [*params, limit]
        )
        return [_operation(r) for r in rows]

    def operations_revision(self) -> tuple[float, int]:
        row = self.query("SELECT COALESCE(MAX(updated), 0), COUNT(*) FROM operations")[0]
        return float(row[0]), int(row[1])

    def unfinished_operations(self) -> list[Operation]:
        marks = ",".join("?" * len(UNFINISHED))
        rows = self.query(f"SELECT * FROM operations WHERE state IN ({marks}) ORDER BY created", UNFINISHED)
        return [_operation(r) for r in rows]

    def set_state(self, op_id: str, state: str, result: str = "") -> None:
        """Set an operation's state; a terminal state releases every lease the operation holds."""
        check_state(state)
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE operations SET state = ?, result = ?, updated = ? WHERE id = ?",
                (state, mask(result), self._clock(), op_id),
            )
            if cur.rowcount == 0:
                raise UnknownOperation(f"no operation {op_id} in journal {self.path}")
            if state in TERMINAL:
                db.execute("DELETE FROM leases WHERE holder = ?", (op_id,))

    # -- records ------------------------------------------------------------------------------

    def intent(self, op_id: str, step: str, detail: Mapping[str, Any] | None = None) -> None:
        with self.transaction() as db:
            self._append(db, op_id, step, "intent", None, detail)
        _after_record()

    def result(
        self,
        op_id: str,
        step: str,
        status: str,
        detail: Mapping[str, Any] | None = None,
        *,
        facts: Mapping[str, Any] | None = None,
        assignment_change: Mapping[str, str | None] | None = None,
        server_marks: Mapping[str, ServerMark] | None = None,
        end: tuple[str, str] | None = None,
    ) -> None:
        """Append a step's result; facts, assignment and server marks change in the same transaction.

        ``end=(state, result)`` also ends the operation there (a terminal state; its leases are
        released): how an operator's abandon is recorded, so no crash can leave an abandoned
        operation holding its persona."""
        check_status(status)
        check_end(end)
        full = result_detail(detail, assignment_change, server_marks)
        now = self._clock()
        with self.transaction() as db:
            self._append(db, op_id, step, "result", status, full)
            if facts:
                self._merge_facts(db, op_id, facts, now)
            for persona, server in (assignment_change or {}).items():
                self._assign(db, persona, server, op_id, now)
            for server, m in (server_marks or {}).items():
                self._mark(db, server, m, op_id, now)
            if end is not None:
                db.execute("UPDATE operations SET state = ?, result = ?, updated = ? WHERE id = ?",
                           (end[0], mask(end[1]), now, op_id))
                db.execute("DELETE FROM leases WHERE holder = ?", (op_id,))
        _after_record()

    def add_facts(self, op_id: str, facts: Mapping[str, Any]) -> None:
        """Merge facts from outside a step (an operator's approval) into the operation."""
        self.operation(op_id)
        with self.transaction() as db:
            self._merge_facts(db, op_id, facts, self._clock())

    def records(self, op_id: str) -> list[Record]:
        rows = self.query("SELECT * FROM records WHERE op_id = ? ORDER BY seq", (op_id,))
        return [
            Record(r["op_id"], r["seq"], r["step"], r["phase"], r["status"], json.loads(r["detail"]), r["time"])
            for r in rows
        ]

    def pending(self, op_id: str) -> tuple[str, str] | None:
        rows = self.query(
            "SELECT step, phase FROM records WHERE op_id = ? ORDER BY seq DESC LIMIT 1", (op_id,)
        )
        return (rows[0]["step"], rows[0]["phase"]) if rows else None

    # -- change records -------------------------------------------------------------------------

    def change_open(self, op_id: str, record: dict[str, Any], number: str | None = None
                    ) -> tuple[dict[str, Any], bool]:
        now = self._clock()
        with self.transaction() as db:
            # Checked inside the write lock: two callers racing on one operation get one record.
            row = db.execute("SELECT record FROM changes WHERE op_id = ?", (op_id,)).fetchone()
            if row is not None:
                return dict(json.loads(row[0])), False
            if number is not None:
                if db.execute("SELECT 1 FROM changes WHERE number = ?", (number,)).fetchone():
                    raise OperatorError(f"change {number} already records another operation")
            else:
                last = db.execute("SELECT MAX(CAST(substr(number, 4) AS INTEGER)) FROM changes").fetchone()[0]
                number = next_change_number(last)
            record = {**record, "number": number}
            db.execute("INSERT INTO changes(number, op_id, record, created, updated) VALUES (?,?,?,?,?)",
                       (record["number"], op_id, json.dumps(record), now, now))
        return record, True

    def change_get(self, number: str) -> dict[str, Any] | None:
        rows = self.query("SELECT record FROM changes WHERE number = ?", (number,))
        return dict(json.loads(rows[0][0])) if rows else None

    def change_for_op(self, op_id: str) -> dict[str, Any] | None:
        rows = self.query("SELECT record FROM changes WHERE op_id = ?", (op_id,))
        return dict(json.loads(rows[0][0])) if rows else None

    def change_list(self, limit: int = 50) -> list[dict[str, Any]]:
        rows = self.query("SELECT record FROM changes ORDER BY created DESC, number DESC LIMIT ?", (limit,))
        return [dict(json.loads(r[0])) for r in rows]

    def change_update(self, number: str, change: ChangeFn) -> dict[str, Any] | None:
        now = self._clock()
        with self.transaction() as db:
            row = db.execute("SELECT record FROM changes WHERE number = ?", (number,)).fetchone()
            if row is None:
                return None
            rec: dict[str, Any] = json.loads(row[0])
            change(rec)
            db.execute("UPDATE changes SET record = ?, updated = ? WHERE number = ?", (json.dumps(rec), now, number))
        return rec

    # -- secret state: 0600 files next to the database (CTRLDIR/chap/...), as they always were -----

    def _secret_path(self, name: str) -> Path:
        if not SECRET_NAME_RE.match(name) or ".." in name:
            raise ValueError(f"bad secret name {name!r}")
        return self.path.parent / name

    def secret_get(self, name: str) -> str | None:
        path = self._secret_path(name)
        return path.read_text() if path.exists() else None

    def secret_put(self, name: str, value: str) -> None:
        write_private(self._secret_path(name), value)

    def secret_delete(self, name: str) -> None:
        self._secret_path(name).unlink(missing_ok=True)

    def _append(self, db: sqlite3.Connection, op_id: str, step: str, phase: str, status: str | None,
                detail: Mapping[str, Any] | None) -> None:
        seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM records WHERE op_id = ?", (op_id,)).fetchone()[0]
        db.execute(
            "INSERT INTO records(op_id, seq, step, phase, status, detail, time) VALUES (?,?,?,?,?,?,?)",
            (op_id, seq, step, phase, status, _dumps(detail), self._clock()),
        )
        db.execute("UPDATE operations SET updated = ? WHERE id = ?", (self._clock(), op_id))

    def _merge_facts(self, db: sqlite3.Connection, op_id: str, facts: Mapping[str, Any], now: float) -> None:
        row = db.execute("SELECT facts, from_server, to_server FROM operations WHERE id = ?", (op_id,)).fetchone()
        merged = {**json.loads(row["facts"]), **facts}
        db.execute(
            "UPDATE operations SET facts = ?, from_server = ?, to_server = ?, updated = ? WHERE id = ?",
            (_dumps(merged), merged.get("from_server", row["from_server"]),
             merged.get("to_server", row["to_server"]), now, op_id),
        )


def _operation(r: sqlite3.Row) -> Operation:
    return Operation(
        r["id"], r["kind"], r["persona"], r["from_server"], r["to_server"], r["state"], r["result"],
        r["created"], r["updated"], json.loads(r["facts"]),
    )
