"""``SwitchPorts`` over SSH with netmiko: one session and one config session per switch and batch.

``apply`` in order: validate every value (nothing reaches a CLI unchecked, and a bad value is
refused before any connection); take the switch's lock (one session at a time: PowerConnect-class
switches refuse a second one); capture the touched ports with one ``show`` command; send every
line in one config session, checking each line's output against ``errors.txt`` and stopping at
the first refusal; read the ports back with one ``show`` and compare with the intent. On a refusal
or a mismatch it restores the captured config of the ports it touched, in the same session, reads
them back again, and raises Rejected/StateMismatch naming the switch, the port and the line.

Quarantine is an *access* port on the quarantine VLAN, not a trunk: an access port carries one
VLAN, untagged, and drops the body's tagged frames (SCN, MAPI, Replication), whereas a trunk always
keeps a native VLAN and, on several OSes, an empty allowed list means "all VLANs". Access reads
back the same way on every OS, so "quarantined" is something the read-back can prove.
"""

from __future__ import annotations

import logging
import re
import select
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paramiko
from netmiko.exceptions import NetmikoAuthenticationException, NetmikoTimeoutException, ReadTimeout

from aimctl.drivers.netmiko_quirks import PROMPT_END
from aimctl.drivers.protocols import PortIntent, PortState
from aimctl.drivers.switch_os import (
    Line,
    Observed,
    OsProfile,
    intent_from,
    load_profile,
    matches,
    render_lines,
)
from aimctl.errors import (
    AuthFailed,
    DriverError,
    Rejected,
    StateMismatch,
    Timeout,
    Unreachable,
)
from aimctl.secrets import mask, register

__all__ = ["NetmikoSwitch", "render_lines", "switch_lock"]

log = logging.getLogger(__name__)

_locks: dict[tuple[str, int], threading.Lock] = {}
_locks_guard = threading.Lock()


def switch_lock(host: str, port: int) -> threading.Lock:
    """The process-wide lock of one switch (by address, whatever name it is known by)."""
    with _locks_guard:
        return _locks.setdefault((host, port), threading.Lock())


def describe(mode: Any, vlans: Sequence[int], native: int | None = None) -> str:
    name = getattr(mode, "value", None) or "unknown mode"
    shown = "all" if len(vlans) > 64 else ",".join(str(v) for v in vlans) or "none"
    return f"{name} vlan {shown}" + (f" native {native}" if native else "")


def _same(a: PortState, b: PortState) -> bool:
    return a.mode is b.mode and set(a.vlans) == set(b.vlans) and a.native_vlan == b.native_vlan


