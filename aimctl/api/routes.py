"""The controller's HTTP API routes (the CLI is a client of these)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from aimctl.api.app import Api, ApiError, Request
from aimctl.errors import OperatorError
from aimctl.overlay import api_hostport

if TYPE_CHECKING:
    from aimctl.daemon import Controller


def op_json(c: Controller, op_id: str) -> dict[str, Any]:
    op = c.journal.operation(op_id)
    d = dataclasses.asdict(op)
    d["timeline"] = c.journal.steps(op_id)
    d["change"] = c.changes.for_operation(op_id)
    return d


def status(c: Controller) -> dict[str, Any]:
    doc = c.status()
    for v in doc["personas"].values():
        if v.get("waiting"):
            v["waiting"]["exits"] = exits(c.journal.operation(v["operation"]))
    return doc


def exits(op: Any) -> list[str]:
    if op.state == "waiting-approval":
        return [f"aimctl approve {op.id}", f"aimctl abandon {op.id}"]
    return [f"aimctl retry {op.id}", f"aimctl mark-fenced {op.id} SERVER", f"aimctl abandon {op.id}"]


def build_api(c: Controller) -> Api:
    host, port = api_hostport(c.listen.api)
    api = Api(c.state, audit=c.audit, metrics=c.metrics, host=host, port=port)

    def actor(req: Request) -> str:
        return f"{req.identity.name}({req.identity.role})" if req.identity else "anonymous"

    def need(body: Any, key: str) -> str:
        if not isinstance(body, dict) or not isinstance(body.get(key), str):
            raise ApiError(400, f"body needs a string field {key!r}")
        return str(body[key])

    api.route("GET", "/v1/status", lambda r: status(c), summary="Personas: server, heartbeat age, detector state")
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
    return api
