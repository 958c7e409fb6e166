"""The controller daemon: watch (heartbeats, BMCs, traps), decide (detector), act (workflow), tell (API).

Observe -> decide -> act once -> say what happened, as a short loop; everything that can block
(drivers, hooks) runs in an operation's own thread, never in the loop.

Clustered (``--cluster``), every member watches (heartbeats, BMCs, traps, the detector stay
warm) but only the leader acts: it alone starts operations, resumes them when elected, and calls
devices. ``leads()`` is the one question; the drivers ask it before every call (``_guard``), and
the etcd journal refuses a stale leader's writes whatever this process believes (rule 8).
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
from typing import TYPE_CHECKING, Any

from aimctl.detect.alerts import FanOut, LoggingAlerts, WebhookAlerts
from aimctl.detect.bmcpoll import BmcPoller
from aimctl.detect.channels import EmailAlerts, SnmpTrapAlerts
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
from aimctl.detect.healthpoll import LinkFlaps
from aimctl.detect.heartbeat import HeartbeatReceiver, MarkStore
from aimctl.detect.observe import Observer
from aimctl.detect.recheck import DEATHS, UNHEALTHY, alive_evidence
from aimctl.detect.storm import PoolLoad, Queued, plan_storm
from aimctl.detect.traps import TrapReceiver, bmc_identities
from aimctl.drivers.ifindex import ifindex
from aimctl.drivers.registry import Drivers, make_power
from aimctl.errors import OperatorError
from aimctl.failover import bootwindow
from aimctl.failover.chap import ChapStore
from aimctl.failover.context import Ctx, Settings
from aimctl.failover.dryrun import plan_failover
from aimctl.failover.planner import check_request
from aimctl.failover.resolve import KEEP, abandon_plan, mark_fenced_refusal, retry_refusal
from aimctl.failover.runner import StepEvent, run_steps
from aimctl.failover.steps import failover_steps
from aimctl.journal import (
    BACKGROUND_KINDS,
    TERMINAL,
    Journal,
    JournalInterrupted,
    JournalStore,
    JournalUnavailable,
    Lease,
    LostLeadership,
    Operation,
    PoolPause,
    ServerMark,
    ServerStatus,
    persona_lease,
    server_lease,
)
from aimctl.lifecycle.service import Lifecycle, Preempting
from aimctl.loader import Definitions
from aimctl.overlay import Listen
from aimctl.overlay import api_hostport as _hostport
from aimctl.oversight import Oversight
from aimctl.reconcile.repair import repair_steps
from aimctl.records.audit import Audit
from aimctl.records.changes import ChangeRecords
from aimctl.records.metrics import Metrics
from aimctl.records.sinks import JsonlSink, WebhookSink
from aimctl.records.sentences import operation_sentence
from aimctl.recovery.runner import hook_runner
from aimctl.sdnotify import notify
from aimctl.secrets import resolve_bytes
from aimctl.validation import CHANGE_RE

if TYPE_CHECKING:
    from aimctl.cluster.config import ClusterConfig
    from aimctl.cluster.member import ClusterMember

log = logging.getLogger("aimctl.controller")

# Leases of unfinished operations are renewed to this TTL this often (see ``renew_leases``).
LEASE_TTL_S = 3 * 3600.0
LEASE_RENEW_EVERY_S = 60.0
# Operations that leave the persona running on its body: a drift repair holds only ports, an archive
# or a rehearsal copies and boots beside it. The detector keeps watching such a persona, and its death
# is not "covered" by them: it queues a failover, which pre-empts or waits for them.
WATCHED_KINDS = ("repair", *BACKGROUND_KINDS)

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


class NotFound(OperatorError):
    http_status = 404


class BootScriptRefused(OperatorError):
    """A boot script asked for by someone other than its body, or outside its boot window."""

    http_status = 403


def check_state_dir(state: Path) -> None:
    """The controller's state dir exists (made 0700 if not), is a directory and can be read and written;
    otherwise one line saying so (exit 2), never a traceback from deep inside the journal."""
    if state.exists() and not state.is_dir():
        raise OperatorError(f"state dir {state}: not a directory")
    try:
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        mode = state.stat().st_mode & 0o777
        if mode & 0o077:  # made by someone else (or an older aimctl) open to others: it holds secrets
            log.warning("state dir %s was open to others (mode %o); tightened to 0700", state, mode)
            os.chmod(state, 0o700)
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
class _TolerantMarks:
    """Clustered, the replay memory is in etcd: a member starting while etcd does not answer starts
    with none (its replay guard still refuses old sequences of every boot it then hears)."""

    def __init__(self, journal: JournalStore) -> None:
        self.journal = journal

    def heartbeat_marks(self) -> dict[str, Any]:
        try:
            return self.journal.heartbeat_marks()
        except JournalUnavailable as exc:
            log.error("heartbeat replay memory not read (%s): starting without it", exc)
            return {}

    def save_heartbeat_marks(self, marks: Any) -> None:
        self.journal.save_heartbeat_marks(marks)


class WaitForRepair(StormBrake):
    """A drift repair holds the persona for a moment: its failover stays queued, it is never dropped."""


class Controller:
    def __init__(self, defs: Definitions, listen: Listen, state: Path, settings: Settings | None = None,
                 cluster: ClusterConfig | None = None) -> None:
        self.defs = defs
        self.listen = listen
        self.state = state
        check_state_dir(state)
        (state / "boot").mkdir(exist_ok=True, mode=0o700)
        self.cluster: ClusterMember | None = None
        self.journal: JournalStore
        self._leading = cluster is None  # embedded: always; clustered: once elected and resumed
        self.journal_error = ""
        self._view: tuple[dict[str, Operation], dict[str, str | None], dict[str, ServerStatus]] = ({}, {}, {})
        self._unfinished: list[Operation] = []
        self._leases: list[Lease] = []  # as last read with the view (status never waits on etcd)
        self._acting: set[str] = set()
        self._covered: set[str] = set()
        self._pauses: dict[str, PoolPause] = {}  # operator pauses as last read (never waits on etcd)
        self._spawned_at: dict[str, float] = {}
        if cluster is not None:
            from aimctl.cluster.member import ClusterMember

            self.cluster = ClusterMember(cluster, cluster.advertise_api or f"http://{listen.api}",
                                         on_elected=self._elected, on_demoted=self._demoted,
                                         may_campaign=self._may_campaign, on_refused=self._refused)
            self.journal = self.cluster.journal
        else:
            try:
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
        self.chap = ChapStore(self.journal)
        self.drivers = Drivers(defs, state / "boot", switch_timeout_s=listen.switch_timeout,
                               guard=self._guard if cluster is not None else None)
        for name, srv in defs.servers.items():
            if srv.bmc.kind == "ipmi" and srv.boot_address is None:
                log.warning("server %s boots by iPXE and declares no boot_address: its boot script (with a CHAP"
                            " secret) is served to any address while it is being powered on", name)
        self.settings = settings or Settings(power_deadline_s=listen.power_deadline,
                                             boot_timer_override_s=listen.boot_timer_override,
                                             switch_deadline_s=listen.switch_deadline)
        self.interval = listen.heartbeat_interval
        keys = {n: resolve_bytes(p.spec.heartbeat_key) for n, p in defs.personas.items()}
        self.receiver = heartbeat_receiver(listen, keys, self.journal if self.cluster is None
                                           else _TolerantMarks(self.journal))
        # The poller gets its own BMC sessions: a slow poll must never queue behind a fence.
        self.poller = BmcPoller({s: make_power(s, v) for s, v in defs.servers.items()},
                                interval_s=listen.bmc_poll_interval)
        links = {}
        for s, srv in defs.servers.items():
            for ch, cable in srv.channels.items():
                links[(cable.switch, cable.ifindex or ifindex(defs.switches[cable.switch].os, cable.port))] = (s, ch)
        # One community for all switches and BMCs; the receiver tells devices apart by address / sysName.
        # BMC alerts are a death signal (observe.py): the receiver must know which BMC is whose.
        # Every linkDown is also counted per body: link flaps make a body suspect.
        addresses, bmcs = bmc_identities({s: v.bmc.address for s, v in defs.servers.items()},
                                         [sw.address for sw in defs.switches.values()])
        self.flaps = LinkFlaps()
        try:
            self.traps = TrapReceiver(*_hostport(listen.snmp), communities={listen.snmp_community: None},
                                      links=links, addresses=addresses, bmcs=bmcs,
                                      on_link_change=self.flaps.on_link_change)
        except OperatorError:
            self.receiver.stop()
            raise
        alert_sinks: list[Any] = [LoggingAlerts(log)]
        if listen.alert_webhook and listen.alert_webhook_secret:
            alert_sinks.append(WebhookAlerts(listen.alert_webhook, listen.alert_webhook_secret))
        if listen.alert_smtp:
            alert_sinks.append(EmailAlerts(listen.alert_smtp, listen.alert_mail_from, listen.alert_mail_to,
                                           starttls=listen.alert_smtp_starttls, username=listen.alert_smtp_user,
                                           password_ref=listen.alert_smtp_password))
        if listen.alert_snmp:
            alert_sinks.append(SnmpTrapAlerts(listen.alert_snmp, listen.alert_snmp_community,
                                              listen.alert_snmp_enterprise))
        self._alert_sinks = alert_sinks
        self.alerts = FanOut(alert_sinks)
        # Storm brake: deaths wait here while their pool is at its concurrency limit or paused.
        self._pending: dict[str, Queued] = {}
        self._held: dict[str, str] = {}  # queued persona -> why it waits
        self._starting: set[str] = set()
        self._starter = ThreadPoolExecutor(4, thread_name_prefix="start")
        self.paused: dict[str, str] = {}  # pools the storm brake paused, and why
        self.params = Params(miss_intervals=2.5)
        self.detector = Detector(self, self.params)
        self.observer = Observer(self.receiver, self.poller, self.traps)
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.RLock()
        self._revision = 0  # bumped on every step record and operator action: live views poll it
        self._capacity: dict[str, tuple[int, list[str]]] | None = None
        self._stop = threading.Event()
        self.oversight = Oversight(self)
        self.oversight.reconciler.active = self.leads
        self.ctx = Ctx(defs, self.journal, self.drivers, self.chap, self.heartbeat_since,
                       self._guarded_hooks(hook_runner(defs, self._hook_note)), self.unavailable_bodies,
                       change_approved=self.changes.is_approved, stop_persona=self.stop_persona,
                       alive_evidence=self.alive_evidence, settings=self.settings)
        # Archives, restores, rehearsals and gold-image personas: operations of their own kinds.
        self.lifecycle = Lifecycle(self)

    # ------------------------------------------------------------------ observe

    def heartbeat_since(self, persona: str, since_wall: float) -> bool:
        # No guard here: a demoted leader's wait ends as any wait does, and the result it then writes
        # is refused by etcd (its token is stale) -- the step stops there, with no device call.
        seen = self.receiver.last_seen(persona)
        if seen is None:
            return False
        mono, _ = seen
        return mono >= time.monotonic() - (time.time() - since_wall)

    def stop_persona(self, persona: str, deadline_s: float) -> bool:
        """Signed stop request to the agent, repeated until its last heartbeat says it stopped."""
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            self._guard()
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

    def unavailable_bodies(self) -> dict[str, str]:
        """What the planner must skip: BMC unhealthy, suspect, hardware not as declared."""
        return {**self.oversight.unavailable(), **self.bmc_unhealthy()}

    def snapshot(self, now: float) -> list[Observation]:
        """Watch every assigned persona that no running operation holds (its current body, its SCN
        channels), then read heartbeats, BMC answers and link state for it, all from memory. A persona
        whose operation waits for an operator or an approval is still watched, so status shows the
        truth about it (rule 7); its deaths are not queued, the waiting operation already covers it.
        A drift repair does not take a persona out of sight either (it only puts ports back).
        Clustered, busy and assignment come from the journal view (never waiting on etcd)."""
        _, assignment, _ = self.journal_view()
        busy = self._acting
        want = {p: s for p, s in assignment.items()
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
        # Covered personas and assignment as this tick's snapshot read them (clustered: never waiting on etcd).
        if isinstance(event, TRIGGERS) and event.persona not in self._covered:
            w = self.observer.watches().get(event.persona)
            # The body it died on: taken up later (perhaps by another member after a leadership
            # change), a death whose persona has moved since is dropped, not failed over twice.
            server = w.server if w is not None else self._view[1].get(event.persona)
            self._pending[event.persona] = Queued(event.persona, self.defs.personas[event.persona].pool,
                                                  event.kind, event.reason, server)
            self.oversight.on_death(event.persona, time.monotonic())

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
            troubled = {p for p in personas if states.get(p, "alive") != "alive"}
            # Personas whose automatic failover already started died in this storm too: the detector
            # forgot them when their operation took over, the brake must not.
            troubled |= self._failing_over(name)
            pools[name] = PoolLoad(personas, tuple(sorted(troubled)), running, pool.storm.max_concurrent,
                                   pool.storm.pause_above_percent)
        # A copy first: starter threads pop from the queue while this loop reads it. A death held by a
        # drift repair is not "covered": it stays queued (start_failover raises WaitForRepair).
        queued = [q for p, q in list(self._pending.items()) if p not in starting]
        plan = plan_storm(pools, queued, states, self.journal.assignment(), self.covered_personas(),
                          set(self.paused), set(self.operator_paused))
        for name, why in plan.pause.items():
            self.paused[name] = why
            troubled_now = sorted(pools[name].troubled)
            self.alerts.emit(PersonaUnreachable(",".join(troubled_now), f"PAGE: {why}"))
            self.audit.record("controller", "storm.pause", name, {"troubled": troubled_now})
        for name, why in plan.resume.items():
            self.paused.pop(name, None)
            troubled_now = sorted(pools[name].troubled)
            self.alerts.emit(PersonaRecovered(",".join(troubled_now) or name, why))
            self.audit.record("controller", "storm.resume", name, {"troubled": troubled_now})
        for q, why in plan.drop:
            if self._pending.get(q.persona) is q:
                del self._pending[q.persona]
            log.warning("queued %s of %s dropped: %s", q.trigger, q.persona, why)
            self.audit.record("controller", "queue.drop", q.persona, {"trigger": q.trigger, "why": why})
        # Why each held death waits: the plan's reasons, and a start refused since (repair, limit).
        self._held = {**{p: w for p, w in self._held.items() if p in self._pending and p not in plan.hold
                         and p not in {q.persona for q, _ in plan.start}}, **plan.hold}
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
            self.start_failover(q.persona, trigger=q.trigger, evidence=q.evidence, expect_server=q.server)
            self._pending.pop(q.persona, None)
            self._held.pop(q.persona, None)
        except (StormBrake, Preempting) as exc:
            # Stays queued until a running failover of its pool ends, or what it pre-empts has stopped.
            self._held[q.persona] = str(exc)
        except OperatorError as exc:
            log.error("failover of %s not started: %s", q.persona, exc)
            self._pending.pop(q.persona, None)
        except Exception:  # a start that crashed must not leave the persona marked as starting forever
            log.exception("failover of %s not started", q.persona)
        finally:
            self._starting.discard(q.persona)

    # ------------------------------------------------------------------ tell

    def status(self, only: set[str] | None = None, assignment: dict[str, str | None] | None = None) -> dict[str, Any]:
        """The status document (``/v1/status``, ``aimctl status``): per persona its pool, body, heartbeat age
        (by arrival), health, the detector's state and reason (also while an operation waits), the
        BMC's reading, the operation holding it with its state and, when it waits, why; every BMC's
        reading; the storm brake's pauses and queue; how often the detector caught itself stalled.
        ``only`` limits the persona rows (and their cost) to those named. Clustered: the journal as last
        read (it never waits on etcd), and why this member does not act."""
        now = time.monotonic()
        states = self.detector.states()
        watched = self.observer.watches()
        ops, viewed, marks = self.journal_view()
        personas: dict[str, dict[str, Any]] = {}
        assigned = viewed if assignment is None else assignment
        for persona in sorted(assigned if only is None else only & assigned.keys()):
            server = assigned[persona]
            if persona not in self.defs.personas:
                continue
            seen = self.receiver.last_seen(persona)
            st = states.get(persona)
            op = ops.get(persona)
            if persona not in watched:
                detector, reason = "-", "not watched while its operation acts" if op else "not watched"
            else:
                detector, reason = (st.state if st else "alive"), self.detector.reason(persona)
            personas[persona] = {
                "pool": self.defs.personas[persona].pool,
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
        quarantined = {s: dataclasses.asdict(v) for s, v in marks.items()}
        wall = self.journal.now()
        # Who holds what, and for how long yet: an operation that waits must still hold its leases.
        leases = [{"name": x.name, "holder": x.holder, "expires_in_s": round(x.expires - wall, 1)}
                  for x in self._leases]
        doc = {"personas": personas, "quarantined": quarantined, "leases": leases,
               "receiver": self.receiver.counters(),
               "paused_pools": dict(self.paused), "operator_paused_pools": dict(self.operator_paused),
               "operator_paused": {p: {"paused": True, **v.__dict__} for p, v in self._pauses.items()},
               "queued": sorted(self._pending), "detector_stalls": self.detector.stalls,
               "bmcs": {s: self.poller.answer(s)[0] for s in sorted(self.defs.servers)} if only is None else {},
               "journal_error": self.journal_error}
        cluster = self.cluster_status(probe=False)
        if cluster is not None:
            doc["cluster"] = {k: cluster[k] for k in ("member", "role", "acting", "why_not_acting", "leader",
                                                      "lease_left_s", "etcd_reachable")}
        return doc

    def queued_personas(self) -> set[str]:
        """Personas whose death waits in the storm brake's queue."""
        return set(self._pending)

    def held_why(self, persona: str) -> str | None:
        """Why a queued death has not become a failover yet (None when it is not held)."""
        return self._held.get(persona) if persona in self._pending else None

    def busy_personas(self) -> set[str]:
        """Personas an operation has taken off their body (archives and rehearsals leave them running:
        the detector keeps watching those)."""
        return {op.persona for op in self.journal.unfinished_operations() if op.kind not in BACKGROUND_KINDS}

    def acting_personas(self) -> set[str]:
        return {op.persona for op in self.journal.unfinished_operations()
                if op.state == "running" and op.kind not in WATCHED_KINDS}

    def covered_personas(self) -> set[str]:
        """Personas whose death an operation already covers (a repair, archive or rehearsal covers none)."""
        return {op.persona for op in self.journal.unfinished_operations() if op.kind not in WATCHED_KINDS}

    def _failing_over(self, pool: str) -> set[str]:
        return {o.persona for o in self.journal.unfinished_operations()
                if o.kind == "failover" and o.facts.get("actor") == "controller"
                and o.persona in self.defs.personas and self.defs.personas[o.persona].pool == pool}

    def journal_view(self) -> tuple[dict[str, Operation], dict[str, str | None], dict[str, ServerStatus]]:
        """(persona -> its unfinished operation, assignment, quarantined servers). Embedded: read now.
        Clustered: as last read by the ``journal-view`` thread, so neither the loop nor the API ever
        waits on etcd; while etcd is unreachable it is the last view read and ``journal_error`` says why."""
        if self.cluster is None:
            self._refresh_view()
        return self._view

    def _refresh_view(self) -> None:
        try:
            unfinished = self.journal.unfinished_operations()
            busy = {op.persona: op for op in unfinished}
            self._view = (busy, self.journal.assignment(), self.journal.quarantined())
            self._unfinished = unfinished
            self._leases = self.journal.leases()
            self._acting = {op.persona for op in unfinished if op.state == "running" and op.kind not in WATCHED_KINDS}
            self._covered = {op.persona for op in unfinished if op.kind not in WATCHED_KINDS}
            self._pauses = self.journal.pool_pauses()
            if self.journal_error:
                log.warning("journal available again")
                self.journal_error = ""
        except JournalUnavailable as exc:
            if not self.journal_error:
                log.error("journal unavailable: %s (no operation starts until it is back)", exc)
            self.journal_error = str(exc)
        self.metrics.set_journal_available(not self.journal_error)

    def _watch_journal(self) -> None:
        while not self._stop.wait(0.3):
            self._refresh_view()

    # ------------------------------------------------------------------ act

    def start_failover(self, persona: str, trigger: str, evidence: str, kind: str = "failover",
                       to: str | None = None, actor: str = "controller", change: str | None = None,
                       facts: dict[str, Any] | None = None, expect_server: str | None = None) -> str:
        if persona not in self.defs.personas:
            raise OperatorError(f"unknown persona {persona!r}")
        # An archive or rehearsal in the way stops first (a rehearsal tears down); queued deaths retry
        # on the next tick meanwhile, an operator's request waits a little.
        self.lifecycle.yield_to(persona, kind, wait_s=0.0 if actor == "controller" else 30.0)
        with self._lock:
            if not self.leads():
                raise OperatorError(f"this controller does not lead the cluster; {persona} is left to the leader")
            # Names and targets are checked before anything is opened: a request that can never run
            # must not leave an operation holding the persona.
            in_use = {lease.name[7:]: f"in use by {lease.holder}" for lease in self.journal.leases()
                      if lease.name.startswith("server:")}
            check_request(self.defs, persona, to, {p: s for p, s in self.journal.assignment().items() if s},
                          set(self.journal.quarantined()), in_use)
            holding = next((o for o in self.journal.unfinished_operations() if o.persona == persona), None)
            if holding is not None and holding.kind == "repair" and kind == "failover":
                raise WaitForRepair(f"{persona}: waiting for drift repair {holding.id} to end")
            if holding is not None:
                raise OperatorError(f"{persona} already has an operation in progress")
            if change is not None:
                if not isinstance(change, str) or not CHANGE_RE.match(change):
                    raise OperatorError(f"change number {str(change)[:40]!r} refused: want CHG and 7 digits")
                if self.changes.exists(change):
                    raise OperatorError(f"change {change} already records another operation")
            pool = self.defs.personas[persona].pool
            running = [o for o in self.journal.unfinished_operations() if o.kind not in BACKGROUND_KINDS
                       and self.defs.personas.get(o.persona) and self.defs.personas[o.persona].pool == pool]
            if kind == "failover" and len(running) >= self.defs.pools[pool].storm.max_concurrent:
                raise StormBrake(f"storm brake: {len(running)} operations already running in pool {pool}")
            old = self.journal.assignment().get(persona)
            if expect_server is not None and old != expect_server:
                raise OperatorError(f"{persona} is on {old} now, not on {expect_server} where it died: handled")
            automatic = kind == "failover" and actor == "controller"
            if automatic:
                ok, why = self.oversight.rack_allows(persona, old)
                if not ok:
                    raise StormBrake(why)
            verdict = self.oversight.escalation(persona) if automatic else None
            opened: dict[str, Any] = {"trigger": trigger, "evidence": evidence, "actor": actor, **(facts or {})}
            if to:
                opened["requested_to"] = to
            if change:
                opened["change"] = change
            if verdict is not None and not verdict.allowed:
                opened["escalation"] = [p.__dict__ for p in verdict.history]
            leases = [persona_lease(persona)] + ([server_lease(old)] if old else [])
            op_id = self.journal.open_operation(kind, persona, opened, from_server=old, leases=leases)
        if verdict is not None and not verdict.allowed:
            # Beyond the escalation limit: journaled, stopped for a human, never run.
            self.detector.forget(persona)
            self.oversight.stop_escalated(op_id, verdict)
            return op_id
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
            # (A drift repair holds only ports, an archive or a rehearsal leaves the persona running
            # where it is: the detector keeps its state and keeps watching.)
            op = self.journal.operation(op_id)
            if op.kind not in WATCHED_KINDS:
                self.detector.forget(op.persona)
            t = threading.Thread(target=self._run_op, args=(op_id,), name=f"op-{op_id}", daemon=True)
            self._threads[op_id] = t
            self._spawned_at[op_id] = time.monotonic()
            t.start()
            return True

    def _run_op(self, op_id: str) -> None:
        try:
            op = self.journal.operation(op_id)
        except JournalInterrupted as exc:
            log.error("operation %s not resumed: %s", op_id, exc)
            return
        if self.lifecycle.handles(op.kind):
            done = self.lifecycle.run(op_id)
            if done is not None and done.state == "needs-operator":
                self.alerts.emit(NeedsOperatorAlert(op.persona, f"{op_id} needs an operator: {done.result}; exits: "
                                                                f"aimctl retry|abandon {op_id}"))
            return
        try:
            # Opening is idempotent: a resumed operation finds the change record it opened before.
            # An operator's own change number (``move --change CHG...``) is adopted for the record.
            rec = self.changes.open(op, description=f"{op.kind} of {op.persona or op.facts.get('subject')} from "
                                                    f"{op.from_server}: {op.facts.get('evidence', '')}",
                                    require_approval=False if op.kind == "repair" else None,
                                    number=op.facts.get("change"))
            if op.facts.get("change_required") and not op.facts.get("change"):
                # A planned move the pool gates on change approval waits for its own change record.
                self.journal.add_facts(op_id, {"change": rec["number"]})
        except JournalInterrupted as exc:
            log.error("operation %s not resumed: %s", op_id, exc)
            return
        steps = repair_steps() if op.kind == "repair" else failover_steps()
        try:
            res = run_steps(self.journal, op_id, steps, self.ctx, listener=self._on_step, max_retargets=4)
        except JournalInterrupted as exc:
            # Not a failure of the operation: it stays as the journal says, for whoever leads to resume.
            log.error("operation %s stopped: %s", op_id, exc)
            return
        except Exception:
            log.exception("operation %s crashed", op_id)
            return
        log.warning("operation %s: %s %s", op_id, res.state, res.result)
        self._revision += 1
        if res.state in TERMINAL:
            op = self.journal.operation(op_id)
            if res.state == "aborted" and "not dead after all" in res.result:
                self.alerts.emit(NotDeadAlert(op.persona, f"{op_id} stopped before touching anything: {res.result}"))
                self.audit.record("controller", "failover.not-dead", op.persona, {"op": op_id, "result": res.result})
            if op.facts.get("recovery_failed"):
                self.alerts.emit(RecoveryFailed(op.persona, f"{op_id}: {res.result}; see its recovery step"))
            if op.kind != "repair":
                self.metrics.failover_finished(res.state)
            self.changes.close(op_id, f"{res.state}: {res.result}")
            self.journal.release_leases(op_id)
            if op.kind == "repair":
                self.oversight.repair_finished(self.journal.operation(op_id))
            self._refresh_capacity()
        elif res.state == "needs-operator":
            stopped = self.journal.operation(op_id)
            self.alerts.emit(NeedsOperatorAlert(stopped.persona, f"{operation_sentence(dataclasses.asdict(stopped))}; "
                                                                 f"exits: aimctl retry|abandon|mark-fenced {op_id}"))

    def _on_step(self, ev: StepEvent) -> None:
        self._revision += 1
        self.metrics.observe_step(ev)
        self.changes.on_step(ev)

    def _guarded_hooks(self, run: Any) -> Any:
        def guarded(op: Operation, point: str) -> Any:
            self._guard()  # a hook acts on the application: only the leader starts one
            return run(op, point)
        return guarded

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
        latest, count = self.journal.operations_revision()
        states = hash(tuple(sorted((p, s.state) for p, s in self.detector.states().items())))
        return self._revision, latest, count ^ states

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
        plan = plan_failover(self.defs, persona, assignment, set(self.journal.quarantined()), to=to,
                             render=lambda sw, intents: render_switch_lines(self.defs.switches[sw].os, intents))
        if kind != "failover":
            # A planned operation has no death to confirm and no approval by policy: its agent is asked
            # to stop the persona cleanly first.
            old = plan.get("from")
            steps = [s for s in plan["steps"] if s["name"] != "approve"]
            for s in steps:
                if s["name"] == "confirm":
                    s["actions"] = [f"planned {kind}: {persona}'s agent on {old} is asked to stop it cleanly first"]
            plan["steps"] = steps
        return plan

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

    def pool_pauses(self) -> dict[str, PoolPause]:
        """Pools an operator paused, kept in the journal (a restart keeps them paused), as last read."""
        return dict(self._pauses)

    @property
    def operator_paused(self) -> dict[str, str]:
        """Pools an operator paused, and why: an input of the storm brake, which never resumes them."""
        return {p: f"paused by {v.by}" + (f": {v.reason}" if v.reason else "") for p, v in self._pauses.items()}

    def pause_pool(self, pool: str, actor: str, reason: str = "") -> PoolPause:
        """An operator holds automatic failover in ``pool`` (deaths queue; operator commands still act)."""
        if pool not in self.defs.pools:
            raise NotFound(f"unknown pool {pool!r}")
        if self.journal.pause_pool(pool, actor, reason):
            self.audit.record(actor, "pool.pause", pool, {"reason": reason})
            self._revision += 1
        self._pauses = self.journal.pool_pauses()
        return self._pauses[pool]

    def resume_pool(self, pool: str, actor: str) -> None:
        if pool not in self.defs.pools:
            raise NotFound(f"unknown pool {pool!r}")
        if self.journal.resume_pool(pool):
            self.audit.record(actor, "pool.resume", pool, {})
            self._revision += 1
        self._pauses = self.journal.pool_pauses()

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
        """N+k per pool from live state (the spare accounting sets the metric and alerts on k = 0); kept
        for the console, which reads it on every view."""
        self._capacity = {pool: (sp.k, list(sp.counted)) for pool, sp in self.oversight.refresh_spares().items()}

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start listening (heartbeats, BMC polls, traps). ``resume`` then picks up the journal's work."""
        self.receiver.start()
        self.poller.start()
        self.traps.start()
        if self.cluster is not None:
            self._refresh_view()
            threading.Thread(target=self._watch_journal, name="journal-view", daemon=True).start()
            self.cluster.leadership.start()  # elected -> _elected resumes; until then: a warm follower
        else:
            self._refresh_capacity()
        self.oversight.start()

    def resume(self) -> None:
        if not self.leads():
            return  # a follower resumes nothing; the leader does (and this one, once elected)
        for op in self.journal.unfinished_operations():
            if op.state in ("running", "waiting-approval"):
                log.warning("resuming %s (%s) from the journal", op.id, op.state)
                self._spawn(op.id)

    def loop(self) -> None:
        tick = max(0.05, self.interval / 4)
        notify("READY=1")
        last_reconcile = renewed = 0.0
        while not self._stop.wait(tick):
            now = time.monotonic()
            self.detector.tick(now, self.snapshot)
            leading = self.leads()
            self.metrics.set_leader(leading)
            if leading and not self.journal_error:
                try:
                    self._storm_brake()
                    self._approval_timeouts()
                    self.oversight.tick(now)  # drift, spares, escalation: the leader's alone
                    self.lifecycle.tick()  # scheduled archives and rehearsals: the leader's too
                    if now - last_reconcile > 1.0:
                        last_reconcile = now
                        self._reconcile()
                    if now - renewed >= LEASE_RENEW_EVERY_S:
                        renewed = now
                        self.renew_leases()
                except JournalInterrupted as exc:
                    log.error("loop: %s", exc)
            if self.cluster is None or self.cluster.leadership.healthy():
                notify("WATCHDOG=1")  # a hung loop (or a stuck leadership thread) gets killed by systemd

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

    # ------------------------------------------------------------------ cluster

    def leads(self) -> bool:
        """May this controller act now? Embedded: always. Clustered: elected, resumed, and renewed in time."""
        if self.cluster is None:
            return True
        return self._leading and self.cluster.leadership.is_leader()

    def _guard(self) -> None:
        """Before every device call: a member that does not lead (any more) makes none."""
        if self.cluster is not None and not self.leads():
            raise LostLeadership(f"{self.cluster.member} does not lead the cluster: no device call")

    def leader_url(self) -> str | None:
        """The API of the member that leads (this one's when it does); None when nobody leads."""
        if self.cluster is None:
            return None
        return self.cluster.leadership.leader.api

    def write_redirect(self) -> str | None:
        """None: take this write here. Else where to send it: the leader's API ("" when none leads)."""
        if self.cluster is None or self.leads():
            return None
        return self.leader_url() or ""

    def cluster_status(self, probe: bool = True) -> dict[str, Any] | None:
        if self.cluster is None:
            return None
        st = self.cluster.status(probe)
        st["acting"] = self.leads()
        st["journal_error"] = self.journal_error
        st["why_not_acting"] = "" if self.leads() else (
            f"journal unavailable: {self.journal_error}" if self.journal_error else
            f"follower of {st['leader']['member']}" if st["leader"]["member"] else
            "no leader known (none elected, or not read since this member last led)")
        return st

    def _ops_running_here(self) -> list[str]:
        return [op_id for op_id, t in self._threads.items() if t.is_alive()]

    def _may_campaign(self) -> bool:
        # Threads of an earlier term stop at their next device call or journal write; a member stands
        # again only once they are gone, so a new term never shares the world with an old one.
        return not self._stop.is_set() and not self._ops_running_here()

    def _elected(self, token: int) -> None:
        threading.Thread(target=self._take_over, args=(token,), name="take-over", daemon=True).start()

    def _take_over(self, token: int) -> None:
        assert self.cluster is not None
        try:
            if not any(self.journal.assignment().values()):
                self.journal.seed_assignment(self.defs.homes())
            unfinished = [o.id for o in self.journal.unfinished_operations()]
        except JournalInterrupted as exc:
            log.error("elected, but cannot read the journal: %s", exc)
            return
        self.audit.record(self.cluster.member, "cluster.elected", self.cluster.member,
                          {"token": token, "resuming": unfinished})
        self.metrics.leadership_event("elected")
        self._leading = True
        self.resume()
        self._refresh_capacity()

    def _demoted(self, why: str) -> None:
        assert self.cluster is not None
        self._leading = False
        self.metrics.leadership_event("demoted")
        self.alerts.emit(PersonaUnreachable("controller", f"{self.cluster.member} stopped leading: {why}"))
        try:
            self.audit.record(self.cluster.member, "cluster.demoted", self.cluster.member, {"why": why})
        except OSError:
            log.exception("audit")

    def _refused(self, why: str) -> None:
        self.metrics.refused_write()
        try:
            self.audit.record(self.cluster.member if self.cluster else "controller", "cluster.write-refused",
                              "journal", {"why": why})
        except OSError:
            log.exception("audit")

    def _reconcile(self) -> None:
        """The leader runs every running operation: one whose thread stopped (the journal's store was
        down, leadership flickered) is resumed from its records, at most every few seconds."""
        now = time.monotonic()
        for op in self.journal.unfinished_operations():
            t = self._threads.get(op.id)
            if op.state == "running" and (t is None or not t.is_alive()) \
                    and now - self._spawned_at.get(op.id, 0.0) > 5.0:
                log.warning("resuming %s (no thread runs it)", op.id)
                self._spawn(op.id)

    def _approval_timeouts(self) -> None:
        for op in self._unfinished:  # as read by this tick's snapshot
            # A repair of a quarantined body has no persona; one being made from a gold image is not
            # defined yet.
            pd = self.defs.personas.get(op.persona)
            if pd is None:
                continue
            spec = pd.spec
            if op.state == "waiting-approval" and time.time() - op.created > spec.confirm_timeout \
                    and not (op.id in self._threads and self._threads[op.id].is_alive()):
                self._spawn(op.id)

    def stop(self) -> None:
        self._stop.set()
        if self.cluster is not None:
            self._leading = False
            self.cluster.leadership.stop(resign=True)
        for part in (self.oversight, self.traps, self.poller, self.receiver):
            try:
                part.stop()
            except Exception:
                log.exception("stopping %s", type(part).__name__)
        self.changes.shutdown()
        for sink in self._alert_sinks:
            close = getattr(sink, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    log.exception("closing alert sink %s", type(sink).__name__)
