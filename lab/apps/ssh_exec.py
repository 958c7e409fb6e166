"""A paramiko SSH server that answers ``exec`` requests with a Python function: a remote shell
for simulators (the Exchange management host of the DAG simulator, and any other one).

Password authentication only, one host key per server (generated at start; tests can pin its
fingerprint), bound to 127.0.0.1 on a free port. ``reachable`` is asked on every connection and
every command, so the lab can cut the network path: a refused path closes the connection at
once, and a path lost mid-session drops the session.
"""

from __future__ import annotations

import hmac
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

import paramiko

log = logging.getLogger(__name__)

Handler = Callable[[str], tuple[str, str, int]]  # command -> stdout, stderr, exit status


class ExecServer:
    def __init__(self, handler: Handler, username: str, password: str, name: str = "ssh-exec") -> None:
        self.handler, self.name = handler, name
        self._user, self._password = username.encode(), password.encode()
        self.reachable: Callable[[], bool] = lambda: True
        self._key = paramiko.ECDSAKey.generate()  # fast, unlike RSA
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._transports: list[Any] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def host_key_fingerprint(self) -> str:
        from aimctl.drivers.ssh import fingerprint

        return fingerprint(self._key)

    def start(self) -> int:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        sock.settimeout(0.1)  # so the accept loop sees stop() within 0.1 s
        self._listener, self.port = sock, sock.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, name=f"{self.name}-accept", daemon=True)
        self._thread.start()
        return self.port

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        if self._listener:
            self._listener.close()
        with self._lock:
            transports, self._transports = self._transports, []
        for t in transports:
            t.close()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self.reachable():
                conn.close()  # no network path: the connection dies at once
                continue
            threading.Thread(target=self._serve, args=(conn,), name=f"{self.name}-conn", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        t = paramiko.Transport(conn)
        t.add_server_key(self._key)
        with self._lock:  # forget sessions that have ended, so a long lab run does not pile them up
            self._transports = [x for x in self._transports if x.is_active()] + [t]
        try:
            t.start_server(server=_Iface(self))
        except (paramiko.SSHException, EOFError, OSError):
            t.close()

    def check_password(self, username: str, password: str) -> bool:
        # Both compared in constant time, and both always compared.
        user_ok = hmac.compare_digest(username.encode(), self._user)
        return hmac.compare_digest(password.encode(), self._password) & user_ok

    def run(self, chan: Any, command: str) -> None:
        if not self.reachable():
            chan.get_transport().close()  # the path went away mid-session
            return
        try:
            out, err, code = self.handler(command)
        except Exception:  # a simulator bug must not hang the client
            log.exception("%s: handler failed for %r", self.name, command)
            out, err, code = "", "internal simulator error\n", 255
        try:
            chan.sendall(out.encode())
            chan.sendall_stderr(err.encode())
            chan.send_exit_status(code)
            # EOF, not close: a close may overtake the exec request's success reply, and the
            # client then reports "Channel closed". The client closes the channel when done.
            chan.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException):
            pass


class _Iface(paramiko.ServerInterface):
    def __init__(self, server: ExecServer) -> None:
        self.server = server

    def get_allowed_auths(self, username: str) -> str:
        return "password"

    def check_auth_password(self, username: str, password: str) -> int:
        ok = self.server.check_password(username, password)
        return int(paramiko.common.AUTH_SUCCESSFUL if ok else paramiko.common.AUTH_FAILED)

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return int(paramiko.common.OPEN_SUCCEEDED)
        return int(paramiko.common.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED)

    def check_channel_exec_request(self, channel: Any, command: bytes) -> bool:
        # Answer on another thread: this one is the transport's and must send the reply first.
        args = (channel, command.decode(errors="replace"))
        threading.Thread(
            target=self.server.run, args=args, name=f"{self.server.name}-exec", daemon=True
        ).start()
        return True
