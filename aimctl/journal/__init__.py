"""The journal: the controller's record of what it did and the state that follows from it.

Callers import from here, never from a backend module. ``JournalStore`` is the one interface;
SQLite is the embedded backend (``Journal``, the default), etcd the clustered one
(``etcd_journal``, imported on first use so an embedded controller never loads an etcd client).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aimctl.journal.base import (
    BACKGROUND_KINDS,
    CRASH_EXIT_CODE,
    KINDS,
    STATES,
    STATUSES,
    TERMINAL,
    UNFINISHED,
    JournalInterrupted,
    JournalStore,
    JournalUnavailable,
    LostLeadership,
    Operation,
    Record,
    UnknownOperation,
    WriteRefused,
    commits,
)
from aimctl.journal.findings import StoredFinding
from aimctl.journal.sqlite import Journal
from aimctl.journal.state import (
    Lease,
    LeaseHeld,
    PoolPause,
    ServerMark,
    ServerStatus,
    persona_lease,
    server_lease,
)

if TYPE_CHECKING:
    from aimctl.journal.etcd import EtcdJournal


def etcd_journal(*args: Any, **kwargs: Any) -> EtcdJournal:
    """The etcd backend (see ``aimctl.journal.etcd.EtcdJournal`` for its arguments)."""
    from aimctl.journal.etcd import EtcdJournal

    return EtcdJournal(*args, **kwargs)


__all__ = [
    "BACKGROUND_KINDS",
    "CRASH_EXIT_CODE",
    "KINDS",
    "STATES",
    "STATUSES",
    "TERMINAL",
    "UNFINISHED",
    "Journal",
    "JournalInterrupted",
    "JournalStore",
    "JournalUnavailable",
    "Lease",
    "LeaseHeld",
    "LostLeadership",
    "Operation",
    "PoolPause",
    "Record",
    "ServerMark",
    "ServerStatus",
    "StoredFinding",
    "UnknownOperation",
    "WriteRefused",
    "commits",
    "etcd_journal",
    "persona_lease",
    "server_lease",
]
