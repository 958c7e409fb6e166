"""Exchange DAG recovery: wait for the recovered server's copies, repair stuck copies, rebalance.

Decisions are pure functions over parsed copy status (``exchange_ps`` turns shell text into
``Copy`` and ``Database``); ``run_exchange_dag`` is the only I/O: observe, decide, act, and verify
by observing again.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from aimctl.drivers.ssh import CommandResult
from aimctl.errors import DriverError, Rejected, Timeout
from aimctl.recovery.exchange_ps import (
    ACTIVE_STATES,
    COPY_COLUMNS,
    Copy,
    CopyStatus,
    Database,
    OutputError,
    UnsafeName,
    cmd_copy_status,
    cmd_databases,
    cmd_redistribute,
    cmd_resume,
    cmd_suspend,
    db_name,
    parse_copy_status,
    parse_databases,
    parse_preference,
    ps_name,
    ps_quote,
)

__all__ = [
    "ACTIVE_STATES",
    "COPY_COLUMNS",
    "Action",
    "CommandResult",
    "Copy",
    "CopyStatus",
    "DagOutcome",
    "Database",
    "OutputError",
    "Shell",
    "Thresholds",
    "UnsafeName",
    "actions",
    "cmd_copy_status",
    "cmd_databases",
    "cmd_redistribute",
    "cmd_resume",
    "cmd_suspend",
    "db_name",
    "distribution",
    "healthy_enough",
    "misplaced",
    "not_ready",
    "parse_copy_status",
    "parse_databases",
    "parse_preference",
    "ps_name",
    "ps_quote",
    "run_exchange_dag",
]

# A copy stuck in Failed/Suspended gets at most this many Suspend/Resume commands per hook run:
# a copy that fails again after that needs a human, and hammering it hides the cause.
MAX_ACTIONS_PER_COPY = 3
COMMAND_TIMEOUT_CAP_S = 300.0
WAIT_LOG_EVERY_S = 60.0


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


# ------------------------------------------------------------------------------ decisions


def _caught_up(c: Copy, th: Thresholds) -> bool:
    return (
        c.status is CopyStatus.HEALTHY
        and c.copy_queue is not None
        and c.replay_queue is not None
        and c.copy_queue <= th.copy_queue
        and c.replay_queue <= th.replay_queue
    )


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
            why.append(
                f"{c.identity} {c.raw_status} (copy queue {_show(c.copy_queue)}, "
                f"replay queue {_show(c.replay_queue)})"
            )
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


class Shell(Protocol):
    """Where the DAG commands run: ``aimctl.drivers.ssh.SshSession`` (a replay in the unit tests)."""

    def run(self, command: str, timeout_s: float) -> CommandResult: ...


@dataclass
class DagOutcome:
    ok: bool = False
    error: str | None = None
    before: dict[str, list[str]] = field(default_factory=dict)
    after: dict[str, list[str]] = field(default_factory=dict)
    actions: list[str] = field(default_factory=list)


def run_exchange_dag(
    conn: Shell,
    dag: str,
    server: str,
    deadline_s: float,
    poll_s: float,
    thresholds: Thresholds,
    log: Callable[[str], None],
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> DagOutcome:
    """Wait until ``server``'s copies are caught up, repair stuck copies, rebalance, verify."""
    out = DagOutcome()
    ps_name(dag, "DAG"), ps_name(server, "server")  # refuse before the first command
    server = server.upper()
    end = clock() + deadline_s
    waiting_for = [""]  # what the last poll was waiting for, for a deadline that hits mid-command

    def run(command: str) -> str:
        left = end - clock()
        if left <= 0:
            raise Timeout(dag, f"deadline of {deadline_s:.0f}s passed{waiting_for[0]}")
        try:
            r = conn.run(command, min(left, COMMAND_TIMEOUT_CAP_S))
        except Timeout:
            if clock() < end:
                raise
            # The command had only what was left of the deadline: say which deadline, and why.
            raise Timeout(dag, f"deadline of {deadline_s:.0f}s passed{waiting_for[0]}") from None
        if r.stderr.strip():
            log(f"stderr: {r.stderr.strip()[:500]}")
        if r.exit_status != 0:
            first = (r.stderr.strip() or r.stdout.strip() or "no output").splitlines()[0]
            raise Rejected(dag, f"{command.split(' ', 1)[0]} exited {r.exit_status}: {first[:300]}")
        return r.stdout

    def wait_or_fail(why: str) -> None:
        waiting_for[0] = f": {why}"
        left = end - clock()
        if left <= 0:
            raise Timeout(dag, f"deadline of {deadline_s:.0f}s passed{waiting_for[0]}")
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
        last_said: tuple[object, float] = ((), -1e9)
        while not healthy_enough(copies, server, thresholds):
            for a in actions(copies, server):
                if done[a.copy.identity] < MAX_ACTIONS_PER_COPY:
                    done[a.copy.identity] += 1
                    log(f"{a.verb} {a.copy.identity} (was {a.copy.raw_status})")
                    out.actions.append(f"{a.verb} {a.copy.identity}")
                    run(a.command)
            why = "; ".join(not_ready(copies, server, thresholds))
            # Say it when a state changes, else once a minute: queue numbers move every poll.
            states = tuple((c.identity, c.status) for c in copies if c.server == server)
            if states != last_said[0] or clock() - last_said[1] >= WAIT_LOG_EVERY_S:
                log(f"waiting: {why}")
                last_said = (states, clock())
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
