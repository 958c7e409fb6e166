"""The controller's HTTP API: a declarative route table served by Starlette, one gate for every call.

A route is a few declarative lines::

    api.route("POST", "/v1/move", move, role="operator", summary="Planned move of a persona",
              body=MoveRequest, response=Started, scope=persona_pool("persona"))

``role`` is the least role the call needs (viewer < operator < admin; None: public), ``scope``
names the pool the call acts on (a token may be operator in pool ``web`` and viewer elsewhere),
``body``/``query``/``response`` are pydantic models: they validate, shape and document
(``/openapi.json`` is generated from them). The handler gets a ``Call`` and calls one
``Controller`` method; it holds no logic of its own.

Every call goes through ``Api.execute`` — the API's routes and the console's actions alike: the
token or session is checked, the body is parsed within its size and depth limits and validated,
the scope and role are checked, ``write_guard`` may refuse a non-GET (a cluster follower answers
"not the leader" there), the handler runs, and every non-GET is written to the audit log with the
caller's name and role, secrets masked by name and by value. Bad input is a 400 with one line that
names the field; a handler's unexpected error is a 500 that names nothing internal.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute
from starlette.routing import Route as HttpRoute

from aimctl.api.auth import ROLES, Identity, TokenStore
from aimctl.api.server import ApiServer, TlsFiles
from aimctl.errors import OperatorError
from aimctl.records.audit import Audit, masked
from aimctl.records.metrics import Metrics
from aimctl.secrets import mask

log = logging.getLogger(__name__)

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
MAX_BODY = 1 << 20  # bytes of a request body
MAX_DEPTH = 32  # nesting of a JSON body; no request of ours needs more than 3
PARAM_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
# A path parameter: one name component, so no path can be spelled in it.
PARAM_VALUE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")
JSON = "application/json"


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        self.status, self.message = status, message
        self.headers = dict(headers or {})
        super().__init__(message)


@dataclass(frozen=True)
class Call:
    """What a handler sees: validated path parameters, query and body, and who called."""

    method: str
    path: str
    params: dict[str, str]
    query: Any  # the route's query model, else a dict of strings
    body: Any  # the route's body model, else parsed JSON (or None)
    identity: Identity | None
    client: str
    headers: Mapping[str, str] = field(default_factory=dict)
    via: str = "api"  # or "console"
    pool: str | None = None  # the scope the call was authorised for

    @property
    def actor(self) -> str:
        return self.identity.label(self.pool) if self.identity else "anonymous"


Request = Call  # the name routes written before the route table use

Handler = Callable[[Call], Any]
Scope = Callable[[Call], "str | None"]


def somewhere(call: Call) -> str | None:
    """Scope of a read across pools: the role is needed in at least one pool, and the handler shows
    only the pools the caller sees."""
    return SOMEWHERE


SOMEWHERE = "\x00somewhere"  # never a pool name (pool names are checked against a pattern)


@dataclass(frozen=True)
class Reply:
    """A handler's answer when it is not a plain 200 with JSON."""

    status: int = 200
    body: Any = None
    content_type: str = JSON
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    role: str | None  # None: no token needed
    summary: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: Any = None  # a model or a type (list[Model]); None: any JSON
    scope: Scope | None = None
    status: int = 200
    content_type: str = JSON

    @property
    def params(self) -> tuple[str, ...]:
        return tuple(PARAM_RE.findall(self.path))


def json_depth(value: Any) -> int:
    """Nesting depth of parsed JSON, without recursion (a hostile body cannot blow the stack here)."""
    depth, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            depth = max(depth, d)
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            depth = max(depth, d)
            stack.extend((x, d + 1) for x in v)
    return depth


