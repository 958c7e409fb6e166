"""The SCN relay: the lab's stand-in for VLAN reachability.

The machine cannot do 802.1Q (LAB.md), so each host sends its heartbeats to its own relay port and
the relay forwards them to the controller (every controller, in a cluster) only while the host's
primary or secondary SCN channel port carries the SCN VLAN — read from the fake switches' configuration in process — and no
``scn-partition`` fault cuts it. Moving a persona's VLANs is therefore what makes it reachable.
``loss`` drops that share of a server's packets at random (``scn-loss``: a lossy SCN path).
"""

from __future__ import annotations

import random
import selectors
import socket
import threading
from collections.abc import Callable


class ScnRelay:
    def __init__(self, controller: tuple[str, int], reachable: Callable[[str], bool]) -> None:
        # Every controller of a cluster gets each packet (agents send one per controller; the relay
        # stands for the SCN, which carries them all).
        self.controllers: list[tuple[str, int]] = [controller]
        self._reachable = reachable
        self._sel = selectors.DefaultSelector()
        self._socks: dict[str, socket.socket] = {}
        self._agent: dict[str, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.partitioned: set[str] = set()
        self.loss: dict[str, float] = {}  # server -> share of its packets dropped at random (0..1)
        self._rng = random.Random()
        self.forwarded: dict[str, int] = {}
        self.dropped: dict[str, int] = {}

    def add_server(self, server: str) -> int:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        self._socks[server] = s
        self._sel.register(s, selectors.EVENT_READ, server)
        self.forwarded[server] = self.dropped[server] = 0
        return int(s.getsockname()[1])

    def seed(self, seed: int) -> None:
        """Make the random losses repeatable (a soak replayed with its seed)."""
        self._rng.seed(seed)

    def add_controller(self, addr: tuple[str, int]) -> None:
        if addr not in self.controllers:
            self.controllers.append(addr)

    def remove_controller(self, addr: tuple[str, int]) -> None:
        if addr in self.controllers[1:]:
            self.controllers.remove(addr)

    def port(self, server: str) -> int:
        return int(self._socks[server].getsockname()[1])

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="scn-relay", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._sel.select(timeout=0.2):
                server: str = key.data
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                try:
                    data, src = sock.recvfrom(65535)
                except BlockingIOError:
                    continue
                if server in self.partitioned or not self._reachable(server) or \
                        (server in self.loss and self._rng.random() < self.loss[server]):
                    self.dropped[server] += 1
                elif src in self.controllers:
                    # The controller answers (a signed stop request) to where the heartbeat came from.
                    if server in self._agent:
                        sock.sendto(data, self._agent[server])
                else:
                    # Each server's traffic leaves from its own relay socket, so replies find their way back.
                    self._agent[server] = src
                    for c in list(self.controllers):
                        sock.sendto(data, c)
                    self.forwarded[server] += 1

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=2)
        for s in self._socks.values():
            self._sel.unregister(s)
            s.close()
        self._sel.close()
