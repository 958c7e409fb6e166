"""Redfish power over sushy, with read-back (fence-agents style: act, then poll until observed).

One ``RedfishClient`` per BMC keeps its sushy root (HTTP session, Redfish session or Basic auth)
and its System object between calls, so a poll is one GET. sushy and requests exceptions are
translated here into ``aimctl.errors``; nothing from either library escapes, and every message
goes through ``secrets.mask``.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import requests
import sushy
from sushy import exceptions as sushy_exc

from aimctl import secrets
from aimctl.drivers.powerpoll import confirm_power
from aimctl.drivers.protocols import PowerState
from aimctl.errors import AuthFailed, DriverError, Rejected, Unreachable

log = logging.getLogger(__name__)
T = TypeVar("T")

# Redfish ComputerSystem.PowerState -> our words. Transitional states are not "off": a fence
# needs the server to *read* Off. Paused servers are powered.
POWER_STATES: dict[sushy.PowerState | None, PowerState] = {
    sushy.PowerState.ON: PowerState.ON,
    sushy.PowerState.OFF: PowerState.OFF,
    sushy.PowerState.PAUSED: PowerState.ON,
    sushy.PowerState.POWERING_ON: PowerState.UNKNOWN,
    sushy.PowerState.POWERING_OFF: PowerState.UNKNOWN,
    None: PowerState.UNKNOWN,
}
RESET_FOR: dict[PowerState, sushy.ResetType] = {
    PowerState.OFF: sushy.ResetType.FORCE_OFF,
    PowerState.ON: sushy.ResetType.ON,
}


def _base_url(address: str) -> str:
    address = address.rstrip("/")
    return address if "://" in address else f"https://{address}"


class RedfishClient:
    """A reusable connection to one BMC and one of its systems, with errors translated."""

    def __init__(
        self,
        address: str,
        system_id_or_path: str,
        username: str,
        password: str,
        verify_tls: bool | str = True,
        timeout_s: float = 5.0,
        name: str | None = None,
    ) -> None:
        self.url = _base_url(address)
        self.system_path = (
            system_id_or_path if system_id_or_path.startswith("/") else f"/redfish/v1/Systems/{system_id_or_path}"
        )
        self.device = name or self.url
        self._username = username
        self._password = password
        secrets.register(password)
        # requests' ``verify``: True (the system's CAs), a CA bundle path, or False (an explicit,
        # per-BMC opt-out in the inventory; never the default).
        self._verify = verify_tls
        self._timeout = timeout_s
        self._lock = threading.Lock()
        self._root: sushy.Sushy | None = None
        self._system: Any = None

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` (which uses sushy) and translate whatever it raises."""
        try:
            return fn()
        except DriverError:
            raise
        except Exception as exc:  # noqa: BLE001 - translate everything at the edge; see _translate
            err = self._translate(exc, what)
            if isinstance(err, Unreachable):
                self._forget()  # reconnect next time: the BMC may have restarted
            raise err from None

    def root(self) -> sushy.Sushy:
        with self._lock:
            if self._root is None:
                self._root = sushy.Sushy(
                    self.url,
                    username=self._username,
                    password=self._password,
                    verify=self._verify,
                    # sushy retries connection errors 3x with 2 s pauses unless told otherwise; one
                    # try keeps "BMC down" fast. Retrying is the caller's poll loop.
                    server_side_retries=1,
                    server_side_retries_delay=0.1,
                    read_timeout=self._timeout,
                    connect_timeout=self._timeout,
                )
            return self._root

    def system(self, refresh: bool) -> Any:
        root = self.root()
        with self._lock:
            if self._system is None:
                self._system = root.get_system(self.system_path)
            elif refresh:
                self._system.refresh(force=True)
            return self._system

    def get_json(self, path: str) -> dict[str, Any]:
        body = self.root()._conn.get(path=path).json()  # sushy has no model for every resource we read
        return body if isinstance(body, dict) else {}

    def patch(self, path: str, body: dict[str, Any]) -> None:
        self.root()._conn.patch(path=path, data=body)

    def _forget(self) -> None:
        with self._lock:
            self._root, self._system = None, None

    def _translate(self, exc: Exception, what: str) -> DriverError:
        detail = secrets.mask(str(exc))[:300]
        if isinstance(exc, sushy_exc.AccessError):
            return AuthFailed(self.device, f"{what}: BMC refused the credentials (HTTP {exc.status_code})")
        if _is_tls_failure(exc):
            return Unreachable(self.device, f"{what}: TLS to {self.url} failed ({_tls_reason(exc)}); the BMC's "
                                            "certificate is verified: give its CA (bmc.ca_file) or, knowingly, "
                                            "bmc.verify_tls: false")
        if isinstance(exc, sushy_exc.ConnectionError | requests.RequestException | OSError):
            return Unreachable(self.device, f"{what}: no answer from {self.url}: {detail}")
        if isinstance(exc, sushy_exc.HTTPError):
            if exc.status_code in (502, 503, 504):
                return Unreachable(self.device, f"{what}: BMC unavailable (HTTP {exc.status_code})")
            return Rejected(self.device, f"{what}: BMC answered HTTP {exc.status_code}: {detail}")
        return DriverError(self.device, f"{what}: unexpected {type(exc).__name__}: {detail}")


def _is_tls_failure(exc: BaseException) -> bool:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ssl.SSLError | requests.exceptions.SSLError):
            return True
        cur = cur.__cause__ or cur.__context__ or (cur.args[0] if cur.args and isinstance(cur.args[0], BaseException)
                                                   else None)
    return "CERTIFICATE_VERIFY_FAILED" in str(exc) or "SSLError" in str(exc)


def _tls_reason(exc: BaseException) -> str:
    text = str(exc)
    for marker in ("certificate verify failed: ", "SSLError("):
        if marker in text:
            return text.split(marker, 1)[1].split(")")[0].split("'")[0].strip()[:120] or "handshake refused"
    return "handshake refused"


class RedfishPower:
    """``Power`` over Redfish: ComputerSystem.Reset, then poll PowerState until it reads the goal."""

    def __init__(
        self,
        address: str,
        system_id_or_path: str,
        username: str,
        password: str,
        verify_tls: bool | str = True,
        timeout_s: float = 5.0,
        poll_s: float = 0.05,
        name: str | None = None,
    ) -> None:
        self.client = RedfishClient(address, system_id_or_path, username, password, verify_tls, timeout_s, name)
        self.device = self.client.device
        self.poll_s = poll_s

    def state(self) -> PowerState:
        return self._read(refresh=True)

    def off(self, deadline_s: float = 60.0) -> None:
        self._drive(PowerState.OFF, deadline_s)

    def on(self, deadline_s: float = 60.0) -> None:
        self._drive(PowerState.ON, deadline_s)

    def _read(self, refresh: bool) -> PowerState:
        system = self.client.call("read power state", lambda: self.client.system(refresh))
        return POWER_STATES.get(system.power_state, PowerState.UNKNOWN)

    def _drive(self, want: PowerState, deadline_s: float) -> None:
        deadline = time.monotonic() + deadline_s
        if self._read(refresh=True) == want:
            return  # idempotent: nothing to do, nothing sent
        reset = RESET_FOR[want]
        started = time.monotonic()
        self.client.call(f"reset {reset.value}", lambda: self.client.system(False).reset_system(reset))
        confirm_power(
            self.device,
            want,
            lambda: self._read(refresh=True),
            deadline=deadline,
            started=started,
            poll_s=self.poll_s,
            command=reset.value,
        )
