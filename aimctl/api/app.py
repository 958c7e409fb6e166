"""The controller's local HTTP API: routes, bearer-token roles, JSON in and out, audit of changes.

The controller registers its routes (``api.route("GET", "/v1/failovers/{id}", handler,
role="viewer")``); this module matches them, checks the token's role (viewer < operator < admin;
401 without a valid token, 403 with too low a role), parses JSON, maps errors to
``{"error": "..."}`` with a proper status, and writes every non-GET call to the audit log with
the token's name and role. ``dispatch()`` is plain Python, so routing is testable without sockets.

Built in: ``GET /openapi.json`` (public: it describes the API, not the data), ``GET /metrics``
(role viewer: it names personas, pools and their health, which is inventory), and
``GET /boot/{server}.ipxe`` (public: a server booting from the network has no token).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from aimctl.api.auth import ROLES, Identity, TokenStore
from aimctl.api.openapi import openapi
from aimctl.api.server import MAX_BODY, ApiServer
from aimctl.errors import OperatorError
from aimctl.records.audit import Audit
from aimctl.records.metrics import Metrics
from aimctl.secrets import mask

log = logging.getLogger(__name__)

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
# One name component: no dot, no slash, no percent sign, so no path can be spelled in it.
BOOT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}\Z")
PARAM_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        self.status, self.message = status, message
        self.headers = dict(headers or {})
        super().__init__(message)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    params: dict[str, str]
    query: dict[str, str]
    body: Any
    identity: Identity | None
    client: str
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Response:
    status: int = 200
    body: Any = None
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    def payload(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if self.content_type.startswith("application/json"):
            return (json.dumps(self.body, default=_json_default) + "\n").encode()
        return str(self.body).encode()


Handler = Callable[[Request], Any]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: str
    regex: re.Pattern[str]
    params: tuple[str, ...]
    handler: Handler
    role: str | None  # None: no token needed
    summary: str
    request_schema: Mapping[str, Any] | None = None
    response_schema: Mapping[str, Any] | None = None
    content_type: str = "application/json"  # what a 200 carries, for the OpenAPI document


def _compile(pattern: str) -> tuple[re.Pattern[str], tuple[str, ...]]:
    parts, names, pos = [], [], 0
    for m in PARAM_RE.finditer(pattern):
        parts.append(re.escape(pattern[pos:m.start()]))
        parts.append(f"(?P<{m.group(1)}>[^/]+)")
        names.append(m.group(1))
        pos = m.end()
    parts.append(re.escape(pattern[pos:]))
    return re.compile("^" + "".join(parts) + "$"), tuple(names)


def _json_default(o: Any) -> Any:
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    if isinstance(o, enum.Enum):
        return o.value
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    return str(o)


class Api:
    def __init__(
        self,
        state_dir: Path | str,
        *,
        audit: Audit | None = None,
        metrics: Metrics | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
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
        self._server = ApiServer(self, host, port)
        self.route("GET", "/openapi.json", lambda r: openapi(self), role=None, summary="This API, as OpenAPI 3.1")
        self.route("GET", "/boot/{server}.ipxe", self._boot_script, role=None,
                   summary="iPXE boot script of a server (no token: a network-booting server has none)",
                   content_type="text/plain")
        if metrics is not None:
            self.route("GET", "/metrics", self._metrics, role="viewer", summary="Prometheus metrics",
                       content_type="text/plain")

    # -- registration -------------------------------------------------------------------------

    def route(self, method: str, pattern: str, handler: Handler, role: str | None = "viewer", summary: str = "",
              *, request_schema: Mapping[str, Any] | None = None,
              response_schema: Mapping[str, Any] | None = None, content_type: str = "application/json") -> None:
        method = method.upper()
        if method not in METHODS:
            raise ValueError(f"unsupported method {method}")
        if not pattern.startswith("/") or "//" in pattern:
            raise ValueError(f"route pattern must be an absolute path: {pattern!r}")
        if role is not None and role not in ROLES:
            raise ValueError(f"unknown role {role!r} (want one of {', '.join(ROLES)} or None)")
        if any(r.method == method and r.pattern == pattern for r in self.routes):
            raise ValueError(f"route {method} {pattern} is already registered")
        regex, names = _compile(pattern)
        self.routes.append(Route(method, pattern, regex, names, handler, role, summary or pattern,
                                 request_schema, response_schema, content_type))

    # -- serving ------------------------------------------------------------------------------

    def start(self) -> str:
        """Listen, write CTRLDIR/api.json (the address clients read) and return the base URL."""
        return self._server.start()

    def stop(self) -> None:
        self._server.stop()

    @property
    def url(self) -> str:
        return self._server.url

    def dispatch(self, method: str, target: str, headers: Mapping[str, str], body: bytes,
                 client: str = "-") -> Response:
        split = urlsplit(target)
        path = split.path
        route, params, allowed = self._match(method, path)
        identity: Identity | None = None
        parsed: Any = None
        try:
            if route is None:
                if allowed:
                    raise ApiError(405, f"{method} not allowed on {path}", {"Allow": ", ".join(sorted(allowed))})
                raise ApiError(404, f"no route for {path}")
            if route.role is not None:
                identity = self._authenticate(headers)
                if not identity.allows(route.role):
                    raise ApiError(403, f"{method} {route.pattern} needs role {route.role};"
                                        f" token {identity.name} has role {identity.role}")
            if method != "GET":
                self._only_on_leader(target)
            parsed = self._parse_body(body, headers)
            req = Request(method, path, params, dict(parse_qsl(split.query)), parsed, identity, client,
                          {k.lower(): v for k, v in headers.items()})
            result = route.handler(req)
            resp = result if isinstance(result, Response) else Response(200, result)
        except ApiError as e:
            resp = Response(e.status, {"error": mask(e.message)}, headers=e.headers)
        except OperatorError as e:
            resp = Response(int(getattr(e, "http_status", 400)), {"error": mask(str(e))})
        except Exception:
            log.exception("API handler for %s %s failed", method, path)
            resp = Response(500, {"error": "internal error (see the controller log)"})
        if method != "GET":
            self._audit(method, path, route, identity, parsed, params, resp.status, client)
        return resp

    def _only_on_leader(self, target: str) -> None:
        """A follower answers a write with where the leader is (307 + Location); the CLI follows it."""
        leader = self.write_redirect()
        if leader is None:
            return
        if not leader:
            raise ApiError(503, "no controller leads the cluster right now (an election is under way, or etcd is"
                                " unreachable): try again in a few seconds", {"Retry-After": "2"})
        raise ApiError(307, f"this controller follows; the leader is {leader}", {"Location": leader + target})

    def _match(self, method: str, path: str) -> tuple[Route | None, dict[str, str], set[str]]:
        allowed: set[str] = set()
        for r in self.routes:
            m = r.regex.match(path)
            if m is None:
                continue
            if r.method == method:
                return r, {k: unquote(v) for k, v in m.groupdict().items()}, allowed
            allowed.add(r.method)
        return None, {}, allowed

    def _authenticate(self, headers: Mapping[str, str]) -> Identity:
        value = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
        scheme, _, token = value.partition(" ")
        challenge = {"WWW-Authenticate": 'Bearer realm="aimctl"'}
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "missing bearer token (Authorization: Bearer <token>)", challenge)
        identity = self.tokens.identify(token.strip())
        if identity is None:
            raise ApiError(401, "invalid token", challenge)
        return identity

    @staticmethod
    def _parse_body(body: bytes, headers: Mapping[str, str]) -> Any:
        if not body:
            return None
        if len(body) > MAX_BODY:
            raise ApiError(413, f"request body larger than {MAX_BODY} bytes")
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"request body is not valid JSON: {exc}") from None

    def _audit(self, method: str, path: str, route: Route | None, identity: Identity | None, body: Any,
               params: Mapping[str, str], status: int, client: str) -> None:
        if self.audit is None:
            return
        try:
            self.audit.record(
                identity.name if identity else "anonymous",
                f"{method} {route.pattern if route else path}",
                path,
                {"role": identity.role if identity else None, "status": status, "params": dict(params),
                 "body": body},
                source=f"api {client}",
            )
        except OSError:
            log.exception("cannot write the audit log for %s %s", method, path)

    # -- built-in handlers ----------------------------------------------------------------------

    def _boot_script(self, req: Request) -> Response:
        name = req.params["server"]
        if not BOOT_NAME_RE.match(name):
            raise ApiError(400, "invalid server name")
        boot_dir = (self.state_dir / "boot").resolve()
        path = boot_dir / f"{name}.ipxe"
        # The pattern already rules out traversal; refusing symlinks and re-checking the parent keeps
        # it so if the pattern is ever loosened.
        if path.is_symlink() or not path.is_file() or path.resolve().parent != boot_dir:
            raise ApiError(404, f"no boot script for {name}")
        return Response(200, path.read_bytes(), "text/plain; charset=utf-8")

    def _metrics(self, req: Request) -> Response:
        assert self.metrics is not None
        data, ctype = self.metrics.render()
        return Response(200, data, ctype)
