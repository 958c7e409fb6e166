"""The operator console at ``/``: server-rendered pages (Jinja2), htmx for live parts, server-sent events.

Sign-in exchanges an API token for a session cookie. Every action goes through a review page that
shows the dry run (the plan ``aimctl plan`` prints, switch lines included) and a form carrying the
session's CSRF token; confirming it runs the API's own route through ``Api.execute`` — the same
gate, role and pool scope checks and audit as the API (recorded ``via console``). Pages carry a
Content-Security-Policy with no inline script or style; htmx is served from the package.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import jinja2
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from aimctl.api import views
from aimctl.api.app import MAX_BODY, Api, ApiError, read_body
from aimctl.api.auth import Identity, digest
from aimctl.api.sessions import COOKIE, PRE_COOKIE, Session, Sessions, same
from aimctl.errors import OperatorError
from aimctl.secrets import mask

if TYPE_CHECKING:
    from aimctl.daemon import Controller

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
EVENT_POLL_S = 0.1  # how often the event stream looks for a change (live_update_ms is measured)
EVENT_PING_S = 15.0

# Console action -> (API route, how the form's fields become path parameters and body).
ACTIONS: dict[str, tuple[str, str, Callable[[dict[str, str]], tuple[dict[str, str], Any]]]] = {
    "failover": ("POST", "/v1/failover",
                 lambda f: ({}, {"persona": f["persona"], **({"to": f["to"]} if f.get("to") else {})})),
    "move": ("POST", "/v1/move", lambda f: ({}, {"persona": f["persona"], "to": f["to"]})),
    "failback": ("POST", "/v1/failback", lambda f: ({}, {"persona": f["persona"]})),
    "approve": ("POST", "/v1/failovers/{id}/approve", lambda f: ({"id": f["op"]}, None)),
    "clear": ("POST", "/v1/servers/{server}/clear", lambda f: ({"server": f["server"]}, None)),
    "pause": ("POST", "/v1/pools/{pool}/pause", lambda f: ({"pool": f["pool"]}, {"reason": f.get("reason", "")})),
    "resume": ("POST", "/v1/pools/{pool}/resume", lambda f: ({"pool": f["pool"]}, None)),
}
TITLES = {"failover": "Fail over now", "move": "Planned move", "failback": "Fail back to home",
          "approve": "Approve failover", "clear": "Clear quarantined server", "pause": "Pause automatic failover",
          "resume": "Resume automatic failover"}


def _utc(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if ts else "-"


def _duration(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s * 1000:.0f} ms" if s < 1 else (f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min")


def _evidence(detail: Any) -> str:
    return mask(json.dumps(detail, indent=1, sort_keys=True, default=str)) if detail else ""


def _words(v: Any) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k} {_words(x)}" for k, x in v.items())
    if isinstance(v, list):
        return "; ".join(_words(x) for x in v)
    return str(v)


def plan_items(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """A plan's steps for display: each action as text, and each switch's CLI lines as one block."""
    out = []
    for step in plan.get("steps", []):
        items: list[dict[str, Any]] = []
        for a in step["actions"]:
            if a.startswith("  ") and "> " in a:
                sw = a.strip().split(">", 1)[0]
                if items and items[-1].get("switch") == sw:
                    items[-1]["lines"].append(a.strip())
                else:
                    items.append({"switch": sw, "lines": [a.strip()]})
            else:
                items.append({"text": a.strip()})
        out.append({"name": step["name"], "items": items})
    return out


def _summary(step: dict[str, Any]) -> str:
    d = step.get("detail") or {}
    for key in ("summary", "reason", "why", "power", "recovery"):
        if d.get(key):
            return _words(d[key])
    if d.get("server"):
        return f"server {d['server']}"
    return ""


class Console:
    def __init__(self, api: Api, c: Controller) -> None:
        self.api, self.c = api, c
        self.sessions = Sessions()
        self.secure = api.tls is not None
        self.env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                                      autoescape=True, trim_blocks=True, lstrip_blocks=True)
        self.env.filters.update(utc=_utc, duration=_duration, evidence=_evidence, summary=_summary)
        self.env.globals.update(titles=TITLES, urlencode=urlencode)

    # -- plumbing -------------------------------------------------------------------------------

    def routes(self) -> list[Any]:
        r = Route
        return [
            r("/", self.dashboard), r("/signin", self.signin_form), r("/signin", self.signin, methods=["POST"]),
            r("/signout", self.signout, methods=["POST"]),
            r("/live/dashboard", self.dashboard_live),
            r("/pools/{pool}", self.pool), r("/personas/{name}", self.persona), r("/servers/{name}", self.server),
            r("/operations/{id}", self.operation), r("/operations/{id}/live", self.operation_live),
            r("/audit", self.audit), r("/changes", self.changes),
            r("/review/{action}", self.review), r("/actions/{action}", self.act, methods=["POST"]),
            r("/events", self.events),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ]

    def session(self, request: Request) -> Session | None:
        s = self.sessions.get(request.cookies.get(COOKIE))
        if s is None:
            return None
        # A token taken out of tokens.yaml (or given another role) ends or changes its sessions at once.
        now = self.api.tokens.identify_digest(s.token_digest)
        if now is None:
            self.sessions.drop(request.cookies.get(COOKIE))
            return None
        if now != s.identity:
            self.sessions.replace_identity(request.cookies.get(COOKIE, ""), now)
            s = Session(now, s.token_digest, s.csrf, s.created, s.seen)
        return s

    def headers(self) -> dict[str, str]:
        return {"Content-Security-Policy": CSP, "X-Frame-Options": "DENY", "Referrer-Policy": "same-origin",
                "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}

    def render(self, name: str, status: int = 200, session: Session | None = None, **ctx: Any) -> HTMLResponse:
        html = self.env.get_template(name).render(me=session.identity if session else None,
                                                  csrf=session.csrf if session else "", **ctx)
        return HTMLResponse(html, status, headers=self.headers())

    def error(self, status: int, message: str, session: Session | None = None) -> HTMLResponse:
        return self.render("error.html", status, session, code=status, message=mask(message))

    def _signin_redirect(self, request: Request) -> Response:
        return RedirectResponse("/signin?" + urlencode({"next": request.url.path}), 303, headers=self.headers())

    async def page(self, request: Request, build: Callable[[Session], Response]) -> Response:
        s = self.session(request)
        if s is None:
            return self._signin_redirect(request)
        try:
            return await run_in_threadpool(build, s)
        except (KeyError, OperatorError) as exc:
            status = int(getattr(exc, "http_status", 404 if isinstance(exc, KeyError) else 400))
            return self.error(status, str(exc).strip("'") if isinstance(exc, KeyError) else str(exc), s)
        except Exception:
            log.exception("console page %s failed", request.url.path)
            return self.error(500, "internal error (see the controller log)", s)

    # -- sign-in --------------------------------------------------------------------------------

    async def signin_form(self, request: Request) -> Response:
        import secrets

        pre = secrets.token_urlsafe(24)
        resp = self.render("signin.html", pre=pre, next=_safe_next(request.query_params.get("next")), problem=None)
        resp.set_cookie(PRE_COOKIE, pre, httponly=True, samesite="strict", secure=self.secure, path="/signin")
        return resp

    async def signin(self, request: Request) -> Response:
        form = await self._form(request)
        client = _client(request)
        if not same(form.get("csrf"), request.cookies.get(PRE_COOKIE)):
            return self.error(403, "the sign-in form expired or was not sent from this console; reload it")
        token = form.get("token", "").strip()
        identity = self.api.tokens.identify(token) if 16 <= len(token) <= 512 else None
        from aimctl.api.app import Call

        call = Call("POST", "/signin", {}, {}, None, identity, client, {}, "console")
        self.api.audit_call(call, 303 if identity else 401, action="console.signin")
        if identity is None:
            resp = self.render("signin.html", 401, pre=request.cookies.get(PRE_COOKIE),
                               next=_safe_next(form.get("next")), problem="That token is not known to this controller.")
            return resp
        sid, _ = self.sessions.create(identity, digest(token))
        done = RedirectResponse(_safe_next(form.get("next")), 303, headers=self.headers())
        done.set_cookie(COOKIE, sid, httponly=True, samesite="strict", secure=self.secure, path="/")
        done.delete_cookie(PRE_COOKIE, path="/signin")
        return done

    async def signout(self, request: Request) -> Response:
        s = self.session(request)
        form = await self._form(request)
        if s is not None and same(form.get("csrf"), s.csrf):
            self.sessions.drop(request.cookies.get(COOKIE))
        resp = RedirectResponse("/signin", 303, headers=self.headers())
        resp.delete_cookie(COOKIE, path="/")
        return resp

    async def _form(self, request: Request) -> dict[str, str]:
        raw = await read_body(request, MAX_BODY // 16)
        from urllib.parse import parse_qsl

        try:
            pairs = parse_qsl(raw.decode(), keep_blank_values=True, max_num_fields=32)
        except (UnicodeDecodeError, ValueError):
            raise ApiError(400, "the form could not be read") from None
        return {k: v for k, v in pairs}

    # -- pages ----------------------------------------------------------------------------------

    async def dashboard(self, request: Request) -> Response:
        return await self.page(request, lambda s: self.render("dashboard.html", session=s,
                                                              d=views.dashboard(self.c, s.identity)))

    async def dashboard_live(self, request: Request) -> Response:
        return await self.page(request, lambda s: self.render("_dashboard.html", session=s,
                                                              d=views.dashboard(self.c, s.identity)))

    def _visible(self, s: Session, pool: str | None) -> None:
        if not s.identity.sees(pool):
            raise KeyError("not found")

    async def pool(self, request: Request) -> Response:
        page = request.query_params.get("page", "0")
        n = int(page) if page.isdigit() and len(page) < 6 else 0
        return await self._named(request, "pool", self.c.defs.pools, lambda name: name,
                                 lambda who, name: views.pool_page(self.c, who, name, n))

    async def persona(self, request: Request) -> Response:
        return await self._named(request, "persona", self.c.defs.personas, self.c.pool_of_persona,
                                 lambda who, name: views.persona_page(self.c, who, name))

    async def server(self, request: Request) -> Response:
        return await self._named(request, "server", self.c.defs.servers, self.c.pool_of_server,
                                 lambda who, name: views.server_page(self.c, who, name))

    async def _named(self, request: Request, kind: str, known: Mapping[str, Any], pool_of: Callable[[str], str | None],
                     view: Callable[[Identity, str], dict[str, Any]]) -> Response:
        """The page of one pool, persona or server: 404 for a name that is not known or not visible."""
        name = request.path_params["pool" if kind == "pool" else "name"]

        def build(s: Session) -> Response:
            if name not in known:
                raise KeyError(f"no {kind} {name}")
            self._visible(s, pool_of(name))
            return self.render(f"{kind}.html", session=s, d=view(s.identity, name))
        return await self.page(request, build)

    def _operation(self, s: Session, op_id: str) -> dict[str, Any]:
        view = self.c.operation_view(op_id)
        pool = self.c.pool_of_persona(view["persona"])
        self._visible(s, pool)
        view["actions"] = views.operation_actions(s.identity, pool, view["state"])
        return view

    async def operation(self, request: Request) -> Response:
        op_id = request.path_params["id"]
        return await self.page(request, lambda s: self.render("operation.html", session=s,
                                                              op=self._operation(s, op_id)))

    async def operation_live(self, request: Request) -> Response:
        op_id = request.path_params["id"]
        return await self.page(request, lambda s: self.render("_timeline.html", session=s,
                                                              op=self._operation(s, op_id)))

    async def audit(self, request: Request) -> Response:
        return await self.page(request, lambda s: self.render(
            "audit.html", session=s, entries=views.audit_entries(self.c, s.identity, 200)))

    async def changes(self, request: Request) -> Response:
        def build(s: Session) -> Response:
            ops = {o.id: o for o in self.c.journal.operations(200)}
            recs = [r for r in self.c.changes.list(100)
                    if r.get("correlation_id") not in ops or s.identity.sees(
                        self.c.pool_of_persona(ops[r["correlation_id"]].persona))]
            return self.render("changes.html", session=s, records=recs)
        return await self.page(request, build)

    # -- review and act -------------------------------------------------------------------------

    def _review(self, s: Session, action: str, q: dict[str, str]) -> dict[str, Any]:
        """What the review page shows for ``action``: the dry-run plan or the change's effect, and
        whether this person may confirm it (the same role and scope check the API makes)."""
        c = self.c
        if action not in ACTIONS:
            raise KeyError(f"no action {action}")
        out: dict[str, Any] = {"action": action, "fields": {}, "plan": None, "lines": [], "pool": None}
        if action in ("failover", "move", "failback"):
            persona = q.get("persona", "")
            if persona not in c.defs.personas:
                raise KeyError(f"no persona {persona}")
            out["pool"] = c.pool_of_persona(persona)
            to = q.get("to") or None
            if action == "failback":
                to = c.defs.personas[persona].spec.home
            if action == "move" and not to:
                assignment = {p: sv for p, sv in c.journal.assignment().items() if sv}
                from aimctl.failover.planner import standbys

                out["pick"] = standbys(c.defs, out["pool"], assignment, set(c.journal.quarantined()))
                out["fields"] = {"persona": persona}
            else:
                out["plan"] = c.plan(persona, to, kind=action)
                out["items"] = plan_items(out["plan"])
                out["fields"] = {"persona": persona, **({"to": to} if to and action != "failback" else {})}
        elif action == "approve":
            op = c.journal.operation(q.get("op", ""))
            out["pool"] = c.pool_of_persona(op.persona)
            out["op"] = op
            out["plan"] = c.plan(op.persona, op.facts.get("requested_to"))
            out["items"] = plan_items(out["plan"])
            out["fields"] = {"op": op.id}
        elif action == "clear":
            server = q.get("server", "")
            if server not in c.defs.servers:
                raise KeyError(f"no server {server}")
            out["pool"] = c.pool_of_server(server)
            mark = c.journal.servers().get(server)
            out["lines"] = [f"{server} is marked: {mark.reason if mark else 'not marked'}"
                            + (f" (by {mark.by})" if mark else ""),
                            f"clearing makes {server} a standby of pool {out['pool']} again: the planner may choose "
                            f"it for the next failover", "its ports stay in the quarantine VLAN until a failover "
                            "programs them"]
            out["fields"] = {"server": server}
        else:
            pool = q.get("pool", "")
            if pool not in c.defs.pools:
                raise KeyError(f"no pool {pool}")
            out["pool"] = pool
            out["lines"] = ([f"deaths in pool {pool} are queued, not acted on, until an operator resumes it",
                             "operator commands (failover, move, failback) still act"] if action == "pause" else
                            [f"queued deaths in pool {pool} are acted on at once (the storm brake still applies)"])
            out["fields"] = {"pool": pool}
        role = self.api.find(*ACTIONS[action][:2]).role or "viewer"
        out["allowed"] = s.identity.allows(role, out["pool"])
        out["role"] = role
        return out

    async def review(self, request: Request) -> Response:
        action = request.path_params["action"]
        q = {k: v for k, v in request.query_params.items() if len(v) <= 128}

        def build(s: Session) -> Response:
            r = self._review(s, action, q)
            self._visible(s, r["pool"])
            if not r["allowed"]:
                return self.error(403, f"{TITLES[action]} needs role {r['role']} in pool {r['pool']}", s)
            return self.render("review.html", session=s, r=r)
        return await self.page(request, build)

    async def act(self, request: Request) -> Response:
        action = request.path_params["action"]
        s = self.session(request)
        if s is None:
            return self.error(401, "sign in first")
        try:
            form = await self._form(request)
        except ApiError as e:
            return self.error(e.status, e.message, s)
        origin = request.headers.get("origin")
        if origin and origin != f"{request.url.scheme}://{request.url.netloc}":
            return self.error(403, "request from another origin refused", s)
        if not same(form.get("csrf"), s.csrf):
            self.api.audit_call(_console_call(request, s.identity, action), 403, action=f"console.{action}.csrf")
            return self.error(403, "missing or wrong CSRF token: reload the page and try again", s)
        if action not in ACTIONS:
            return self.error(404, f"no action {action}", s)
        method, path, unpack = ACTIONS[action]
        try:
            params, body = unpack(form)
        except KeyError as exc:
            return self.error(400, f"the form lacks {exc}", s)
        route = self.api.find(method, path)
        reply = await run_in_threadpool(self.api.execute, route, s.identity, params, {}, body, _client(request),
                                        dict(request.headers), "console")
        if reply.status >= 400:
            return self.error(reply.status, str(reply.body.get("error", "refused")), s)
        res = reply.body if isinstance(reply.body, dict) else {}
        if "id" in res and action != "approve":
            where = f"/operations/{res['id']}"
        elif action == "approve":
            where = f"/operations/{form['op']}"
        elif action == "clear":
            where = f"/servers/{form['server']}"
        else:
            where = "/"
        return RedirectResponse(where, 303, headers=self.headers())

    # -- live -----------------------------------------------------------------------------------

    async def events(self, request: Request) -> Response:
        s = self.session(request)
        if s is None:
            return Response("sign in first\n", 401, headers=self.headers())
        stopping = self.api._server.stopping

        async def stream() -> AsyncIterator[str]:
            last: Any = None
            ping = time.monotonic()
            yield "retry: 1000\n\n"
            while not stopping.is_set():
                rev = await run_in_threadpool(self.c.revision)
                if rev != last:
                    last = rev
                    ping = time.monotonic()
                    yield f"data: {json.dumps({'rev': list(rev)})}\n\n"
                elif time.monotonic() - ping > EVENT_PING_S:
                    ping = time.monotonic()
                    yield ": ping\n\n"
                await asyncio.sleep(EVENT_POLL_S)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={**self.headers(), "X-Accel-Buffering": "no"})


def _client(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "-"


def _console_call(request: Request, identity: Identity, action: str) -> Any:
    from aimctl.api.app import Call

    return Call("POST", f"/actions/{action}", {}, {}, None, identity, _client(request), {}, "console")


def _safe_next(value: str | None) -> str:
    """Only a path of this console (never another site) after sign-in."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value and len(value) < 200:
        return value
    return "/"


def mount_console(api: Api, c: Controller) -> Console:
    console = Console(api, c)
    api.extra_routes.extend(console.routes())
    return console
