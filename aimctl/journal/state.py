"""Assignment, server marks and leases: the journal's state tables.

Kept apart from the record-keeping core (``journal.py``) so each file stays readable; the
``Journal`` class gets these methods through ``StateMixin``. ``_assign``/``_mark``/``_take_leases``
run inside the caller's transaction so a step result and the state it changes commit together.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from aimctl.errors import OperatorError
from aimctl.secrets import mask


class LeaseHeld(OperatorError):
    """Another operation holds a server or persona; two operations never touch one at once."""

    http_status = 409

    def __init__(self, name: str, holder: str, expires: float, now: float) -> None:
        self.name, self.holder, self.expires = name, holder, expires
        left = max(0, int(expires - now))
        super().__init__(f"{name} is held by {holder} (lease expires in {left}s)")


@dataclass(frozen=True)
class ServerMark:
    """What a step learned about a body, stored with its result."""

    reason: str
    quarantine: bool = True  # keep the planner away until an operator clears it
    failed: bool = False  # the body itself is believed broken (vs. fenced for safety)


@dataclass(frozen=True)
class ServerStatus:
    name: str
    quarantined: bool
    reason: str
    by: str
    since: float | None
    failed: bool


@dataclass(frozen=True)
class Lease:
    name: str
    holder: str
    acquired: float
    expires: float


# A persona's heartbeat replay memory: (boot id, last accepted sequence, earlier boot ids).
HeartbeatMark = tuple[int, int, tuple[int, ...]]


def server_lease(server: str) -> str:
    return f"server:{server}"


def persona_lease(persona: str) -> str:
    return f"persona:{persona}"


class JournalParts:
    """What the journal's table mixins need from the Journal: ``transaction``, ``query``, ``now``."""

    def transaction(self, durable: bool = True) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        raise NotImplementedError

    def now(self) -> float:
        raise NotImplementedError


