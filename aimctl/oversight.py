"""The watchful half of the controller: drift, spares, suspects, racks, escalation limits.

Wired by the daemon (``Controller``) and holding no policy of its own: every decision is a pure
function elsewhere (``reconcile.verdict``, ``reconcile.spares``, ``detect.suspect``,
``detect.racks``, ``detect.escalation``); this class feeds them from memory and the journal,
turns their verdicts into alerts (once per transition), repair operations and planned moves, and
says where things stand for ``status``.

Threads: the drift loop and the health poller run on their own; ``tick`` runs on the controller's
loop and only reads memory (it is throttled to ``eval_s``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from aimctl.detect.detector import Event
from aimctl.detect.escalation import EscalationVerdict, PastFailover, escalation
from aimctl.detect.events import (
    DriftFound,
    DriftRepaired,
    DriftResolved,
    EscalationStop,
    RepairFailed,
    RackEventAlert,
    SparesExhausted,
    SparesRestored,
    SuspectBody,
    SuspectCleared,
)
from aimctl.detect.healthpoll import HealthPoller, LinkFlaps
from aimctl.detect.racks import Death, rack_allows, rack_events
from aimctl.detect.suspect import PreemptDecision, Signals, SuspectVerdict, load_table, preempt_decision, suspect_verdict
from aimctl.drivers.protocols import PowerState
from aimctl.drivers.registry import Drivers
from aimctl.errors import OperatorError
from aimctl.failover.planner import choose
from aimctl.journal import JournalStore, LeaseHeld, Operation, persona_lease, server_lease
from aimctl.loader import Definitions
from aimctl.overlay import Listen
from aimctl.reconcile.loop import PassResult, Reconciler, RepairRequest, repair_requests
from aimctl.reconcile.spares import Spares, spares
from aimctl.records.audit import Audit
from aimctl.records.metrics import Metrics

log = logging.getLogger("aimctl.oversight")

# Findings that make a standby unfit to count as a spare, and those that keep the planner off it.
NOT_SPARE = ("hardware", "standby-ports", "bootcfg")
NOT_CHOSEN = ("hardware",)


class Host(Protocol):
    """What the oversight needs of the controller that wires it (``aimctl.daemon.Controller``)."""

    defs: Definitions
    journal: JournalStore
    listen: Listen
    state: Path
    alerts: Any  # an EventSink
    metrics: Metrics
    audit: Audit
    flaps: LinkFlaps
    poller: Any  # answer(server) -> (word, since), as detect.bmcpoll.BmcPoller

    def busy_personas(self) -> set[str]: ...

    def bmc_unhealthy(self) -> dict[str, str]: ...

    def start_failover(self, persona: str, trigger: str, evidence: str, kind: str = "failover",
                       to: str | None = None, actor: str = "controller", change: str | None = None,
                       facts: dict[str, Any] | None = None) -> str: ...

    def _spawn(self, op_id: str) -> bool: ...


class Oversight:
    def __init__(self, c: Host, eval_s: float = 0.5, clock: Callable[[], float] = time.monotonic) -> None:
        self.c = c
        self.defs = c.defs
        self.journal = c.journal
        self.eval_s = eval_s
        self._clock = clock
        listen = c.listen
        self.table = load_table()
        # Reads use their own driver instances: a drift pass or a health poll never queues behind
        # an operation's calls in one client (switch sessions are still one at a time per switch).
        self.drivers = Drivers(self.defs, c.state / "boot")
        self.reconciler = Reconciler(self.defs, self.journal, self.drivers, listen.drift_interval,
                                     listen.drift_jitter, on_pass=self._on_pass, power=self._polled_power)
        self.health = HealthPoller({s: self.drivers.hardware(s) for s in self.defs.servers}, listen.health_interval)
        self.flaps: LinkFlaps = c.flaps  # fed by the controller's trap receiver
        self._lock = threading.RLock()
        self._deaths: list[Death] = []
        self._paged: dict[str, float] = {}
        self._suspects: dict[str, SuspectVerdict] = {}
        self._alerted_events: set[str] = set()
        self._decisions: dict[str, PreemptDecision] = {}
        self._moves: dict[str, str] = {}  # suspect body -> the planned move started for it (one per occurrence)
        self._spares: dict[str, Spares] = {}
        self._shown_suspects: dict[str, dict[str, Any]] = {}  # suspects() as the last spare accounting saw them
        self._short: set[str] = set()  # pools at k=0 and personas without a qualified standby, alerted
        self._last_eval = float("-inf")

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.health.start()
        self.reconciler.start()
        self.refresh_spares()

    def stop(self) -> None:
        self.reconciler.stop()
        self.health.stop()

    def _emit(self, event: Event) -> None:
        self.c.alerts.emit(event)

    # ------------------------------------------------------------------ drift

    def _polled_power(self, server: str) -> PowerState | None:
        """The BMC poller's answer if it is fresh (it reads every body every interval); else None."""
        answer, _ = self.c.poller.answer(server)
        return {"on": PowerState.ON, "off": PowerState.OFF}.get(answer)

    def _on_pass(self, res: PassResult) -> None:
        fresh = [f for f in self.journal.findings() if not f.alerted]
        for f in fresh:
            self._emit(DriftFound(f.persona or f.server or f.device, f"drift: {f.what} (since "
                                  f"{time.strftime('%H:%M:%S', time.gmtime(f.since))} UTC)"))
        if fresh:
            self.journal.mark_alerted([f.key for f in fresh])
        for f in res.resolved:
            self._emit(DriftResolved(f.persona or f.server or f.device, f"drift resolved: {f.what}"))
        by_kind: dict[str, int] = {}
        for f in self.journal.findings():
            by_kind[f.kind] = by_kind.get(f.kind, 0) + 1
        self.c.metrics.set_drift(by_kind, res.duration_s, len(res.unchecked))
        busy = self.c.busy_personas() | {lease.name.split(":", 1)[1] for lease in self.journal.leases()}
        for req in repair_requests(self.defs, res.found, busy):
            tried = self._failed_repair(req.keys)
            if tried:
                log.info("not repairing %s again: %s failed (a new occurrence will be tried)", req.server, tried)
                continue
            self.start_repair(req)
        self.refresh_spares()

    def _failed_repair(self, keys: tuple[str, ...]) -> str | None:
        """The failed repair of any of these findings (this occurrence), if there was one."""
        stored = {f.key: f for f in self.journal.findings()}
        for key in keys:
            op_id = stored[key].repair_op if key in stored else None
            if op_id and self.journal.operation(op_id).state in ("failed", "aborted", "needs-operator"):
                return op_id
        return None

    def start_repair(self, req: RepairRequest) -> str | None:
        subject = req.persona or req.server
        facts = {"trigger": "drift", "evidence": req.evidence, "actor": "controller", "server": req.server,
                 "subject": subject, "mode": req.mode, "ports": [list(p) for p in req.ports],
                 "power_off": req.power_off, "boot": req.boot, "findings": list(req.keys)}
        leases = ([persona_lease(req.persona)] if req.persona else []) + [server_lease(req.server)]
        try:
            op_id = self.journal.open_operation("repair", req.persona or "", facts, from_server=req.server,
                                                leases=leases, ttl_s=900.0)
        except LeaseHeld as exc:
            log.info("repair of %s not started: %s", subject, exc)
            return None
        for key in req.keys:
            self.journal.set_repair_op(key, op_id)
        self.c.audit.record("controller", "repair.start", subject, {"op": op_id, "findings": list(req.keys)})
        self.c._spawn(op_id)
        return op_id

    def repair_finished(self, op: Operation) -> None:
        subject = str(op.facts.get("subject") or op.persona)
        if op.state == "done":
            self._emit(DriftRepaired(subject, f"{op.id}: {op.result or 'repaired and read back'}"))
        else:
            self._emit(RepairFailed(subject, f"{op.id}: drift repair {op.state}: {op.result}; the finding stays open"))

    def drift(self) -> dict[str, Any]:
        last = self.reconciler.last
        return {
            "findings": [dict(f.__dict__) for f in self.journal.findings()],
            "interval_s": self.reconciler.interval_s,
            "passes": self.reconciler.passes,
            "last_pass": None if last is None else {
                "started": last.started, "duration_s": round(last.duration_s, 3), "checks": last.checks,
                "findings": len(last.found), "unchecked": last.unchecked, "skipped": last.skipped,
                "sessions_per_switch": last.sessions},
        }

    # ------------------------------------------------------------------ what cannot count or be chosen

    def _finding_servers(self, kinds: tuple[str, ...]) -> dict[str, str]:
        out: dict[str, str] = {}
        for f in self.journal.findings():
            if f.server and f.persona is None and f.kind in kinds:
                out.setdefault(f.server, f"{'hardware does not match' if f.kind == 'hardware' else 'drifted'}: "
                                         f"{f.what}")
        return out

    def _suspect_reasons(self) -> dict[str, str]:
        with self._lock:
            return {s: f"suspect: {'; '.join(v.reasons)}" for s, v in self._suspects.items() if v.suspect}

    def unavailable(self, suspects: dict[str, str] | None = None) -> dict[str, str]:
        """Bodies the planner must not choose right now, with why (beside quarantine and BMC health)."""
        out = self._finding_servers(NOT_CHOSEN)
        for s, why in (self._suspect_reasons() if suspects is None else suspects).items():
            out.setdefault(s, why)
        return out

    def not_spare(self, suspects: dict[str, str] | None = None) -> dict[str, str]:
        out = self._finding_servers(NOT_SPARE)
        for s, st in self.journal.servers().items():
            if st.failed:
                out.setdefault(s, f"marked failed: {st.reason}")
        for s, why in self.unavailable(suspects).items():
            out.setdefault(s, why)
        for s, why in self._bmc_down().items():
            out.setdefault(s, why)
        return out

    def _bmc_down(self) -> dict[str, str]:
        """BMCs that failed, or have not answered for a while: a poller that has not yet had its first
        answer (a controller just started) is no reason to page about spares."""
        grace = max(5.0, 3 * self.c.listen.bmc_poll_interval)
        now = self._clock()
        out = {}
        for s in self.defs.servers:
            answer, since = self.c.poller.answer(s)
            if answer == "failed" or (answer == "no-answer" and now - since >= grace):
                out[s] = f"BMC {answer} for {now - since:.0f}s"
        return out

    # ------------------------------------------------------------------ spares

    def refresh_spares(self) -> dict[str, Spares]:
        assignment = {p: s for p, s in self.journal.assignment().items() if s}
        quarantined = set(self.journal.quarantined())
        # The suspects the status shows are the ones this accounting left out: one view, never a
        # suspect standby still counted as a spare beside it (the suspect pass may run meanwhile).
        with self._lock:
            shown, reasons = self.suspects(), self._suspect_reasons()
        unusable = self.not_spare(reasons)
        out = {pool: spares(self.defs, pool, assignment, quarantined, unusable) for pool in self.defs.pools}
        with self._lock:
            self._spares, self._shown_suspects = out, shown
            for pool, sp in out.items():
                self.c.metrics.set_spare_capacity(pool, sp.k)
                for persona, n in sp.per_persona.items():
                    self.c.metrics.qualified_standbys.labels(persona=persona).set(n)
                short = sp.k == 0 and bool(sp.per_persona)
                if short and pool not in self._short:
                    self._short.add(pool)
                    self._emit(SparesExhausted(pool, f"spares: {sp.sentence}: the next death in pool {pool} "
                                                     "may find no standby"))
                elif not short and pool in self._short:
                    self._short.discard(pool)
                    self._emit(SparesRestored(pool, f"spares restored: {sp.sentence}"))
                for persona in sp.per_persona:
                    key = f"persona:{persona}"
                    if persona in sp.uncovered and key not in self._short:
                        self._short.add(key)
                        self._emit(SparesExhausted(persona, f"spares: no qualified standby for {persona} "
                                                            f"({sp.sentence})"))
                    elif persona not in sp.uncovered and key in self._short:
                        self._short.discard(key)
        return out

    # ------------------------------------------------------------------ suspects and planned moves

    def tick(self, now: float) -> None:
        if now - self._last_eval < self.eval_s:
            return
        self._last_eval = now
        try:
            self._suspect_pass(now)
            self.refresh_spares()
        except Exception:  # the watchful part must never stop the detector's loop
            log.exception("oversight tick failed")

    def _suspect_pass(self, now: float) -> None:
        assignment = {p: s for p, s in self.journal.assignment().items() if s}
        on = {s: p for p, s in assignment.items()}
        quarantined = set(self.journal.quarantined())
        busy = self.c.busy_personas()
        for server in self.defs.servers:
            if server in quarantined:
                continue  # a fenced body is out already; its signals tell nothing new
            pool = self.defs.pools[self.defs.server_pool[server]] if server in self.defs.server_pool else None
            if pool is None:
                continue
            h = self.health.health(server)
            sig = Signals(server, h.health if h else "unknown", h.entries if h else (), self.flaps.downs(server),
                          channels=len(self.defs.servers[server].channels))
            v = suspect_verdict(sig, pool.preempt, self.table, now)
            d: PreemptDecision | None = None
            persona = on.get(server)
            if v.suspect:
                has_standby = persona is not None and self._has_standby(persona, assignment, quarantined)
                d = preempt_decision(persona, server, v, pool.preempt, persona in busy, has_standby,
                                     datetime.now(UTC))
                if d.action == "move" and server in self._moves:
                    # One planned move per occurrence: if it did not get the persona off, a human looks.
                    d = PreemptDecision("alert", f"{v.sentence}; planned move {self._moves[server]} already tried")
            with self._lock:
                before = self._suspects.get(server)
                self._suspects[server] = v
                if d is None:
                    self._decisions.pop(server, None)
                    self._moves.pop(server, None)
                else:
                    self._decisions[server] = d
            new_events = [e for e in v.events if f"{server}/{e}" not in self._alerted_events]
            if d is not None and (before is None or not before.suspect or new_events):
                self._alerted_events.update(f"{server}/{e}" for e in v.events)
                self.c.metrics.suspect.labels(server=server).set(1)
                self._emit(SuspectBody(server, d.sentence))
                self.c.audit.record("controller", "body.suspect", server, {"reasons": list(v.reasons)})
            elif d is None and before is not None and before.suspect:
                self.c.metrics.suspect.labels(server=server).set(0)
                self._emit(SuspectCleared(server, f"{server} no longer shows signs of failing"))
            if d is not None and d.action == "move" and persona is not None:
                self._planned_move(persona, server, d, pool.preempt.change_approval)

    def _has_standby(self, persona: str, assignment: dict[str, str], quarantined: set[str]) -> bool:
        unavailable = {**self.c.bmc_unhealthy(), **self.unavailable()}
        return choose(self.defs, persona, assignment, quarantined, unavailable).server is not None

    def _planned_move(self, persona: str, server: str, d: PreemptDecision, approval: bool) -> None:
        try:
            op_id = self.c.start_failover(persona, trigger="suspect", evidence=d.sentence, kind="move",
                                          actor="controller", facts={"suspect": server, "change_required": approval})
        except OperatorError as exc:
            log.info("planned move of %s not started: %s", persona, exc)
            return
        self._moves[server] = op_id
        log.warning("planned move %s of %s off suspect %s", op_id, persona, server)

    def suspects(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            out = {}
            for s, v in self._suspects.items():
                if v.suspect:
                    d = self._decisions.get(s)
                    out[s] = {"reasons": list(v.reasons), "sentence": d.sentence if d else v.sentence,
                              "action": d.action if d else "alert"}
            return out

    # ------------------------------------------------------------------ deaths: racks and escalation

    def on_death(self, persona: str, now: float) -> None:
        server = self.journal.assignment().get(persona)
        if not server or server not in self.defs.servers:
            return
        srv = self.defs.servers[server]
        pool = self.defs.pools[self.defs.personas[persona].pool]
        with self._lock:
            self._deaths = [d for d in self._deaths if now - d.at <= pool.storm.rack_window] + \
                [Death(persona, server, srv.rack, srv.pdu, now)]
            events = rack_events(self._deaths, now, pool.storm.rack_window, pool.storm.rack_event, self._paged)
            for e in events:
                self._paged[e.rack] = now
        for e in events:
            self._emit(RackEventAlert(e.rack, f"PAGE: {e.sentence}"))
            self.c.audit.record("controller", "rack.event", e.rack, {"servers": list(e.servers),
                                                                     "personas": list(e.personas)})

    def rack_allows(self, persona: str, server: str | None) -> tuple[bool, str]:
        if not server or server not in self.defs.servers:
            return True, "no body"
        rack = self.defs.servers[server].rack
        limit = self.defs.pools[self.defs.personas[persona].pool].storm.per_rack
        running = sum(1 for o in self.journal.unfinished_operations()
                      if o.kind == "failover" and o.from_server in self.defs.servers
                      and self.defs.servers[o.from_server].rack == rack and o.persona != persona)
        return rack_allows(rack, running, limit)

    def escalation(self, persona: str) -> EscalationVerdict:
        limit = self.defs.pools[self.defs.personas[persona].pool].escalation
        history = [PastFailover(o.id, o.created, o.from_server, o.facts.get("to") or o.to_server, o.state, o.result)
                   for o in self.journal.operations(limit=200, persona=persona)
                   if o.kind == "failover" and o.facts.get("actor") == "controller"]
        return escalation(persona, history, time.time(), limit)

    def stop_escalated(self, op_id: str, verdict: EscalationVerdict) -> None:
        """An automatic failover beyond the limit: journaled as stopped at confirm, for a human."""
        op = self.journal.operation(op_id)
        self.journal.intent(op_id, "confirm", {"escalation": True})
        self.journal.result(op_id, "confirm", "failed", {"reason": verdict.sentence, "stopped": "needs-operator",
                                                         "history": [p.__dict__ for p in verdict.history]})
        self.journal.set_state(op_id, "needs-operator", f"confirm: {verdict.sentence}")
        self._emit(EscalationStop(op.persona, f"PAGE: {op_id}: {verdict.sentence}"))
        self.c.audit.record("controller", "failover.escalation-limit", op.persona,
                            {"op": op_id, "history": [p.op_id for p in verdict.history]})

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        with self._lock:
            pools = {p: {"k": s.k, "per_persona": s.per_persona, "counted": list(s.counted), "excluded": s.excluded,
                         "sentence": s.sentence} for p, s in self._spares.items()}
            shown = self._shown_suspects
        return {"pools": pools, "suspects": shown, "drift_open": len(self.journal.findings()),
                "health_passes": self.health.passes, "drift_passes": self.reconciler.passes}
