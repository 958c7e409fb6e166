"""The journal's one interface: what the controller stores, whichever backend keeps it.

``JournalStore`` is what callers use (the step runner, the daemon, change records, the CHAP
store). Two backends implement it: SQLite (``journal.sqlite.Journal``, the embedded default) and
etcd (``journal.etcd.EtcdJournal``, when clustered; every write carries the leader's fencing
token). Both pass the same contract suite (``tests/contract/test_journal_backends.py``).

Adding a method: declare it here (abstract, or concrete in terms of the others), implement it in
both backends, and add its case to the contract suite.

Crash seams for tests (both backends): ``AIMCTL_CRASH_AT_RECORD=N`` makes the process
``os._exit(97)`` right after its Nth committed write (counted process-wide; ``commits()`` reads the
count); ``AIMCTL_CRASH_AFTER_STEP_RECORD=N`` right after its Nth intent or result.
"""

from __future__ import annotations

import json
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aimctl.errors import OperatorError
from aimctl.journal.findings import FindingLike, StoredFinding
from aimctl.journal.state import HeartbeatMark, Lease, LeaseHeld, PoolPause, ServerMark, ServerStatus
from aimctl.secrets import mask

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


def after_commit(hook: Callable[[int], None] | None) -> None:
    n = _count("commits", "AIMCTL_CRASH_AT_RECORD")
    if hook is not None:
        hook(n)


def after_record() -> None:
    # AIMCTL_CRASH_AFTER_STEP_RECORD=N: right after this process's Nth intent or result.
    _count("records", "AIMCTL_CRASH_AFTER_STEP_RECORD")


def commits() -> int:
    """Write transactions committed by this process so far (what AIMCTL_CRASH_AT_RECORD counts)."""
    with _count_lock:
        return _counts["commits"]


class UnknownOperation(OperatorError):
    http_status = 404


class JournalInterrupted(Exception):
    """The journal cannot take this write now. The caller stops where it is, exactly as a crash
    would (no result written, no device call), and the operation resumes from the journal later.
    Never turned into an operation's failure: it says nothing about the world."""


class WriteRefused(JournalInterrupted):
    """etcd refused the write: the fencing token it carried is no longer the leader key's."""


class JournalUnavailable(JournalInterrupted, OperatorError):
    """The journal's store does not answer (every etcd endpoint down or cut)."""

    http_status = 503


class LostLeadership(JournalInterrupted):
    """This controller is no longer sure it leads: it starts no device call."""


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