def parse_json(raw: bytes) -> Any:
    if not raw:
        return None
    if len(raw) > MAX_BODY:
        raise ApiError(413, f"request body larger than {MAX_BODY} bytes")
    try:
        value = json.loads(raw)
    except RecursionError:
        raise ApiError(400, f"request body nested deeper than {MAX_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    if json_depth(value) > MAX_DEPTH:
        raise ApiError(400, f"request body nested deeper than {MAX_DEPTH} levels")
    return value


def one_line(exc: ValidationError, where: str) -> str:
    """The first problem of a validation error as one line naming the field, plus how many more."""
    errs = exc.errors(include_url=False, include_input=False)
    first = errs[0]
    loc = ".".join(str(x) for x in first["loc"]) or where
    more = f" (and {len(errs) - 1} more)" if len(errs) > 1 else ""
    return f"{where} {loc}: {first['msg']}{more}" if first["loc"] else f"{where}: {first['msg']}{more}"


def validate(model: type[BaseModel] | None, data: Any, where: str) -> Any:
    if model is None:
        return data
    try:
        return model.model_validate({} if data is None else data)
    except ValidationError as exc:
        raise ApiError(400, one_line(exc, where)) from None


def _dump(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True)
    return value


class Api:
    def __init__(
        self,
        state_dir: Path | str,
        *,
        audit: Audit | None = None,
        metrics: Metrics | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: TlsFiles | None = None,
        title: str = "aimctl controller",
        version: str = "1",
    ) -> None:
        self.state_dir = Path(state_dir)
        self.tokens = TokenStore(self.state_dir)
        self.audit = audit
        self.metrics = metrics
        self.title, self.version = title, version
        # Clustered: None while this member takes writes, else the leader's API URL ("" if none leads).
        self.write_redirect: Callable[[], str | None] = lambda: None
        self.routes: list[Route] = []
        self.tls = tls
        # A non-GET is refused here before its handler runs when this says why (a cluster follower).
        self.write_guard: Callable[[Call], str | None] | None = None
        self.extra_routes: list[BaseRoute] = []  # the console's pages, mounted beside the API
        self._server = ApiServer(self, host, port, tls)
        self._adapters: dict[int, TypeAdapter[Any]] = {}
        from aimctl.api.openapi import openapi

        self.route("GET", "/openapi.json", lambda c: openapi(self), role=None, summary="This API, as OpenAPI 3.1")
        if metrics is not None:
            self.route("GET", "/metrics", self._metrics, role="viewer", summary="Prometheus metrics",
                       content_type="text/plain")

    # -- registration -------------------------------------------------------------------------

    def route(self, method: str, path: str, handler: Handler, role: str | None = "viewer", summary: str = "", *,
              body: type[BaseModel] | None = None, query: type[BaseModel] | None = None, response: Any = None,
              scope: Scope | None = None, status: int = 200, content_type: str = JSON) -> Route:
        method = method.upper()
        if method not in METHODS:
            raise ValueError(f"unsupported method {method}")
        if not path.startswith("/") or "//" in path:
            raise ValueError(f"route path must be an absolute path: {path!r}")
        if role is not None and role not in ROLES:
            raise ValueError(f"unknown role {role!r} (want one of {', '.join(ROLES)} or None)")
        if any(r.method == method and r.path == path for r in self.routes):
            raise ValueError(f"route {method} {path} is already registered")
        r = Route(method, path, handler, role, summary or path, body, query, response, scope, status, content_type)
        self.routes.append(r)
        return r

    def find(self, method: str, path: str) -> Route:
        for r in self.routes:
            if r.method == method and r.path == path:
                return r
        raise KeyError(f"{method} {path}")

    # -- the one gate ---------------------------------------------------------------------------

    def execute(self, route: Route, identity: Identity | None, params: Mapping[str, str], query: Mapping[str, str],
                body: Any, client: str, headers: Mapping[str, str] | None = None, via: str = "api",
                target: str = "") -> Reply:
        """Authorise, validate, run and (for a non-GET) audit one call. ``identity`` was established by
        the caller (bearer token or console session); ``body`` is parsed JSON or a form's fields."""
        call = Call(route.method, route.path, dict(params), dict(query), body, identity, client,
                    dict(headers or {}), via)
        try:
            if route.role is not None:
                if identity is None:
                    raise ApiError(401, "missing bearer token (Authorization: Bearer <token>)",
                                   {"WWW-Authenticate": 'Bearer realm="aimctl"'})
                if not identity.allows_somewhere(route.role):
                    raise ApiError(403, f"{route.method} {route.path} needs role {route.role};"
                                        f" token {identity.name} has no such role")
            for name, value in call.params.items():
                if not PARAM_VALUE_RE.match(value):
                    raise ApiError(404, f"no {name} {value[:64]!r}")
            call = Call(call.method, call.path, call.params, validate(route.query, call.query, "query"),
                        validate(route.body, body, "body"), identity, client, call.headers, via)
            if route.role is not None and identity is not None:
                pool = route.scope(call) if route.scope else None
                call = Call(call.method, call.path, call.params, call.query, call.body, identity, client,
                            call.headers, via, pool)
                if pool == SOMEWHERE:
                    pool = None
                    call = Call(call.method, call.path, call.params, call.query, call.body, identity, client,
                                call.headers, via, None)
                    allowed = identity.allows_somewhere(route.role)
                else:
                    allowed = identity.allows(route.role, pool)
                if not allowed:
                    where = f" in pool {pool}" if pool else ""
                    raise ApiError(403, f"{route.method} {route.path} needs role {route.role}{where};"
                                        f" token {identity.name} has role {identity.role_in(pool) or 'none'}{where}")
            if route.method != "GET":
                self._only_on_leader(target or call.path)
            if route.method != "GET" and self.write_guard is not None:
                refusal = self.write_guard(call)
                if refusal:
                    raise ApiError(503, refusal)
            result = route.handler(call)
            reply = result if isinstance(result, Reply) else Reply(route.status, self._shape(route, result),
                                                                   route.content_type)
        except ApiError as e:
            reply = Reply(e.status, {"error": mask(e.message)}, JSON, e.headers)
        except OperatorError as e:
            reply = Reply(int(getattr(e, "http_status", 400)), {"error": mask(str(e))})
        except Exception:
            log.exception("API handler for %s %s failed", route.method, call.path)
            reply = Reply(500, {"error": "internal error (see the controller log)"})
        if route.method != "GET":
            self.audit_call(call, reply.status, sent=body)
        return reply

    def _only_on_leader(self, target: str) -> None:
        """A cluster follower answers a write with where the leader is (307 + Location, which the CLI
        follows); with no leader elected, 503 and when to try again."""
        leader = self.write_redirect()
        if leader is None:
            return
        if not leader:
            raise ApiError(503, "no controller leads the cluster right now (an election is under way, or etcd is"
                                " unreachable): try again in a few seconds", {"Retry-After": "2"})
        raise ApiError(307, f"this controller follows; the leader is {leader}", {"Location": leader + target})

    def _shape(self, route: Route, result: Any) -> Any:
        """Validate a handler's result against the route's response model (what the document promises)."""
        if route.response is None or route.content_type != JSON:
            return _dump(result)
        key = id(route.response)
        adapter = self._adapters.get(key)
        if adapter is None:
            adapter = self._adapters[key] = TypeAdapter(route.response)
        return adapter.dump_python(adapter.validate_python(_dump(result)), mode="json", by_alias=True)

    def audit_call(self, call: Call, status: int, action: str | None = None, sent: Any = None) -> None:
        """One audit entry for a call: who (name, role in the call's pool), what, the outcome and the body
        as sent, every known token and secret-looking field masked."""
        if self.audit is None:
            return
        body = sent if sent is not None else call.body
        if isinstance(body, BaseModel):
            body = body.model_dump(mode="json")
        try:
            self.audit.record(
                call.identity.name if call.identity else "anonymous",
                action or f"{call.method} {call.path}",
                call.path,
                {"role": call.identity.role_in(call.pool) if call.identity else None, "pool": call.pool,
                 "status": status, "params": call.params, "body": self.mask_tokens(body), "via": call.via},
                source=f"{call.via} {call.client}",
            )
        except OSError:
            log.exception("cannot write the audit log for %s %s", call.method, call.path)

    def mask_tokens(self, value: Any) -> Any:
        """Mask every string that is a known token, whatever its field is called."""
        if isinstance(value, str):
            return "***" if len(value) >= 16 and self.tokens.identify(value) is not None else value
        if isinstance(value, dict):
            return {k: self.mask_tokens(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.mask_tokens(v) for v in value]
        return masked(value)

    def authenticate(self, headers: Mapping[str, str]) -> Identity | None:
        """The bearer token's identity; None without a token; 401 for a token that is not known."""
        value = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
        if not value:
            return None
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "missing bearer token (Authorization: Bearer <token>)",
                           {"WWW-Authenticate": 'Bearer realm="aimctl"'})
        identity = self.tokens.identify(token.strip())
        if identity is None:
            raise ApiError(401, "invalid token", {"WWW-Authenticate": 'Bearer realm="aimctl"'})
        return identity

    # -- HTTP -----------------------------------------------------------------------------------

    def _endpoint(self, route: Route) -> Callable[[HttpRequest], Any]:
        async def endpoint(request: HttpRequest) -> Response:
            client = f"{request.client.host}:{request.client.port}" if request.client else "-"
            headers = dict(request.headers)
            params = {k: str(v) for k, v in request.path_params.items()}
            identity: Identity | None = None
            try:
                identity = self.authenticate(headers)
                raw = await read_body(request)
                body = parse_json(raw)
            except ApiError as e:
                reply = Reply(e.status, {"error": e.message}, JSON, e.headers)
                if route.method != "GET":
                    self.audit_call(Call(route.method, route.path, params, {}, None, identity, client, {}), e.status)
                return to_response(reply)
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            reply = await run_in_threadpool(self.execute, route, identity, params, dict(request.query_params),
                                            body, client, headers, "api", target)
            return to_response(reply)

        return endpoint

    def build(self) -> Starlette:
        """The ASGI application: the API's routes, then the console's pages."""
        routes: list[BaseRoute] = [HttpRoute(r.path, self._endpoint(r), methods=[r.method]) for r in self.routes]
        routes.extend(self.extra_routes)

        async def http_error(request: HttpRequest, exc: Exception) -> Response:
            assert isinstance(exc, HTTPException)
            headers = dict(exc.headers or {})
            if "Allow" in headers:
                headers["Allow"] = ", ".join(sorted(x.strip() for x in headers["Allow"].split(",")))
            msg = {404: f"no route for {request.url.path}", 405: f"{request.method} not allowed on {request.url.path}"}
            return JSONResponse({"error": msg.get(exc.status_code, str(exc.detail))}, exc.status_code,
                                headers=_secure_headers(headers))

        app = Starlette(routes=routes, exception_handlers={HTTPException: http_error})
        return app

    def start(self) -> str:
        """Listen, write CTRLDIR/api.json (the address clients read) and return the base URL."""
        return self._server.start(self.build())

    def stop(self) -> None:
        self._server.stop()

    @property
    def url(self) -> str:
        return self._server.url

    def _metrics(self, call: Call) -> Reply:
        assert self.metrics is not None
        data, ctype = self.metrics.render()
        return Reply(200, data, ctype)


async def read_body(request: HttpRequest, limit: int = MAX_BODY) -> bytes:
    """The request body, refused (413) past ``limit`` whatever Content-Length claims."""
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise ApiError(400, "bad Content-Length")
        if int(length) > limit:
            raise ApiError(413, f"request body larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _secure_headers(headers: dict[str, str]) -> dict[str, str]:
    headers.setdefault("Cache-Control", "no-store")
    headers.setdefault("X-Content-Type-Options", "nosniff")
    return headers


def to_response(reply: Reply) -> Response:
    headers = _secure_headers(dict(reply.headers))
    if isinstance(reply.body, bytes):
        return Response(reply.body, reply.status, headers=headers, media_type=reply.content_type)
    if reply.content_type == JSON:
        return Response(json.dumps(reply.body, default=str) + "\n", reply.status, headers=headers, media_type=JSON)
    return Response(str(reply.body), reply.status, headers=headers, media_type=reply.content_type)


__all__ = ["Api", "ApiError", "Call", "Reply", "Request", "Route", "MAX_BODY", "MAX_DEPTH"]
