"""IPMI power (and next-boot device) over pyghmi, with read-back.

pyghmi's own waits are long and not configurable: a login to a silent BMC gives up after ~5 s and
a command on an established session that stops answering can take ~30 s while the session tries
to log in again. Every call therefore runs on a short-lived worker thread and the caller waits at
most ``timeout_s`` (or what is left of a deadline): an unanswered BMC is reported Unreachable on
time, and the stuck session is marked broken so the next call logs in afresh.

pyghmi quirk: after a failed login, the broken session stays in ``Session.initting_sessions``
(its key is built from the str user name, the removal from the bytes one) and the next
``Command()`` with the same credentials silently gets that broken session back. ``_login`` drops
such leftovers and checks the session it got.
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

from aimctl import secrets
from aimctl.drivers.protocols import PowerState
from aimctl.errors import AuthFailed, DriverError, Rejected, StateMismatch, Timeout, Unreachable

log = logging.getLogger(__name__)
T = TypeVar("T")

POWER_STATES = {"on": PowerState.ON, "off": PowerState.OFF}
# pyghmi error texts, by what they mean for an operator
AUTH_ERRORS = ("Incorrect password", "Unauthorized name", "Unauthorized role", "Invalid role", "privilege")
TRANSPORT_ERRORS = ("timeout", "None", "no longer connected", "failed to initialize", "Logged out", "transmit")
# our boot-device words -> pyghmi's (IPMI "Set System Boot Options" boot flags)
BOOT_DEVICES = {"network": "network", "disk": "hd", "default": "default", "cd": "optical", "setup": "setup"}
BOOT_DEVICES_BACK = {v: k for k, v in BOOT_DEVICES.items()}


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
        result = self._call("read power state", lambda c: c.get_power(), timeout)
        return POWER_STATES.get(str(result.get("powerstate")), PowerState.UNKNOWN)

    def _drive(self, want: PowerState, deadline_s: float) -> None:
        deadline = time.monotonic() + deadline_s

        def left() -> float:
            return max(0.05, min(self.timeout_s, deadline - time.monotonic()))

        if self._read(left()) == want:
            return  # idempotent: already there, nothing sent
        started = time.monotonic()
        # wait=False: pyghmi would otherwise poll for up to 300 s with its own pauses
        self._call(f"power {want.value}", lambda c: c.set_power(want.value, wait=False), left())
        last: PowerState | None = None
        last_err: DriverError | None = None
        while True:
            try:
                last, last_err = self._read(left()), None
            except (Unreachable, Rejected) as exc:
                last_err = exc
            if last == want and last_err is None:
                log.info("%s: power %s confirmed after %.2fs", self.device, want.value, time.monotonic() - started)
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(self.poll_s, remaining))
        took = time.monotonic() - started
        if last_err is not None and last is None:
            raise Unreachable(self.device, f"power {want.value}: command sent, then no answer for {took:.1f}s")
        opposite = PowerState.ON if want == PowerState.OFF else PowerState.OFF
        if last == opposite:
            raise StateMismatch(
                self.device, f"power {want.value}: BMC accepted the command but still reads {opposite.value} after {took:.1f}s"
            )
        raise Timeout(self.device, f"power {want.value}: not confirmed after {took:.1f}s (last read: {last})")

    def _call(self, what: str, fn: Callable[[Any], T], timeout: float) -> T:
        box: dict[str, Any] = {}
        done = threading.Event()

        def work() -> None:
            try:
                box["value"] = fn(self._command())
            except BaseException as exc:  # handed to the caller's thread, translated there
                box["error"] = exc
            finally:
                done.set()

        threading.Thread(target=work, name=f"ipmi-{self.device}", daemon=True).start()
        if not done.wait(timeout):
            self._abandon()
            raise Unreachable(self.device, f"{what}: no answer within {timeout:.1f}s")
        if "error" in box:
            err = self._translate(box["error"], what)
            if isinstance(err, Unreachable):
                self._abandon()
            raise err from None
        value: T = box["value"]
        return value

    def _command(self) -> Any:
        # The lock is never held across network I/O: a caller that gave up must be able to
        # ``_abandon`` at once while a login to a silent BMC is still waiting in pyghmi.
        with self._lock:
            cmd = self._cmd
        if cmd is not None and not cmd.ipmi_session.broken:
            return cmd
        cmd = self._login()  # concurrent logins are harmless: pyghmi shares one session per BMC
        with self._lock:
            self._cmd = cmd
        return cmd

    def _login(self) -> Any:
        key = (self.address, self._username, self._password, self.port, None)
        stale = ipmi_session.Session.initting_sessions.get(key)
        if stale is not None and getattr(stale, "broken", False):
            ipmi_session.Session.initting_sessions.pop(key, None)
        try:
            cmd = ipmi_command.Command(
                bmc=self.address, userid=self._username, password=self._password, port=self.port
            )
        except AttributeError:
            # pyghmi race: another thread marked the session broken (logout) a moment before it
            # stored the error text, and the constructor read the missing text. Ask the session.
            raise pyghmi_exc.IpmiException(_login_error(key)) from None
        if cmd.ipmi_session.broken:
            raise pyghmi_exc.IpmiException(getattr(cmd.ipmi_session, "errormsg", None) or "Session failed to initialize")
        return cmd

    def _abandon(self) -> None:
        """Stop reusing a session that did not answer: pyghmi skips broken sessions on the next login."""
        with self._lock:
            cmd, self._cmd = self._cmd, None
        if cmd is not None:
            cmd.ipmi_session.broken = True

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


def _login_error(key: tuple[Any, ...], wait_s: float = 0.2) -> str:
    """The error text of a failed login's session, once pyghmi has stored it."""
    deadline = time.monotonic() + wait_s
    while True:
        msg = getattr(ipmi_session.Session.initting_sessions.get(key), "errormsg", None)
        if msg or time.monotonic() >= deadline:
            return str(msg or "Session failed to initialize")
        time.sleep(0.005)
