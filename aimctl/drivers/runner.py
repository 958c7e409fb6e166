"""Run one management command on a storage host: here (``LocalRunner``) or over SSH (``SshRunner``).

Same argv either way, no shell locally. A value wrapped in ``Secret`` is a credential: it is shown
as ``***`` in every rendering of the command, and the SSH runner sends it on the channel's stdin
(read by the remote shell into a variable), so it is in neither the SSH exec request nor the remote
shell's command line. Where the remote program itself takes it as an argument (tgtadm
``--password``) it is visible in that process's argv for its short life; that is tgtadm's limit.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shlex
import socket
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import paramiko

from aimctl import secrets
from aimctl.errors import AuthFailed, OperatorError, Timeout, Unreachable
from aimctl.validation import HOSTNAME_RE

_ENV_NAME_RE = re.compile(r"^[A-Z_][A-Z0-9_]{0,63}\Z")
_HOST_KEY_RE = re.compile(r"^(auto|known-hosts|SHA256:[A-Za-z0-9+/]{43}=?)\Z")
_USER_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}\Z")


@dataclass(frozen=True)
class Secret:
    value: str = field(repr=False)

    def __str__(self) -> str:
        return "***"


Arg = str | Secret


@dataclass(frozen=True)
class CommandResult:
    rc: int
    stdout: str
    stderr: str


class Runner(Protocol):
    where: str  # "local" or "ssh://user@host:port": names the device in errors

    def run(self, argv: Sequence[Arg], timeout_s: float = 10.0) -> CommandResult: ...

    def close(self) -> None: ...


def display(argv: Sequence[Arg]) -> str:
    """The command as it may be logged: secrets as ``***``."""
    return secrets.mask(" ".join(str(a) if isinstance(a, Secret) else shlex.quote(a) for a in argv))


def _check_env(env: Mapping[str, str]) -> dict[str, str]:
    for k, v in env.items():
        if not _ENV_NAME_RE.match(k) or "\x00" in v or "\n" in v:
            raise OperatorError(f"environment variable {k!r} refused for a command runner")
    return dict(env)


class LocalRunner:
    """Runs argv with ``env`` added to this process's environment (e.g. TGT_IPC_SOCKET)."""

    where = "local"

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.env = _check_env(env or {})

    def run(self, argv: Sequence[Arg], timeout_s: float = 10.0) -> CommandResult:
        import os

        plain = [a.value if isinstance(a, Secret) else a for a in argv]
        try:
            p = subprocess.run(plain, env={**os.environ, **self.env}, capture_output=True, text=True,
                               timeout=timeout_s, check=False)
        except FileNotFoundError:
            raise Unreachable(self.where, f"{argv[0]} is not installed here") from None
        except subprocess.TimeoutExpired:
            # subprocess.run has killed it; a hung tgtadm means a hung (or stopped) tgtd.
            raise Timeout(self.where, f"{display(argv)} did not finish in {timeout_s:.0f}s") from None
        return CommandResult(p.returncode, p.stdout, p.stderr)

    def close(self) -> None:
        pass


def fingerprint(key: Any) -> str:
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


class _Pinned(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]
    def __init__(self, want: str, where: str) -> None:
        self.want, self.where = want.rstrip("="), where

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        if fingerprint(key) != self.want:
            raise AuthFailed(self.where, f"host key {fingerprint(key)} is not the pinned one; credentials not sent")


