"""The controller daemon: watch (heartbeats, BMCs, traps), decide (detector), act (workflow), tell (API).

Observe -> decide -> act once -> say what happened, as a short loop; everything that can block
(drivers, hooks) runs in an operation's own thread, never in the loop.
"""

from __future__ import annotations

import logging
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
from aimctl.detect.heartbeat import HeartbeatReceiver
from aimctl.detect.observe import Observer
from aimctl.detect.traps import TrapReceiver
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

TRIGGERS = (PersonaDead, PersonaPresumedDead, PersonaUnhealthy)


@dataclass(frozen=True, slots=True)
class RecoveryFailed(Event):
    """The persona runs on its new body but its application's recovery did not finish."""


@dataclass(frozen=True, slots=True)
class NeedsOperatorAlert(Event):
    """An operation stopped and waits for a human."""


class StormBrake(OperatorError):
    """The pool already runs as many failovers as its storm brake allows."""


class Controller:
    def __init__(self, defs: Definitions, listen: Listen, state: Path, settings: Settings | None = None) -> None:
        self.defs = defs
        self.listen = listen
        self.state = state
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        (state / "boot").mkdir(exist_ok=True)
        self.journal = Journal(state / "journal.db")
        if not any(self.journal.assignment().values()):
            self.journal.seed_assignment(defs.homes())
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
        self.receiver = HeartbeatReceiver(*_hostport(listen.heartbeat), keys)
        # The poller gets its own BMC sessions: a slow poll must never queue behind a fence.
        self.poller = BmcPoller({s: make_power(s, v) for s, v in defs.servers.items()},
                                interval_s=listen.bmc_poll_interval)
        links = {}
        for s, srv in defs.servers.items():
            for ch, cable in srv.channels.items():
                links[(cable.switch, cable.ifindex or ifindex(defs.switches[cable.switch].os, cable.port))] = (s, ch)
        # One community for all switches; the receiver tells switches apart by sysName / address.
        self.traps = TrapReceiver(*_hostport(listen.snmp), communities={listen.snmp_community: None}, links=links)
        alert_sinks: list[Any] = [LoggingAlerts(log)]
        if listen.alert_webhook and listen.alert_webhook_secret:
            alert_sinks.append(WebhookAlerts(listen.alert_webhook, listen.alert_webhook_secret))
        self.alerts = FanOut(alert_sinks)
        # Storm brake: deaths wait here while their pool is at its concurrency limit or paused.
        self._pending: dict[str, tuple[str, str]] = {}
        self._starting: set[str] = set()
        self._starter = ThreadPoolExecutor(4, thread_name_prefix="start")
        self.paused: dict[str, str] = {}
        self.detector = Detector(self, Params(miss_intervals=2.5))
        self.observer = Observer(self.receiver, self.poller, self.traps)
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self.ctx = Ctx(defs, self.journal, self.drivers, self.chap, self.heartbeat_since,
                       hook_runner(defs, self._hook_note), self.bmc_unhealthy,
                       change_approved=self.changes.is_approved, stop_persona=self.stop_persona,
                       settings=self.settings)

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
        for persona, server in want.items():
            w = current.get(persona)
            if w is None or w.server != server:
                pool = self.defs.pools[self.defs.personas[persona].pool]
                scn = pool.networks[pool.scn]
                chans = [c for c in (scn.primary, scn.secondary) if c is not None]
                self.observer.watch(persona, server, chans, self.interval, grace_s=max(10 * self.interval, 5.0))
        obs = self.observer(now)
        for o in obs:
            self.metrics.set_heartbeat_age(o.persona, o.hb_age)
        return obs

    # ------------------------------------------------------------------ decide

    def emit(self, event: Event) -> None:
        """Detector events: deaths queue for failover (the storm brake drains them); all are alerted."""
        self.alerts.emit(event)
        if isinstance(event, TRIGGERS) and event.persona not in self.busy_personas():
            self._pending[event.persona] = (event.kind, event.reason)

    def _storm_brake(self) -> None:
        """Pause automatic failover in a pool where too many personas are in trouble at once (a switch
        or power event, not N independent deaths), page the operators once, and start queued failovers
        only while the pool runs fewer than its limit."""
        states = self.detector.states()
        for name, pool in self.defs.pools.items():
            personas = [p.name for p in self.defs.pool_personas(name)]
            if not personas:
                continue
            troubled = [p for p in personas if states.get(p) and states[p].state != "alive"]
            share = 100 * len(troubled) / len(personas)
            if share > pool.storm.pause_above_percent and len(troubled) > 1:
                if name not in self.paused:
                    why = (f"{len(troubled)} of {len(personas)} personas of pool {name} in trouble at once "
                           f"({', '.join(sorted(troubled))}): automatic failover paused; an operator decides")
                    self.paused[name] = why
                    self.alerts.emit(PersonaUnreachable(",".join(sorted(troubled)), f"PAGE: {why}"))
                    self.audit.record("controller", "storm.pause", name, {"troubled": sorted(troubled)})
            elif name in self.paused:
                # The storm subsided (what is left is within the pool's share): queued failovers go on.
                del self.paused[name]
                self.alerts.emit(PersonaRecovered(",".join(sorted(troubled)) or name,
                                                  f"storm over in pool {name}: automatic failover resumes"))
                self.audit.record("controller", "storm.resume", name, {"troubled": sorted(troubled)})
        for persona, (trigger, evidence) in list(self._pending.items()):
            if self.defs.personas[persona].pool in self.paused or persona in self._starting:
                continue
            # Opening an operation writes the journal, the change record and the audit log (fsyncs):
            # done off the detector loop, so twenty deaths at once don't hold back the next tick.
            self._starting.add(persona)
            self._starter.submit(self._start_queued, persona, trigger, evidence)

    def _start_queued(self, persona: str, trigger: str, evidence: str) -> None:
        try:
            self.start_failover(persona, trigger=trigger, evidence=evidence)
            self._pending.pop(persona, None)
        except StormBrake:
            pass  # stays queued until a running failover of its pool ends
        except OperatorError as exc:
            log.error("failover of %s not started: %s", persona, exc)
            self._pending.pop(persona, None)
        finally:
            self._starting.discard(persona)

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
        while not self._stop.wait(tick):
            now = time.monotonic()
            self.detector.tick(now, self.snapshot)
            self._storm_brake()
            self._approval_timeouts()

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
