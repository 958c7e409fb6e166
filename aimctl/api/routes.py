"""The controller's /v1 routes: one declarative line each over a ``Controller`` method.

Adding a route: ``api.route(METHOD, PATH, handler, role=..., summary=..., body=Model,
response=Model, scope=...)``; the handler only unpacks the call and asks the Controller. ``scope``
names the pool the call acts on, so a token scoped to pool ``web`` can act there and only there.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from aimctl.api import models as m
from aimctl.api.app import Api, Call, Reply, somewhere
from aimctl.api.server import TlsFiles
from aimctl.api.views import exits
from aimctl.errors import OperatorError
from aimctl.journal import JournalUnavailable
from aimctl.overlay import api_hostport
from aimctl.records.sentences import detector_sentence, operation_sentence, step_sentence

if TYPE_CHECKING:
    from aimctl.daemon import Controller


def persona_in(field: str, c: Controller) -> Any:
    """Scope: the pool of the persona named by the body's ``field``."""
    return lambda call: c.pool_of_persona(getattr(call.body, field))


def visible(call: Call, pool: str | None) -> bool:
    return call.identity is None or call.identity.sees(pool)


def op_json(c: Controller, op_id: str) -> dict[str, Any]:
    """One operation with its timeline, each step and the whole said in a sentence."""
    d = c.operation_view(op_id)
    for step in d["timeline"]:
        step["sentence"] = step_sentence(step["step"], step["status"], step["detail"], d)
    d["sentence"] = operation_sentence(d)
    return d


def persona_why(c: Controller, persona: str, state: str, op: dict[str, Any] | None) -> str:
    """Where a persona stands and why, in one sentence (including why it was *not* failed over)."""
    if op is not None:
        return operation_sentence(op)
    why = c.detector.why(persona)
    text = detector_sentence(persona, state, why[0] if why else "", why[1] if why else None)
    if persona in c._pending:
        pool = c.defs.personas[persona].pool
        held = c.operator_paused.get(pool) or c.paused.get(pool) or c.held_why(persona) or "starting"
        text += f"; failover queued, not started: {held}"
    elif state in ("dead", "presumed-dead", "unhealthy") and c.defs.personas[persona].pool in c.paused:
        text += f"; not failed over: {c.paused[c.defs.personas[persona].pool]}"
    return text


def status(c: Controller) -> dict[str, Any]:
    doc = c.status()
    waiting = c.journal_view()[0]  # clustered: as last read, so status answers while etcd is down
    for persona, v in doc["personas"].items():
        held = waiting.get(persona)
        v["why"] = persona_why(c, persona, v["detector"] if v["detector"] != "-" else "alive",
                               dataclasses.asdict(held) if held is not None else None)
        if v.get("waiting"):
            # From the status itself: status never waits on the journal's store (etcd may be down).
            v["waiting"]["exits"] = exits(SimpleNamespace(id=v["operation"], state=v["operation_state"]))
    try:
        if c.journal_error:
            raise JournalUnavailable(c.journal_error)  # known down: do not wait on it again
        watch = c.oversight.status()
        doc.update(pools=watch["pools"], suspects=watch["suspects"], drift_open=watch["drift_open"])
    except JournalUnavailable as exc:
        doc.update(pools=None, suspects=None, drift_open=None, oversight_error=str(exc))
    return doc


