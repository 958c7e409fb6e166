"""The lab's fault catalogue: every way the lab can break, what each names and takes, and the
machinery behind the faults that keep acting while they are on (storms, flaps, stalls).

``lab.ops.fault`` applies them; ``aimctl lab fault KIND TARGET [--clear] [options]`` and the test
fixtures call it through the lab's control API; the chaos soak (``lab.chaos``) draws from it.
Each kind says what its target is, which options it takes (with their bounds), and whether it is an
event (``one_shot``: nothing to clear) or a state that lasts until cleared or the lab is reset.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aimctl.errors import OperatorError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Param:
    name: str  # as the control API and the fixtures spell it
    option: str  # as ``aimctl lab fault`` spells it
    lo: float
    hi: float
    integer: bool = False
    help: str = ""


AFTER = Param("after", "--after", 0, 10000, True, "config lines each session still gets")
DELAY = Param("delay_s", "--delay", 0.01, 120, help="seconds")
PERCENT = Param("percent", "--percent", 0.1, 50, help="share of packets dropped")
PERIOD = Param("period_s", "--period", 0.2, 60, help="seconds per down+up cycle")
RATE = Param("rate", "--rate", 1, 2000, True, "traps a second")
SECONDS = Param("seconds", "--seconds", 0.1, 600, help="how long (default: until cleared)")
KILL_DELAY = Param("delay_s", "--delay", 0, 600, help="seconds from now")


@dataclass(frozen=True)
class Kind:
    name: str
    target: str  # what the target names
    help: str
    params: tuple[Param, ...] = ()
    one_shot: bool = False  # an event: applied once, nothing to clear


CATALOGUE: tuple[Kind, ...] = (
    Kind("power-button", "SERVER[,SERVER...]", "hard off now, as if the power button were held (an event; "
                                               "--clear powers the body on)", one_shot=True),
    Kind("bmc-down", "SERVER", "the BMC does not answer"),
    Kind("bmc-slow", "SERVER", "every BMC request waits --delay seconds (default 0.5); past the drivers' timeout "
                               "nothing answers in time", (DELAY,)),
    Kind("bmc-lies", "SERVER", "the BMC reads power On whatever the truth"),
    Kind("bmc-auth", "SERVER", "the BMC's credentials were changed: every login and request is refused"),
    Kind("bmc-alert", "SERVER", "the BMC sends its alert trap (IPMI PET: OS critical stop) naming the body "
                                "(an event)", one_shot=True),
    Kind("bmc-phantom", "SERVER", "the BMC takes power commands and reads back what was asked; the power never "
                                  "changes"),
    Kind("switch-hang", "SWITCH", "each session stops answering after --after config lines (default 0)", (AFTER,)),
    Kind("storage-error", "STORAGE", "every storage management command fails; iSCSI I/O goes on"),
    Kind("storage-step-error", "SERVER", "storage-error, switched on the moment a controller clears SERVER's boot "
                                         "config in its fence: the next storage command (the storage step's) "
                                         "fails (Redfish bodies)"),
    Kind("scn-partition", "SERVER", "the SCN drops the body's packets: alive, but unreachable"),
    Kind("scn-loss", "SERVER|all", "the SCN drops --percent of the body's packets at random (default 3)", (PERCENT,)),
    Kind("scn-flap", "SERVER", "the body's SCN ports go down and up, half of --period each (default 1 s), "
                               "with linkDown/linkUp traps", (PERIOD,)),
    Kind("link-down", "SERVER[:CHANNEL]", "ports go down (all of the body's, or one channel); linkDown traps"),
    Kind("trap-storm", "SWITCH|all", "the switch sends --rate traps a second (default 100): link flaps on random "
                                     "ports, unknown ports, a wrong community", (RATE,)),
    Kind("boot-fail", "SERVER", "the OS does not come up after power-on"),
    Kind("service-fail", "SERVER", "the persona's service on this body stops answering; restarts do not help"),
    Kind("dag-copy-failed", "MEMBER[:DB]", "the member's DAG database copies (or one) stay Failed; a resume "
                                           "fails them again"),
    Kind("switch-reject", "SWITCH", "the first config command of each session is refused with the OS's own error"),
    Kind("health-degrade", "SERVER[:critical]", "the BMC reports the body's health Warning (or Critical)"),
    Kind("event-log", "SERVER[:EVENT]", "the BMC logs a hardware event (default correctable-ecc-limit)"),
    Kind("hw-mismatch", "SERVER", "a DIMM drops out: the body no longer has what the inventory says"),
    Kind("link-flap", "SERVER[:CHANNEL]", "four linkDown/linkUp pairs on one port (default the last channel, not "
                                          "the SCN: flaps, not death; an event)", one_shot=True),
    Kind("vlan-change", "SERVER:CHANNEL", "someone edits a port behind the controller's back (an event)",
         one_shot=True),
    Kind("acl-add", "PERSONA", "an intruder initiator is bound to the persona's boot target"),
    Kind("controller-kill", "controller|MEMBER", "SIGKILL the lab's single controller (its process group), now or "
                                                 "after --delay seconds (whatever runs it starts it again); or a "
                                                 "cluster member (--clear starts it again)", (KILL_DELAY,)),
    Kind("controller-pause", "controller|MEMBER", "SIGSTOP the controller (a stall) until cleared, or for --seconds",
         (SECONDS,)),
    Kind("etcd-member-kill", "MEMBER", "kill a member of the lab's etcd cluster (--clear restarts it)"),
    Kind("controller-etcd-cut", "MEMBER", "cut a cluster controller off etcd (its relays drop everything)"),
)
KINDS: dict[str, Kind] = {k.name: k for k in CATALOGUE}
NAMES: tuple[str, ...] = tuple(KINDS)


def check_params(kind: str, given: Mapping[str, Any]) -> dict[str, float]:
    """The options a fault was given, checked against its kind: unknown kind, an option it does not
    take, a value that is not a number or out of bounds are each one clear error."""
    k = KINDS.get(kind)
    if k is None:
        raise OperatorError(f"unknown fault {kind!r} (one of: {', '.join(NAMES)})")
    allowed = {p.name: p for p in k.params}
    out: dict[str, float] = {}
    for name, value in given.items():
        if value is None:
            continue
        p = allowed.get(name)
        if p is None:
            takes = ", ".join(x.option for x in k.params) or "no options"
            raise OperatorError(f"{kind} does not take {name!r} (it takes {takes})")
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise OperatorError(f"{kind} {p.option}: want a number, got {value!r}")
        try:
            v = float(value)
        except ValueError:
            raise OperatorError(f"{kind} {p.option}: want a number, got {value!r}") from None
        if not p.lo <= v <= p.hi or (p.integer and v != int(v)):
            what = "a whole number" if p.integer else "a number"
            raise OperatorError(f"{kind} {p.option}: want {what} in [{p.lo:g}, {p.hi:g}], got {value!r}")
        out[name] = int(v) if p.integer else v
    return out


# ---------------------------------------------------------------------------- the controller process


def controller_pid(ports: Mapping[str, int]) -> int:
    """The process that holds the controller's heartbeat port (or its API port): the controller
    this lab's overlay names, however it was started."""
    import psutil

    for c in psutil.net_connections(kind="inet4"):
        if c.pid and c.laddr and c.laddr.ip == "127.0.0.1" and (
                (c.type == socket.SOCK_DGRAM and c.laddr.port == ports["heartbeat"]) or
                (c.type == socket.SOCK_STREAM and c.laddr.port == ports["api"] and c.status == psutil.CONN_LISTEN)):
            return int(c.pid)
    raise OperatorError(f"no controller listens on 127.0.0.1:{ports['heartbeat']} (heartbeats) "
                        f"or :{ports['api']} (API)")


