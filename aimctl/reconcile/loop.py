"""The drift loop: every interval (jittered), read the world back and compare it with the journal.

One pass: expectations from the journal's assignment and quarantine marks, leaving out every
persona and body an operation holds a lease on; one read per device; the pure verdict; findings
stored in the journal (new ones and resolved ones come back for alerting); a repair requested
for each persona or quarantined body whose findings the pool allows to be repaired.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from aimctl.journal import JournalStore, StoredFinding
from aimctl.loader import Definitions
from aimctl.reconcile.expect import expected
from aimctl.reconcile.read import PowerSource, read_world
from aimctl.reconcile.verdict import REPAIRABLE, Finding, findings

log = logging.getLogger(__name__)


@dataclass
class PassResult:
    started: float  # wall clock
    duration_s: float
    checks: int
    found: list[Finding]
    new: list[StoredFinding]
    resolved: list[StoredFinding]
    unchecked: dict[str, str]  # device -> why it could not be read
    skipped: list[str]  # personas and bodies held by an operation
    sessions: dict[str, int] = field(default_factory=dict)  # switch -> SSH sessions opened this pass


@dataclass(frozen=True)
class RepairRequest:
    mode: str  # ports | quarantine
    persona: str | None
    server: str
    ports: tuple[tuple[str, str], ...]
    power_off: bool
    keys: tuple[str, ...]
    evidence: str
    boot: bool = False  # rewrite the body's boot config with the persona's identity

def repair_requests(defs: Definitions, found: list[Finding], busy: set[str]) -> list[RepairRequest]:
    """Which findings the pools allow to be repaired, grouped into one repair per persona or body."""
    groups: dict[tuple[str, str | None, str], list[Finding]] = {}
    for f in found:
        if f.kind not in REPAIRABLE or f.server is None or f.server not in defs.server_pool:
            continue
        pool = defs.pools[defs.server_pool[f.server]]
        if REPAIRABLE[f.kind] not in pool.drift.repair:
            continue
        if (f.persona and f.persona in busy) or f.server in busy:
            continue
        if f.kind == "bootcfg" and f.persona is None:
            continue  # a standby holding a persona's identity: a human decides whose it should be
        groups.setdefault((f.kind, f.persona, f.server), []).append(f)
    out = []
    for (kind, persona, server), fs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][2])):
        ports = tuple(sorted((f.device, f.key.split(":", 2)[2]) for f in fs if f.key.startswith("ports:")))
        power = any(f.key.startswith("power:") for f in fs)
        out.append(RepairRequest(kind, persona, server, ports, power, tuple(f.key for f in fs),
                                 "; ".join(f.what for f in fs), boot=any(f.kind == "bootcfg" for f in fs)))
    return out


class Reconciler:
    def __init__(self, defs: Definitions, journal: JournalStore, drivers: object, interval_s: float = 300.0,
                 jitter: float = 0.1, on_pass: Callable[[PassResult], None] | None = None, workers: int = 8,
                 power: PowerSource | None = None) -> None:
        self.defs = defs
        self.journal = journal
        self.drivers = drivers
        self.interval_s = interval_s
        self.jitter = jitter
        self.on_pass = on_pass
        self.power = power
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="drift")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one pass at a time (the loop's, or one asked for by the API)
        self.last: PassResult | None = None
        self.passes = 0
        # Clustered: only the leader reads the switches and stores findings (a follower's drivers
        # refuse every call, and etcd its writes); the controller sets this to its ``leads``.
        self.active: Callable[[], bool] = lambda: True

    def next_delay(self) -> float:
        """The interval, jittered so many controllers (or pools) never read every switch in step."""
        return max(0.05, self.interval_s * (1 + random.uniform(-self.jitter, self.jitter)))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="drift", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        while not self._stop.wait(self.next_delay()):
            if not self.active():
                continue
            try:
                self.run_pass()
            except Exception:  # a pass that crashed is logged; the next one runs on time
                log.exception("drift pass failed")

    def _sessions(self) -> dict[str, int]:
        built = self.drivers.instances("switch") if hasattr(self.drivers, "instances") else {}
        return {name: int(getattr(drv, "sessions_opened", 0)) for name, drv in built.items()}

    def run_pass(self) -> PassResult:
        with self._lock:
            t0, wall = time.monotonic(), time.time()
            leases = [lease.name for lease in self.journal.leases()]
            skip_p = {n.split(":", 1)[1] for n in leases if n.startswith("persona:")}
            skip_s = {n.split(":", 1)[1] for n in leases if n.startswith("server:")}
            assignment = self.journal.assignment()
            ex = expected(self.defs, assignment, set(self.journal.quarantined()), skip_p, skip_s)
            before = self._sessions()
            ob = read_world(self.drivers, ex, self._pool, power=self.power)  # type: ignore[arg-type]
            after = self._sessions()
            found, checked = findings(ex, ob)
            # A lease taken while we read means the world changed on purpose under us: drop what
            # concerns it rather than report an operation's half-done work as drift.
            now_held = {lease.name for lease in self.journal.leases()} - set(leases)
            late = {n.split(":", 1)[1] for n in now_held}
            found = [f for f in found if f.persona not in late and f.server not in late]
            new, resolved = self.journal.sync_findings(found, checked)
            res = PassResult(wall, time.monotonic() - t0, ex.size(), found, new, resolved, dict(ob.errors),
                             sorted(skip_p | skip_s | late),
                             {sw: after.get(sw, 0) - before.get(sw, 0) for sw in after})
            self.last = res
            self.passes += 1
        log.info("drift pass: %d checks, %d finding(s) (%d new, %d resolved), %d device(s) unread, %.2fs",
                 res.checks, len(found), len(new), len(resolved), len(ob.errors), res.duration_s)
        if self.on_pass is not None:
            self.on_pass(res)
        return res
