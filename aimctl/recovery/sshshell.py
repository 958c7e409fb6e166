"""A small SSH client for hooks: run one command, get stdout, stderr and the exit status.

The password is handed to paramiko in memory (SSH password authentication); it never appears
on a command line. Host keys, by policy:

- ``SHA256:<base64>``: pinned fingerprint, as ``ssh-keygen -lf`` prints it; any other key is refused
  before credentials are sent.
- ``known-hosts``: the user's/system known_hosts files; an unknown host is refused.
- ``auto`` (alias ``auto-add``): accept any key. For the lab only, whose simulators make a fresh
  key each run; it gives no protection against a host in the middle.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import paramiko

from aimctl.errors import AuthFailed, OperatorError, Timeout, Unreachable
from aimctl.recovery.exchange_dag import CommandResult
from aimctl.validation import HOSTNAME_RE

_VIA_RE = re.compile(
    r"^ssh://(?P<user>[A-Za-z0-9_.-]{1,64})@(?P<host>[^:/@\s]{1,253})(?::(?P<port>\d{1,5}))?$"
)
_HOST_KEY_RE = re.compile(r"^(auto|auto-add|known-hosts|SHA256:[A-Za-z0-9+/]{43}=?)$")
MAX_OUTPUT = 4 * 1024 * 1024  # bytes kept per stream; more is read and dropped


@dataclass(frozen=True)
class SshTarget:
    user: str
    host: str
    port: int = 22

    def __str__(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


def parse_via(via: str) -> SshTarget:
    m = _VIA_RE.fullmatch(via)
    if not m or not HOSTNAME_RE.fullmatch(m["host"]) or not 0 < int(m["port"] or 22) < 65536:
        raise OperatorError(f"via {via!r} refused: want ssh://user@host[:port]")
    return SshTarget(m["user"], m["host"], int(m["port"] or 22))


def check_host_key(policy: str) -> str:
    if not _HOST_KEY_RE.fullmatch(policy):
        raise OperatorError(
            f"host_key {policy!r} refused: want SHA256:<fingerprint>, known-hosts or auto (lab)"
        )
    return policy


def fingerprint(key: Any) -> str:
    """OpenSSH-style SHA256 fingerprint of a paramiko key."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


class _Pinned(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]
    def __init__(self, want: str, device: str) -> None:
        self.want, self.device = want.rstrip("="), device

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        got = fingerprint(key)
        if got != self.want:
            raise AuthFailed(
                self.device, f"host key {got} is not the pinned {self.want}; credentials not sent"
            )


class SshShell:
    """One SSH connection; ``run`` executes a command in a fresh channel (exec request)."""

    def __init__(
        self, target: SshTarget, password: str, host_key: str = "known-hosts", connect_timeout_s: float = 10.0
    ) -> None:
        self.target, self._password = target, password
        self.host_key = check_host_key(host_key)
        self.connect_timeout_s = connect_timeout_s
        self.device = f"{target.host}:{target.port}"
        self._client: Any = None

    def __enter__(self) -> Self:
        self.connect()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def connect(self) -> None:
        client = paramiko.SSHClient()
        if self.host_key.startswith("SHA256:"):
            client.set_missing_host_key_policy(_Pinned(self.host_key, self.device))
        elif self.host_key == "known-hosts":
            client.load_system_host_keys()
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
        else:
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        t = self.connect_timeout_s
        try:
            client.connect(
                self.target.host,
                self.target.port,
                username=self.target.user,
                password=self._password,
                timeout=t,
                banner_timeout=t,
                auth_timeout=t,
                allow_agent=False,
                look_for_keys=False,
            )
        except AuthFailed:
            client.close()
            raise
        except paramiko.AuthenticationException:
            client.close()
            raise AuthFailed(self.device, f"SSH login as {self.target.user} refused") from None
        except paramiko.BadHostKeyException:
            client.close()
            raise AuthFailed(self.device, "host key differs from known_hosts; credentials not sent") from None
        except (OSError, EOFError, paramiko.SSHException) as exc:
            client.close()
            # RejectPolicy raises a plain SSHException naming the unknown host.
            raise Unreachable(self.device, f"SSH connection failed: {exc or type(exc).__name__}") from None
        self._client = client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def run(self, command: str, timeout_s: float) -> CommandResult:
        if self._client is None:
            self.connect()
        end = time.monotonic() + timeout_s
        try:
            chan = self._client.get_transport().open_session(timeout=min(timeout_s, self.connect_timeout_s))
            chan.settimeout(0.2)
            chan.exec_command(command)
            out, err = self._drain(chan, end, timeout_s)
            if not chan.status_event.wait(max(0.0, end - time.monotonic())):
                chan.close()
                raise Timeout(self.device, f"no exit status within {timeout_s:g}s")
            status = chan.recv_exit_status()
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)
            chan.close()
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise Unreachable(self.device, f"SSH session lost: {exc or type(exc).__name__}") from None
        if status == -1:  # the server closed the channel without an exit status
            raise Unreachable(self.device, "SSH channel closed without an exit status")
        return CommandResult(status, out.decode(errors="replace"), err.decode(errors="replace"))

    def _drain(self, chan: Any, end: float, timeout_s: float) -> tuple[bytes, bytes]:
        out, err = bytearray(), bytearray()
        while True:
            if time.monotonic() > end:
                chan.close()
                raise Timeout(self.device, f"command did not finish within {timeout_s:g}s")
            while chan.recv_stderr_ready():
                chunk = chan.recv_stderr(65536)
                err += chunk[: max(0, MAX_OUTPUT - len(err))]
            try:
                chunk = chan.recv(65536)
            except TimeoutError:  # the 0.2 s channel timeout: check the deadline again
                continue
            if not chunk:  # EOF on stdout
                return bytes(out), bytes(err)
            out += chunk[: max(0, MAX_OUTPUT - len(out))]
