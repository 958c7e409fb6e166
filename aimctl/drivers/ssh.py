"""The one SSH transport: a command run on another host, its output and exit status.

Used by the storage driver's ``SshRunner`` (tgtadm on an array's management host) and by the
recovery hooks (PowerShell on an Exchange management host, any ``ssh-command``). Both get the same
host-key pinning, the same error words and the same result type:

- host keys (``host_key``): ``known-hosts`` (default; an unknown host is refused),
  ``SHA256:<fingerprint>`` (pinned; any other key is refused before credentials are sent), or
  ``auto-add`` (any key; the lab's simulators only, and only where a definition asks for it);
- errors: ``AuthFailed`` (login refused, host key not the expected one), ``Unreachable`` (no
  connection, session lost), ``Timeout`` (no answer before the deadline). Each names the target as
  ``ssh://user@host:port``;
- ``CommandResult(exit_status, stdout, stderr)``, each stream capped at ``MAX_OUTPUT`` bytes.

The password is handed to paramiko in memory (SSH password authentication): it is never on a
command line. What a caller sends on ``stdin`` (the storage runner's secrets) is not in the exec
request either.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import paramiko

from aimctl import secrets
from aimctl.errors import AuthFailed, OperatorError, Timeout, Unreachable
from aimctl.validation import HOST_KEY_ANY, check_host_key, ssh_url_parts

MAX_OUTPUT = 4 * 1024 * 1024  # bytes kept per stream; more is read and dropped
_POLL_S = 0.2  # how often a blocked read looks at the command's deadline


@dataclass(frozen=True)
class CommandResult:
    exit_status: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class SshTarget:
    user: str
    host: str
    port: int = 22

    @classmethod
    def parse(cls, url: str) -> SshTarget:
        """From ``ssh://user@host[:port]``; OperatorError naming the form otherwise."""
        try:
            return cls(*ssh_url_parts(url))
        except ValueError as exc:
            raise OperatorError(str(exc)) from None

    def __str__(self) -> str:
        return f"ssh://{self.user}@{self.host}:{self.port}"


