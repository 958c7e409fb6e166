"""Run one management command on a storage host: here (``LocalRunner``) or over SSH (``SshRunner``).

Same argv either way, no shell locally. A value wrapped in ``Secret`` is a credential: it is shown
as ``***`` in every rendering of the command, and the SSH runner sends it on the channel's stdin
(read by the remote shell into a variable), so it is in neither the SSH exec request nor the remote
shell's command line. Where the remote program itself takes it as an argument (tgtadm
``--password``) it is visible in that process's argv for its short life; that is tgtadm's limit.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aimctl import secrets
from aimctl.drivers.ssh import CommandResult, SshSession, SshTarget
from aimctl.errors import OperatorError, Timeout, Unreachable

__all__ = ["Arg", "CommandResult", "LocalRunner", "Runner", "Secret", "SshRunner", "display"]

_ENV_NAME_RE = re.compile(r"^[A-Z_][A-Z0-9_]{0,63}\Z")


@dataclass(frozen=True)
class Secret:
    value: str = field(repr=False)

    def __str__(self) -> str:
        return "***"


Arg = str | Secret


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


class SshRunner:
    """tgtadm (or any argv) on another host through the SSH transport, one channel per command.

    ``host_key``: ``known-hosts`` (default), ``SHA256:<fingerprint>`` (pinned) or ``auto-add`` (lab).
    """

    def __init__(self, target: SshTarget, password: str | None = None, *, env: Mapping[str, str] | None = None,
                 host_key: str = "known-hosts", connect_timeout_s: float = 10.0) -> None:
        self.env = _check_env(env or {})
        self.session = SshSession(target, password, host_key=host_key, connect_timeout_s=connect_timeout_s)
        self.where = self.session.where

    @classmethod
    def from_url(cls, url: str, password: str | None, **kw: Any) -> SshRunner:
        return cls(SshTarget.parse(url), password, **kw)

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
        return self.session.run(command, timeout_s, stdin=stdin.encode(), shown=display(argv))

    def close(self) -> None:
        self.session.close()