def build_api(c: Controller) -> Api:
    host, port = api_hostport(c.listen.api)
    tls = TlsFiles(c.listen.api_tls_cert, c.listen.api_tls_key) \
        if c.listen.api_tls_cert and c.listen.api_tls_key else None
    api = Api(c.state, audit=c.audit, metrics=c.metrics, host=host, port=port, tls=tls)
    api.write_redirect = c.write_redirect  # cluster followers send writes to the leader

    def status_of(call: Call) -> Any:
        st = status(c)
        st["personas"] = {p: v for p, v in st["personas"].items() if visible(call, v["pool"])}
        st["bmcs"] = {s: v for s, v in st["bmcs"].items() if visible(call, c.pool_of_server(s))}
        st["quarantined"] = {s: v for s, v in st["quarantined"].items() if visible(call, c.pool_of_server(s))}
        return st

    def operations(call: Call) -> Any:
        ops = c.journal.operations(call.query.limit)
        return [o.__dict__ for o in ops if visible(call, c.pool_of_persona(o.persona))]

    def operation(call: Call) -> Any:
        op_id = call.params["id"]
        view = op_json(c, op_id)
        if not visible(call, c.pool_of_persona(view["persona"])):
            return Reply(404, {"error": f"no operation {op_id}"})
        return view

    def failover(call: Call) -> Any:
        b = call.body
        return {"id": c.start_failover(b.persona, "operator", f"requested by {call.actor}", to=b.to, actor=call.actor)}

    def move(call: Call) -> Any:
        b = call.body
        return {"id": c.start_failover(b.persona, "planned", f"planned move by {call.actor}", kind="move", to=b.to,
                                       actor=call.actor, change=b.change)}

    def failback(call: Call) -> Any:
        return {"id": c.failback(call.body.persona, call.actor, call.body.change)}

    def clear(call: Call) -> Any:
        c.clear_server(call.params["server"], call.actor)
        return {"cleared": call.params["server"]}

    def pause(call: Call) -> Any:
        p = c.pause_pool(call.params["pool"], call.actor, call.body.reason if call.body else "")
        return {"paused": True, **p.__dict__}

    def resume(call: Call) -> Any:
        c.resume_pool(call.params["pool"], call.actor)
        return {"pool": call.params["pool"], "paused": False}

    def plan(call: Call) -> Any:
        q = call.query
        if not visible(call, c.pool_of_persona(q.persona)):
            return Reply(404, {"error": f"unknown persona {q.persona!r}"})
        return c.plan(q.persona, q.to)

    def audit(call: Call) -> Any:
        return c.audit.entries(call.query.limit)

    def boot(call: Call) -> Reply:
        client = call.client.rsplit(":", 1)[0]
        return Reply(200, c.boot_script(call.params["server"], client), "text/plain; charset=utf-8")

    server_pool = c.pool_of_server

    def op_pool(call: Call) -> str | None:
        """Scope of /v1/failovers/{id}/...: the pool of the operation's persona."""
        return c.pool_of_operation(call.params["id"])

    api.route("GET", "/v1/status", status_of, summary="Personas: server, heartbeat age, detector state",
              response=m.Status, scope=somewhere)
    api.route("GET", "/v1/drift", lambda call: c.oversight.drift(), role="viewer",
              summary="Drift findings (what differs from the definitions, where, since when) and the last pass")

    def drift_check(call: Call) -> Any:
        res = c.oversight.reconciler.run_pass()
        return {"checks": res.checks, "findings": len(res.found), "new": len(res.new),
                "resolved": len(res.resolved), "unchecked": res.unchecked, "duration_s": round(res.duration_s, 3)}

    api.route("POST", "/v1/drift/check", drift_check, role="operator", summary="Run a drift pass now")
    api.route("GET", "/v1/failovers", operations, summary="Recent operations", query=m.ListQuery,
              response=list[m.Operation], scope=somewhere)
    api.route("GET", "/v1/failovers/{id}", operation, summary="One operation with its timeline",
              response=m.OperationDetail, scope=somewhere)
    api.route("POST", "/v1/failovers/{id}/approve",
              lambda call: c.approve(call.params["id"], call.actor).__dict__, role="operator",
              summary="Approve a failover waiting for approval (manual policy), or a change record (CHG...)",
              response=m.Operation, scope=op_pool)
    api.route("POST", "/v1/failovers/{id}/retry",
              lambda call: c.retry(call.params["id"], call.actor, call.body.note).__dict__, role="operator",
              summary="Run a needs-operator operation again from the step that stopped it",
              body=m.RetryRequest, response=m.Operation, scope=op_pool)
    api.route("POST", "/v1/failovers/{id}/mark-fenced",
              lambda call: c.mark_fenced(call.params["id"], call.body.server, call.actor, call.body.note).__dict__,
              role="operator", summary="Record that a body is out (pulled, power cut); the fence may proceed",
              body=m.MarkFencedRequest, response=m.Operation, scope=op_pool)
    api.route("POST", "/v1/failovers/{id}/abandon",
              lambda call: c.abandon(call.params["id"], call.actor, call.body.persona_on, call.body.note).__dict__,
              role="operator", summary="End a waiting operation; the persona stays where the operator says",
              body=m.AbandonRequest, response=m.Operation, scope=op_pool)
    api.route("POST", "/v1/failover", failover, role="operator", summary="Fail a persona over now",
              body=m.FailoverRequest, response=m.Started, scope=persona_in("persona", c))
    api.route("POST", "/v1/move", move, role="operator", summary="Planned move of a persona to a server",
              body=m.MoveRequest, response=m.Started, scope=persona_in("persona", c))
    api.route("POST", "/v1/failback", failback, role="operator", summary="Planned return of a persona to its home",
              body=m.FailbackRequest, response=m.Started, scope=persona_in("persona", c))
    api.route("POST", "/v1/servers/{server}/clear", clear, role="admin", summary="Clear a quarantined server",
              response=m.Cleared, scope=lambda call: server_pool(call.params["server"]))
    api.route("POST", "/v1/pools/{pool}/pause", pause, role="operator",
              summary="Hold automatic failover in a pool (an operator's pause, apart from the storm brake)",
              body=m.PauseRequest, response=m.PoolPause, scope=lambda call: call.params["pool"])
    api.route("POST", "/v1/pools/{pool}/resume", resume, role="operator", summary="Resume automatic failover",
              response=m.PoolPause, scope=lambda call: call.params["pool"])
    api.route("GET", "/v1/plan", plan, summary="Dry run of a failover or move: steps and exact switch lines",
              query=m.PlanQuery, response=m.Plan, scope=somewhere)
    api.route("GET", "/v1/audit", audit, role="admin", summary="The newest audit log entries",
              query=m.AuditQuery, response=list[m.AuditEntry])
    api.route("GET", "/boot/{server}.ipxe", boot, role=None,
              summary="iPXE boot script of a server: only to its boot address, only while it is being powered on",
              content_type="text/plain")
    api.route("GET", "/v1/cluster",
              lambda call: c.cluster_status(probe=call.query.probe) or {"member": None, "role": "embedded"},
              summary="Cluster: members, leader, fencing token, lease time left, last renewals"
                      " (?probe=false: from memory, without asking each etcd endpoint)",
              query=m.ClusterQuery)
    lifecycle_routes(api, c)
    return api


