"""A Redfish SessionService in front of the emulator (sushy-tools has Basic auth only).

Real BMCs (iDRAC, iLO) hand out session tokens: ``POST /redfish/v1/SessionService/Sessions``
with ``UserName``/``Password`` answers 201 with ``X-Auth-Token`` and ``Location``; later requests
carry the token; ``DELETE`` on the Location ends the session. sushy tries this first and, against
the stock emulator, logs an authentication *error* before falling back to Basic on every connect.
With sessions the lab behaves like the BMCs the controller will meet, and a poll skips the bcrypt
check the Basic layer does on every request. Basic auth keeps working unchanged.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Callable, Iterable
from typing import Any

WSGIApp = Callable[..., Iterable[bytes]]
SERVICE = "/redfish/v1/SessionService"
SESSIONS = f"{SERVICE}/Sessions"


class SessionLayer:
    """WSGI layer: sessions and token auth; everything else goes to the Basic-auth app."""

    def __init__(self, outer: WSGIApp, inner: WSGIApp, users: dict[str, str]) -> None:
        self.outer = outer  # the emulator behind its Basic-auth layer
        self.inner = inner  # the emulator itself (a valid token has authenticated the request)
        self.users = dict(users)
        self._lock = threading.Lock()
        self._tokens: dict[str, tuple[str, str]] = {}  # token -> (session id, user)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "").rstrip("/")
        method = environ.get("REQUEST_METHOD", "GET")
        if path == "/redfish/v1" and method == "GET":
            return self._root(environ, start_response)
        if path == SESSIONS and method == "POST":
            return self._login(environ, start_response)
        token = environ.get("HTTP_X_AUTH_TOKEN")
        if token is None:
            return self.outer(environ, start_response)
        with self._lock:
            held = self._tokens.get(token)
        if held is None:
            return _json(start_response, "401 Unauthorized", _error("Invalid or expired session token"))
        sid, user = held
        if path == SERVICE and method == "GET":
            body = {
                "@odata.id": SERVICE,
                "Id": "SessionService",
                "ServiceEnabled": True,
                "SessionTimeout": 1800,
                "Sessions": {"@odata.id": SESSIONS},
            }
            return _json(start_response, "200 OK", body)
        if path == f"{SESSIONS}/{sid}" and method == "DELETE":
            with self._lock:
                self._tokens.pop(token, None)
            start_response("204 No Content", [])
            return [b""]
        environ["HTTP_X_USER"] = user
        return self.inner(environ, start_response)

    def _login(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            size = int(environ.get("CONTENT_LENGTH") or 0)
            body = json.loads(environ["wsgi.input"].read(size) or b"{}")
            user, password = str(body["UserName"]), str(body["Password"])
        except (ValueError, KeyError, TypeError):
            return _json(start_response, "400 Bad Request", _error("UserName and Password are required"))
        want = self.users.get(user)
        if want is None or not secrets.compare_digest(want.encode(), password.encode()):
            return _json(start_response, "401 Unauthorized", _error("Invalid credentials"))
        token, sid = secrets.token_hex(16), secrets.token_hex(4)
        with self._lock:
            self._tokens[token] = (sid, user)
        location = f"{SESSIONS}/{sid}"
        doc = {"@odata.id": location, "Id": sid, "UserName": user}
        return _json(start_response, "201 Created", doc, [("X-Auth-Token", token), ("Location", location)])

    def _root(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        captured: dict[str, Any] = {}

        def keep(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
            captured["status"] = status
            return lambda _data: None

        raw = b"".join(self.outer(environ, keep))
        try:
            doc = json.loads(raw)
        except ValueError:
            start_response(captured.get("status", "500 Internal Server Error"), [])
            return [raw]
        doc["SessionService"] = {"@odata.id": SERVICE}
        doc.setdefault("Links", {})["Sessions"] = {"@odata.id": SESSIONS}
        return _json(start_response, captured.get("status", "200 OK"), doc)


def _error(message: str) -> dict[str, Any]:
    return {"error": {"code": "Base.1.0.GeneralError", "message": message}}


def _json(
    start_response: Callable[..., Any], status: str, doc: Any, extra: list[tuple[str, str]] | None = None
) -> Iterable[bytes]:
    data = json.dumps(doc).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(data)))] + (extra or [])
    start_response(status, headers)
    return [data]
