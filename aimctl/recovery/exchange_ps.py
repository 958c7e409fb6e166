"""Exchange Management Shell text, both ways: command builders and parsers of their output.

The commands target the Exchange 2010 Management Shell, which is PowerShell 2.0: no
``ConvertTo-Json``, so every read is ``Select-Object ... | ConvertTo-Csv -NoTypeInformation`` and
multi-valued properties are rendered to text by the command itself (``ConvertTo-Csv`` would write a
type name such as ``System.Collections.Generic.KeyValuePair`2[...][]``). The commands use single
quotes only: OpenSSH on Windows hands the command line to the shell, where double quotes would need
another layer of escaping. Every name is validated before it is quoted; names read back from the
shell are validated too, since they go into the next command.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from aimctl.errors import DriverError, OperatorError
from aimctl.validation import PS_NAME_RE

# Exchange's default database names contain spaces ("Mailbox Database 0311695863"); inside a
# single-quoted PowerShell string a space is inert. Quotes, $, backticks and backslashes never pass.
DB_NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9 _.-]{0,62}[A-Za-z0-9_.-])?$")


class UnsafeName(OperatorError):
    """A name that would reach PowerShell does not match the strict pattern; nothing was sent."""


class OutputError(DriverError):
    """The management shell answered with text we cannot read as the documented CSV."""


class CopyStatus(StrEnum):
    """Microsoft.Exchange.Management.SystemConfigurationTasks.CopyStatus (Exchange 2010)."""

    UNKNOWN = "Unknown"
    FAILED = "Failed"
    SEEDING = "Seeding"
    SUSPENDED = "Suspended"
    HEALTHY = "Healthy"
    SERVICE_DOWN = "ServiceDown"
    INITIALIZING = "Initializing"
    RESYNCHRONIZING = "Resynchronizing"
    MOUNTED = "Mounted"
    DISMOUNTED = "Dismounted"
    MOUNTING = "Mounting"
    DISMOUNTING = "Dismounting"
    DISCONNECTED_AND_HEALTHY = "DisconnectedAndHealthy"
    FAILED_AND_SUSPENDED = "FailedAndSuspended"
    DISCONNECTED_AND_RESYNCHRONIZING = "DisconnectedAndResynchronizing"
    NON_EXCHANGE_REPLICATION = "NonExchangeReplication"
    SEEDING_SOURCE = "SeedingSource"
    MISCONFIGURED = "Misconfigured"

    @classmethod
    def parse(cls, text: str) -> CopyStatus:
        key = text.strip().replace(" ", "").lower()
        for member in cls:
            if member.value.lower() == key:
                return member
        return cls.UNKNOWN


# The copy that holds the active database shows one of these; passive copies never do.
ACTIVE_STATES = frozenset(
    {CopyStatus.MOUNTED, CopyStatus.MOUNTING, CopyStatus.DISMOUNTING, CopyStatus.DISMOUNTED}
)


@dataclass(frozen=True)
class Copy:
    database: str
    server: str
    status: CopyStatus
    raw_status: str
    copy_queue: int | None
    replay_queue: int | None

    @property
    def identity(self) -> str:
        return f"{self.database}\\{self.server}"


@dataclass(frozen=True)
class Database:
    name: str
    server: str  # where Active Directory says it is mounted; may be empty
    preference: tuple[str, ...]  # server names, activation preference 1 first


# ------------------------------------------------------------------------------ command builders


def ps_name(value: str, what: str) -> str:
    """Validate a DAG or server name for PowerShell; refuse anything else before any connection."""
    if not isinstance(value, str) or not PS_NAME_RE.fullmatch(value):
        raise UnsafeName(
            f"{what} name {value!r} refused: only letters, digits, '-' and '_' may reach PowerShell"
        )
    return value


def db_name(value: str) -> str:
    if not isinstance(value, str) or not DB_NAME_RE.fullmatch(value):
        raise UnsafeName(f"database name {value!r} refused: only letters, digits, space, '.', '-', '_'")
    return value


def ps_quote(value: str) -> str:
    """A PowerShell single-quoted literal. Callers validate first; doubling quotes is the belt to that."""
    for q in ("'", "\u2018", "\u2019", "\u201a", "\u201b"):  # PowerShell treats all of these as quotes
        value = value.replace(q, q + q)
    return f"'{value}'"


COPY_COLUMNS = ("Name", "DatabaseName", "MailboxServer", "Status", "CopyQueueLength", "ReplayQueueLength")


def cmd_copy_status(dag: str) -> str:
    # Servers are collected first: in Exchange's remote shell, calling a second Exchange cmdlet
    # inside a pipeline that is still streaming from the first fails ("pipelines cannot be
    # executed concurrently").
    return (
        "$copies = @(); foreach ($s in @((Get-DatabaseAvailabilityGroup -Identity "
        f"{ps_quote(ps_name(dag, 'DAG'))}).Servers)) "
        "{ $copies += @(Get-MailboxDatabaseCopyStatus -Server $s) }; "
        f"$copies | Select-Object {','.join(COPY_COLUMNS)} | ConvertTo-Csv -NoTypeInformation"
    )


def cmd_databases(dag: str) -> str:
    # Activation preference comes from Get-MailboxDatabase (Active Directory), which is
    # authoritative; the copy-status cmdlet asks the servers and has printed wrong values.
    return (
        "Get-MailboxDatabase | Where-Object { [string]$_.MasterServerOrAvailabilityGroup -eq "
        f"{ps_quote(ps_name(dag, 'DAG'))} }} | Select-Object Name,Server,@{{Name='ActivationPreference';"
        "Expression={'{' + ((@($_.ActivationPreference) | ForEach-Object { [string]$_ }) -join ', ') + '}'}} "
        "| ConvertTo-Csv -NoTypeInformation"
    )


def _identity(database: str, server: str) -> str:
    return ps_quote(f"{db_name(database)}\\{ps_name(server, 'server')}")


def cmd_suspend(database: str, server: str) -> str:
    return f"Suspend-MailboxDatabaseCopy -Identity {_identity(database, server)} -Confirm:$false"


def cmd_resume(database: str, server: str) -> str:
    return f"Resume-MailboxDatabaseCopy -Identity {_identity(database, server)} -Confirm:$false"


def cmd_redistribute(dag: str) -> str:
    # $exscripts is set by the Exchange Management Shell; calling by path avoids a Set-Location.
    return (
        "& (Join-Path $exscripts 'RedistributeActiveDatabases.ps1') -DagName "
        f"{ps_quote(ps_name(dag, 'DAG'))} -BalanceDbsByActivationPreference -Confirm:$false"
    )


# ------------------------------------------------------------------------------ parsers


def _csv_rows(text: str, required: Iterable[str], what: str) -> list[dict[str, str]]:
    """Rows of ConvertTo-Csv output. Lines before the header (warnings, banners) are skipped.

    ConvertTo-Csv writes nothing at all, not even a header, when no object reached it.
    """
    lines = [ln for ln in text.lstrip("\ufeff").splitlines() if ln.strip() and not ln.startswith("#TYPE")]
    if not lines:
        return []
    need = set(required)
    rows = list(csv.reader(lines))
    for i, row in enumerate(rows):
        header = [c.strip().lstrip("\ufeff") for c in row]
        if need <= set(header):
            return [
                dict(zip(header, (c.strip() for c in r))) for r in rows[i + 1 :] if any(c.strip() for c in r)
            ]
    raise OutputError("exchange", f"{what}: no CSV header with {', '.join(sorted(need))} in: {text[:200]!r}")


def _queue(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit():
        return None  # ServiceDown and Unknown copies print nothing here
    return int(value)


def parse_copy_status(text: str) -> list[Copy]:
    copies = []
    for row in _csv_rows(text, ("Name", "Status"), "Get-MailboxDatabaseCopyStatus"):
        name = row["Name"]
        database, sep, server = name.partition("\\")
        database = row.get("DatabaseName") or database
        server = row.get("MailboxServer") or server
        if not sep and not row.get("MailboxServer"):
            raise OutputError("exchange", f"copy name {name!r} is not DATABASE\\SERVER")
        copies.append(
            Copy(
                db_name(database),
                ps_name(server.upper(), "server"),
                CopyStatus.parse(row["Status"]),
                row["Status"],
                _queue(row.get("CopyQueueLength")),
                _queue(row.get("ReplayQueueLength")),
            )
        )
    return copies


_PAIR_RE = re.compile(r"\[\s*([^,\[\]]+?)\s*,\s*(\d+)\s*\]")


def parse_preference(text: str) -> tuple[str, ...]:
    """``{[EXCH1, 1], [EXCH2, 2]}`` (as Exchange prints it) → ("EXCH1", "EXCH2")."""
    pairs = _PAIR_RE.findall(text)
    if not pairs:
        raise OutputError(
            "exchange", f"ActivationPreference {text[:120]!r} is not a list of [server, n] pairs"
        )
    ranked = sorted((int(n), ps_name(s.upper(), "server")) for s, n in pairs)
    return tuple(s for _, s in ranked)


def parse_databases(text: str) -> list[Database]:
    return [
        Database(db_name(r["Name"]), r.get("Server", "").upper(), parse_preference(r["ActivationPreference"]))
        for r in _csv_rows(text, ("Name", "ActivationPreference"), "Get-MailboxDatabase")
    ]