def lifecycle_routes(api: Api, c: Controller) -> None:
    """Archives and restore, gold-image personas, spare rehearsals (logic in ``aimctl.lifecycle``)."""
    lc = c.lifecycle

    def start_persona(call: Call) -> Any:
        name, b = call.params["name"], call.body
        if name not in c.defs.personas:
            raise OperatorError(f"unknown persona {name!r}: add its stanza to the definitions and restart the "
                                "controller first")
        to = b.on or c.defs.personas[name].spec.home
        return {"id": c.start_failover(name, "planned", f"first start by {call.actor}", kind="move", to=to,
                                       actor=call.actor, change=b.change)}

    api.route("GET", "/v1/archives/{persona}", lambda call: lc.archives(call.params["persona"]),
              summary="A persona's archives (snapshot sets of its boot and data LUNs)",
              scope=lambda call: c.pool_of_persona(call.params["persona"]))
    api.route("POST", "/v1/archives", lambda call: {"id": lc.start_archive(call.body.persona, call.actor)},
              role="operator", summary="Archive a persona now", body=m.ArchiveRequest, response=m.Started,
              scope=persona_in("persona", c))
    api.route("POST", "/v1/restore",
              lambda call: {"id": lc.start_restore(call.body.persona, call.body.at, call.actor, call.body.change)},
              role="operator", summary="Restore a persona's LUNs to an archive (by id or time) and boot it",
              body=m.RestoreRequest, response=m.Started, scope=persona_in("persona", c))
    api.route("POST", "/v1/rehearse",
              lambda call: {"id": lc.start_rehearsal(call.body.persona, call.actor, on=call.body.on)},
              role="operator", summary="Rehearse a persona on a standby now", body=m.RehearseRequest,
              response=m.Started, scope=persona_in("persona", c))
    api.route("GET", "/v1/rehearsals", lambda call: lc.rehearsals(), summary="Last rehearsal result per persona",
              scope=somewhere)
    api.route("POST", "/v1/personas",
              lambda call: lc.new_persona(call.body.name, call.body.pool, call.body.gold, call.actor,
                                          initiator=call.body.initiator, target=call.body.target,
                                          home=call.body.home),
              role="operator", summary="Make a persona's boot LUN from a gold image; returns its stanza to review",
              body=m.NewPersonaRequest, scope=lambda call: call.body.pool)
    api.route("POST", "/v1/personas/{name}/start", start_persona, role="operator",
              summary="Start a persona that runs nowhere on a standby (its first start)",
              body=m.StartPersonaRequest, response=m.Started,
              scope=lambda call: c.pool_of_persona(call.params["name"]))
