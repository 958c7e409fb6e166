"""The controller's journal: one SQLite database (WAL) that is the source of truth for what it did.

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
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aimctl.errors import OperatorError
from aimctl.journal import schema
from aimctl.journal.findings import FindingsMixin, StoredFinding
from aimctl.journal.state import (  # re-exported: one import for callers
    Lease,
    LeaseHeld,
    ServerMark,
    ServerStatus,
    StateMixin,
    persona_lease,
    server_lease,
)
from aimctl.secrets import mask

__all__ = [
    "BACKGROUND_KINDS",
    "CRASH_EXIT_CODE",
    "KINDS",
    "STATES",
    "STATUSES",
    "TERMINAL",
    "UNFINISHED",
    "Journal",
    "Lease",
    "LeaseHeld",
    "Operation",
    "Record",
    "ServerMark",
    "ServerStatus",
    "StoredFinding",
    "UnknownOperation",
    "commits",
    "persona_lease",
    "server_lease",
]

KINDS = {"failover": "fo", "move": "mv", "failback": "fb", "repair": "rp", "archive": "ar", "restore": "rs",
         "rehearsal": "rh", "provision": "pv"}
# Kinds that leave the persona running where it is: the detector keeps watching it, and a failover
# of the persona (or, for a rehearsal, of its pool) pre-empts them.
BACKGROUND_KINDS = ("archive", "rehearsal")
STATES = ("running", "needs-operator", "waiting-approval", "done", "failed", "aborted")
UNFINISHED = ("running", "needs-operator", "waiting-approval")
TERMINAL = ("done", "failed", "aborted")
STATUSES = ("ok", "failed", "skipped", "retarget")
CRASH_EXIT_CODE = 97

_count_lock = threading.Lock()
_counts = {"commits": 0, "records": 0}


def _count(kind: str, crash_env: str) -> int:
    """Count one more commit or step record; die here (a crash, not a shutdown: no cleanup, no
    flush) when ``crash_env`` names this number. The crash tests walk every point with it."""
    with _count_lock:
        _counts[kind] += 1
        n = _counts[kind]
    crash_at = os.environ.get(crash_env)
    if crash_at and crash_at.isdigit() and int(crash_at) == n:
        os._exit(CRASH_EXIT_CODE)
    return n


def _after_commit(hook: Callable[[int], None] | None) -> None:
    n = _count("commits", "AIMCTL_CRASH_AT_RECORD")
    if hook is not None:
        hook(n)


def _after_record() -> None:
    # AIMCTL_CRASH_AFTER_STEP_RECORD=N: right after this process's Nth intent or result.
    _count("records", "AIMCTL_CRASH_AFTER_STEP_RECORD")


def commits() -> int:
    """Write transactions committed by this process so far (what AIMCTL_CRASH_AT_RECORD counts)."""
    with _count_lock:
        return _counts["commits"]


class UnknownOperation(OperatorError):
    http_status = 404


@dataclass(frozen=True)
class Operation:
    id: str
    kind: str
    persona: str
    from_server: str | None
    to_server: str | None
    state: str
    result: str
    created: float
    updated: float
    facts: dict[str, Any]


@dataclass(frozen=True)
class Record:
    op_id: str
    seq: int
    step: str
    phase: str  # intent | result
    status: str | None  # None for intents
    detail: dict[str, Any]
    time: float


def _masked(value: Any) -> Any:
    """Secrets never reach the journal, even by mistake in a step's detail."""
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, Mapping):
        return {str(k): _masked(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_masked(v) for v in value]
    return value


def _dumps(value: Mapping[str, Any] | None) -> str:
    try:
        return json.dumps(_masked(dict(value or {})), sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"journal detail is not JSON-serialisable: {exc}") from None


class Journal(StateMixin, FindingsMixin):
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
        if kind not in KINDS:
            raise ValueError(f"unknown operation kind {kind!r} (want one of {', '.join(KINDS)})")
        now = self._clock()
        prefix = f"{KINDS[kind]}-{time.strftime('%Y%m%d', time.gmtime(now))}-"
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

    def unfinished_operations(self) -> list[Operation]:
        marks = ",".join("?" * len(UNFINISHED))
        rows = self.query(f"SELECT * FROM operations WHERE state IN ({marks}) ORDER BY created", UNFINISHED)
        return [_operation(r) for r in rows]

    def set_state(self, op_id: str, state: str, result: str = "") -> None:
        """Set an operation's state; a terminal state releases every lease the operation holds."""
        if state not in STATES:
            raise ValueError(f"unknown operation state {state!r}")
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
        if status not in STATUSES:
            raise ValueError(f"unknown step status {status!r} (want one of {', '.join(STATUSES)})")
        if end is not None and end[0] not in TERMINAL:
            raise ValueError(f"a result can only end an operation in a terminal state, not {end[0]!r}")
        full = dict(detail or {})
        if assignment_change:
            full["assignment"] = dict(assignment_change)
        if server_marks:
            full["server_marks"] = {s: m.__dict__ for s, m in server_marks.items()}
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
        """(step, phase) of the last record: an ``intent`` there means that step was cut short."""
        rows = self.query(
            "SELECT step, phase FROM records WHERE op_id = ? ORDER BY seq DESC LIMIT 1", (op_id,)
        )
        return (rows[0]["step"], rows[0]["phase"]) if rows else None

    def steps(self, op_id: str) -> list[dict[str, Any]]:
        """The timeline: one entry per attempt of a step (an intent and the result that followed)."""
        out: list[dict[str, Any]] = []
        for r in self.records(op_id):
            if r.phase == "intent":
                out.append({"step": r.step, "started": r.time, "ended": None, "duration_s": None,
                            "status": "interrupted", "resumed": bool(r.detail.get("resumed")),
                            "intent": r.detail, "detail": {}})
                continue
            last = out[-1] if out else None
            if last is None or last["step"] != r.step or last["ended"] is not None:
                last = {"step": r.step, "started": None, "resumed": False, "intent": {}}
                out.append(last)
            last.update(ended=r.time, status=r.status, detail=r.detail,
                        duration_s=None if last["started"] is None else r.time - last["started"])
        if out and out[-1]["ended"] is None and self.operation(op_id).state == "running":
            out[-1]["status"] = "running"  # the newest open intent may still be in progress
        return out

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
