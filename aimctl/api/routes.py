"""The controller's HTTP API routes (the CLI is a client of these)."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from aimctl.api.app import Api, ApiError, Request
from aimctl.errors import OperatorError
from aimctl.journal import JournalUnavailable
from aimctl.overlay import api_hostport
from aimctl.records.sentences import detector_sentence, operation_sentence, step_sentence

if TYPE_CHECKING:
    from aimctl.daemon import Controller


def op_json(c: Controller, op_id: str) -> dict[str, Any]:
    op = c.journal.operation(op_id)
    d = dataclasses.asdict(op)
    d["timeline"] = c.journal.steps(op_id)
    for step in d["timeline"]:
        step["sentence"] = step_sentence(step["step"], step["status"], step["detail"], d)
    d["sentence"] = operation_sentence(d)
    d["change"] = c.changes.for_operation(op_id)
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


def exits(op: Any) -> list[str]:
    if op.state == "waiting-approval":
        return [f"aimctl approve {op.id}", f"aimctl abandon {op.id}"]
    return [f"aimctl retry {op.id}", f"aimctl mark-fenced {op.id} SERVER", f"aimctl abandon {op.id}"]


def build_api(c: Controller) -> Api:
    host, port = api_hostport(c.listen.api)
    api = Api(c.state, audit=c.audit, metrics=c.metrics, host=host, port=port)
    api.write_redirect = c.write_redirect  # followers send writes to the leader

    def actor(req: Request) -> str:
        return f"{req.identity.name}({req.identity.role})" if req.identity else "anonymous"

    def need(body: Any, key: str) -> str:
        if not isinstance(body, dict) or not isinstance(body.get(key), str):
            raise ApiError(400, f"body needs a string field {key!r}")
        return str(body[key])

    api.route("GET", "/v1/status", lambda r: status(c), summary="Personas: server, heartbeat age, detector state")
    api.route("GET", "/v1/drift", lambda r: c.oversight.drift(),
              summary="Drift findings (what differs from the definitions, where, since when) and the last pass")

    def drift_check(r: Request) -> Any:
        res = c.oversight.reconciler.run_pass()
        return {"checks": res.checks, "findings": len(res.found), "new": len(res.new),
                "resolved": len(res.resolved), "unchecked": res.unchecked, "duration_s": round(res.duration_s, 3)}

    api.route("POST", "/v1/drift/check", drift_check, role="operator", summary="Run a drift pass now")
    api.route("GET", "/v1/failovers", lambda r: [dataclasses.asdict(o) for o in c.journal.operations(
        int(r.query.get("limit", "50")))], summary="Recent operations")
    api.route("GET", "/v1/failovers/{id}", lambda r: op_json(c, r.params["id"]), summary="One operation with its timeline")
    api.route("POST", "/v1/failovers/{id}/approve",
              lambda r: dataclasses.asdict(c.approve(r.params["id"], actor(r))), role="operator",
              summary="Approve a failover waiting for approval (manual policy)")

    def failover(r: Request) -> Any:
        persona = need(r.body, "persona")
        to = r.body.get("to") if isinstance(r.body, dict) else None
        if to is not None and not isinstance(to, str):
            raise ApiError(400, "'to' must be a server name")
        return {"id": c.start_failover(persona, "operator", f"requested by {actor(r)}", to=to, actor=actor(r))}

    def move(r: Request) -> Any:
        persona, to = need(r.body, "persona"), need(r.body, "to")
        return {"id": c.start_failover(persona, "planned", f"planned move by {actor(r)}", kind="move", to=to,
                                       actor=actor(r), change=r.body.get("change"))}

    def failback(r: Request) -> Any:
        persona = need(r.body, "persona")
        if persona not in c.defs.personas:
            raise OperatorError(f"unknown persona {persona!r}")
        home = c.defs.personas[persona].spec.home
        if c.journal.assignment().get(persona) == home:
            raise OperatorError(f"{persona} is already on its home server {home}")
        if home in c.journal.quarantined():
            raise OperatorError(f"home server {home} is quarantined: `aimctl clear {home}` first")
        return {"id": c.start_failover(persona, "planned", f"failback by {actor(r)}", kind="failback", to=home,
                                       actor=actor(r), change=r.body.get("change"))}

    def clear(r: Request) -> Any:
        server = r.params["server"]
        if server not in c.defs.servers:
            raise OperatorError(f"unknown server {server!r}")
        c.journal.clear(server, by=actor(r))
        c.audit.record(actor(r), "server.clear", server, {})
        c._refresh_capacity()
        return {"cleared": server}

    api.route("GET", "/v1/cluster",
              lambda r: c.cluster_status(probe=r.query.get("probe") != "0") or {"member": None, "role": "embedded"},
              summary="Cluster: members, leader, fencing token, lease time left, last renewals"
                      " (?probe=0: from memory, without asking each etcd endpoint)")
    def text(body: Any, key: str) -> str:
        value = body.get(key) if isinstance(body, dict) else None
        if value is None:
            return ""
        if not isinstance(value, str) or len(value) > 500:
            raise ApiError(400, f"{key!r} must be a string of at most 500 characters")
        return value

    api.route("POST", "/v1/failovers/{id}/retry",
              lambda r: dataclasses.asdict(c.retry(r.params["id"], actor(r), text(r.body, "note"))),
              role="operator", summary="Run a needs-operator operation again from the step that stopped it")
    api.route("POST", "/v1/failovers/{id}/mark-fenced",
              lambda r: dataclasses.asdict(c.mark_fenced(r.params["id"], need(r.body, "server"), actor(r),
                                                         text(r.body, "note"))),
              role="operator", summary="Record that a body is out (pulled, power cut); the fence may proceed")
    api.route("POST", "/v1/failovers/{id}/abandon",
              lambda r: dataclasses.asdict(c.abandon(r.params["id"], actor(r), text(r.body, "persona_on") or "keep",
                                                     text(r.body, "note"))),
              role="operator", summary="End a waiting operation; the persona stays where the operator says")
    api.route("POST", "/v1/failover", failover, role="operator", summary="Fail a persona over now")
    api.route("POST", "/v1/move", move, role="operator", summary="Planned move of a persona to a server")
    api.route("POST", "/v1/failback", failback, role="operator", summary="Planned return of a persona to its home")
    api.route("POST", "/v1/servers/{server}/clear", clear, role="admin", summary="Clear a quarantined server")
    lifecycle_routes(api, c, actor, need)
    return api


def lifecycle_routes(api: Api, c: Controller, actor: Any, need: Any) -> None:
    """Archives and restore, gold-image personas, spare rehearsals (logic in ``aimctl.lifecycle``)."""
    lc = c.lifecycle

    def opt(r: Request, key: str) -> str | None:
        v = r.body.get(key) if isinstance(r.body, dict) else None
        if v is not None and not isinstance(v, str):
            raise ApiError(400, f"field {key!r} must be a string")
        return v

    def new_persona(r: Request) -> Any:
        return lc.new_persona(need(r.body, "name"), need(r.body, "pool"), need(r.body, "gold"), actor(r),
                              initiator=opt(r, "initiator"), target=opt(r, "target"), home=opt(r, "home"))

    def start_persona(r: Request) -> Any:
        name = r.params["name"]
        if name not in c.defs.personas:
            raise OperatorError(f"unknown persona {name!r}: add its stanza to the definitions and restart the "
                                "controller first")
        to = opt(r, "on") or c.defs.personas[name].spec.home
        return {"id": c.start_failover(name, "planned", f"first start by {actor(r)}", kind="move", to=to,
                                       actor=actor(r), change=opt(r, "change"))}

    api.route("GET", "/v1/archives/{persona}", lambda r: lc.archives(r.params["persona"]),
              summary="A persona's archives (snapshot sets of its boot and data LUNs)")
    api.route("POST", "/v1/archives", lambda r: {"id": lc.start_archive(need(r.body, "persona"), actor(r))},
              role="operator", summary="Archive a persona now")
    api.route("POST", "/v1/restore", lambda r: {"id": lc.start_restore(need(r.body, "persona"), need(r.body, "at"),
                                                                       actor(r), opt(r, "change"))},
              role="operator", summary="Restore a persona's LUNs to an archive (by id or time) and boot it")
    api.route("POST", "/v1/rehearse", lambda r: {"id": lc.start_rehearsal(need(r.body, "persona"), actor(r),
                                                                          on=opt(r, "on"))},
              role="operator", summary="Rehearse a persona on a standby now")
    api.route("GET", "/v1/rehearsals", lambda r: lc.rehearsals(), summary="Last rehearsal result per persona")
    api.route("POST", "/v1/personas", new_persona, role="operator",
              summary="Make a persona's boot LUN from a gold image; returns its stanza to review")
    api.route("POST", "/v1/personas/{name}/start", start_persona, role="operator",
              summary="Start a persona that runs nowhere on a standby (its first start)")