def masked(value: Any) -> Any:
    """Secrets never reach the journal, even by mistake in a step's detail."""
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, Mapping):
        return {str(k): masked(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [masked(v) for v in value]
    return value


def dumps(value: Mapping[str, Any] | None) -> str:
    try:
        return json.dumps(masked(dict(value or {})), sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"journal detail is not JSON-serialisable: {exc}") from None


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown operation kind {kind!r} (want one of {', '.join(KINDS)})")
    return KINDS[kind]


def check_state(state: str) -> None:
    if state not in STATES:
        raise ValueError(f"unknown operation state {state!r}")


def check_status(status: str) -> None:
    if status not in STATUSES:
        raise ValueError(f"unknown step status {status!r} (want one of {', '.join(STATUSES)})")


def check_end(end: tuple[str, str] | None) -> None:
    if end is not None and end[0] not in TERMINAL:
        raise ValueError(f"a result can only end an operation in a terminal state, not {end[0]!r}")


def result_detail(detail: Mapping[str, Any] | None, assignment_change: Mapping[str, str | None] | None,
                  server_marks: Mapping[str, ServerMark] | None) -> dict[str, Any]:
    """What a result record says: its detail plus the state it changed (same in every backend)."""
    full = dict(detail or {})
    if assignment_change:
        full["assignment"] = dict(assignment_change)
    if server_marks:
        full["server_marks"] = {s: m.__dict__ for s, m in server_marks.items()}
    return full


def merge_mark(old: ServerStatus | None, m: ServerMark, by: str, now: float) -> ServerStatus:
    """A new mark never lowers a quarantine or a failed flag; only ``clear`` does."""
    return ServerStatus(
        name=old.name if old else "",
        quarantined=bool(m.quarantine) or (old.quarantined if old else False),
        reason=mask(m.reason), by=by, since=now,
        failed=bool(m.failed) or (old.failed if old else False),
    )


def lease_conflict(name: str, current: Lease | None, holder: str, now: float) -> LeaseHeld | None:
    if current is not None and current.holder != holder and current.expires > now:
        return LeaseHeld(name, current.holder, current.expires, now)
    return None


def timeline(records: Sequence[Record], running: bool) -> list[dict[str, Any]]:
    """The timeline: one entry per attempt of a step (an intent and the result that followed)."""
    out: list[dict[str, Any]] = []
    for r in records:
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
    if out and out[-1]["ended"] is None and running:
        out[-1]["status"] = "running"  # the newest open intent may still be in progress
    return out


ChangeFn = Callable[[dict[str, Any]], None]


class JournalStore(ABC):
    """Operations and their records, the assignment, server marks, leases, change records and
    the controller's secret state (CHAP). Backends differ in where; never in what."""

    # -- basics ---------------------------------------------------------------------------------

    @abstractmethod
    def now(self) -> float: ...

    @abstractmethod
    def close(self) -> None: ...

    @property
    def where(self) -> str:
        """Where this journal lives, for messages (a path, or etcd endpoints and prefix)."""
        return type(self).__name__

    # -- operations -----------------------------------------------------------------------------

    @abstractmethod
    def open_operation(self, kind: str, persona: str, facts: Mapping[str, Any] | None = None, *,
                       from_server: str | None = None, to_server: str | None = None,
                       leases: Sequence[str] = (), ttl_s: float = 3600.0) -> str:
        """Create an operation in state running; its leases are taken in the same write."""

    @abstractmethod
    def operation(self, op_id: str) -> Operation: ...

    @abstractmethod
    def operations(self, limit: int = 50, persona: str | None = None) -> list[Operation]:
        """Newest first."""

    @abstractmethod
    def unfinished_operations(self) -> list[Operation]:
        """Oldest first."""

    @abstractmethod
    def set_state(self, op_id: str, state: str, result: str = "") -> None:
        """A terminal state releases every lease the operation holds, in the same write."""

    # -- records --------------------------------------------------------------------------------

    @abstractmethod
    def intent(self, op_id: str, step: str, detail: Mapping[str, Any] | None = None) -> None: ...

    @abstractmethod
    def result(self, op_id: str, step: str, status: str, detail: Mapping[str, Any] | None = None, *,
               facts: Mapping[str, Any] | None = None,
               assignment_change: Mapping[str, str | None] | None = None,
               server_marks: Mapping[str, ServerMark] | None = None,
               end: tuple[str, str] | None = None) -> None:
        """Append a step's result; facts, assignment and server marks change in the same write.
        ``end=(terminal state, result)`` also ends the operation (and releases its leases) there."""

    @abstractmethod
    def add_facts(self, op_id: str, facts: Mapping[str, Any]) -> None: ...

    @abstractmethod
    def records(self, op_id: str) -> list[Record]: ...

    def pending(self, op_id: str) -> tuple[str, str] | None:
        """(step, phase) of the last record: an ``intent`` there means that step was cut short."""
        recs = self.records(op_id)
        return (recs[-1].step, recs[-1].phase) if recs else None

    def steps(self, op_id: str) -> list[dict[str, Any]]:
        recs = self.records(op_id)
        running = bool(recs) and recs[-1].phase == "intent" and self.operation(op_id).state == "running"
        return timeline(recs, running)

    # -- assignment and servers -------------------------------------------------------------------

    @abstractmethod
    def assignment(self) -> dict[str, str | None]: ...

    @abstractmethod
    def seed_assignment(self, homes: Mapping[str, str | None]) -> None:
        """First start: personas not yet in the journal get their home; the journal wins after that."""

    @abstractmethod
    def set_assignment(self, persona: str, server: str | None, by: str) -> None: ...

    @abstractmethod
    def quarantine(self, server: str, reason: str, by: str = "operator", failed: bool = False) -> None: ...

    @abstractmethod
    def clear(self, server: str, by: str = "operator") -> None: ...

    @abstractmethod
    def servers(self) -> dict[str, ServerStatus]: ...

    def quarantined(self) -> dict[str, ServerStatus]:
        return {k: v for k, v in self.servers().items() if v.quarantined}

    @abstractmethod
    def operations_revision(self) -> tuple[float, int]:
        """(a number that grows whenever any operation changes, how many operations there are): what a
        live view compares to know it must redraw, without reading every operation."""

    # -- operator pauses of pools ----------------------------------------------------------------

    @abstractmethod
    def pause_pool(self, pool: str, by: str, reason: str = "") -> bool:
        """Hold automatic failover in ``pool``; False if it was paused already (the first pause stays)."""

    @abstractmethod
    def resume_pool(self, pool: str) -> bool: ...

    @abstractmethod
    def pool_pauses(self) -> dict[str, PoolPause]: ...

    # -- leases ---------------------------------------------------------------------------------

    @abstractmethod
    def acquire_leases(self, names: Sequence[str], holder: str, ttl_s: float) -> None:
        """All or nothing; re-acquiring a lease one already holds renews it (resume re-takes its own)."""

    def acquire_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        try:
            self.acquire_leases([name], holder, ttl_s)
        except LeaseHeld:
            return False
        return True

    @abstractmethod
    def renew(self, name: str, holder: str, ttl_s: float) -> bool:
        """Extend a lease one still holds; False if it expired and someone else took it."""

    @abstractmethod
    def release_lease(self, name: str, holder: str) -> bool: ...

    @abstractmethod
    def release_leases(self, holder: str) -> int: ...

    @abstractmethod
    def leases(self, include_expired: bool = False) -> list[Lease]: ...

    # -- change records (aimctl.records.changes keeps their shape; the journal keeps them) -------

    @abstractmethod
    def change_open(self, op_id: str, record: dict[str, Any], number: str | None = None
                    ) -> tuple[dict[str, Any], bool]:
        """Store ``record`` for ``op_id`` under the next number (``CHG``+7 digits, written into it) or
        under ``number`` (the operator's own, from their change system; refused if it records another
        operation), unless the operation has one already. Returns (the stored record, created now)."""

    @abstractmethod
    def change_get(self, number: str) -> dict[str, Any] | None: ...

    @abstractmethod
    def change_for_op(self, op_id: str) -> dict[str, Any] | None: ...

    @abstractmethod
    def change_list(self, limit: int = 50) -> list[dict[str, Any]]:
        """Newest first."""

    @abstractmethod
    def change_update(self, number: str, change: ChangeFn) -> dict[str, Any] | None:
        """Read, ``change(record)`` in place, write back atomically; None if there is no such record."""

    # -- drift findings (aimctl.reconcile) -----------------------------------------------------

    @abstractmethod
    def sync_findings(self, found: Sequence[FindingLike], checked: Collection[str]
                      ) -> tuple[list[StoredFinding], list[StoredFinding]]:
        """Store one pass's findings; return (new occurrences, resolved ones)."""

    @abstractmethod
    def mark_alerted(self, keys: Collection[str]) -> None: ...

    @abstractmethod
    def set_repair_op(self, key: str, op_id: str) -> None: ...

    @abstractmethod
    def findings(self, include_resolved: bool = False, limit: int = 1000) -> list[StoredFinding]:
        """Oldest first."""

    # -- the heartbeat receiver's replay memory -------------------------------------------------

    @abstractmethod
    def heartbeat_marks(self) -> dict[str, HeartbeatMark]: ...

    @abstractmethod
    def save_heartbeat_marks(self, marks: Mapping[str, HeartbeatMark]) -> None:
        """Not durable and not fenced: a lost or lowered mark only widens the replay guard's window."""

    # -- secret state (CHAP secrets; encrypted at rest where the store is shared) ----------------

    @abstractmethod
    def secret_get(self, name: str) -> str | None: ...

    @abstractmethod
    def secret_put(self, name: str, value: str) -> None:
        """Durable before it returns: a secret is stored before it is set on any device."""

    @abstractmethod
    def secret_delete(self, name: str) -> None: ...


def next_change_number(last: int | None) -> str:
    return f"CHG{(last or 1000000) + 1:07d}"


__all__ = [
    "BACKGROUND_KINDS", "CRASH_EXIT_CODE", "KINDS", "STATES", "STATUSES", "TERMINAL", "UNFINISHED", "ChangeFn",
    "JournalInterrupted", "JournalStore", "JournalUnavailable", "LostLeadership", "Operation", "Record",
    "UnknownOperation", "WriteRefused", "after_commit", "after_record", "check_end", "check_kind", "check_state",
    "check_status", "commits", "dumps", "lease_conflict", "masked", "merge_mark", "next_change_number",
    "result_detail", "timeline",
]
