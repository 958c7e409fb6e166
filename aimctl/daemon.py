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
from aimctl.failover import bootwindow
from aimctl.failover.chap import ChapStore
from aimctl.failover.context import Ctx, Settings
from aimctl.failover.dryrun import plan_failover
from aimctl.failover.planner import capacity, standbys
from aimctl.failover.runner import StepEvent, run_steps
from aimctl.failover.steps import failover_steps
from aimctl.journal import TERMINAL, Journal, Operation, PoolPause, persona_lease, server_lease
from aimctl.loader import Definitions
from aimctl.overlay import Listen
from aimctl.overlay import api_hostport as _hostport
from aimctl.records.audit import Audit
from aimctl.records.changes import ChangeRecords
from aimctl.records.metrics import Metrics
from aimctl.records.sinks import JsonlSink, WebhookSink
from aimctl.recovery.runner import hook_runner
from aimctl.secrets import private_dir, resolve_bytes

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


class NotFound(OperatorError):
    http_status = 404


class BootScriptRefused(OperatorError):
    """A boot script asked for by someone other than its body, or outside its boot window."""

    http_status = 403


class Controller:
    def __init__(self, defs: Definitions, listen: Listen, state: Path, settings: Settings | None = None) -> None:
        self.defs = defs
        self.listen = listen
        self.state = state
        private_dir(state)
        private_dir(state / "boot")
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
        self.drivers = Drivers(defs, state / "boot")
        for name, srv in defs.servers.items():
            if srv.bmc.kind == "ipmi" and srv.boot_address is None:
                log.warning("server %s boots by iPXE and declares no boot_address: its boot script (with a CHAP"
                            " secret) is served to any address while it is being powered on", name)
        self.settings = settings or Settings(power_deadline_s=listen.power_deadline,
                                             boot_timer_override_s=listen.boot_timer_override)
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
        self._revision = 0  # bumped on every step record and operator action: live views poll it
        self._capacity: dict[str, tuple[int, list[str]]] | None = None
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
        """Watch every assigned persona that no operation holds (its current body, its SCN channels),
        then read heartbeats, BMC answers and link state for it, all from memory."""
        busy = self.busy_personas()
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
        if isinstance(event, TRIGGERS):
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
        held = self.held_pools()
        for persona, (trigger, evidence) in list(self._pending.items()):
            if self.defs.personas[persona].pool in held or persona in self._starting:
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

    # ------------------------------------------------------------------ act

    def start_failover(self, persona: str, trigger: str, evidence: str, kind: str = "failover",
                       to: str | None = None, actor: str = "controller", change: str | None = None) -> str:
        with self._lock:
            if persona not in self.defs.personas:
                raise NotFound(f"unknown persona {persona!r}")
            if to is not None and to not in self.defs.servers:
                raise NotFound(f"unknown server {to!r}: nothing was started")
            if persona in self.busy_personas():
                raise OperatorError(f"{persona} already has an operation in progress")
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
        self.detector.forget(persona)
        self._spawn(op_id)
        self.audit.record(actor, f"{kind}.start", persona, {"op": op_id, "trigger": trigger, "evidence": evidence})
        return op_id

    def _spawn(self, op_id: str) -> None:
        t = threading.Thread(target=self._run_op, args=(op_id,), name=f"op-{op_id}", daemon=True)
        self._threads[op_id] = t
        t.start()

    def _run_op(self, op_id: str) -> None:
        op = self.journal.operation(op_id)
        # Opening is idempotent: a resumed operation finds the change record it opened before.
        self.changes.open(op, description=f"{op.kind} of {op.persona} from {op.from_server}: "
                                          f"{op.facts.get('evidence', '')}")
        try:
            res = run_steps(self.journal, op_id, failover_steps(), self.ctx, listener=self._on_step,
                            max_retargets=4)
        except Exception:
            log.exception("operation %s crashed", op_id)
            return
        log.warning("operation %s: %s %s", op_id, res.state, res.result)
        self._revision += 1
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
                                                f"{op_id} needs an operator: {res.result}"))

    def _on_step(self, ev: StepEvent) -> None:
        self._revision += 1
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
        self._revision += 1
        self.audit.record(actor, "failover.approve", op.persona, {"op": op_id})
        self._spawn(op_id)
        return self.journal.operation(op_id)

    # ------------------------------------------------------------------ operator actions and views
    # The API and the console call these; they hold no logic of their own.

    def pool_of_persona(self, persona: str) -> str | None:
        pd = self.defs.personas.get(persona)
        return pd.pool if pd else None

    def pool_of_server(self, server: str) -> str | None:
        return self.defs.server_pool.get(server)

    def pool_of_operation(self, op_id: str) -> str | None:
        if op_id.startswith("CHG"):  # a change record: the pool of the operation it gates
            ops = [o for o in self.journal.unfinished_operations() if o.facts.get("change") == op_id]
            return self.pool_of_persona(ops[0].persona) if ops else None
        try:
            return self.pool_of_persona(self.journal.operation(op_id).persona)
        except OperatorError:
            return None

    def revision(self) -> tuple[int, float, int]:
        """Changes when anything a live view shows may have changed (steps, states, marks, pauses)."""
        row = self.journal.query("SELECT COALESCE(MAX(updated), 0), COUNT(*) FROM operations")[0]
        states = hash(tuple(sorted((p, s.state) for p, s in self.detector.states().items())))
        return self._revision, float(row[0]), int(row[1]) ^ states

    def persona_states(self) -> dict[str, tuple[str, str | None, str, str | None, bool]]:
        """Per persona, cheaply (the dashboard counts 10,000 of these): (pool, server, detector state,
        operation holding it, heartbeat ever seen)."""
        states = self.detector.states()
        busy = {o.persona: o.id for o in self.journal.unfinished_operations()}
        out: dict[str, tuple[str, str | None, str, str | None, bool]] = {}
        for persona, server in self.journal.assignment().items():
            pd = self.defs.personas.get(persona)
            if pd is None:
                continue
            st = states.get(persona)
            out[persona] = (pd.pool, server, st.state if st else "alive", busy.get(persona),
                            self.receiver.beats(persona) > 0)
        return out

    def status(self, only: set[str] | None = None, assignment: dict[str, str | None] | None = None) -> dict[str, Any]:
        """What ``aimctl status`` shows; ``only`` limits the persona rows (and their cost) to those named."""
        now = time.monotonic()
        states = self.detector.states()
        busy = {o.persona: o.id for o in self.journal.unfinished_operations()}
        personas = {}
        assigned = self.journal.assignment() if assignment is None else assignment
        for persona in sorted(assigned if only is None else only & assigned.keys()):
            server = assigned[persona]
            if persona not in self.defs.personas:
                continue
            seen = self.receiver.last_seen(persona)
            st = states.get(persona)
            personas[persona] = {
                "pool": self.defs.personas[persona].pool,
                "server": server,
                "heartbeat_age_s": round(now - seen[0], 3) if seen else None,
                "health": seen[1].health.word if seen else None,
                "detector": st.state if st else "alive",
                "operation": busy.get(persona),
                "bmc": self.poller.answer(server)[0] if server in self.defs.servers else None,
            }
        quarantined = {s: v.__dict__ for s, v in self.journal.quarantined().items()}
        return {"personas": personas, "quarantined": quarantined, "receiver": self.receiver.counters(),
                "paused_pools": dict(self.paused),
                "operator_paused": {p: {"paused": True, **v.__dict__} for p, v in self.operator_paused().items()},
                "queued": sorted(self._pending)}

    def operation_view(self, op_id: str) -> dict[str, Any]:
        op = self.journal.operation(op_id)
        d = dict(op.__dict__)
        d["timeline"] = self.journal.steps(op_id)
        d["change"] = self.changes.for_operation(op_id)
        return d

    def plan(self, persona: str, to: str | None = None, kind: str = "failover") -> dict[str, Any]:
        """The dry run ``aimctl plan`` prints, from the journal's assignment, with the exact switch lines."""
        from aimctl.drivers.registry import render_switch_lines

        if persona not in self.defs.personas:
            raise NotFound(f"unknown persona {persona!r}")
        if to is not None and to not in self.defs.servers:
            raise NotFound(f"unknown server {to!r}")
        assignment = {p: s for p, s in self.journal.assignment().items() if s}
        return plan_failover(self.defs, persona, assignment, set(self.journal.quarantined()), to=to,
                             render=lambda sw, intents: render_switch_lines(self.defs.switches[sw].os, intents),
                             kind=kind)

    def failback(self, persona: str, actor: str, change: str | None = None) -> str:
        if persona not in self.defs.personas:
            raise NotFound(f"unknown persona {persona!r}")
        home = self.defs.personas[persona].spec.home
        if self.journal.assignment().get(persona) == home:
            raise OperatorError(f"{persona} is already on its home server {home}")
        if home in self.journal.quarantined():
            raise OperatorError(f"home server {home} is quarantined: `aimctl clear {home}` first")
        return self.start_failover(persona, "planned", f"failback by {actor}", kind="failback", to=home,
                                   actor=actor, change=change)

    def clear_server(self, server: str, actor: str) -> None:
        if server not in self.defs.servers:
            raise NotFound(f"unknown server {server!r}")
        self.journal.clear(server, by=actor)
        self.audit.record(actor, "server.clear", server, {})
        self._revision += 1
        self._refresh_capacity()

    def operator_paused(self) -> dict[str, PoolPause]:
        return self.journal.pool_pauses()

    def held_pools(self) -> set[str]:
        """Pools where queued automatic failovers wait: paused by the storm brake or by an operator."""
        return set(self.paused) | set(self.operator_paused())

    def pause_pool(self, pool: str, actor: str, reason: str = "") -> PoolPause:
        """An operator holds automatic failover in ``pool`` (deaths queue; operator commands still act)."""
        if pool not in self.defs.pools:
            raise NotFound(f"unknown pool {pool!r}")
        if self.journal.pause_pool(pool, actor, reason):
            self.audit.record(actor, "pool.pause", pool, {"reason": reason})
            self._revision += 1
        return self.operator_paused()[pool]

    def resume_pool(self, pool: str, actor: str) -> None:
        if pool not in self.defs.pools:
            raise NotFound(f"unknown pool {pool!r}")
        if self.journal.resume_pool(pool):
            self.audit.record(actor, "pool.resume", pool, {})
            self._revision += 1

    def boot_script(self, server: str, client: str) -> bytes:
        """The iPXE script of ``server``, only to its boot address and only while an operation powers it on;
        every refusal is audited."""
        srv = self.defs.servers.get(server)
        path = self.state / "boot" / f"{server}.ipxe"
        if srv is None or srv.bmc.kind != "ipmi":
            raise NotFound(f"no boot script for {server}")
        window = None
        for op in self.journal.unfinished_operations():
            if op.state == "running" and op.facts.get("to") == server and \
                    bootwindow.powering_on(self.journal.records(op.id), server):
                window = op.id
        declared = str(srv.boot_address) if srv.boot_address is not None else None
        why = bootwindow.refusal(server, client, declared, window)
        if why is None and not path.is_file():
            why = f"{window} is powering {server} on but its script is missing"
        if why is not None:
            self.audit.record("anonymous", "boot.refused", server, {"client": client, "why": why},
                              source=f"api {client}")
            log.warning("boot script of %s refused to %s: %s", server, client, why)
            raise BootScriptRefused(f"boot script of {server} refused: {why}")
        self.audit.record("anonymous", "boot.served", server, {"client": client, "op": window},
                          source=f"api {client}")
        return path.read_bytes()

    def pool_capacity(self) -> dict[str, tuple[int, list[str]]]:
        """Per pool: N+k and the standbys in preference order, as of the last change of assignment or
        marks (computed then, not on every page view: at 10,000 personas it takes seconds)."""
        if self._capacity is None:
            self._refresh_capacity()
        assert self._capacity is not None
        return self._capacity

    def _refresh_capacity(self) -> None:
        assignment = {p: s for p, s in self.journal.assignment().items() if s}
        q = set(self.journal.quarantined())
        by_pool: dict[str, dict[str, str]] = {}
        for p, s in assignment.items():
            pool = self.pool_of_persona(p)
            if pool is not None:
                by_pool.setdefault(pool, {})[p] = s
        out = {}
        for pool in self.defs.pools:
            mine = by_pool.get(pool, {})
            k = capacity(self.defs, pool, mine, q)[0]
            out[pool] = (k, standbys(self.defs, pool, mine, q))
            self.metrics.set_spare_capacity(pool, k)
        self._capacity = out

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