class StateMixin(JournalParts):
    """Assignment, server marks and leases."""

    # -- assignment and servers -----------------------------------------------------------------

    def assignment(self) -> dict[str, str | None]:
        return {r["persona"]: r["server"] for r in self.query("SELECT persona, server FROM assignment ORDER BY persona")}

    def seed_assignment(self, homes: Mapping[str, str | None]) -> None:
        """First start: personas not yet in the journal get their home; the journal wins after that."""
        now = self.now()
        with self.transaction() as db:
            for persona, server in homes.items():
                db.execute(
                    "INSERT OR IGNORE INTO assignment(persona, server, by, updated) VALUES (?,?,'home',?)",
                    (persona, server, now),
                )

    def set_assignment(self, persona: str, server: str | None, by: str) -> None:
        with self.transaction() as db:
            self._assign(db, persona, server, by, self.now())

    def _assign(self, db: sqlite3.Connection, persona: str, server: str | None, by: str, now: float) -> None:
        db.execute(
            "INSERT INTO assignment(persona, server, by, updated) VALUES (?,?,?,?) ON CONFLICT(persona)"
            " DO UPDATE SET server = excluded.server, by = excluded.by, updated = excluded.updated",
            (persona, server, by, now),
        )

    def quarantine(self, server: str, reason: str, by: str = "operator", failed: bool = False) -> None:
        with self.transaction() as db:
            self._mark(db, server, ServerMark(reason, quarantine=True, failed=failed), by, self.now())

    def clear(self, server: str, by: str = "operator") -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE servers SET quarantined = 0, failed = 0, reason = '', by = ?, since = ? WHERE name = ?",
                (by, self.now(), server),
            )

    def servers(self) -> dict[str, ServerStatus]:
        rows = self.query("SELECT * FROM servers ORDER BY name")
        return {
            r["name"]: ServerStatus(r["name"], bool(r["quarantined"]), r["reason"], r["by"], r["since"], bool(r["failed"]))
            for r in rows
        }

    def _mark(self, db: sqlite3.Connection, server: str, m: ServerMark, by: str, now: float) -> None:
        db.execute(
            "INSERT INTO servers(name, quarantined, reason, by, since, failed) VALUES (?,?,?,?,?,?)"
            " ON CONFLICT(name) DO UPDATE SET quarantined = MAX(quarantined, excluded.quarantined),"
            " reason = excluded.reason, by = excluded.by, since = excluded.since,"
            " failed = MAX(failed, excluded.failed)",
            (server, int(m.quarantine), mask(m.reason), by, now, int(m.failed)),
        )

    # -- leases -------------------------------------------------------------------------------

    def acquire_leases(self, names: Sequence[str], holder: str, ttl_s: float) -> None:
        """All or nothing; re-acquiring a lease one already holds renews it (resume re-takes its own)."""
        with self.transaction() as db:
            self._take_leases(db, names, holder, ttl_s, self.now())

    def _take_leases(self, db: sqlite3.Connection, names: Sequence[str], holder: str, ttl_s: float,
                     now: float) -> None:
        for name in names:
            row = db.execute("SELECT holder, expires FROM leases WHERE name = ?", (name,)).fetchone()
            if row is not None and row["holder"] != holder and row["expires"] > now:
                raise LeaseHeld(name, row["holder"], row["expires"], now)
            db.execute(
                "INSERT INTO leases(name, holder, acquired, expires) VALUES (?,?,?,?) ON CONFLICT(name)"
                " DO UPDATE SET holder = excluded.holder, acquired = CASE WHEN leases.holder = excluded.holder"
                " THEN leases.acquired ELSE excluded.acquired END, expires = excluded.expires",
                (name, holder, now, now + ttl_s),
            )

    def renew(self, name: str, holder: str, ttl_s: float) -> bool:
        """Extend a lease one still holds; False if it expired and someone else took it."""
        # Not durable: a renewal lost to a power cut only shortens a lease that resume re-takes.
        with self.transaction(durable=False) as db:
            now = self.now()
            cur = db.execute(
                "UPDATE leases SET expires = ? WHERE name = ? AND holder = ?", (now + ttl_s, name, holder)
            )
            return cur.rowcount == 1

    def release_lease(self, name: str, holder: str) -> bool:
        with self.transaction() as db:
            return db.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder)).rowcount == 1

    def release_leases(self, holder: str) -> int:
        with self.transaction() as db:
            return db.execute("DELETE FROM leases WHERE holder = ?", (holder,)).rowcount

    def leases(self, include_expired: bool = False) -> list[Lease]:
        rows = self.query("SELECT * FROM leases ORDER BY name")
        now = self.now()
        return [
            Lease(r["name"], r["holder"], r["acquired"], r["expires"])
            for r in rows
            if include_expired or r["expires"] > now
        ]

    # -- heartbeat replay memory ----------------------------------------------------------------

    def heartbeat_marks(self) -> dict[str, HeartbeatMark]:
        rows = self.query("SELECT persona, boot, seq, old FROM heartbeat_marks")
        return {r["persona"]: (int(r["boot"]), int(r["seq"]), tuple(int(b) for b in json.loads(r["old"])))
                for r in rows}

    def save_heartbeat_marks(self, marks: Mapping[str, HeartbeatMark]) -> None:
        """Upsert marks in one transaction. Not durable (no fsync): a mark lost to a power cut only
        widens the window the receiver's replay guard covers after a restart; a process crash
        loses nothing (WAL)."""
        if not marks:
            return
        now = self.now()
        with self.transaction(durable=False) as db:
            db.executemany(
                "INSERT INTO heartbeat_marks(persona, boot, seq, old, updated) VALUES (?,?,?,?,?)"
                " ON CONFLICT(persona) DO UPDATE SET boot = excluded.boot, seq = excluded.seq,"
                " old = excluded.old, updated = excluded.updated",
                [(p, str(b), str(s), json.dumps([str(x) for x in old]), now) for p, (b, s, old) in marks.items()],
            )
