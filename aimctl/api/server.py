"""The socket side of the API: uvicorn in a thread of the controller, plain HTTP or TLS.

The listening socket is bound here, before uvicorn starts, so a port in use is one clear line at
start (not a traceback in a thread). Where the API listens is published in ``CTRLDIR/api.json``
(written atomically, 0600, removed on stop) so the CLI finds the daemon without flags; under TLS
it also names the certificate, which the CLI then trusts for this address.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn

from aimctl.errors import ListenError, OperatorError

if TYPE_CHECKING:
    from aimctl.api.app import Api

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path

    def check(self) -> None:
        """Refuse at start what would fail on the first connection: unreadable or mismatched files."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            ctx.load_cert_chain(str(self.cert), str(self.key))
        except (OSError, ssl.SSLError) as exc:
            raise OperatorError(f"API TLS: cannot use certificate {self.cert} with key {self.key}: {exc}") from None


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ListenError.from_oserror("the API", "TCP", host, port, exc) from None
    sock.listen(128)
    return sock


class ApiServer:
    def __init__(self, api: Api, host: str, port: int, tls: TlsFiles | None = None) -> None:
        self.api, self.host, self.port, self.tls = api, host, port, tls
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._bound: tuple[str, int] | None = None
        self.stopping = threading.Event()  # long-lived responses (server-sent events) end when set

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def url(self) -> str:
        if self._bound is None:
            raise RuntimeError("API server is not started")
        host, port = self._bound
        shown = f"[{host}]" if ":" in str(host) else str(host)
        return f"{self.scheme}://{shown}:{port}"

    @property
    def info_path(self) -> Path:
        return self.api.state_dir / "api.json"

    def start(self, app: Any) -> str:
        if self._server is not None:
            return self.url
        if self.tls:
            self.tls.check()
        sock = bind(self.host, self.port)
        config = uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="off", proxy_headers=False,
            server_header=False, date_header=False, timeout_keep_alive=5, timeout_graceful_shutdown=2,
            limit_concurrency=200, h11_max_incomplete_event_size=64 * 1024,
            ssl_certfile=str(self.tls.cert) if self.tls else None,
            ssl_keyfile=str(self.tls.key) if self.tls else None,
        )
        server = uvicorn.Server(config)
        self._server, self._sock = server, sock
        self._bound = (str(sock.getsockname()[0]), int(sock.getsockname()[1]))
        self.stopping.clear()
        self._thread = threading.Thread(target=self._run, args=(server, sock), name="aimctl-api", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not server.started:
            self.stop()
            raise OperatorError("the API server did not start (see the controller log)")
        host, port = self._bound
        info: dict[str, Any] = {"url": self.url, "host": str(host), "port": port, "pid": os.getpid(),
                                "started": time.time()}
        if self.tls:
            info["tls_cert"] = str(self.tls.cert.resolve())
        tmp = self.info_path.with_suffix(".json.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(info) + "\n")
        os.replace(tmp, self.info_path)
        log.info("API listening on %s", self.url)
        return self.url

    @staticmethod
    def _run(server: uvicorn.Server, sock: socket.socket) -> None:
        try:
            asyncio.run(server.serve(sockets=[sock]))
        except Exception:
            log.exception("the API server stopped")

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self.stopping.set()
        server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        port = self._bound[1] if self._bound else None
        if self._sock is not None:
            self._sock.close()  # uvicorn closed it already; closing twice is harmless
            self._sock = None
        self._bound = None
        try:
            info = json.loads(self.info_path.read_text())
            if info.get("pid") == os.getpid() and info.get("port") == port:
                self.info_path.unlink()
        except (OSError, ValueError):
            pass