def fingerprint(key: Any) -> str:
    """OpenSSH-style SHA256 fingerprint of a paramiko key, as ``ssh-keygen -lf`` prints it."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


class _Pinned(paramiko.MissingHostKeyPolicy):
    def __init__(self, want: str, where: str) -> None:
        self.want, self.where = want.rstrip("="), where

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        got = fingerprint(key)
        if got != self.want:
            raise AuthFailed(self.where, f"host key {got} is not the pinned {self.want}; credentials not sent")


def _why(exc: BaseException) -> str:
    return secrets.mask(str(exc)) or type(exc).__name__


class SshSession:
    """One SSH connection to one target, opened on first use; each command runs in its own channel.

    A connection found dead when the next command starts (an idle timeout on the far side, a
    restarted sshd) is reopened once: nothing ran on it. A connection lost while a command runs is
    an error: whether the command took effect is unknown, and the caller decides.
    """

    def __init__(self, target: SshTarget, password: str | None, *, host_key: str = "known-hosts",
                 connect_timeout_s: float = 10.0) -> None:
        try:
            self.host_key = check_host_key(host_key)
        except ValueError as exc:
            raise OperatorError(str(exc)) from None
        self.target = target
        self._password = password
        if password:
            secrets.register(password)
        self.connect_timeout_s = connect_timeout_s
        self.where = str(target)
        self._client: paramiko.SSHClient | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> Self:
        self.connect()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def connect(self) -> paramiko.SSHClient:
        with self._lock:
            c = self._client
            if c is not None and (t := c.get_transport()) is not None and t.is_active():
                return c
            if c is not None:  # lost between commands: nothing runs on it, open a new one
                c.close()
                self._client = None
            self._client = c = self._open()
            return c

    def _open(self) -> paramiko.SSHClient:
        c = paramiko.SSHClient()
        if self.host_key == "known-hosts":
            c.load_system_host_keys()
            c.set_missing_host_key_policy(paramiko.RejectPolicy())
        elif self.host_key in HOST_KEY_ANY:
            c.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        else:
            c.set_missing_host_key_policy(_Pinned(self.host_key, self.where))
        t = self.connect_timeout_s
        try:
            c.connect(self.target.host, self.target.port, username=self.target.user, password=self._password,
                      timeout=t, banner_timeout=t, auth_timeout=t, allow_agent=False,
                      look_for_keys=self._password is None)
        except AuthFailed:  # the pinned key did not match
            c.close()
            raise
        except paramiko.BadHostKeyException:
            c.close()
            raise AuthFailed(self.where, "host key differs from known_hosts; credentials not sent") from None
        except paramiko.AuthenticationException:
            c.close()
            raise AuthFailed(self.where, f"SSH login as {self.target.user} refused") from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            c.close()
            # RejectPolicy raises a plain SSHException naming the unknown host.
            raise Unreachable(self.where, f"SSH connection failed: {_why(exc)}") from None
        transport = c.get_transport()
        if transport is not None and isinstance(transport.sock, socket.socket):
            # Commands are small request/answer exchanges: without this, Nagle plus delayed ACKs
            # add ~40 ms to each one.
            transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return c

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def run(self, command: str, timeout_s: float, *, stdin: bytes = b"", shown: str = "command") -> CommandResult:
        """Run ``command`` (the remote side's command line) and wait for its exit status.

        ``shown`` is how errors name the command (already masked, e.g. the storage runner's argv
        with secrets as ``***``).
        """
        deadline = time.monotonic() + timeout_s
        chan = self._open_channel(deadline)
        try:
            chan.exec_command(command)
            if stdin:
                chan.sendall(stdin)
            chan.shutdown_write()
            out, err = self._drain(chan, deadline, shown, timeout_s)
            if not chan.status_event.wait(max(0.0, deadline - time.monotonic())):
                raise Timeout(self.where, f"{shown} gave no exit status within {timeout_s:g}s")
            status = chan.recv_exit_status()
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self.close()
            raise Unreachable(self.where, f"SSH session lost during {shown}: {_why(exc)}") from None
        finally:
            chan.close()
        if status == -1:  # the server closed the channel without an exit status
            self.close()
            raise Unreachable(self.where, f"SSH session lost during {shown}: channel closed without an exit status")
        return CommandResult(status, out[:MAX_OUTPUT].decode(errors="replace"),
                             err[:MAX_OUTPUT].decode(errors="replace"))

    def _open_channel(self, deadline: float) -> paramiko.Channel:
        for attempt in (1, 2):
            had = self._client is not None
            transport = self.connect().get_transport()
            try:
                if transport is None:
                    raise paramiko.SSHException("no transport")
                return transport.open_session(timeout=max(0.1, min(self.connect_timeout_s,
                                                                   deadline - time.monotonic())))
            except (paramiko.SSHException, OSError, EOFError) as exc:
                self.close()
                # A connection that died between commands is reopened once; nothing was run on it.
                if attempt == 2 or not had:
                    raise Unreachable(self.where, f"SSH session lost: channel refused: {_why(exc)}") from None
        raise AssertionError("not reached")

    def _drain(self, chan: paramiko.Channel, deadline: float, shown: str, timeout_s: float) -> tuple[bytes, bytes]:
        """Read stdout to its end, taking stderr as it comes (a full stderr window would stall
        the remote side otherwise)."""
        out, err = bytearray(), bytearray()
        chan.settimeout(_POLL_S)
        while True:
            if time.monotonic() > deadline:
                raise Timeout(self.where, f"{shown} did not finish within {timeout_s:g}s")
            while chan.recv_stderr_ready():
                chunk = chan.recv_stderr(65536)
                err += chunk[: max(0, MAX_OUTPUT - len(err))]
            try:
                chunk = chan.recv(65536)
            except TimeoutError:  # look at the deadline again
                continue
            if not chunk:  # EOF on stdout
                return bytes(out), bytes(err)
            out += chunk[: max(0, MAX_OUTPUT - len(out))]
