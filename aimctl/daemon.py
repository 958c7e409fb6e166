"""The controller daemon: watch (heartbeats, BMCs, traps), decide (detector), act (workflow), tell (API).

Observe -> decide -> act once -> say what happened, as a short loop; everything that can block
(drivers, hooks) runs in an operation's own thread, never in the loop.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aimctl.detect.alerts import FanOut, LoggingAlerts, WebhookAlerts
from aimctl.detect.bmcpoll import BmcPoller
from aimctl.detect.detector import (
    Detector,
    Event,
    Observation,
    Params,
    PersonaDead,
    PersonaPresumedDead,
    PersonaRecovered,
    PersonaUnhealthy,
    PersonaUnreachable,
)
from aimctl.detect.heartbeat import HeartbeatReceiver, MarkStore
from aimctl.detect.observe import Observer
from aimctl.detect.recheck import DEATHS, UNHEALTHY, alive_evidence
from aimctl.detect.storm import PoolLoad, Queued, plan_storm
from aimctl.detect.traps import TrapReceiver, bmc_identities
from aimctl.drivers.ifindex import ifindex
from aimctl.drivers.registry import Drivers, make_power
from aimctl.errors import OperatorError
from aimctl.failover.chap import ChapStore
from aimctl.failover.context import Ctx, Settings
from aimctl.failover.planner import capacity, check_request
from aimctl.failover.resolve import KEEP, abandon_plan, mark_fenced_refusal, retry_refusal
from aimctl.failover.runner import StepEvent, run_steps
from aimctl.failover.steps import failover_steps
from aimctl.journal import TERMINAL, Journal, Operation, ServerMark, persona_lease, server_lease
from aimctl.loader import Definitions
from aimctl.overlay import Listen
from aimctl.overlay import api_hostport as _hostport
from aimctl.records.audit import Audit
from aimctl.records.changes import ChangeRecords
from aimctl.records.metrics import Metrics
from aimctl.records.sinks import JsonlSink, WebhookSink
from aimctl.recovery.runner import hook_runner
from aimctl.secrets import resolve_bytes
from aimctl.validation import CHANGE_RE

log = logging.getLogger("aimctl.controller")

# Leases of unfinished operations are renewed to this TTL this often (see ``renew_leases``).
LEASE_TTL_S = 3 * 3600.0
LEASE_RENEW_EVERY_S = 60.0

TRIGGERS = (PersonaDead, PersonaPresumedDead, PersonaUnhealthy)


@dataclass(frozen=True, slots=True)
class RecoveryFailed(Event):
    """The persona runs on its new body but its application's recovery did not finish."""


@dataclass(frozen=True, slots=True)
class NeedsOperatorAlert(Event):
    """An operation stopped and waits for a human."""


@dataclass(frozen=True, slots=True)
class NotDeadAlert(Event):
    """A failover was not started, or stopped before touching anything: a second source says the body lives."""


class StormBrake(OperatorError):
    """The pool already runs as many failovers as its storm brake allows."""


def check_state_dir(state: Path) -> None:
    """The controller's state dir exists (made 0700 if not), is a directory and can be read and written;
    otherwise one line saying so (exit 2), never a traceback from deep inside the journal."""
    if state.exists() and not state.is_dir():
        raise OperatorError(f"state dir {state}: not a directory")
    try:
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise OperatorError(f"state dir {state}: cannot create it: {exc.strerror or exc}") from None
    if not os.access(state, os.R_OK | os.W_OK | os.X_OK):
        raise OperatorError(f"state dir {state}: not readable and writable by this user (uid {os.getuid()})")


def heartbeat_receiver(listen: Listen, keys: dict[str, bytes], store: MarkStore) -> HeartbeatReceiver:
    """The receiver with its replay memory in ``store`` (the journal): saved every flush, at most once
    an interval, and after a restart the sequences a flush may have missed are refused too (one
    interval's worth per flush, and two more for the burst an agent sends after a stall of its own)."""
    flush_s = min(1.0, listen.heartbeat_interval)
    guard = math.ceil(flush_s / listen.heartbeat_interval) + 2
    return HeartbeatReceiver(*_hostport(listen.heartbeat), keys, store=store, flush_s=flush_s, replay_guard=guard)


