"""The socket side of the API: a stdlib ThreadingHTTPServer that hands every request to ``dispatch``.

It also publishes where it listens in ``CTRLDIR/api.json`` (written atomically, removed on stop)
so the CLI finds the daemon without flags.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aimctl.api.app import Api

log = logging.getLogger(__name__)
MAX_BODY = 1 << 20


def _handler_class(api: Api) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "aimctl"
        timeout = 30  # a client that stops sending does not hold a thread forever

        def _handle(self) -> None:
            length = self.headers.get("Content-Length", "0")
            try:
                size = int(length)
            except ValueError:
                size = -1
            if size < 0 or size > MAX_BODY:
                self._send(413 if size > MAX_BODY else 400, b'{"error": "bad or too large Content-Length"}\n',
                           "application/json", {})
                return
            body = self.rfile.read(size) if size else b""
            client = f"{self.client_address[0]}:{self.client_address[1]}"
            resp = api.dispatch(self.command, self.path, dict(self.headers.items()), body, client)
            self._send(resp.status, resp.payload(), resp.content_type, resp.headers)

        def _send(self, status: int, data: bytes, ctype: str, headers: dict[str, str]) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s %s", self.address_string(), format % args)

    return Handler


class ApiServer:
    def __init__(self, api: Api, host: str, port: int) -> None:
        self.api, self.host, self.port = api, host, port
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("API server is not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def info_path(self) -> Path:
        return self.api.state_dir / "api.json"

    def start(self) -> str:
        if self._httpd is not None:
            return self.url
        httpd = ThreadingHTTPServer((self.host, self.port), _handler_class(self.api))
        httpd.daemon_threads = True
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="aimctl-api", daemon=True)
        self._thread.start()
        host, port = httpd.server_address[:2]
        info = {"url": self.url, "host": str(host), "port": port, "pid": os.getpid(), "started": time.time()}
        tmp = self.info_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(info) + "\n")
        os.replace(tmp, self.info_path)
        log.info("API listening on %s", self.url)
        return self.url

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)
        try:
            info = json.loads(self.info_path.read_text())
            if info.get("pid") == os.getpid() and info.get("port") == httpd.server_address[1]:
                self.info_path.unlink()
        except (OSError, ValueError):
            pass