class SshRunner:
    """One SSH connection (opened on first use, reopened once if it died), one channel per command.

    ``host_key``: ``known-hosts`` (default: the user's/system known_hosts; unknown hosts refused),
    ``SHA256:<fingerprint>`` (pinned), or ``auto`` (accept any key: the lab only).
    """

    def __init__(self, host: str, port: int, username: str, password: str | None = None, *,
                 env: Mapping[str, str] | None = None, host_key: str = "known-hosts",
                 connect_timeout_s: float = 10.0) -> None:
        if not HOSTNAME_RE.match(host) or not 0 < port < 65536 or not _USER_RE.match(username):
            raise OperatorError(f"ssh target {username}@{host}:{port} refused")
        if not _HOST_KEY_RE.match(host_key):
            raise OperatorError(f"host_key {host_key!r} refused: want SHA256:<fingerprint>, known-hosts or auto")
        self.host, self.port, self.username = host, port, username
        self._password = password
        if password:
            secrets.register(password)
        self.env = _check_env(env or {})
        self.host_key = host_key
        self.connect_timeout_s = connect_timeout_s
        self.where = f"ssh://{username}@{host}:{port}"
        self._client: paramiko.SSHClient | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, password: str | None, **kw: Any) -> SshRunner:
        u = urlsplit(url)
        if u.scheme != "ssh" or not u.hostname or not u.username or u.path not in ("", "/"):
            raise OperatorError(f"management URL {url!r} refused: want ssh://user@host[:port]")
        return cls(u.hostname, u.port or 22, u.username, password, **kw)

    def _connect(self) -> paramiko.SSHClient:
        with self._lock:
            c = self._client
            if c is not None and (t := c.get_transport()) is not None and t.is_active():
                return c
            c = paramiko.SSHClient()
            if self.host_key == "known-hosts":
                c.load_system_host_keys()
                c.set_missing_host_key_policy(paramiko.RejectPolicy())
            elif self.host_key == "auto":
                c.set_missing_host_key_policy(paramiko.AutoAddPolicy())
            else:
                c.set_missing_host_key_policy(_Pinned(self.host_key, self.where))
            try:
                c.connect(self.host, self.port, self.username, password=self._password,
                          timeout=self.connect_timeout_s, banner_timeout=self.connect_timeout_s,
                          auth_timeout=self.connect_timeout_s, allow_agent=False,
                          look_for_keys=self._password is None)
            except paramiko.AuthenticationException:
                raise AuthFailed(self.where, "SSH login refused") from None
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise Unreachable(self.where, f"SSH connection failed: {secrets.mask(str(exc))}") from None
            transport = c.get_transport()
            if transport is not None:
                # Commands are small request/answer exchanges: without this, Nagle plus delayed
                # ACKs add ~40 ms to each one.
                transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._client = c
            return c

    def _command(self, argv: Sequence[Arg]) -> tuple[str, str]:
        """Remote shell text and its stdin: secrets travel on stdin, read into $s<N>."""
        reads, words, stdin = [], [], []
        for i, a in enumerate(argv):
            if isinstance(a, Secret):
                if "\n" in a.value or "\x00" in a.value:
                    raise OperatorError("a secret with a line break cannot be sent")
                reads.append(f"IFS= read -r s{i} && ")
                words.append(f'"$s{i}"')
                stdin.append(a.value + "\n")
            else:
                words.append(shlex.quote(a))
        env = ["env"] + [shlex.quote(f"{k}={v}") for k, v in self.env.items()] if self.env else []
        return "".join(reads) + "exec " + " ".join(env + words), "".join(stdin)

    def run(self, argv: Sequence[Arg], timeout_s: float = 10.0) -> CommandResult:
        command, stdin = self._command(argv)
        deadline = time.monotonic() + timeout_s
        chan = self._open_channel(deadline)
        try:
            chan.exec_command(command)
            if stdin:
                chan.sendall(stdin.encode())
            chan.shutdown_write()
            out, err = bytearray(), bytearray()
            for recv, buf in ((chan.recv, out), (chan.recv_stderr, err)):
                while chunk := self._recv(chan, recv, deadline, argv):
                    buf += chunk
            if not chan.status_event.wait(max(0.01, deadline - time.monotonic())):
                raise Timeout(self.where, f"{display(argv)} gave no exit status in time")
            return CommandResult(chan.recv_exit_status(), out.decode(errors="replace"), err.decode(errors="replace"))
        except (paramiko.SSHException, EOFError, OSError) as exc:
            self.close()
            raise Unreachable(self.where, f"SSH channel failed during {display(argv)}: {secrets.mask(str(exc))}") from None
        finally:
            chan.close()

    def _open_channel(self, deadline: float) -> paramiko.Channel:
        for attempt in (1, 2):
            client = self._connect()
            transport = client.get_transport()
            try:
                assert transport is not None
                return transport.open_session(timeout=max(0.1, deadline - time.monotonic()))
            except (paramiko.SSHException, EOFError, OSError, AssertionError) as exc:
                # A connection that died between commands is reopened once; nothing was run on it.
                self.close()
                if attempt == 2:
                    raise Unreachable(self.where, f"SSH channel refused: {secrets.mask(str(exc))}") from None
        raise AssertionError("not reached")

    def _recv(self, chan: paramiko.Channel, recv: Any, deadline: float, argv: Sequence[Arg]) -> bytes:
        chan.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            return bytes(recv(65536))
        except TimeoutError:
            raise Timeout(self.where, f"{display(argv)} did not finish in time") from None

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