class NetmikoSwitch:
    def __init__(self, name: str, os: str, host: str, port: int, username: str, password: str,
                 enable_password: str | None = None, connect_timeout_s: float = 10,
                 command_timeout_s: float = 10, lock_wait_s: float = 120,
                 templates_dir: Path | None = None) -> None:
        self.name, self.os, self.host, self.port = name, os, host, port
        self.profile: OsProfile = load_profile(os, str(templates_dir) if templates_dir else None)
        self._cls = self.profile.netmiko_class()
        self._username, self._password, self._enable = username, password, enable_password
        for secret in (password, enable_password):
            if secret:
                register(secret)
        self.connect_timeout_s = connect_timeout_s
        self.command_timeout_s = command_timeout_s
        self.lock_wait_s = lock_wait_s
        self.sessions_opened = 0

    def __repr__(self) -> str:
        return f"NetmikoSwitch({self.name!r}, {self.os!r}, {self.host!r}, {self.port})"

    # -- SwitchPorts ------------------------------------------------------------------------------
    def render(self, intents: list[PortIntent], current: dict[str, PortState] | None = None) -> list[str]:
        self.profile.validate(intents, self.name)
        return [ln.text for ln in self.profile.render(intents, current, self.name)]

    def read(self, ports: list[str]) -> list[PortState]:
        for p in ports:
            if not self.profile.row.valid_port(p):
                raise Rejected(self.name, f"port {p!r} is not a {self.os} port name")
        with self._session() as conn:
            seen = self._read_observed(conn, ports)
        return [seen[p].state for p in ports]

    def apply(self, intents: list[PortIntent]) -> list[PortState]:
        intents = list(intents)
        self.render(intents)  # validates values and templates before any connection
        if not intents:
            return []
        ports = [i.port for i in intents]
        with self._session() as conn:
            before = self._read_observed(conn, ports)
            lines = self.profile.render(intents, {p: o.state for p, o in before.items()}, self.name)
            failed = self._configure(conn, lines, before)
            if failed is not None:
                n, bad = failed
                line = lines[n]
                note = self._restore(conn, self._touched(lines, n), before)
                where = f"port {line.port}: " if line.port else f"ports {', '.join(ports)}: "
                raise Rejected(self.name, f"{where}line {line.text!r} was refused ({bad}); {note}")
            after = self._read_observed(conn, ports)
            wrong = [i for i in intents if not matches(i, after[i.port].state)]
            if wrong:
                note = self._restore(conn, ports, before)
                detail = "; ".join(
                    f"port {i.port}: intended {describe(i.mode, i.vlans, i.native_vlan)}, read back "
                    f"{describe(after[i.port].state.mode, after[i.port].state.vlans, after[i.port].state.native_vlan)}"
                    for i in wrong)
                raise StateMismatch(self.name, f"{detail}; {note}")
        log.info("switch %s: %d lines for %s applied in one session and read back", self.name, len(lines),
                 ", ".join(ports))
        return [after[p].state for p in ports]

    def apply_per_port(self, intents: list[PortIntent]) -> list[PortState]:
        """One SSH session per port change (the benchmark's baseline); same checks as ``apply``."""
        self.render(intents)
        return [self.apply([i])[0] for i in intents]

    # -- one session ------------------------------------------------------------------------------
    @contextmanager
    def _session(self) -> Iterator[Any]:
        lock = switch_lock(self.host, self.port)
        if not lock.acquire(timeout=self.lock_wait_s):
            raise Timeout(self.name, f"another session to {self.host}:{self.port} did not end "
                                     f"within {self.lock_wait_s:g}s")
        conn = None
        try:
            conn = self._connect()
            yield conn
            with self._mapped("closing the session"):
                conn.disconnect()
            conn = None
        finally:
            if conn is not None:
                self._drop(conn)
            lock.release()

    def _connect(self) -> Any:
        self.sessions_opened += 1
        with self._mapped(f"SSH to {self.host}:{self.port}"):
            conn = self._cls(
                host=self.host, port=self.port, username=self._username, password=self._password,
                secret=self._enable or "", conn_timeout=self.connect_timeout_s,
                auth_timeout=self.connect_timeout_s, banner_timeout=self.connect_timeout_s,
                read_timeout_override=self.command_timeout_s, use_keys=False, allow_agent=False,
                system_host_keys=False, alt_host_keys=False)
        try:
            with self._mapped("enable"):
                conn.enable()
            for cmd in self.profile.after_enable:
                with self._mapped(f"{cmd!r}"):
                    self._exchange(conn, cmd)
        except BaseException:
            self._drop(conn)
            raise
        return conn

    @staticmethod
    def _drop(conn: Any) -> None:
        """Close without the polite exit dialogue, which would wait on a hung session."""
        try:
            conn.paramiko_cleanup()
        except Exception as exc:  # noqa: BLE001 - best effort on an already broken session
            log.debug("closing a broken session: %s", exc)

    @contextmanager
    def _mapped(self, what: str) -> Iterator[None]:
        """Library exceptions -> aimctl errors, every message masked."""
        try:
            yield
        except DriverError:
            raise
        except (NetmikoAuthenticationException, paramiko.AuthenticationException):
            raise AuthFailed(self.name, mask(f"{what}: login refused for user {self._username}")) from None
        except ReadTimeout:
            raise Timeout(self.name, mask(f"{what}: no answer within {self.command_timeout_s:g}s")) from None
        except NetmikoTimeoutException as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise Unreachable(self.name, mask(f"{what}: {first}")) from None
        except ValueError as exc:
            if "enable" in str(exc).lower():
                raise AuthFailed(self.name, mask(f"{what}: the enable password was refused")) from None
            raise Rejected(self.name, mask(f"{what}: {exc}")) from None
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise Unreachable(self.name, mask(f"{what}: {type(exc).__name__}: {exc}")) from None

    def _exchange(self, conn: Any, text: str) -> str:
        """Send one line, read to the next prompt; return the output between echo and prompt.

        Waiting for the echo first drops anything stale still in the channel (a prompt left by
        session preparation would otherwise end the read at once, with an empty answer).
        """
        conn.write_channel(conn.normalize_cmd(text))
        buf, echo = self._wait_for(conn, conn.read_channel(), re.compile(re.escape(text.strip())))
        prompt = re.compile(rf"(?:^|\n){re.escape(conn.base_prompt)}[^\r\n]*{PROMPT_END}")
        buf, end = self._wait_for(conn, buf[echo.end():], prompt)
        return buf[: end.start()].replace("\r", "").strip("\n")

    def _wait_for(self, conn: Any, buf: str, pattern: re.Pattern[str]) -> tuple[str, re.Match[str]]:
        # netmiko polls every 10 ms, which is most of the time a config line takes; waiting on the
        # channel with select() answers as soon as the switch has.
        deadline = time.monotonic() + self.command_timeout_s
        while (m := pattern.search(buf)) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ReadTimeout(f"no {pattern.pattern!r} in the output")
            chan = conn.remote_conn
            if chan is None or chan.closed:
                raise EOFError("the switch closed the session")
            select.select([chan], [], [], min(left, 0.05))
            buf += conn.read_channel()
        return buf, m

    def _read_observed(self, conn: Any, ports: Sequence[str]) -> dict[str, Observed]:
        cmd = self.profile.read_command(ports, self.name)
        with self._mapped(f"{cmd!r}"):
            out = self._exchange(conn, cmd)
        bad = self.profile.refusal(out)
        if bad:
            raise Rejected(self.name, f"{cmd!r} was refused: {bad}")
        return self.profile.parse(out, ports)

    def _configure(self, conn: Any, lines: Sequence[Line], before: dict[str, Observed]) -> tuple[int, str] | None:
        """Send ``lines`` in one config session; stop at the first refused line (index, output)."""
        with self._mapped("entering configuration mode"):
            conn.config_mode(config_command=self.profile.config_enter)
        for n, ln in enumerate(lines):
            try:
                out = self._exchange(conn, ln.text)
            except ReadTimeout:
                was = "; ".join(f"{p}: {describe(o.state.mode, o.state.vlans, o.state.native_vlan)}"
                                for p, o in before.items())
                raise Timeout(self.name, mask(
                    f"{'port ' + ln.port + ': ' if ln.port else ''}no answer within {self.command_timeout_s:g}s "
                    f"to line {ln.text!r}; the ports may be half-changed; their previous config: {was}")) from None
            except Exception:
                with self._mapped(f"line {ln.text!r}"):
                    raise
            bad = self.profile.refusal(out)
            if bad:
                self._leave_config(conn)
                return n, bad
        self._leave_config(conn)
        return None

    def _leave_config(self, conn: Any) -> None:
        with self._mapped("leaving configuration mode"):
            conn.exit_config_mode(exit_config=self.profile.config_exit)

    @staticmethod
    def _touched(lines: Sequence[Line], failed: int) -> list[str]:
        """Ports that got at least one line before the refusal (not one whose `interface` failed)."""
        out: list[str] = []
        for n, ln in enumerate(lines[: failed + 1]):
            if ln.port and ln.port not in out and not (n == failed and ln.opens_port):
                out.append(ln.port)
        return out

    def _restore(self, conn: Any, ports: Sequence[str], before: dict[str, Observed]) -> str:
        """Put ``ports`` back as captured; return a sentence saying what happened."""
        if not ports:
            return "no port was changed"
        try:
            now = self._read_observed(conn, ports)
            intents: list[PortIntent] = []
            skipped: list[str] = []
            for p in ports:
                it = intent_from(before[p])
                if it is None:
                    skipped.append(p)
                else:
                    intents.append(it)
            lines = self.profile.render(intents, {p: o.state for p, o in now.items()}, self.name,
                                        ensure_vlans=False)
            failed = self._configure(conn, lines, before) if lines else None
            after = self._read_observed(conn, ports)
        except DriverError as exc:
            log.error("switch %s: restoring %s failed: %s", self.name, ", ".join(ports), exc)
            return f"restoring ports {', '.join(ports)} FAILED ({exc}): check them by hand"
        wrong = [p for p in ports if not _same(after[p].state, before[p].state)]
        if failed is not None or wrong or skipped:
            what = lines[failed[0]].text if failed is not None else ""
            return (f"restore incomplete: ports {', '.join(wrong or skipped)} differ from their previous "
                    f"config{' (line ' + repr(what) + ' refused)' if what else ''}: check them by hand")
        return f"ports {', '.join(ports)} restored to their previous config (read back)"