class Controller:
    def __init__(self, defs: Definitions, listen: Listen, state: Path, settings: Settings | None = None) -> None:
        self.defs = defs
        self.listen = listen
        self.state = state
        check_state_dir(state)
        try:
            (state / "boot").mkdir(exist_ok=True)
            self.journal = Journal(state / "journal.db")
            if not any(self.journal.assignment().values()):
                self.journal.seed_assignment(defs.homes())
        except (OSError, sqlite3.Error) as exc:
            raise OperatorError(f"state dir {state}: cannot open the journal: {exc}") from None
        self.audit = Audit(state / "audit.log")
        self.metrics = Metrics()
        sinks: list[Any] = [JsonlSink(state / "changes.jsonl")]
        if listen.change_webhook and listen.change_webhook_secret:
            sinks.append(WebhookSink(listen.change_webhook, listen.change_webhook_secret))
        self.changes = ChangeRecords(self.journal, sinks)
        self.chap = ChapStore(state)
        self.drivers = Drivers(defs, state / "boot", switch_timeout_s=listen.switch_timeout)
        self.settings = settings or Settings(power_deadline_s=listen.power_deadline,
                                             boot_timer_override_s=listen.boot_timer_override,
                                             switch_deadline_s=listen.switch_deadline)
        self.interval = listen.heartbeat_interval
        keys = {n: resolve_bytes(p.spec.heartbeat_key) for n, p in defs.personas.items()}
        self.receiver = heartbeat_receiver(listen, keys, self.journal)
        # The poller gets its own BMC sessions: a slow poll must never queue behind a fence.
        self.poller = BmcPoller({s: make_power(s, v) for s, v in defs.servers.items()},
                                interval_s=listen.bmc_poll_interval)
        links = {}
        for s, srv in defs.servers.items():
            for ch, cable in srv.channels.items():
                links[(cable.switch, cable.ifindex or ifindex(defs.switches[cable.switch].os, cable.port))] = (s, ch)
        # One community for all switches and BMCs; the receiver tells devices apart by address / sysName.
        # BMC alerts are a death signal (observe.py): the receiver must know which BMC is whose.
        addresses, bmcs = bmc_identities({s: v.bmc.address for s, v in defs.servers.items()},
                                         [sw.address for sw in defs.switches.values()])
        try:
            self.traps = TrapReceiver(*_hostport(listen.snmp), communities={listen.snmp_community: None},
                                      links=links, addresses=addresses, bmcs=bmcs)
        except OperatorError:
            self.receiver.stop()
            raise
        alert_sinks: list[Any] = [LoggingAlerts(log)]
        if listen.alert_webhook and listen.alert_webhook_secret:
            alert_sinks.append(WebhookAlerts(listen.alert_webhook, listen.alert_webhook_secret))
        self.alerts = FanOut(alert_sinks)
        # Storm brake: deaths wait here while their pool is at its concurrency limit or paused.
        self._pending: dict[str, Queued] = {}
        self._held: dict[str, str] = {}  # queued persona -> why it waits
        self._starting: set[str] = set()
        self._starter = ThreadPoolExecutor(4, thread_name_prefix="start")
        self.paused: dict[str, str] = {}  # pools the storm brake paused, and why
        self.operator_paused: dict[str, str] = {}  # pools an operator paused: the storm brake never resumes them
        self.params = Params(miss_intervals=2.5)
        self.detector = Detector(self, self.params)
        self.observer = Observer(self.receiver, self.poller, self.traps)
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self.ctx = Ctx(defs, self.journal, self.drivers, self.chap, self.heartbeat_since,
                       hook_runner(defs, self._hook_note), self.bmc_unhealthy,
                       change_approved=self.changes.is_approved, stop_persona=self.stop_persona,
                       alive_evidence=self.alive_evidence, settings=self.settings)

    # ------------------------------------------------------------------ observe

    def heartbeat_since(self, persona: str, since_wall: float) -> bool:
        seen = self.receiver.last_seen(persona)
        if seen is None:
            return False
        mono, _ = seen
        return mono >= time.monotonic() - (time.time() - since_wall)

    def stop_persona(self, persona: str, deadline_s: float) -> bool:
        """Signed stop request to the agent, repeated until its last heartbeat says it stopped."""
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            seen = self.receiver.last_seen(persona)
            if seen and seen[1].health.word == "stopped":
                return True
            if not self.receiver.send_stop(persona):
                return False
            time.sleep(min(0.5, self.interval / 2))
        return False

    def bmc_unhealthy(self) -> dict[str, str]:
        out = {}
        for s in self.defs.servers:
            answer, _ = self.poller.answer(s)
            if answer in ("failed", "no-answer"):
                out[s] = f"BMC {answer}"
        return out

    def snapshot(self, now: float) -> list[Observation]:
        """Watch every assigned persona that no running operation holds (its current body, its SCN
        channels), then read heartbeats, BMC answers and link state for it, all from memory. A persona
        whose operation waits for an operator or an approval is still watched, so status shows the
        truth about it (rule 7); its deaths are not queued, the waiting operation already covers it."""
        busy = self.acting_personas()
        want = {p: s for p, s in self.journal.assignment().items()
                if s and p not in busy and p in self.defs.personas}
        current = self.observer.watches()
        for persona in current.keys() - want.keys():
            self.observer.unwatch(persona)
            self.detector.forget(persona)
        for persona, server in want.items():
            w = current.get(persona)
            if w is None or w.server != server:
                self.observer.watch(persona, server, self._scn_channels(persona), self.interval,
                                    grace_s=max(10 * self.interval, 5.0))
        obs = self.observer(now)
        for o in obs:
            self.metrics.set_heartbeat_age(o.persona, o.hb_age)
        return obs

    def _scn_channels(self, persona: str) -> list[int]:
        pool = self.defs.pools[self.defs.personas[persona].pool]
        scn = pool.networks[pool.scn]
        return [c for c in (scn.primary, scn.secondary) if c is not None]

    def recheck(self, persona: str, server: str, trigger: str, verdict_body: bool = True) -> str | None:
        """A sentence when a second source now says ``server`` (running ``persona``) is alive after all."""
        ev = self.observer.evidence(persona, server, self._scn_channels(persona), self.interval, trigger,
                                    verdict_body)
        return alive_evidence(ev, self.params)

    def alive_evidence(self, persona: str, server: str) -> str | None:
        """``Ctx.alive_evidence``: asked at confirm and by the fence before any power-off. Only an
        operation the detector opened is second-guessed; a planned move or an operator's failover is
        the operator's decision."""
        op = next((o for o in self.journal.unfinished_operations() if o.persona == persona), None)
        if op is None or op.kind != "failover":
            return None
        trigger = str(op.facts.get("trigger", ""))
        if trigger not in (*DEATHS, UNHEALTHY):
            return None
        why = self.recheck(persona, server, trigger, verdict_body=server == op.from_server)
        if why:
            log.warning("%s: %s on %s is not dead after all: %s", op.id, persona, server, why)
        return why

    # ------------------------------------------------------------------ decide

    def emit(self, event: Event) -> None:
        """Detector events: deaths queue for failover (the storm brake drains them); all are alerted."""
        self.alerts.emit(event)
        if isinstance(event, TRIGGERS) and event.persona not in self.busy_personas():
            w = self.observer.watches().get(event.persona)
            server = w.server if w is not None else self.journal.assignment().get(event.persona)
            self._pending[event.persona] = Queued(event.persona, self.defs.personas[event.persona].pool,
                                                  event.kind, event.reason, server)

    def _storm_brake(self) -> None:
        """Apply the storm brake's decision (``detect/storm.py``): pause or resume pools, drop queued
        triggers that went stale, start the others (each re-checked before it opens an operation)."""
        states = {p: st.state for p, st in self.detector.states().items()}
        ops = self.journal.unfinished_operations()
        busy = {o.persona for o in ops}
        starting = set(self._starting)
        pool_of = {p: d.pool for p, d in self.defs.personas.items()}
        pools = {}
        for name, pool in self.defs.pools.items():
            personas = tuple(p.name for p in self.defs.pool_personas(name))
            running = sum(1 for o in ops if pool_of.get(o.persona) == name) + \
                sum(1 for p in starting if pool_of.get(p) == name and p not in busy)
            pools[name] = PoolLoad(personas, tuple(p for p in personas if states.get(p, "alive") != "alive"),
                                   running, pool.storm.max_concurrent, pool.storm.pause_above_percent)
        # A copy first: starter threads pop from the queue while this loop reads it.
        queued = [q for p, q in list(self._pending.items()) if p not in starting]
        plan = plan_storm(pools, queued, states, self.journal.assignment(), busy, set(self.paused),
                          set(self.operator_paused))
        for name, why in plan.pause.items():
            self.paused[name] = why
            troubled = sorted(pools[name].troubled)
            self.alerts.emit(PersonaUnreachable(",".join(troubled), f"PAGE: {why}"))
            self.audit.record("controller", "storm.pause", name, {"troubled": troubled})
        for name, why in plan.resume.items():
            self.paused.pop(name, None)
            troubled = sorted(pools[name].troubled)
            self.alerts.emit(PersonaRecovered(",".join(troubled) or name, why))
            self.audit.record("controller", "storm.resume", name, {"troubled": troubled})
        for q, why in plan.drop:
            if self._pending.get(q.persona) is q:
                del self._pending[q.persona]
            log.warning("queued %s of %s dropped: %s", q.trigger, q.persona, why)
            self.audit.record("controller", "queue.drop", q.persona, {"trigger": q.trigger, "why": why})
        self._held = dict(plan.hold)
        for q, _why in plan.start:
            # Opening an operation writes the journal, the change record and the audit log (fsyncs):
            # done off the detector loop, so twenty deaths at once don't hold back the next tick.
            self._starting.add(q.persona)
            self._starter.submit(self._start_queued, q)

    def _start_queued(self, q: Queued) -> None:
        try:
            # Taken up now, perhaps long after the verdict: ask the sources again first.
            alive = self.recheck(q.persona, q.server, q.trigger) if q.server else None
            if alive:
                self._pending.pop(q.persona, None)
                self.alerts.emit(NotDeadAlert(q.persona, f"{q.trigger} not acted on: not dead after all: {alive}"))
                self.audit.record("controller", "failover.not-dead", q.persona,
                                  {"trigger": q.trigger, "evidence": q.evidence, "alive": alive})
                return
            self.start_failover(q.persona, trigger=q.trigger, evidence=q.evidence)
            self._pending.pop(q.persona, None)
        except StormBrake:
            pass  # stays queued until a running failover of its pool ends
        except OperatorError as exc:
            log.error("failover of %s not started: %s", q.persona, exc)
            self._pending.pop(q.persona, None)
        except Exception:  # a start that crashed must not leave the persona marked as starting forever
            log.exception("failover of %s not started", q.persona)
        finally:
            self._starting.discard(q.persona)

    # ------------------------------------------------------------------ tell

    def status(self) -> dict[str, Any]:
        """The status document (``/v1/status``, ``aimctl status``): per persona its body, heartbeat age
        (by arrival), health, the detector's state and reason (also while an operation waits), the
        BMC's reading, the operation holding it with its state and, when it waits, why; every BMC's
        reading; the storm brake's pauses and queue; how often the detector caught itself stalled."""
        now = time.monotonic()
        states = self.detector.states()
        watched = self.observer.watches()
        ops = {o.persona: o for o in self.journal.unfinished_operations()}
        personas: dict[str, dict[str, Any]] = {}
        for persona, server in sorted(self.journal.assignment().items()):
            seen = self.receiver.last_seen(persona)
            st = states.get(persona)
            op = ops.get(persona)
            if persona not in watched:
                detector, reason = "-", "not watched while its operation acts" if op else "not watched"
            else:
                detector, reason = (st.state if st else "alive"), self.detector.reason(persona)
            personas[persona] = {
                "server": server,
                "heartbeat_age_s": round(now - seen[0], 3) if seen else None,
                "health": seen[1].health.word if seen else None,
                "detector": detector,
                "detector_reason": reason,
                "bmc": self.poller.answer(server)[0] if server and server in self.defs.servers else None,
                "operation": op.id if op else None,
                "operation_state": op.state if op else None,
                "queued": self._held.get(persona, "queued") if persona in self._pending else None,
            }
            if op is not None and op.state != "running":
                # What the operation waits for (the API adds the operator's ways out, rule 7).
                personas[persona]["waiting"] = {"state": op.state, "reason": op.result}
        quarantined = {s: dataclasses.asdict(v) for s, v in self.journal.quarantined().items()}
        wall = self.journal.now()
        # Who holds what, and for how long yet: an operation that waits must still hold its leases.
        leases = [{"name": x.name, "holder": x.holder, "expires_in_s": round(x.expires - wall, 1)}
                  for x in self.journal.leases()]
        return {"personas": personas, "quarantined": quarantined, "leases": leases,
                "receiver": self.receiver.counters(),
                "paused_pools": dict(self.paused), "operator_paused_pools": dict(self.operator_paused),
                "queued": sorted(self._pending), "detector_stalls": self.detector.stalls,
                "bmcs": {s: self.poller.answer(s)[0] for s in sorted(self.defs.servers)}}

    def busy_personas(self) -> set[str]:
        return {op.persona for op in self.journal.unfinished_operations()}

    def acting_personas(self) -> set[str]:
        return {op.persona for op in self.journal.unfinished_operations() if op.state == "running"}

    # ------------------------------------------------------------------ act

    def start_failover(self, persona: str, trigger: str, evidence: str, kind: str = "failover",
                       to: str | None = None, actor: str = "controller", change: str | None = None) -> str:
        with self._lock:
            # Names and targets are checked before anything is opened: a request that can never run
            # must not leave an operation holding the persona.
            in_use = {lease.name[7:]: f"in use by {lease.holder}" for lease in self.journal.leases()
                      if lease.name.startswith("server:")}
            check_request(self.defs, persona, to, {p: s for p, s in self.journal.assignment().items() if s},
                          set(self.journal.quarantined()), in_use)
            if persona in self.busy_personas():
                raise OperatorError(f"{persona} already has an operation in progress")
            if change is not None:
                if not isinstance(change, str) or not CHANGE_RE.match(change):
                    raise OperatorError(f"change number {str(change)[:40]!r} refused: want CHG and 4 to 12 digits")
                if self.changes.exists(change):
                    raise OperatorError(f"change {change} already records another operation")
            pool = self.defs.personas[persona].pool
            running = [o for o in self.journal.unfinished_operations()
                       if self.defs.personas.get(o.persona) and self.defs.personas[o.persona].pool == pool]
            if kind == "failover" and len(running) >= self.defs.pools[pool].storm.max_concurrent:
                raise StormBrake(f"storm brake: {len(running)} operations already running in pool {pool}")
            old = self.journal.assignment().get(persona)
            facts: dict[str, Any] = {"trigger": trigger, "evidence": evidence, "actor": actor}
            if to:
                facts["requested_to"] = to
            if change:
                facts["change"] = change
            leases = [persona_lease(persona)] + ([server_lease(old)] if old else [])
            op_id = self.journal.open_operation(kind, persona, facts, from_server=old, leases=leases)
        # Outside the lock: twenty deaths at once must not queue behind each other's fsyncs.
        self._spawn(op_id)
        self.audit.record(actor, f"{kind}.start", persona, {"op": op_id, "trigger": trigger, "evidence": evidence})
        return op_id

    def _spawn(self, op_id: str) -> bool:
        """Run (or resume) an operation in its own thread; never two threads for one operation."""
        if self.journal.operation(op_id).state != "running":
            self._settle(op_id)
        with self._lock:
            running = self._threads.get(op_id)
            if running is not None and running.is_alive():
                return False
            # The workflow holds the persona from here: the detector starts afresh when it is handed back.
            self.detector.forget(self.journal.operation(op_id).persona)
            t = threading.Thread(target=self._run_op, args=(op_id,), name=f"op-{op_id}", daemon=True)
            self._threads[op_id] = t
            t.start()
            return True

    def _run_op(self, op_id: str) -> None:
        op = self.journal.operation(op_id)
        # Opening is idempotent: a resumed operation finds the change record it opened before.
        self.changes.open(op, number=op.facts.get("change"),
                          description=f"{op.kind} of {op.persona} from {op.from_server}: "
                                      f"{op.facts.get('evidence', '')}")
        try:
            res = run_steps(self.journal, op_id, failover_steps(), self.ctx, listener=self._on_step,
                            max_retargets=4)
        except Exception:
            log.exception("operation %s crashed", op_id)
            return
        log.warning("operation %s: %s %s", op_id, res.state, res.result)
        if res.state in TERMINAL:
            op = self.journal.operation(op_id)
            if res.state == "aborted" and "not dead after all" in res.result:
                self.alerts.emit(NotDeadAlert(op.persona, f"{op_id} stopped before touching anything: {res.result}"))
                self.audit.record("controller", "failover.not-dead", op.persona, {"op": op_id, "result": res.result})
            if op.facts.get("recovery_failed"):
                self.alerts.emit(RecoveryFailed(op.persona, f"{op_id}: {res.result}; see its recovery step"))
            self.metrics.failover_finished(res.state)
            self.changes.close(op_id, f"{res.state}: {res.result}")
            self.journal.release_leases(op_id)
            self._refresh_capacity()
        elif res.state == "needs-operator":
            self.alerts.emit(NeedsOperatorAlert(self.journal.operation(op_id).persona,
                                                f"{op_id} needs an operator: {res.result}; exits: "
                                                f"aimctl retry|abandon|mark-fenced {op_id}"))

    def _on_step(self, ev: StepEvent) -> None:
        self.metrics.observe_step(ev)
        self.changes.on_step(ev)

    def _hook_note(self, op: Operation, text: str) -> None:
        self.changes.note(op.id, "recovery", text)

    def approve(self, op_id: str, actor: str) -> Operation:
        if op_id.startswith("CHG"):
            # Approving a change record releases the planned operations gated on it.
            self.changes.approve(op_id, actor)
            self.audit.record(actor, "change.approve", op_id, {})
            waiting = [o for o in self.journal.unfinished_operations() if o.facts.get("change") == op_id]
            for o in waiting:
                if o.state == "waiting-approval":
                    self._spawn(o.id)
            if not waiting:
                raise OperatorError(f"change {op_id} approved; no operation is waiting for it")
            return self.journal.operation(waiting[0].id)
        op = self.journal.operation(op_id)
        if op.state != "waiting-approval":
            raise OperatorError(f"{op_id} is {op.state}, not waiting for approval")
        self.journal.add_facts(op_id, {"approved_by": actor})
        self.audit.record(actor, "failover.approve", op.persona, {"op": op_id})
        self._spawn(op_id)
        return self.journal.operation(op_id)

    # ------------------------------------------------------------------ operator exits (rule 7)

    def _settle(self, op_id: str) -> None:
        """Let a thread that just stopped the operation finish its notes (alert, change record)."""
        t = self._threads.get(op_id)
        if t is not None and t.is_alive():
            t.join(5.0)

    def _waiting(self, op_id: str) -> Operation:
        op = self.journal.operation(op_id)
        t = self._threads.get(op_id)
        if op.state == "running" or (t is not None and t.is_alive()):
            raise OperatorError(f"{op_id} is {op.state} and its workflow is still acting; try again when it stops")
        return op

    def _resolved(self, op: Operation, actor: str, action: str, detail: dict[str, Any]) -> None:
        """The operator's choice, in the audit log and the operation's change record."""
        self.audit.record(actor, f"operation.{action}", op.persona, {"op": op.id, **detail})
        words = ", ".join(f"{k} {v}" for k, v in detail.items() if v)
        self.changes.note(op.id, "resolve", f"{action} by {actor}" + (f": {words}" if words else ""))

    def retry(self, op_id: str, actor: str, note: str = "") -> Operation:
        """Run a needs-operator operation again from the step that stopped it."""
        self._settle(op_id)
        with self._lock:
            op = self._waiting(op_id)
            refusal = retry_refusal(op)
            if refusal:
                raise OperatorError(refusal)
            n = int(op.facts.get("retries", 0)) + 1
            self.journal.result(op_id, "resolve", "ok", {"action": "retry", "by": actor, "note": note},
                                facts={"retries": n})
        self._resolved(op, actor, "retry", {"note": note})
        self._spawn(op_id)
        return self.journal.operation(op_id)

    def mark_fenced(self, op_id: str, server: str, actor: str, note: str = "") -> Operation:
        """Record an operator's word that ``server`` is out (rule 1's human decision), then retry."""
        self._settle(op_id)
        with self._lock:
            op = self._waiting(op_id)
            refusal = mark_fenced_refusal(op, self.journal.records(op_id), server)
            if refusal:
                raise OperatorError(refusal)
            marks = dict(op.facts.get("operator_fenced") or {})
            marks[server] = {"by": actor, "at": time.time(), "note": note}
            n = int(op.facts.get("retries", 0)) + 1
            self.journal.result(op_id, "resolve", "ok",
                                {"action": "mark-fenced", "server": server, "by": actor, "note": note},
                                facts={"operator_fenced": marks, "retries": n})
        self._resolved(op, actor, "mark-fenced", {"server": server, "note": note})
        self._spawn(op_id)
        return self.journal.operation(op_id)

    def abandon(self, op_id: str, actor: str, persona_on: str = KEEP, note: str = "") -> Operation:
        """End a waiting operation without touching any device; see ``failover/resolve.py``."""
        self._settle(op_id)
        with self._lock:
            op = self._waiting(op_id)
            current = self.journal.assignment().get(op.persona)
            plan = abandon_plan(op, self.journal.records(op_id), current, persona_on)
            if plan.refusal:
                raise OperatorError(plan.refusal)
            where = plan.assign or "no server (unassigned)"
            result = f"abandoned by {actor}: {op.persona} stays on {where}" + (f"; {note}" if note else "")
            self.journal.result(
                op_id, "resolve", "ok", {"action": "abandon", "by": actor, "note": note, "persona_on": plan.assign},
                assignment_change={op.persona: plan.assign} if plan.change_assignment else None,
                server_marks={s: ServerMark(why, quarantine=True) for s, why in plan.quarantine.items()},
                end=("aborted", result))
            self._pending.pop(op.persona, None)
        self._resolved(op, actor, "abandon", {"persona_on": where, "quarantined": ", ".join(plan.quarantine),
                                              "note": note})
        self.changes.close(op_id, f"aborted: {result}")
        self.metrics.failover_finished("aborted")
        # The persona is watched again from a clean slate: a body that is dead fails over anew.
        self.detector.forget(op.persona)
        self._refresh_capacity()
        return self.journal.operation(op_id)

    def _refresh_capacity(self) -> None:
        assignment = {p: s for p, s in self.journal.assignment().items() if s}
        q = set(self.journal.quarantined())
        for pool in self.defs.pools:
            self.metrics.set_spare_capacity(pool, capacity(self.defs, pool, assignment, q)[0])

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start listening (heartbeats, BMC polls, traps). ``resume`` then picks up the journal's work."""
        self.receiver.start()
        self.poller.start()
        self.traps.start()
        self._refresh_capacity()

    def resume(self) -> None:
        for op in self.journal.unfinished_operations():
            if op.state in ("running", "waiting-approval"):
                log.warning("resuming %s (%s) from the journal", op.id, op.state)
                self._spawn(op.id)

    def loop(self) -> None:
        tick = max(0.05, self.interval / 4)
        renewed = 0.0
        while not self._stop.wait(tick):
            now = time.monotonic()
            self.detector.tick(now, self.snapshot)
            self._storm_brake()
            self._approval_timeouts()
            if now - renewed >= LEASE_RENEW_EVERY_S:
                renewed = now
                self.renew_leases()

    def renew_leases(self) -> int:
        """An unfinished operation holds its persona and servers for as long as it is unfinished —
        waiting for an operator over a weekend included — not only for the TTL taken when it opened:
        a lapsed lease would let another operation choose a standby this one half-configured."""
        live = {op.id for op in self.journal.unfinished_operations()}
        n = 0
        for lease in self.journal.leases(include_expired=True):
            if lease.holder in live and self.journal.renew(lease.name, lease.holder, LEASE_TTL_S):
                n += 1
        return n

    def _approval_timeouts(self) -> None:
        for op in self.journal.unfinished_operations():
            spec = self.defs.personas[op.persona].spec
            if op.state == "waiting-approval" and time.time() - op.created > spec.confirm_timeout \
                    and not (op.id in self._threads and self._threads[op.id].is_alive()):
                self._spawn(op.id)

    def stop(self) -> None:
        self._stop.set()
        for part in (self.traps, self.poller, self.receiver):
            try:
                part.stop()
            except Exception:
                log.exception("stopping %s", type(part).__name__)
        self.changes.shutdown()
