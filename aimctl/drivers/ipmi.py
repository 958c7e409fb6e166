"""IPMI power (and next-boot device) over pyghmi, with read-back.

pyghmi's own waits are long and not configurable: a login to a silent BMC gives up after ~5 s and
a command on an established session that stops answering can take ~30 s while the session tries
to log in again. Every call therefore runs on a short-lived worker thread and the caller waits at
most ``timeout_s`` (or what is left of a deadline): an unanswered BMC is reported Unreachable on
time, and the stuck session is killed in pyghmi so the next call logs in afresh.

pyghmi keeps idle sessions alive from whichever thread next waits for packets, and a keepalive
to a BMC that went away blocks that thread for seconds (another driver's poll, or a whole loop).
So sessions made here are taken off pyghmi's keepalive list; a session idle for longer than
``IDLE_RELOGIN_S`` is logged out and replaced by a fresh login (~6 ms) on the next call.

pyghmi quirk (lost wake-up): a reply that lands before the caller starts waiting is noticed
only when the retransmit timer fires (0.5-1.0 s; ~2 % of calls on localhost). Power is read and
set with the raw chassis commands (IPMI 2.0 "Get Chassis Status" / "Chassis Control") and a
``FIRST_WAIT_S`` first-reply timer, which bounds that stall; a BMC slower than that only gets
the same idempotent request twice.

pyghmi quirk (deadlock, found by the chaos soak): two module locks, KEEPALIVE_SESSIONS and
WAITING_SESSIONS, are taken in opposite orders on two paths — ``send_payload`` holds KEEPALIVE and
``_xmit_packet`` then takes WAITING, while a reply wait (``awaitresponse``/``wait_for_rsp``) holds
WAITING and a retransmit (``_timedout`` -> ``send_payload``) then takes KEEPALIVE. With several
threads talking IPMI (the BMC poller's, the workflow's) and one BMC not answering, every pyghmi
call in the process can block for good. Both names are made to point at one re-entrant lock (at
import, before any session exists): the two paths then cannot cross. And whatever pyghmi does, a
caller never waits longer than its timeout: killing a stuck session runs on a worker too.

pyghmi quirk: it shares one session per BMC and credentials, but compares the stored (bytes)
user and password with the ones given; with str credentials nothing ever matches, the
half-registered session of an earlier login is handed out again (and, if it is established,
waited on forever), and failed logins are never forgotten. Credentials are passed as bytes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from pyghmi import exceptions as pyghmi_exc
from pyghmi.ipmi import command as ipmi_command
from pyghmi.ipmi.private import session as ipmi_session
from pyghmi.ipmi.private import util as ipmi_util

from aimctl import secrets
from aimctl.drivers.powerpoll import confirm_power
from aimctl.drivers.protocols import PowerState
from aimctl.errors import AuthFailed, DriverError, Rejected, Unreachable

log = logging.getLogger(__name__)
T = TypeVar("T")

# pyghmi error texts, by what they mean for an operator
AUTH_ERRORS = ("Incorrect password", "Unauthorized name", "Unauthorized role", "Invalid role", "privilege")
TRANSPORT_ERRORS = (
    "timeout",
    "None",
    "no longer connected",
    "failed to initialize",
    "Logged out",
    "transmit",
)
# our boot-device words -> pyghmi's (IPMI "Set System Boot Options" boot flags)
BOOT_DEVICES = {"network": "network", "disk": "hd", "default": "default", "cd": "optical", "setup": "setup"}
BOOT_DEVICES_BACK = {v: k for k, v in BOOT_DEVICES.items()}
# One lock for both of pyghmi's session tables (see the module docstring: lock-order deadlock).
ipmi_session.WAITING_SESSIONS = ipmi_session.KEEPALIVE_SESSIONS
# BMCs drop idle sessions after ~60 s (IPMI default); log in again well before that
IDLE_RELOGIN_S = 20.0
FIRST_WAIT_S = 0.1
# IPMI 2.0 section 28: netfn chassis (0); Get Chassis Status = 1; Chassis Control = 2 (0 down, 1 up)
NETFN_CHASSIS, CMD_STATUS, CMD_CONTROL = 0x00, 0x01, 0x02
CONTROL_FOR = {PowerState.OFF: 0x00, PowerState.ON: 0x01}


class IpmiPower:
    """``Power`` over IPMI chassis control; also sets/reads the next boot device (for iPXE)."""

    def __init__(
        self,
        address: str,
        port: int = 623,
        username: str = "",
        password: str = "",
        *,
        timeout_s: float = 5.0,
        poll_s: float = 0.05,
        name: str | None = None,
    ) -> None:
        self.address, self.port = address, port
        self.device = name or f"{address}:{port}"
        self._username, self._password = username, password
        secrets.register(password)
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self._lock = threading.Lock()
        self._cmd: Any = None

    # --- Power -----------------------------------------------------------------------------
    def state(self) -> PowerState:
        return self._read(self.timeout_s)

    def off(self, deadline_s: float = 60.0) -> None:
        self._drive(PowerState.OFF, deadline_s)

    def on(self, deadline_s: float = 60.0) -> None:
        self._drive(PowerState.ON, deadline_s)

    # --- next boot device --------------------------------------------------------------------
    def set_bootdev(self, device: str) -> None:
        if device not in BOOT_DEVICES:
            raise Rejected(self.device, f"unknown boot device {device!r} (known: {', '.join(BOOT_DEVICES)})")
        result = self._call("set boot device", lambda c: c.set_bootdev(BOOT_DEVICES[device]), self.timeout_s)
        if isinstance(result, dict) and "error" in result:
            raise Rejected(self.device, f"set boot device {device}: {secrets.mask(str(result['error']))}")

    def get_bootdev(self) -> str:
        result = self._call("read boot device", lambda c: c.get_bootdev(), self.timeout_s)
        raw = str(result.get("bootdev", "")) if isinstance(result, dict) else ""
        return BOOT_DEVICES_BACK.get(raw, raw or "unknown")

    # --- internals -----------------------------------------------------------------------------
    def _read(self, timeout: float) -> PowerState:
        rsp = self._call("read power state", lambda c: _raw(c, CMD_STATUS, ()), timeout)
        data = rsp.get("data") or b""
        if not data:
            return PowerState.UNKNOWN
        return PowerState.ON if data[0] & 0x01 else PowerState.OFF  # byte 1 bit 0: power is on

    def _drive(self, want: PowerState, deadline_s: float) -> None:
        deadline = time.monotonic() + deadline_s

        def left() -> float:
            return max(0.05, min(self.timeout_s, deadline - time.monotonic()))

        if self._read(left()) == want:
            return  # idempotent: already there, nothing sent
        started = time.monotonic()
        self._call(f"power {want.value}", lambda c: _raw(c, CMD_CONTROL, (CONTROL_FOR[want],)), left())
        confirm_power(
            self.device,
            want,
            lambda: self._read(left()),
            deadline=deadline,
            started=started,
            poll_s=self.poll_s,
            command="Chassis Control",
        )

    def _call(self, what: str, fn: Callable[[Any], T], timeout: float) -> T:
        box: dict[str, Any] = {}
        done = threading.Event()

        def work() -> None:
            try:
                cmd = self._command()
                box["value"] = fn(cmd)
                # on the session, not the driver: pyghmi shares a session between drivers (e.g. the
                # BMC poller's and the workflow's), and one idle driver must not log out a busy one
                cmd.ipmi_session.aimctl_last_ok = time.monotonic()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread, translated there
                box["error"] = exc
            finally:
                done.set()

        threading.Thread(target=work, name=f"ipmi-{self.device}", daemon=True).start()
        if not done.wait(timeout):
            self._abandon_bounded()
            raise Unreachable(self.device, f"{what}: no answer within {timeout:.1f}s")
        if "error" in box:
            err = self._translate(box["error"], what)
            if isinstance(err, Unreachable):
                self._abandon_bounded()
            raise err from None
        value: T = box["value"]
        return value

    def _command(self) -> Any:
        # The lock is never held across network I/O: a caller that gave up must be able to
        # ``_abandon`` at once while a login to a silent BMC is still waiting in pyghmi.
        with self._lock:
            cmd = self._cmd
        idle = time.monotonic() - getattr(cmd.ipmi_session, "aimctl_last_ok", 0.0) if cmd is not None else 0.0
        if cmd is not None and idle > IDLE_RELOGIN_S:
            with self._lock:
                self._cmd = None
            _logout(cmd.ipmi_session)  # frees the BMC's session slot; we run on a bounded worker
            cmd = None
        if cmd is not None and not cmd.ipmi_session.broken:
            return cmd
        cmd = self._login()  # concurrent logins are harmless: pyghmi shares one session per BMC
        with self._lock:
            self._cmd = cmd
        return cmd

    def _login(self) -> Any:
        # bytes credentials: see the module docstring (pyghmi's session sharing compares bytes)
        user, password = self._username.encode(), self._password.encode()
        for attempt in (1, 2):
            try:
                cmd = ipmi_command.Command(bmc=self.address, userid=user, password=password, port=self.port)
                break
            except AttributeError:
                # pyghmi race: another thread marked the session broken a moment before storing
                # the error text, and the constructor read the missing text. A second try gets
                # the BMC's real answer (a refused password is answered in milliseconds).
                if attempt == 2:
                    raise pyghmi_exc.IpmiException("Session failed to initialize") from None
        sess = cmd.ipmi_session
        if sess.broken:
            raise pyghmi_exc.IpmiException(getattr(sess, "errormsg", None) or "Session failed to initialize")
        with ipmi_util.protect(ipmi_session.KEEPALIVE_SESSIONS):
            ipmi_session.Session.keepalive_sessions.pop(sess, None)
        sess.aimctl_last_ok = time.monotonic()
        return cmd

    def _abandon_bounded(self) -> None:
        """``_abandon`` on a worker, waited for at most ``timeout_s``: killing a session goes through
        pyghmi's locks, and a caller that gave up on a BMC must not then wait on pyghmi instead."""
        t = threading.Thread(target=self._abandon, name=f"ipmi-abandon-{self.device}", daemon=True)
        t.start()
        t.join(self.timeout_s)
        if t.is_alive():
            log.error("%s: dropping a stuck IPMI session did not finish in %.1fs; going on without it",
                      self.device, self.timeout_s)

    def _abandon(self) -> None:
        """Kill the current session so the next call logs in afresh.

        pyghmi routes packets by (BMC address, local socket): two live sessions to one BMC on one
        socket confuse both ends, so the old one must be *dead* (not just skipped) before a new
        one starts. ``logged = 0`` first keeps ``_mark_broken`` from sending a close-session
        request to a BMC that does not answer."""
        with self._lock:
            cmd, self._cmd = self._cmd, None
        if cmd is not None:
            _kill(cmd.ipmi_session)
        # A login still waiting on a silent BMC would be handed to the next Command() and waited on.
        for sess in self._pyghmi_sessions():
            _kill(sess)

    def _pyghmi_sessions(self) -> list[Any]:
        """pyghmi's client sessions to this BMC with these credentials (established or logging in)."""
        user, password = self._username.encode(), self._password.encode()
        found: dict[int, Any] = {}
        tables = list(ipmi_session.Session.bmc_handlers.values()) + [ipmi_session.Session.initting_sessions]
        for table in tables:
            if not isinstance(table, dict):
                continue
            for sess in list(table.values()):
                if (
                    not getattr(sess, "servermode", True)
                    and getattr(sess, "bmc", None) == self.address
                    and getattr(sess, "port", None) == self.port
                    and getattr(sess, "userid", None) == user
                    and getattr(sess, "password", None) == password
                ):
                    found[id(sess)] = sess
        return list(found.values())

    def close(self) -> None:
        """Log out; the next call logs in again."""
        with self._lock:
            cmd, self._cmd = self._cmd, None
        if cmd is not None:
            self._call_bounded_logout(cmd.ipmi_session)

    def _call_bounded_logout(self, sess: Any) -> None:
        t = threading.Thread(target=_logout, args=(sess,), name=f"ipmi-logout-{self.device}", daemon=True)
        t.start()
        t.join(self.timeout_s)
        if t.is_alive():
            _kill(sess)

    def _translate(self, exc: BaseException, what: str) -> DriverError:
        text = secrets.mask(str(exc))[:300]
        if isinstance(exc, pyghmi_exc.IpmiException):
            if any(s.lower() in text.lower() for s in AUTH_ERRORS):
                return AuthFailed(self.device, f"{what}: BMC refused the credentials ({text})")
            if getattr(exc, "ipmicode", 0) not in (0, 0xFFFF):
                return Rejected(self.device, f"{what}: BMC answered completion code {exc.ipmicode:#x} ({text})")
            if any(s.lower() in text.lower() for s in TRANSPORT_ERRORS):
                return Unreachable(self.device, f"{what}: no usable answer ({text})")
            return Rejected(self.device, f"{what}: {text}")
        if isinstance(exc, OSError):
            return Unreachable(self.device, f"{what}: {text}")
        return DriverError(self.device, f"{what}: unexpected {type(exc).__name__}: {text}")


def _raw(cmd: Any, command: int, data: tuple[int, ...]) -> dict[str, Any]:
    rsp = cmd.raw_command(netfn=NETFN_CHASSIS, command=command, data=data, timeout=FIRST_WAIT_S)
    if "error" in rsp:
        raise pyghmi_exc.IpmiException(rsp["error"], rsp.get("code", 0))
    return dict(rsp)


def _logout(sess: Any) -> None:
    try:
        sess.logout()
    except Exception:  # noqa: BLE001 - the session is being dropped either way
        _kill(sess)


def _kill(sess: Any) -> None:
    try:
        sess.logged = 0
        sess._mark_broken("session abandoned: the BMC did not answer in time")
    except Exception:  # noqa: BLE001 - pyghmi internals; at worst pyghmi times the session out itself
        sess.broken = True
