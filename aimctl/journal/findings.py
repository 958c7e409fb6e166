"""Drift findings in the journal: what differs from the definitions, where, and since when.

One row per check (``key``, e.g. ``ports:sw1:1/g3``). A reconcile pass hands over what it found and
which checks it could actually read; a finding not seen again on a check that *was* read is
resolved, one on a device that did not answer stays as it was (unknown is not fixed). A resolved
finding that comes back is a new occurrence: new ``since``, alerted again.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from aimctl.journal.state import JournalParts
from aimctl.secrets import mask


class FindingLike(Protocol):
    @property
    def key(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def persona(self) -> str | None: ...
    @property
    def server(self) -> str | None: ...
    @property
    def device(self) -> str: ...
    @property
    def what(self) -> str: ...
    @property
    def expected(self) -> str: ...
    @property
    def observed(self) -> str: ...


@dataclass(frozen=True)
class StoredFinding:
    key: str
    kind: str
    persona: str | None
    server: str | None
    device: str
    what: str
    expected: str
    observed: str
    since: float
    seen: float
    alerted: bool
    resolved: float | None
    repair_op: str | None


def _row(r: sqlite3.Row) -> StoredFinding:
    return StoredFinding(r["key"], r["kind"], r["persona"], r["server"], r["device"], r["what"], r["expected"],
                         r["observed"], r["since"], r["seen"], bool(r["alerted"]), r["resolved"], r["repair_op"])


class FindingsMixin(JournalParts):
    """Drift findings."""

    def sync_findings(self, found: Sequence[FindingLike], checked: Collection[str]
                      ) -> tuple[list[StoredFinding], list[StoredFinding]]:
        """Store one pass's findings; return (new occurrences, resolved ones). Not durable: a pass
        lost to a power cut is simply run again."""
        now = self.now()
        new: list[str] = []
        resolved: list[str] = []
        keys = {f.key for f in found}
        with self.transaction(durable=False) as db:
            open_rows = {r["key"] for r in db.execute("SELECT key FROM findings WHERE resolved IS NULL")}
            for f in found:
                values = (f.kind, f.persona, f.server, f.device, mask(f.what), mask(f.expected), mask(f.observed))
                if f.key in open_rows:
                    db.execute("UPDATE findings SET kind=?, persona=?, server=?, device=?, what=?, expected=?,"
                               " observed=?, seen=? WHERE key=?", (*values, now, f.key))
                else:
                    db.execute("INSERT INTO findings(key, kind, persona, server, device, what, expected, observed,"
                               " since, seen, alerted, resolved, repair_op) VALUES (?,?,?,?,?,?,?,?,?,?,0,NULL,NULL)"
                               " ON CONFLICT(key) DO UPDATE SET kind=excluded.kind, persona=excluded.persona,"
                               " server=excluded.server, device=excluded.device, what=excluded.what,"
                               " expected=excluded.expected, observed=excluded.observed, since=excluded.since,"
                               " seen=excluded.seen, alerted=0, resolved=NULL, repair_op=NULL",
                               (f.key, *values, now, now))
                    new.append(f.key)
            for key in sorted((open_rows & set(checked)) - keys):
                db.execute("UPDATE findings SET resolved = ? WHERE key = ?", (now, key))
                resolved.append(key)
        rows = {r.key: r for r in self._finding_rows(new + resolved)}
        return [rows[k] for k in new], [rows[k] for k in resolved]

    def mark_alerted(self, keys: Collection[str]) -> None:
        with self.transaction(durable=False) as db:
            db.executemany("UPDATE findings SET alerted = 1 WHERE key = ?", [(k,) for k in keys])

    def set_repair_op(self, key: str, op_id: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE findings SET repair_op = ? WHERE key = ?", (op_id, key))

    def findings(self, include_resolved: bool = False, limit: int = 1000) -> list[StoredFinding]:
        where = "" if include_resolved else "WHERE resolved IS NULL"
        rows = self.query(f"SELECT * FROM findings {where} ORDER BY since, key LIMIT ?", (limit,))
        return [_row(r) for r in rows]

    def _finding_rows(self, keys: Sequence[str]) -> list[StoredFinding]:
        if not keys:
            return []
        marks = ",".join("?" * len(keys))
        return [_row(r) for r in self.query(f"SELECT * FROM findings WHERE key IN ({marks})", list(keys))]
