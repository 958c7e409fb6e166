"""The lab's control API: status, faults, reset, shutdown — JSON over HTTP on 127.0.0.1.

``aimctl lab status|fault|reset|down`` and the test fixtures talk to the lab process through it.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aimctl.errors import OperatorError


def port_of(state: Path) -> int:
    return int(json.loads((state / "control.json").read_text())["port"])


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, fmt: str, *args: Any) -> None:  # keep the lab log quiet
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
            action = self.path.strip("/").split("/")[-1]
            result = self.server.dispatch(action, body)
            code, payload = 200, result
        except OperatorError as exc:
            code, payload = 400, {"error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - reported to the caller, the lab keeps running
            code, payload = 500, {"error": f"{type(exc).__name__}: {exc}"}
        data = json.dumps(payload, default=str).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, lab: Any) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lab = lab
        self.shutdown_cb: Callable[[], None] | None = None

    def dispatch(self, action: str, body: dict[str, Any]) -> Any:
        from lab import ops

        if action == "shutdown":
            if self.shutdown_cb:
                threading.Thread(target=self.shutdown_cb, daemon=True).start()
            return {"ok": True}
        if action == "status":
            return ops.status(self.lab)
        if action == "fault":
            if not isinstance(body.get("kind"), str) or not isinstance(body.get("target"), str):
                raise OperatorError("a fault needs a kind and a target")
            params = {k: v for k, v in body.items() if k not in ("kind", "target", "clear")}
            return ops.fault(self.lab, body["kind"], body["target"], bool(body.get("clear")), **params)
        if action == "reset":
            return ops.reset(self.lab)
        if action == "mail":
            return self.lab.mailbox.read()
        if action == "alert-traps":
            return self.lab.trap_inbox.read()
        if action == "adopt":
            return self.lab.adopt(body["persona"], body["initiator"], body["key_file"], body.get("data", []))
        if action == "cluster-up":
            return ops.cluster_up(self.lab, body)
        if action == "cluster-down":
            return ops.cluster_down(self.lab)
        raise OperatorError(f"unknown lab action {action!r}")


def serve(lab: Any, state: Path) -> _Server:
    srv = _Server(lab)
    threading.Thread(target=srv.serve_forever, name="lab-control", daemon=True).start()
    tmp = state / "control.json.tmp"
    tmp.write_text(json.dumps({"port": srv.server_address[1]}))
    tmp.replace(state / "control.json")
    return srv


def on_shutdown(srv: _Server, cb: Callable[[], None]) -> None:
    srv.shutdown_cb = cb


def call(state: Path, action: str, body: dict[str, Any] | None = None, timeout_s: float = 60.0) -> Any:
    """Ask the lab process at ``state`` to do ``action``; clear errors when it is not running."""
    try:
        port = port_of(state)
    except (OSError, ValueError, KeyError):
        raise OperatorError(f"{state}: no lab is running here (no control.json)") from None
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/{action}", data=json.dumps(body or {}).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            msg = json.loads(exc.read()).get("error", str(exc))
        except ValueError:
            msg = str(exc)
        raise OperatorError(f"lab {action}: {msg}") from None
    except OSError as exc:
        raise OperatorError(f"{state}: lab does not answer ({exc})") from None


def wait_ready(state: Path, proc_alive: Callable[[], bool], timeout_s: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (state / "ready").exists():
            return dict(json.loads((state / "ready").read_text()))
        if (state / "failed").exists():
            raise OperatorError(f"lab failed to start: {(state / 'failed').read_text().strip()} "
                                f"(see {state / 'lab.log'})")
        if not proc_alive():
            raise OperatorError(f"lab process exited during start (see {state / 'lab.log'})")
        time.sleep(0.05)
    raise OperatorError(f"lab not ready after {timeout_s:.0f}s (see {state / 'lab.log'})")
