"""A spare rehearsal's heartbeats: told by the boot facts, signed as such, never the persona's own."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from aimctl.agent import bootfacts, wire
from aimctl.agent.run import run_agent
from aimctl.detect.heartbeat import HeartbeatReceiver
from aimctl.validation import rehearsal_initiator
from tests.waiting import wait_for

KEY = b"k" * 32


def test_boot_facts_tell_a_rehearsal(tmp_path: Path) -> None:
    ini = "iqn.1991-05.com.microsoft:exchange1"
    ibft = tmp_path / "initiator-name"
    assert bootfacts.boot_initiator(ibft) is None and not bootfacts.is_rehearsal(None)
    ibft.write_text(ini + "\n")
    assert bootfacts.boot_initiator(ibft) == ini and not bootfacts.is_rehearsal(ini)
    ibft.write_text(rehearsal_initiator(ini))
    assert bootfacts.is_rehearsal(bootfacts.boot_initiator(ibft))


def test_rehearsal_heartbeats_never_count_as_the_persona() -> None:
    with HeartbeatReceiver("127.0.0.1", 0, {"exchange1": KEY}) as rx:
        stop = threading.Event()
        t = threading.Thread(target=run_agent, kwargs={
            "persona": "exchange1", "controller": ("127.0.0.1", rx.port), "key": KEY, "interval_s": 0.02,
            "stop_event": stop, "rehearsal": True}, daemon=True)
        t.start()
        try:
            seen = wait_for(lambda: rx.last_rehearsal("exchange1"), 3, "a rehearsal heartbeat")
            assert seen[1].kind == wire.KIND_REHEARSAL and seen[1].health == wire.Health.OK
            wait_for(lambda: (rx.last_rehearsal("exchange1") or (0, 0, 0))[2] >= 3, 3, "three of them")
            assert rx.last_seen("exchange1") is None and rx.beats("exchange1") == 0
        finally:
            stop.set()
            t.join(2)
        # The persona's own heartbeat goes to its own table, and never to the rehearsal's.
        before = wait_for(lambda: (r := rx.last_rehearsal("exchange1")) and r[1].health == wire.Health.STOPPED and r,
                          3, "the rehearsal's last heartbeat")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(wire.encode(KEY, wire.Heartbeat("exchange1", 99, 1, time.time())), ("127.0.0.1", rx.port))
        wait_for(lambda: rx.last_seen("exchange1"), 3, "the persona's heartbeat")
        assert rx.last_rehearsal("exchange1") == before
