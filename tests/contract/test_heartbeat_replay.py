"""Replay-proof heartbeats across a controller crash (issue 11, hole 4; deliverable 5).

A real persona agent sends through a tap that captures every datagram to the controller's receiver
(built by the daemon's own ``heartbeat_receiver``, its replay memory in the controller's journal),
running in a child process. The child is killed (SIGKILL: no clean stop, no last save), a new one
starts on the same state, and the captured packets are replayed at it: every one is refused, while
the live agent's own heartbeats are accepted again.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from aimctl.agent.run import run_agent
from tests.conftest import REPO
from tests.waiting import wait_for

KEY = b"replay-test-key-0123456789abcdef"
INTERVAL = 0.1

CHILD = """
import json, sys, time
from pathlib import Path
from aimctl.daemon import heartbeat_receiver
from aimctl.journal import Journal
from aimctl.overlay import Listen

journal = Journal(Path(sys.argv[1]) / "journal.db")
listen = Listen(heartbeat="127.0.0.1:0", heartbeat_interval=float(sys.argv[2]))
r = heartbeat_receiver(listen, {"exchange1": bytes.fromhex(sys.argv[3])}, journal).start()
print(json.dumps({"port": r.port}), flush=True)
last = None
while True:  # until killed: report the counters whenever they move
    c = r.counters()
    if c != last:
        print(json.dumps(c), flush=True)
        last = c
    time.sleep(0.01)
"""


class Receiver:
    """The controller's receiver in a child process, reporting its counters on stdout."""

    def __init__(self, state: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD, str(state), str(INTERVAL), KEY.hex()],
                                     stdout=subprocess.PIPE, text=True, cwd=REPO)
        assert self.proc.stdout is not None
        self.out: IO[str] = self.proc.stdout
        self.port = int(json.loads(self.out.readline())["port"])
        self.counters: dict[str, int] = {}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.out:
            self.counters = json.loads(line)

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


class Tap:
    """Forwards the agent's datagrams to the current receiver and keeps a copy of each."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.target: tuple[str, int] | None = None
        self.captured: list[bytes] = []
        self.capturing = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        while not self._stop.is_set():
            try:
                data = self.sock.recv(2048)
            except OSError:
                continue
            if self.capturing:
                self.captured.append(data)
            if self.target is not None:
                out.sendto(data, self.target)
        out.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def tap() -> Iterator[Tap]:
    t = Tap()
    yield t
    t.close()


def test_captured_heartbeats_replayed_after_a_crash_are_refused(tmp_path: Path, tap: Tap) -> None:
    first = Receiver(tmp_path)
    second: Receiver | None = None
    stop_agent = threading.Event()
    agent = threading.Thread(target=run_agent, args=("exchange1", ("127.0.0.1", tap.port), KEY),
                             kwargs={"interval_s": INTERVAL, "stop_event": stop_agent}, daemon=True)
    try:
        tap.target = ("127.0.0.1", first.port)
        agent.start()
        wait_for(lambda: first.counters.get("accepted", 0) >= 15, 10, "heartbeats accepted")
        tap.capturing = False
        captured = list(tap.captured)
        first.kill()  # a crash: whatever the last flush saved is all the next controller knows
        second = Receiver(tmp_path)
        # The attacker's replay of everything it captured before the crash...
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for pkt in captured:
                s.sendto(pkt, ("127.0.0.1", second.port))
        c: dict[str, Any] = wait_for(lambda: second.counters if second.counters.get("received", 0) >= len(captured)
                                     else None, 10, "replayed packets received")
        assert c["accepted"] == 0, c
        assert c["replay"] == len(captured), c
        # ...while the live agent, which kept sending through the restart, is heard again.
        tap.target = ("127.0.0.1", second.port)
        wait_for(lambda: second.counters.get("accepted", 0) >= 3, 10, "the live agent accepted again")
    finally:
        stop_agent.set()
        agent.join(5)
        first.kill() if first.proc.poll() is None else None
        if second is not None:
            second.kill()
