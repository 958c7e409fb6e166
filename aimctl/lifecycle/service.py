"""What the controller asks of the persona lifecycle: start its operations, run them, schedule them,
pre-empt them for a failover, and say where things stand.

Archives and rehearsals are *background* operations: the persona keeps running and the detector
keeps watching it. They hold the persona's lease (one operation per persona at a time) and a
rehearsal holds its standby's; a failover of the persona pre-empts them, and a failover, move or
failback anywhere in the pool pre-empts its rehearsals at once (a rehearsal tears down first,
journaled). Every request is checked whole before anything is touched.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import yaml

from aimctl.detect.alerts import ArchiveFailed, RehearsalFailed, RehearsalStale
from aimctl.detect.detector import EventSink
from aimctl.detect.heartbeat import HeartbeatReceiver
from aimctl.drivers.registry import Drivers
from aimctl.drivers import snapnames
from aimctl.errors import OperatorError
from aimctl.secrets import write_private
from aimctl.failover.planner import standbys
from aimctl.failover.context import Ctx
from aimctl.failover.runner import RunResult, Step, StepEvent, run_steps
from aimctl.journal import BACKGROUND_KINDS, TERMINAL, JournalStore, Operation, persona_lease, server_lease
from aimctl.lifecycle import policy
from aimctl.lifecycle.archive import archive_steps
from aimctl.lifecycle.context import LCtx
from aimctl.lifecycle.provision import provision_steps
from aimctl.lifecycle.rehearsal import rehearsal_steps
from aimctl.lifecycle.restore import restore_steps
from aimctl.loader import Definitions
from aimctl.records.audit import Audit
from aimctl.records.changes import ChangeRecords
from aimctl.records.metrics import Metrics
from aimctl.validation import rehearsal_initiator

log = logging.getLogger("aimctl.lifecycle")

KINDS: dict[str, Callable[[], list[Step[LCtx]]]] = {
    "archive": archive_steps, "restore": restore_steps, "rehearsal": rehearsal_steps, "provision": provision_steps}
NEEDS_STANDBY = policy.NEEDS_STANDBY
TICK_S = 1.0
# A scheduled archive or rehearsal that could not start or did not succeed is tried again this soon,
# not a whole period later.
RETRY_S = 600.0


class Preempting(OperatorError):
    """Background operations are being stopped for this one; it starts as soon as they have."""

    http_status = 409


class Controls(Protocol):
    """What the lifecycle uses of the controller that runs it (``aimctl.daemon.Controller``)."""

    defs: Definitions
    journal: JournalStore
    ctx: Ctx
    drivers: Drivers
    receiver: HeartbeatReceiver
    state: Path
    interval: float
    changes: ChangeRecords
    metrics: Metrics
    audit: Audit
    paused: dict[str, str]
    _starter: ThreadPoolExecutor
    _threads: dict[str, threading.Thread]

    @property
    def alerts(self) -> EventSink: ...

    def _spawn(self, op_id: str) -> bool: ...

    def _on_step(self, ev: StepEvent) -> None: ...

    def _refresh_capacity(self) -> None: ...

    def bmc_unhealthy(self) -> dict[str, str]: ...

    def queued_personas(self) -> set[str]: ...


class Lifecycle:
    def __init__(self, c: Controls) -> None:
        self.c = c
        self.lctx = LCtx(c.ctx, c.receiver.last_rehearsal, self.preempted, c.state, c.interval)
        self._preempted: dict[str, str] = {}
        self._lock = threading.Lock()
        self._next_tick = 0.0
        self._last_archive: dict[str, float] | None = None  # persona -> newest archive (loaded on first tick)
        self._last_rehearsal: dict[str, float] = {}  # persona -> last attempt
        self._last_good: dict[str, float] = {}
        self._stale: set[str] = set()
        for op in c.journal.unfinished_operations():
            if op.facts.get("preempted_by"):
                self._preempted[op.id] = str(op.facts["preempted_by"])

    # ------------------------------------------------------------------ running operations

    def handles(self, kind: str) -> bool:
        return kind in KINDS

    def preempted(self, op_id: str) -> str | None:
        return self._preempted.get(op_id)

    def run(self, op_id: str) -> RunResult | None:
        """Run (or resume) a lifecycle operation to where it stops; None if it crashed."""
        c = self.c
        op = c.journal.operation(op_id)
        if op.kind != "archive":  # an archive changes nothing: audited, no change record
            c.changes.open(op, require_approval=None if op.kind == "restore" else False,
                           description=f"{op.kind} of {op.persona}: {op.facts.get('evidence', '')}")
        listener: Callable[[StepEvent], None] = c._on_step if op.kind != "archive" else c.metrics.observe_step
        try:
            res = run_steps(c.journal, op_id, KINDS[op.kind](), self.lctx, listener=listener, max_retargets=0)
        except Exception:
            log.exception("operation %s crashed", op_id)
            return None
        log.warning("operation %s: %s %s", op_id, res.state, res.result)
        op = c.journal.operation(op_id)
        if res.state in TERMINAL:
            if op.kind != "archive":
                c.changes.close(op_id, f"{res.state}: {res.result}")
            c.journal.release_leases(op_id)
            self._preempted.pop(op_id, None)
            self._finished(op)
            c._refresh_capacity()
        return res

    def _finished(self, op: Operation) -> None:
        c, now = self.c, time.time()
        if op.kind == "archive":
            if op.state == "done" and self._last_archive is not None:
                self._last_archive[op.persona] = op.created
            elif op.state != "done":
                self._retry_soon(self._last_archive, op.persona, self._pool(op.persona).archives.every)
                if not op.facts.get("preempted_by"):
                    c.alerts.emit(ArchiveFailed(op.persona, f"{op.id}: {op.result}"))
        elif op.kind == "rehearsal":
            self._last_rehearsal[op.persona] = now
            if op.state == "done":
                self._last_good[op.persona] = now
                self._stale.discard(op.persona)
            elif op.state == "failed":
                c.alerts.emit(RehearsalFailed(op.persona, f"{op.id} on {op.facts.get('to')}: {op.result}"))
        c.audit.record(str(op.facts.get("actor", "controller")), f"{op.kind}.end", op.persona,
                       {"op": op.id, "state": op.state, "result": op.result})

    def _open(self, kind: str, persona: str, facts: dict[str, Any], leases: Sequence[str], actor: str,
              from_server: str | None = None) -> str:
        c = self.c
        facts = {"actor": actor, **facts}
        op_id = c.journal.open_operation(kind, persona, facts, from_server=from_server,
                                         to_server=facts.get("to"), leases=list(leases), ttl_s=3 * 3600.0)
        c.audit.record(actor, f"{kind}.start", persona, {"op": op_id, **{k: v for k, v in facts.items()
                                                                         if k in ("archive", "at", "to", "trigger",
                                                                                  "image", "set")}})
        c._spawn(op_id)
        return op_id

    # ------------------------------------------------------------------ pre-emption

    def preempt(self, op: Operation, by: str) -> None:
        """Ask a background operation to stop for ``by`` (journaled, so a resumed one stops too)."""
        c = self.c
        with self._lock:
            if op.id in self._preempted:
                return
            self._preempted[op.id] = by
        c.journal.add_facts(op.id, {"preempted_by": by})
        c.audit.record("controller", f"{op.kind}.preempt", op.persona, {"op": op.id, "by": by})
        thread = c._threads.get(op.id)
        if op.state == "running" and (thread is None or not thread.is_alive()):
            c._spawn(op.id)  # not running here yet (just resumed): it starts, sees it, and stops
        elif op.state != "running":
            # Stopped waiting for a human: nobody will tear it down in time. Its body is kept out.
            if op.kind == "rehearsal" and op.facts.get("to"):
                c.journal.quarantine(str(op.facts["to"]), f"rehearsal {op.id} was stopped by {by} before its "
                                                          "teardown; check it, then clear it", by="controller")
            c.journal.set_state(op.id, "aborted", f"pre-empted by {by} while {op.state}")
            c.journal.release_leases(op.id)

    def yield_to(self, persona: str, kind: str, wait_s: float = 0.0) -> None:
        """Before an operation of ``kind`` on ``persona`` opens: pre-empt what stands in its way and wait
        up to ``wait_s`` for it to stop; ``Preempting`` while it has not (the caller tries again)."""
        ops = {o.id: o for o in self.c.journal.unfinished_operations()}
        pool_of = {n: pd.pool for n, pd in self.c.defs.personas.items()}
        victims = [ops[i] for i in policy.in_the_way([(o.id, o.kind, o.persona) for o in ops.values()], persona,
                                                     kind, pool_of)]
        for op in victims:
            self.preempt(op, f"{kind} of {persona}")
        deadline = time.monotonic() + wait_s
        while victims:
            victims = [v for v in victims if self.c.journal.operation(v.id).state not in TERMINAL]
            if not victims or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        if victims:
            raise Preempting(f"{kind} of {persona} waits for {', '.join(v.id for v in victims)} to stop "
                             "(pre-empted, tearing down)")

    # ------------------------------------------------------------------ requests

    def _known(self, persona: str) -> Any:
        pd = self.c.defs.personas.get(persona)
        if pd is None:
            raise OperatorError(f"unknown persona {persona!r} (known: {', '.join(sorted(self.c.defs.personas))})")
        return pd

    def _busy(self, persona: str) -> Operation | None:
        return next((o for o in self.c.journal.unfinished_operations() if o.persona == persona), None)

    def archive_sets(self, persona: str) -> list[policy.ArchiveSet]:
        self._known(persona)
        return policy.archive_sets(self.lctx.snapshots(persona).snapshots(persona), persona, self.lctx.luns(persona))

    def start_archive(self, persona: str, actor: str, trigger: str = "operator") -> str:
        self._known(persona)
        busy = self._busy(persona)
        if busy is not None:
            raise OperatorError(f"{persona} has {busy.kind} {busy.id} in progress; archive it after")
        return self._open("archive", persona, {"set": snapnames.set_id(persona), "trigger": trigger,
                                               "luns": [list(x) for x in self.lctx.luns(persona)]},
                          [persona_lease(persona)], actor)

    def start_restore(self, persona: str, at: str, actor: str, change: str | None = None) -> str:
        self._known(persona)
        arch = policy.pick_archive(self.archive_sets(persona), persona, at)
        server = self.c.journal.assignment().get(persona)
        if not server:
            raise OperatorError(f"{persona} runs on no server: move it to one first, then restore")
        self.yield_to(persona, "restore", wait_s=30.0)
        busy = self._busy(persona)
        if busy is not None:
            raise OperatorError(f"{persona} has {busy.kind} {busy.id} in progress")
        facts: dict[str, Any] = {"archive": arch.id, "at": at, "to": server, "to_server": server,
                                 "trigger": "operator", "evidence": f"restore to archive {arch.id} "
                                                                  f"({policy.iso(arch.created)}) by {actor}"}
        if change:
            facts["change"] = change
        return self._open("restore", persona, facts, [persona_lease(persona), server_lease(server)], actor,
                          from_server=server)

    def start_rehearsal(self, persona: str, actor: str, on: str | None = None, trigger: str = "operator") -> str:
        c = self.c
        pd = self._known(persona)
        pool = c.defs.pools[pd.pool]
        if pool.rehearsal.vlan is None:
            raise OperatorError(f"pool {pd.pool} has no rehearsal VLAN (rehearsal.vlan): a rehearsal must be isolated")
        if pd.pool in c.paused:
            raise OperatorError(f"pool {pd.pool} is paused by its storm brake: no rehearsal now")
        for op in c.journal.unfinished_operations():
            other = c.defs.personas.get(op.persona)
            if op.kind in NEEDS_STANDBY + ("restore",) and other is not None and other.pool == pd.pool:
                raise OperatorError(f"pool {pd.pool} runs {op.kind} {op.id}: no rehearsal while it does")
            if op.persona == persona:
                raise OperatorError(f"{persona} has {op.kind} {op.id} in progress")
        sets = [s for s in self.archive_sets(persona) if s.complete]
        if not sets:
            raise OperatorError(f"{persona} has no archive to rehearse: take one first (aimctl archive {persona})")
        boot = sets[-1].of(pd.spec.boot.target, pd.spec.boot.lun)
        assert boot is not None
        assignment = {p: s for p, s in c.journal.assignment().items() if s}
        unavailable = dict(c.bmc_unhealthy())
        for lease in c.journal.leases():
            if lease.name.startswith("server:"):
                unavailable[lease.name[7:]] = f"in use by {lease.holder}"
        choice = policy.rehearsal_standby(c.defs, persona, assignment, set(c.journal.quarantined()), unavailable, on)
        if choice.server is None:
            raise OperatorError(f"no standby to rehearse {persona} on: " + "; ".join(
                choice.why + [f"{s}: {r}" for s, r in sorted(choice.rejected.items())]))
        facts = {"archive": sets[-1].id, "boot_snapshot": boot.id, "to": choice.server, "to_server": choice.server,
                 "rehearsal_target": policy.rehearsal_target(pd.spec.boot.target),
                 "rehearsal_initiator": rehearsal_initiator(pd.spec.initiator),
                 "chap_user": policy.rehearsal_chap_user(persona), "vlan": pool.rehearsal.vlan, "trigger": trigger,
                 "evidence": f"rehearsal of {persona} on {choice.server} ({trigger})", "why": choice.why}
        return self._open("rehearsal", persona, facts, [persona_lease(persona), server_lease(choice.server)], actor)

    def new_persona(self, name: str, pool: str, image: str, actor: str, *, initiator: str | None = None,
                    target: str | None = None, home: str | None = None) -> dict[str, Any]:
        """Check everything, work out the stanza, then clone (an operation). Nothing is touched on a refusal."""
        c = self.c
        label = snapnames.gold_label(image)
        assignment = {p: s for p, s in c.journal.assignment().items() if s}
        free = standbys(c.defs, pool, assignment, set(c.journal.quarantined())) if pool in c.defs.pools else []
        new = policy.new_persona(c.defs, name, pool, home, initiator, target, free)
        golds = c.drivers.snapshots(new.storage).snapshots()
        mine = [s for s in golds if s.label == label and s.lun == new.lun] or [s for s in golds if s.label == label]
        if not mine:
            known = sorted({s.label[len(snapnames.GOLD_PREFIX):] for s in golds
                            if s.label.startswith(snapnames.GOLD_PREFIX)})
            raise OperatorError(f"gold image {image!r} does not exist on storage {new.storage} "
                                f"(gold images there: {', '.join(known) or 'none'})")
        if any(op.persona == name for op in c.journal.unfinished_operations()):
            raise OperatorError(f"persona {name} is being made already")
        gold = mine[-1]
        key_dir = c.state / "keys"
        key_file = key_dir / f"{name}.key"
        if not key_file.exists():
            key_dir.mkdir(mode=0o700, exist_ok=True)
            write_private(key_file, secrets.token_hex(32))
        stanza = {name: {
            "home": new.home, "storage": new.storage, "initiator": new.initiator,
            "boot": {"target": new.target, "lun": new.lun}, "addresses": new.addresses,
            "heartbeat_key": f"file:{key_file}"}}
        text = (f"# persona {name}: boot LUN cloned from gold image {image} ({gold.id}).\n"
                f"# Review, add under `personas:` of pool {pool}, reload the controller, then:\n"
                f"#   aimctl persona start {name} --on {new.home}\n"
                + yaml.safe_dump(stanza, sort_keys=False, default_flow_style=None))
        op_id = self._open("provision", name, {"image": image, "gold_snapshot": gold.id, "storage": new.storage,
                                               "target": new.target, "lun": new.lun, "initiator": new.initiator,
                                               "pool": pool, "trigger": "operator",
                                               "evidence": f"gold image {image}"},
                           [persona_lease(name)], actor)
        return {"id": op_id, "stanza": text, "persona": stanza, "key_file": str(key_file)}

    # ------------------------------------------------------------------ where things stand

    def archives(self, persona: str) -> list[dict[str, Any]]:
        return [{"id": s.id, "taken": policy.iso(s.created), "created": s.created, "complete": s.complete,
                 "luns": [f"{x.target} LUN {x.lun}" for x in s.snapshots], "bytes": sum(x.size for x in s.snapshots)}
                for s in self.archive_sets(persona)]

    def rehearsals(self) -> dict[str, Any]:
        c, now = self.c, time.time()
        out: dict[str, Any] = {}
        servers = c.journal.servers()
        for name, pd in sorted(c.defs.personas.items()):
            ops = [o for o in c.journal.operations(1000, persona=name) if o.kind == "rehearsal"]
            last = ops[0] if ops else None
            good = next((o for o in ops if o.state == "done"), None)
            policy_ = c.defs.pools[pd.pool].rehearsal
            out[name] = {
                "last": None if last is None else {"id": last.id, "state": last.state, "result": last.result,
                                                   "on": last.facts.get("to"), "when": policy.iso(last.updated)},
                "last_good": None if good is None else policy.iso(good.updated),
                "stale": policy.rehearsal_stale(good.updated if good else None, now, policy_),
                "every": policy_.every,
                "marks": {s: v.reason for s, v in servers.items() if v.failed and f" {name} " in f" {v.reason} "},
            }
        return out

    # ------------------------------------------------------------------ the schedule

    def tick(self) -> None:
        """Called by the controller's loop: start what the pools' policies say is due, and say what is stale."""
        now = time.time()
        if now < self._next_tick:
            return
        self._next_tick = now + TICK_S
        c = self.c
        try:
            if self._last_archive is None:
                self._load()
            busy = {o.persona: o for o in c.journal.unfinished_operations()}
            background: dict[str, int] = {}
            for o in busy.values():
                pd = c.defs.personas.get(o.persona)
                if pd is not None and o.kind in BACKGROUND_KINDS:
                    background[pd.pool] = background.get(pd.pool, 0) + 1
            for pname, pool in sorted(c.defs.pools.items()):
                if pname in c.paused:
                    continue
                for pd in c.defs.pool_personas(pname):
                    self._stale_alert(pd.name, now, pool.rehearsal)
                    if pd.name in busy or pd.name in c.queued_personas() or background.get(pname, 0) >= pool.storm.max_concurrent:
                        continue
                    assert self._last_archive is not None
                    if policy.archive_due(self._last_archive.get(pd.name), now, pool.archives):
                        self._last_archive[pd.name] = now  # due again only after ``every``, even if it fails
                        background[pname] = background.get(pname, 0) + 1
                        c._starter.submit(self._scheduled, self.start_archive, pd.name, "schedule")
                    elif policy.rehearsal_due(self._last_rehearsal.get(pd.name), now, pool.rehearsal):
                        self._last_rehearsal[pd.name] = now
                        background[pname] = background.get(pname, 0) + 1
                        c._starter.submit(self._scheduled, self.start_rehearsal, pd.name, "schedule")
        except OperatorError as exc:  # the storage does not answer: the schedule tries again next tick
            log.warning("lifecycle schedule: %s", exc)

    def _pool(self, persona: str) -> Any:
        return self.c.defs.pools[self.c.defs.personas[persona].pool]

    @staticmethod
    def _retry_soon(last: dict[str, float] | None, persona: str, every: float | None) -> None:
        if last is not None and every:
            last[persona] = time.time() - every + min(every, RETRY_S)

    def _scheduled(self, start: Callable[..., str], persona: str, trigger: str) -> None:
        try:
            start(persona, "controller(schedule)", trigger=trigger)
        except OperatorError as exc:
            log.warning("scheduled %s of %s not started: %s", start.__name__, persona, exc)
            if start == self.start_rehearsal:
                self._retry_soon(self._last_rehearsal, persona, self._pool(persona).rehearsal.every)
                self.c.alerts.emit(RehearsalFailed(persona, f"scheduled rehearsal not started: {exc}"))
            else:
                self._retry_soon(self._last_archive, persona, self._pool(persona).archives.every)

    def _load(self) -> None:
        """What the schedule starts from: the newest archives (from the storage, only when some pool
        schedules archives) and the rehearsals' outcomes (from the journal)."""
        c = self.c
        last: dict[str, float] = {}
        scheduled = {pd.spec.storage for pd in c.defs.personas.values() if c.defs.pools[pd.pool].archives.every}
        for storage in sorted(scheduled):
            for s in c.drivers.snapshots(storage).snapshots():
                last[s.label] = max(last.get(s.label, 0.0), s.created)
        for name in c.defs.personas:
            for o in c.journal.operations(1000, persona=name):
                if o.kind == "rehearsal" and o.state in TERMINAL:
                    self._last_rehearsal.setdefault(name, o.updated)
                    if o.state == "done":
                        self._last_good.setdefault(name, o.updated)
        self._last_archive = {p: t for p, t in last.items() if p in c.defs.personas}

    def _stale_alert(self, persona: str, now: float, rp: Any) -> None:
        why = policy.rehearsal_stale(self._last_good.get(persona), now, rp)
        if why and persona not in self._stale:
            self._stale.add(persona)
            self.c.alerts.emit(RehearsalStale(persona, why))
        elif not why:
            self._stale.discard(persona)


__all__ = ["KINDS", "Lifecycle", "Preempting"]
