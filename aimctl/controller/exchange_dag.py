"""Exchange DAG recovery: wait for the recovered server's copies, repair stuck copies, rebalance.

The commands target the Exchange 2010 Management Shell, which is PowerShell 2.0: no
``ConvertTo-Json``, so every read is ``Select-Object ... | ConvertTo-Csv -NoTypeInformation`` and
multi-valued properties are rendered to text by the command itself (``ConvertTo-Csv`` would write a
type name such as ``System.Collections.Generic.KeyValuePair`2[...][]``). The commands use single
quotes only: OpenSSH on Windows hands the command line to the shell, where double quotes would need
another layer of escaping.

Pure parts (builders, parsers, decisions) are separate from ``run_exchange_dag``, the only I/O.
"""

from __future__ import annotations

import csv
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from aimctl.errors import DriverError, OperatorError, Rejected, Timeout
from aimctl.validation import PS_NAME_RE

# Exchange's default database names contain spaces ("Mailbox Database 0311695863"); inside a
# single-quoted PowerShell string a space is inert. Quotes, $, backticks and backslashes never pass.
DB_NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9 _.-]{0,62}[A-Za-z0-9_.-])?$")

# A copy stuck in Failed/Suspended gets at most this many Suspend/Resume commands per hook run:
# a copy that fails again after that needs a human, and hammering it hides the cause.
MAX_ACTIONS_PER_COPY = 3
COMMAND_TIMEOUT_CAP_S = 300.0


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
ACTIVE_STATES = frozenset({CopyStatus.MOUNTED, CopyStatus.MOUNTING, CopyStatus.DISMOUNTING, CopyStatus.DISMOUNTED})


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


@dataclass(frozen=True)
class Thresholds:
    """Queue lengths (in log files) a passive copy may have and still count as caught up."""

    copy_queue: int = 10
    replay_queue: int = 50


@dataclass(frozen=True)
class Action:
    verb: str  # "suspend" | "resume"
    copy: Copy
    command: str


# ------------------------------------------------------------------------------ command builders


def ps_name(value: str, what: str) -> str:
    """Validate a DAG or server name for PowerShell; refuse anything else before any connection."""
    if not isinstance(value, str) or not PS_NAME_RE.match(value):
        raise UnsafeName(f"{what} name {value!r} refused: only letters, digits, '-' and '_' may reach PowerShell")
    return value


def db_name(value: str) -> str:
    if not isinstance(value, str) or not DB_NAME_RE.match(value):
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
        f"{ps_quote(ps_name(dag, 'DAG'))}).Servers)) {{ $copies += @(Get-MailboxDatabaseCopyStatus -Server $s) }}; "
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
            return [dict(zip(header, (c.strip() for c in r))) for r in rows[i + 1 :] if any(c.strip() for c in r)]
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
        copies.append(Copy(db_name(database), ps_name(server.upper(), "server"), CopyStatus.parse(row["Status"]),
                           row["Status"], _queue(row.get("CopyQueueLength")), _queue(row.get("ReplayQueueLength"))))
    return copies


_PAIR_RE = re.compile(r"\[\s*([^,\[\]]+?)\s*,\s*(\d+)\s*\]")


def parse_preference(text: str) -> tuple[str, ...]:
    """``{[EXCH1, 1], [EXCH2, 2]}`` (as Exchange prints it) → ("EXCH1", "EXCH2")."""
    pairs = _PAIR_RE.findall(text)
    if not pairs:
        raise OutputError("exchange", f"ActivationPreference {text[:120]!r} is not a list of [server, n] pairs")
    ranked = sorted((int(n), ps_name(s.upper(), "server")) for s, n in pairs)
    return tuple(s for _, s in ranked)


def parse_databases(text: str) -> list[Database]:
    return [
        Database(db_name(r["Name"]), r.get("Server", "").upper(), parse_preference(r["ActivationPreference"]))
        for r in _csv_rows(text, ("Name", "ActivationPreference"), "Get-MailboxDatabase")
    ]


# ------------------------------------------------------------------------------ decisions


def _caught_up(c: Copy, th: Thresholds) -> bool:
    return (c.status is CopyStatus.HEALTHY and c.copy_queue is not None and c.replay_queue is not None
            and c.copy_queue <= th.copy_queue and c.replay_queue <= th.replay_queue)


def not_ready(copies: Iterable[Copy], server: str, th: Thresholds) -> list[str]:
    """Why the server's copies are not yet good enough, one phrase per copy (empty: ready)."""
    mine = [c for c in copies if c.server == server.upper()]
    if not mine:
        return [f"no database copies on {server}"]
    why = []
    for c in mine:
        if c.status in ACTIVE_STATES and c.status is not CopyStatus.MOUNTED:
            why.append(f"{c.identity} {c.raw_status}")
        elif c.status is not CopyStatus.MOUNTED and not _caught_up(c, th):
            why.append(f"{c.identity} {c.raw_status} (copy queue {_show(c.copy_queue)}, "
                       f"replay queue {_show(c.replay_queue)})")
    return why


def _show(n: int | None) -> str:
    return "?" if n is None else str(n)


def healthy_enough(copies: Iterable[Copy], server: str, thresholds: Thresholds) -> bool:
    """Every copy on ``server`` is Mounted, or Healthy with both queues within the thresholds."""
    return not not_ready(copies, server, thresholds)


