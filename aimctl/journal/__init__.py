"""The journal: the controller's record of what it did and the state that follows from it.

Callers import from here, never from a backend module: SQLite is the embedded backend
(``aimctl.journal.sqlite``).
"""

from aimctl.journal.sqlite import (
    BACKGROUND_KINDS,
    CRASH_EXIT_CODE,
    KINDS,
    STATES,
    STATUSES,
    TERMINAL,
    UNFINISHED,
    Journal,
    Lease,
    LeaseHeld,
    Operation,
    Record,
    ServerMark,
    ServerStatus,
    StoredFinding,
    UnknownOperation,
    commits,
    persona_lease,
    server_lease,
)

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
