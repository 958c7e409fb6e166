"""An Exchange DAG behind an SSH server: the management host the exchange-dag hook talks to.

It answers exactly the Exchange Management Shell commands the hook sends (copy status and
activation preferences as ``ConvertTo-Csv`` output, Suspend/Resume of a copy, and
RedistributeActiveDatabases.ps1); anything else gets a PowerShell-like error and exit 1. The
command shapes are written out here on purpose, not imported from the hook: the contract tests
then prove that the two agree.

State model (thread-safe, driven by a monotonic clock: states are computed when read, so no
thread sleeps):

- each database has one copy per member, ranked by activation preference; one copy is Mounted.
- ``host_died(persona)``: its copies go ServiceDown (what Exchange reports for an unreachable
  member) and each database active there moves to the first surviving member with a Healthy copy,
  as Active Manager does.
- ``host_alive(persona)``: its copies run Initializing → Resynchronizing → Healthy (lagging) →
  Healthy (caught up) over ``resync_s``; copies named in ``failed=`` come back Failed instead,
  and need Suspend then Resume.
- ``stick_failed(db, server)``: that copy stays Failed: it comes back Failed and a Resume fails it
  again (a copy whose log stream is damaged: the fault ``dag-copy-failed``).
- redistribution moves each database to its most preferred member with a Healthy copy.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from lab.apps.ssh_exec import ExecServer

DEFAULT_MEMBERS = {"EXCH1": "exchange1", "EXCH2": "exchange2"}
# Preference 1 split across the two members, as in the reference DAG.
DEFAULT_DATABASES = {
    "DB01": ["EXCH1", "EXCH2"],
    "DB02": ["EXCH2", "EXCH1"],
    "DB03": ["EXCH1", "EXCH2"],
    "DB04": ["EXCH2", "EXCH1"],
}
BACKLOG = 400  # copy queue (log files) a returning member starts with
LAG = 40  # copy queue still left when the copy first reads Healthy (above the hook's default 10)


def _pattern(template: str) -> re.Pattern[str]:
    parts = re.split(r"(<\w+>)", template)
    return re.compile(
        "^" + "".join(f"(?P{p}[^'\\\\]+)" if p.startswith("<") else re.escape(p) for p in parts) + "$"
    )


COMMANDS = {
    "copies": _pattern(
        "$copies = @(); foreach ($s in @((Get-DatabaseAvailabilityGroup -Identity '<dag>').Servers)) "
        "{ $copies += @(Get-MailboxDatabaseCopyStatus -Server $s) }; "
        "$copies | Select-Object <cols> | ConvertTo-Csv -NoTypeInformation"
    ),
    "databases": _pattern(
        "Get-MailboxDatabase | Where-Object { [string]$_.MasterServerOrAvailabilityGroup -eq '<dag>' } "
        "| Select-Object Name,Server,@{Name='ActivationPreference';"
        "Expression={'{' + ((@($_.ActivationPreference) | ForEach-Object { [string]$_ }) -join ', ') + '}'}} "
        "| ConvertTo-Csv -NoTypeInformation"
    ),
    "suspend": _pattern("Suspend-MailboxDatabaseCopy -Identity '<db>\\<server>' -Confirm:$false"),
    "resume": _pattern("Resume-MailboxDatabaseCopy -Identity '<db>\\<server>' -Confirm:$false"),
    "redistribute": _pattern(
        "& (Join-Path $exscripts 'RedistributeActiveDatabases.ps1') -DagName '<dag>' "
        "-BalanceDbsByActivationPreference -Confirm:$false"
    ),
}


class PsError(Exception):
    """A command error, printed the way PowerShell prints one."""


@dataclass
class _Copy:
    status: str = "Healthy"
    resync_from: float | None = None  # clock time the copy started catching up

    def view(self, now: float, resync_s: float) -> tuple[str, int | None, int | None]:
        """Status, copy queue, replay queue as Get-MailboxDatabaseCopyStatus would print them now."""
        if self.resync_from is None:
            if self.status in ("Healthy", "Mounted"):
                return self.status, 0, 0
            return self.status, None, None
        f = (now - self.resync_from) / max(resync_s, 1e-6)
        if f < 0.2:
            return "Initializing", None, None
        if f < 0.7:
            return "Resynchronizing", int(LAG + (BACKLOG - LAG) * (0.7 - f) / 0.5), 25
        if f < 1.0:
            return "Healthy", int(LAG * (1.0 - f) / 0.3), 5
        self.status, self.resync_from = "Healthy", None
        return "Healthy", 0, 0


class DagSimulator:
    def __init__(
        self,
        dag: str = "DAG1",
        members: dict[str, str] | None = None,
        databases: dict[str, list[str]] | None = None,
        resync_s: float = 3.0,
        username: str = "administrator",
        password: str = "lab-exchange-pw",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.dag, self.resync_s, self.clock = dag, resync_s, clock
        self.members = dict(members or DEFAULT_MEMBERS)
        self.databases = {db: list(p) for db, p in (databases or DEFAULT_DATABASES).items()}
        self._lock = threading.RLock()
        self.reset()
        self._ssh = ExecServer(self.execute, username, password, name="dag-sim")

    def reset(self) -> None:
        """Every member up, every database active on its preference-1 server, all copies healthy."""
        with self._lock:
            self._alive = {s: True for s in self.members}
            self._copies = {(db, s): _Copy() for db, prefs in self.databases.items() for s in prefs}
            self._active: dict[str, str | None] = {db: prefs[0] for db, prefs in self.databases.items()}
            for db, s in self._active.items():
                self._copies[(db, s or "")].status = "Mounted"
            self.commands: list[str] = []  # every command received, in order (for tests and the demo)
            self._stuck: set[tuple[str, str]] = set()

    # ---------------------------------------------------------------- lab-facing state changes

    def _server(self, persona: str) -> str:
        for server, p in self.members.items():
            if p == persona:
                return server
        raise KeyError(f"{persona!r} is not a member of {self.dag} (members: {self.members})")

    def host_died(self, persona: str) -> None:
        server = self._server(persona)
        with self._lock:
            self._alive[server] = False
            for (_db, s), c in self._copies.items():
                if s == server:
                    c.status, c.resync_from = "ServiceDown", None
            for db, active in self._active.items():
                if active == server:
                    self._active[db] = None
                    target = next(
                        (s for s in self.databases[db] if self._alive[s] and self._state(db, s) == "Healthy"),
                        None,
                    )
                    if target:
                        self._mount(db, target)

    def host_alive(self, persona: str, failed: Iterable[str] = ()) -> None:
        """The persona heartbeats again: its copies start catching up (those in ``failed`` fail)."""
        server, failed = self._server(persona), set(failed)
        with self._lock:
            self._alive[server] = True
            for db, prefs in self.databases.items():
                if server not in prefs:
                    continue
                c = self._copies[(db, server)]
                if self._active[db] is None:  # nobody else could mount it: it comes back here
                    self._mount(db, server)
                elif db in failed or (db, server) in self._stuck:
                    c.status, c.resync_from = "Failed", None
                elif c.status == "ServiceDown":
                    c.status, c.resync_from = "Initializing", self.clock()

    def fail_copy(self, db: str, server: str) -> None:
        with self._lock:
            self._copies[(db, server)].status, self._copies[(db, server)].resync_from = "Failed", None

    def stick_failed(self, db: str, server: str, on: bool) -> None:
        """Make one passive copy stay Failed (or let it heal again: it resynchronizes)."""
        if (db, server) not in self._copies:
            raise KeyError(f"{db}\\{server} is no copy of {self.dag}")
        with self._lock:
            c = self._copies[(db, server)]
            if on:
                self._stuck.add((db, server))
                if self._alive[server] and c.status != "Mounted":
                    c.status, c.resync_from = "Failed", None
            else:
                self._stuck.discard((db, server))
                if c.status in ("Failed", "FailedAndSuspended") and self._alive[server]:
                    c.status, c.resync_from = "Initializing", self.clock()

    def copies_of(self, server: str) -> list[str]:
        return [db for db, prefs in self.databases.items() if server in prefs]

    def set_reachable(self, pred: Callable[[], bool]) -> None:
        """The lab decides whether the MAPI network reaches the management host right now."""
        self._ssh.reachable = pred

    def distribution(self) -> dict[str, list[str]]:
        with self._lock:
            return {s: sorted(db for db, a in self._active.items() if a == s) for s in sorted(self.members)}

    def copy_states(self) -> dict[str, tuple[str, int | None, int | None]]:
        with self._lock:
            now = self.clock()
            return {f"{db}\\{s}": c.view(now, self.resync_s) for (db, s), c in sorted(self._copies.items())}

    def _state(self, db: str, server: str) -> str:
        return self._copies[(db, server)].view(self.clock(), self.resync_s)[0]

    def _mount(self, db: str, server: str) -> None:
        old = self._active[db]
        if old is not None and self._copies[(db, old)].status == "Mounted":
            self._copies[(db, old)].status = "Healthy"
        self._copies[(db, server)].status, self._copies[(db, server)].resync_from = "Mounted", None
        self._active[db] = server

    # ---------------------------------------------------------------- the shell

    def execute(self, command: str) -> tuple[str, str, int]:
        """stdout, stderr, exit status for one command line."""
        with self._lock:
            self.commands.append(command)
            try:
                for name, pat in COMMANDS.items():
                    m = pat.fullmatch(command)
                    if m:
                        return getattr(self, f"_cmd_{name}")(**m.groupdict()), "", 0
                word = command.split(" ", 1)[0] or command
                raise PsError(
                    f"The term '{word}' is not recognized as the name of a cmdlet, function, script "
                    "file, or operable program.\n    + CategoryInfo          : ObjectNotFound: "
                    f"({word}:String) [], CommandNotFoundException"
                )
            except PsError as exc:
                return "", f"{exc}\n", 1

    def _check_dag(self, dag: str) -> None:
        if dag.lower() != self.dag.lower():
            raise PsError(
                f"The operation couldn't be performed because object '{dag}' couldn't be found "
                "on 'dc1.lab'.\n"
                "    + CategoryInfo          : NotSpecified: (:) [Get-DatabaseAvailabilityGroup]"
            )

    def _cmd_copies(self, dag: str, cols: str) -> str:
        self._check_dag(dag)
        rows = []
        now = self.clock()
        for server in self.members:  # per server, as the foreach over the DAG's Servers does
            for db in self.databases:
                if (db, server) in self._copies:
                    status, cq, rq = self._copies[(db, server)].view(now, self.resync_s)
                    rows.append(
                        {
                            "Name": f"{db}\\{server}",
                            "DatabaseName": db,
                            "MailboxServer": server,
                            "Status": status,
                            "CopyQueueLength": cq,
                            "ReplayQueueLength": rq,
                        }
                    )
        return _csv(cols.split(","), rows)

    def _cmd_databases(self, dag: str) -> str:
        if dag.lower() != self.dag.lower():
            return ""  # Where-Object let nothing through: ConvertTo-Csv prints not even a header
        rows = [
            {
                "Name": db,
                "Server": self._active[db] or "",
                "ActivationPreference": "{" + ", ".join(f"[{s}, {i}]" for i, s in enumerate(p, 1)) + "}",
            }
            for db, p in self.databases.items()
        ]
        return _csv(["Name", "Server", "ActivationPreference"], rows)

    def _copy(self, db: str, server: str) -> _Copy:
        c = self._copies.get((db, server.upper()))
        if c is None:
            raise PsError(f"Couldn't find database copy '{db}\\{server}'.")
        if not self._alive[server.upper()]:
            raise PsError(
                f"The Microsoft Exchange Replication service on server {server} couldn't be contacted."
            )
        return c

    def _cmd_suspend(self, db: str, server: str) -> str:
        c = self._copy(db, server)
        status = c.view(self.clock(), self.resync_s)[0]
        if status == "Mounted":
            raise PsError(f"Database copy '{db}\\{server}' is the active copy and can't be suspended.")
        c.status, c.resync_from = ("FailedAndSuspended" if status == "Failed" else "Suspended"), None
        return ""

    def _cmd_resume(self, db: str, server: str) -> str:
        c = self._copy(db, server)
        if c.status not in ("Suspended", "FailedAndSuspended"):
            raise PsError(f"Database copy '{db}\\{server}' isn't suspended.")
        if (db, server.upper()) in self._stuck:
            c.status, c.resync_from = "Failed", None  # the damaged log stream fails it again
            return ""
        c.status, c.resync_from = "Initializing", self.clock()
        return ""

    def _cmd_redistribute(self, dag: str) -> str:
        self._check_dag(dag)
        lines = [f"Balancing DAG '{self.dag}' by activation preference"]
        for db, prefs in self.databases.items():
            target = next(
                (
                    s
                    for s in prefs
                    if self._alive[s] and (self._active[db] == s or self._state(db, s) == "Healthy")
                ),
                None,
            )
            if target and target != self._active[db]:
                lines.append(f"Moving database '{db}' from '{self._active[db]}' to '{target}': succeeded")
                self._mount(db, target)
        for s in self.members:
            active = sorted(db for db, a in self._active.items() if a == s)
            lines += [
                "",
                f"ServerName          : {s}",
                f"ActiveDbs           : {len(active)}",
                f"MountedDbs          : {len(active)}",
                f"DagName             : {self.dag}",
            ]
        return "\r\n".join(lines) + "\r\n"

    # ---------------------------------------------------------------- the SSH server

    @property
    def port(self) -> int:
        return self._ssh.port

    @property
    def host_key_fingerprint(self) -> str:
        return self._ssh.host_key_fingerprint

    def start(self) -> int:
        return self._ssh.start()

    def stop(self) -> None:
        self._ssh.stop()


def _csv(cols: list[str], rows: list[dict[str, Any]]) -> str:
    """ConvertTo-Csv as Windows PowerShell writes it: every value quoted, $null as nothing, CRLF."""
    if not rows:
        return ""

    def cell(v: Any) -> str:
        return "" if v is None else '"' + str(v).replace('"', '""') + '"'

    lines = [",".join(cell(c) for c in cols)] + [",".join(cell(r.get(c)) for c in cols) for r in rows]
    return "\r\n".join(lines) + "\r\n"