def actions(copies: Iterable[Copy], server: str | None = None) -> list[Action]:
    """Suspend Failed copies; resume FailedAndSuspended and Suspended ones (status enum names,
    not the "Failed and Suspended" display text, which never matches)."""
    out = []
    for c in copies:
        if server is not None and c.server != server.upper():
            continue
        if c.status is CopyStatus.FAILED:
            out.append(Action("suspend", c, cmd_suspend(c.database, c.server)))
        elif c.status in (CopyStatus.FAILED_AND_SUSPENDED, CopyStatus.SUSPENDED):
            out.append(Action("resume", c, cmd_resume(c.database, c.server)))
    return out


def distribution(copies: Iterable[Copy]) -> dict[str, list[str]]:
    """Active databases per server; every server seen is listed, empty when it has none."""
    dist: dict[str, list[str]] = {}
    for c in copies:
        dist.setdefault(c.server, [])
        if c.status in ACTIVE_STATES:
            dist[c.server].append(c.database)
    return {s: sorted(dbs) for s, dbs in sorted(dist.items())}


def misplaced(copies: Iterable[Copy], databases: Iterable[Database]) -> list[str]:
    """Databases not active on their preference-1 server although that copy is Healthy."""
    by_id = {(c.database, c.server): c for c in copies}
    active = {c.database: c.server for c in by_id.values() if c.status in ACTIVE_STATES}
    out = []
    for db in databases:
        if not db.preference:
            continue
        first = db.preference[0]
        there = by_id.get((db.name, first))
        if active.get(db.name) != first and there is not None and there.status is CopyStatus.HEALTHY:
            out.append(f"{db.name} active on {active.get(db.name, 'no server')}, preference 1 is {first}")
    return out


# ------------------------------------------------------------------------------ the flow


@dataclass(frozen=True)
class CommandResult:
    exit_status: int
    stdout: str
    stderr: str


class Shell(Protocol):
    def run(self, command: str, timeout_s: float) -> CommandResult: ...


@dataclass
class DagOutcome:
    ok: bool = False
    error: str | None = None
    before: dict[str, list[str]] = field(default_factory=dict)
    after: dict[str, list[str]] = field(default_factory=dict)
    actions: list[str] = field(default_factory=list)


def run_exchange_dag(conn: Shell, dag: str, server: str, deadline_s: float, poll_s: float,
                     thresholds: Thresholds, log: Callable[[str], None], *,
                     clock: Callable[[], float] = time.monotonic,
                     sleep: Callable[[float], None] = time.sleep) -> DagOutcome:
    """Wait until ``server``'s copies are caught up, repair stuck copies, rebalance, verify."""
    out = DagOutcome()
    ps_name(dag, "DAG"), ps_name(server, "server")  # refuse before the first command
    server = server.upper()
    end = clock() + deadline_s

    def run(command: str) -> str:
        left = end - clock()
        if left <= 0:
            raise Timeout(dag, f"deadline of {deadline_s:.0f}s passed")
        r = conn.run(command, min(left, COMMAND_TIMEOUT_CAP_S))
        if r.stderr.strip():
            log(f"stderr: {r.stderr.strip()[:500]}")
        if r.exit_status != 0:
            first = (r.stderr.strip() or r.stdout.strip() or "no output").splitlines()[0]
            raise Rejected(dag, f"{command.split(' ', 1)[0]} exited {r.exit_status}: {first[:300]}")
        return r.stdout

    def wait_or_fail(why: str) -> None:
        left = end - clock()
        if left <= 0:
            raise Timeout(dag, f"deadline of {deadline_s:.0f}s passed: {why}")
        sleep(min(poll_s, left))

    try:
        dbs = parse_databases(run(cmd_databases(dag)))
        if not dbs:
            raise Rejected(dag, f"no mailbox databases found in DAG {dag} (is the DAG name right?)")
        if not any(server in d.preference for d in dbs):
            raise Rejected(dag, f"{server} holds no copy of any database in DAG {dag}")
        copies = parse_copy_status(run(cmd_copy_status(dag)))
        out.before = distribution(copies)
        log(f"active before: {_fmt(out.before)}")
        done: Counter[str] = Counter()
        while not healthy_enough(copies, server, thresholds):
            for a in actions(copies, server):
                if done[a.copy.identity] < MAX_ACTIONS_PER_COPY:
                    done[a.copy.identity] += 1
                    log(f"{a.verb} {a.copy.identity} (was {a.copy.raw_status})")
                    out.actions.append(f"{a.verb} {a.copy.identity}")
                    run(a.command)
            why = "; ".join(not_ready(copies, server, thresholds))
            log(f"waiting: {why}")
            wait_or_fail(f"copies on {server} not healthy: {why}")
            copies = parse_copy_status(run(cmd_copy_status(dag)))
        log(f"copies on {server} healthy; redistributing {dag} by activation preference")
        for line in run(cmd_redistribute(dag)).strip().splitlines()[-20:]:
            log(f"  {line}")
        while True:  # act, then verify by observation
            copies = parse_copy_status(run(cmd_copy_status(dag)))
            out.after = distribution(copies)
            bad = misplaced(copies, dbs)
            if not bad:
                break
            wait_or_fail("after redistribution " + "; ".join(bad))
        log(f"active after: {_fmt(out.after)}")
        out.ok = True
    except (DriverError, UnsafeName) as exc:  # a bad name in the shell's answer fails the run too
        out.error = str(exc)
        log(f"failed: {exc}")
    return out


def _fmt(dist: dict[str, list[str]]) -> str:
    return ", ".join(f"{s}=[{' '.join(dbs)}]" for s, dbs in dist.items()) or "none"
