"""The persona's service as each lab body runs it: a TCP port the agent's service check probes.

One listener per server on 127.0.0.1. ``service-fail SERVER`` closes that body's port, so the
persona's agent finds its service down, runs the restart command (which only counts: the body's
problem is not one a restart fixes), gives up after its restarts and reports the persona
unhealthy — the controller then fails it over to a body whose service answers. Clearing the
fault opens the same port again.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from aimctl.agent.checks import CheckSpec


class _Door:
    """One listening port with its own accepting thread (a blocking accept: nothing to poll)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(128)
        self.port = int(self.sock.getsockname()[1])
        threading.Thread(target=self._accept, name=f"lab-service-{self.port}", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed: the service is down
                return
            # Close only after the prober did: a listener that closes first keeps the prober's
            # port in TIME_WAIT, and a later probe from that port stalls.
            with conn:
                conn.settimeout(2.0)
                try:
                    conn.recv(64)
                except OSError:
                    pass

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept
        except OSError:
            pass
        self.sock.close()


class ServiceDoors:
    def __init__(self, servers: list[str], state: Path) -> None:
        self.dir = state / "services"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._doors: dict[str, _Door | None] = {s: _Door(0) for s in servers}
        self.ports = {s: d.port for s, d in self._doors.items() if d is not None}

    def check(self, server: str) -> CheckSpec:
        """The check the persona's agent runs on ``server``: probe the port; "restart" counts."""
        counter = self.dir / f"{server}.restarts"
        return CheckSpec(name="service", tcp=("127.0.0.1", self.ports[server]), timeout_s=1.0,
                         restart=("sh", "-c", 'echo restart >> "$1"', "sh", str(counter)))

    def restarts(self, server: str) -> int:
        try:
            return len((self.dir / f"{server}.restarts").read_text().splitlines())
        except FileNotFoundError:
            return 0

    def set_down(self, server: str, down: bool) -> None:
        with self._lock:
            door = self._doors[server]
            if down and door is not None:
                door.close()
                self._doors[server] = None
            elif not down and door is None:
                self._doors[server] = _Door(self.ports[server])

    def reset(self) -> None:
        for s in list(self._doors):
            self.set_down(s, False)
            (self.dir / f"{s}.restarts").unlink(missing_ok=True)

    def stop(self) -> None:
        with self._lock:
            for d in self._doors.values():
                if d is not None:
                    d.close()
