"""The persona agent's main loop: signed UDP heartbeats, service checks, and a graceful stop.

Heartbeats leave on a UDP socket *connected* to the controller, every ``interval_s``; with several
controllers (a cluster), one socket and one signed packet per controller, so every member's
detector stays warm and a new leader need not wait a detection window. Checks run in
their own thread so a slow probe never delays a heartbeat; the heartbeat carries the latest verdict.

Stopping, two ways, both ending with one last heartbeat saying ``stopped``:

- ``stop_event`` set (the CLI sets it on SIGTERM/SIGINT, e.g. ``systemctl stop``): the agent ends,
  the persona's services are left as they are (restarting the agent must not stop the application).
- A stop request from the controller (planned failback): a packet in the heartbeat format with kind
  ``stop``, signed with the persona's key, arriving on the same socket (the kernel only delivers
  datagrams from the connected controller address). It must name this persona and this boot, and
  echo a sequence this agent sent recently (a nonce), so a recorded request cannot stop a later
  boot. The agent runs each check's ``stop`` command, then ends.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from aimctl.agent import wire
from aimctl.agent.checks import AutoPilot, CheckSpec

log = logging.getLogger(__name__)

# A stop request must echo one of the last NONCE_WINDOW sequences (5 minutes at 1 s).
NONCE_WINDOW = 300
REASON_STOPPED = "agent stopped"
REASON_REQUESTED = "stop requested by controller"


class _Verdict:
    """Latest health from the checker thread; one tuple swap, so readers never see half of it."""

    def __init__(self) -> None:
        self.value: tuple[wire.Health, str] = (wire.Health.OK, "")


def _checker(pilot: AutoPilot, verdict: _Verdict, interval_s: float, done: threading.Event) -> None:
    while not done.is_set():
        try:
            verdict.value = pilot.round()
        except Exception as exc:  # a broken probe must not silence the heartbeats
            log.exception("service checks failed")
            verdict.value = (wire.Health.DEGRADED, f"checks failed: {exc}")
        done.wait(interval_s)


def _is_stop_request(data: bytes, key: bytes, persona: str, boot_id: int, seq: int) -> bool:
    try:
        req = wire.decode_verified(key, data)
    except wire.MalformedPacket as exc:
        log.warning("ignored a control packet: %s", exc)
        return False
    if req.kind != wire.KIND_STOP or req.persona != persona or req.boot_id != boot_id:
        log.warning("ignored a control packet for another persona or boot")
        return False
    if not seq - NONCE_WINDOW < req.seq <= seq:
        log.warning("ignored a stale or replayed stop request (nonce %d, now at %d)", req.seq, seq)
        return False
    return True


def _targets(controller: tuple[str, int] | Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    """One HOST:PORT, or one per controller of a cluster."""
    if len(controller) == 2 and isinstance(controller[0], str) and isinstance(controller[1], int):
        return [(controller[0], controller[1])]
    return [(str(c[0]), int(c[1])) for c in controller if isinstance(c, tuple)]


def run_agent(
    persona: str,
    controller: tuple[str, int] | Sequence[tuple[str, int]],
    key: bytes,
    interval_s: float = 1.0,
    checks: Sequence[CheckSpec | Any] = (),
    restarts: int = 3,
    stop_event: threading.Event | None = None,
    on_shutdown: Callable[[str], None] | None = None,
    boot_id: int | None = None,
    rehearsal: bool = False,
) -> str:
    """Run until stopped; return why (``REASON_STOPPED`` or ``REASON_REQUESTED``).

    ``checks`` are CheckSpecs or objects shaped like the model's ServiceCheck. ``on_shutdown(reason)``
    runs after the last heartbeat (the lab's host simulator uses it to end the persona).
    ``rehearsal`` (from the boot facts, ``aimctl.agent.bootfacts``): heartbeats are signed as a
    rehearsal's, and no service is restarted (started) by the agent: checks only report.
    """
    if not key:
        raise ValueError("empty heartbeat key")
    if interval_s <= 0:
        raise ValueError("interval must be positive")
    stop_event = stop_event or threading.Event()
    specs = [c if isinstance(c, CheckSpec) else CheckSpec.from_obj(c) for c in checks]
    pilot = AutoPilot(specs, restarts=0 if rehearsal else restarts)
    kind = wire.KIND_REHEARSAL if rehearsal else wire.KIND_HEARTBEAT
    boot = boot_id if boot_id is not None else int.from_bytes(os.urandom(8), "big")
    targets = _targets(controller)
    socks: list[socket.socket] = []
    try:
        for target in targets:
            socks.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            socks[-1].connect(target)
    except OSError:
        for s in socks:
            s.close()
        raise
    verdict = _Verdict()
    checks_done = threading.Event()
    checker = None
    if specs:
        checker = threading.Thread(
            target=_checker,
            args=(pilot, verdict, interval_s, checks_done),
            name=f"agent-checks-{persona}",
            daemon=True,
        )
        checker.start()

    seq, reason = 0, REASON_STOPPED

    def send(health: wire.Health, why: str) -> None:
        nonlocal seq
        seq += 1
        packet = wire.encode(key, wire.Heartbeat(persona, boot, seq, time.time(), health, why, kind))
        for sock in socks:
            try:
                sock.send(packet)
            except OSError as exc:  # e.g. ICMP port unreachable from a controller that is restarting
                log.debug("heartbeat not sent: %s", exc)

    log.info("agent for %s sending to %s every %.3gs", persona, ", ".join(f"{h}:{p}" for h, p in targets),
             interval_s)
    try:
        next_due = time.monotonic()
        while not stop_event.is_set():
            now = time.monotonic()
            if now >= next_due:
                send(*verdict.value)
                # Keep the cadence; after a long stall skip ahead instead of sending a burst.
                next_due = max(next_due + interval_s, now)
                continue
            # Wake at least every 0.2 s so a set stop_event is seen promptly.
            ready, _, _ = select.select(socks, [], [], min(next_due - now, 0.2))
            if not ready:
                continue
            try:
                data = ready[0].recv(wire.MAX_LEN + 1)
            except OSError:
                continue
            if _is_stop_request(data, key, persona, boot, seq):
                reason = REASON_REQUESTED
                log.warning("%s: %s", persona, reason)
                pilot.stop_services()
                break
        send(wire.Health.STOPPED, reason)
    finally:
        checks_done.set()
        for sock in socks:
            sock.close()
        if checker is not None:
            checker.join(timeout=1.0)
    if on_shutdown is not None:
        on_shutdown(reason)
    return reason