def signal_controller(pid: int, sig: int) -> None:
    """Signal the controller, and its children with it when it leads its own process group (as
    systemd's KillMode=control-group would); never a group it merely belongs to."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


class Stall:
    """``controller-pause``: stopped now, continued when cleared (or after ``seconds``)."""

    def __init__(self, pid: int, seconds: float | None) -> None:
        self.pid = pid
        signal_controller(pid, signal.SIGSTOP)
        self._timer: threading.Timer | None = None
        if seconds is not None:
            self._timer = threading.Timer(seconds, self.stop)
            self._timer.daemon = True
            self._timer.start()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        signal_controller(self.pid, signal.SIGCONT)


# ---------------------------------------------------------------------------- faults that keep acting


class Repeating:
    """A thread that calls ``tick()`` every ``every_s`` until stopped, then ``done()`` once."""

    def __init__(self, name: str, every_s: float, tick: Callable[[], None], done: Callable[[], None]) -> None:
        self._stop = threading.Event()
        self._every, self._tick, self._done = every_s, tick, done
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            try:
                self._tick()
            except Exception:  # noqa: BLE001 - a fault that breaks keeps the lab running
                log.exception("%s", self._thread.name)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._done()


@dataclass(frozen=True)
class Port:
    switch: str
    port: str
    ifindex: int


def trap_storm(ports: list[Port], rate: int, link: Callable[[Port, bool], None],
               bogus: Callable[[Port], None], truth: Callable[[Port], bool], seed: int | None = None) -> Repeating:
    """linkDown/linkUp at ``rate`` a second on random ports of the storm's switches, one in ten for a
    port the switch does not have and one in twenty with a community nobody configured. Stopped, it
    tells the truth about every port once, so the controller's view of the links is right again."""
    rng = random.Random(seed)
    batch = max(1, rate // 20)  # 20 wake-ups a second at most

    def tick() -> None:
        for _ in range(batch):
            p = rng.choice(ports)
            r = rng.random()
            if r < 0.1:
                bogus(Port(p.switch, "?", 99000 + rng.randrange(999)))
            elif r < 0.15:
                bogus(p)
            else:
                link(p, rng.random() < 0.5)

    def done() -> None:
        for p in ports:
            link(p, truth(p))

    return Repeating("lab-trap-storm", batch / rate, tick, done)


def flap(ports: list[Port], period_s: float, set_up: Callable[[Port, bool], None]) -> Repeating:
    """Down for half a period, up for the other half, on every port at once; up when stopped."""
    state = {"up": True}

    def tick() -> None:
        state["up"] = not state["up"]
        for p in ports:
            set_up(p, state["up"])

    def done() -> None:
        for p in ports:
            set_up(p, True)

    return Repeating("lab-scn-flap", period_s / 2, tick, done)
