"""Errors an operator can act on.

Everything an operator can cause (a bad definition, a wrong password, an unreachable BMC) is an
``OperatorError``: the CLI prints its message and exits 2 without a traceback. Driver failures
carry the device and the failing step so the workflow can stop in ``needs-operator`` with a
sentence a human can act on at 3 a.m.
"""

from __future__ import annotations

import errno

from aimctl.core.errors import OperatorError, SecretError

__all__ = ["AuthFailed", "DefinitionError", "DriverError", "ListenError", "OperatorError", "Rejected", "SecretError",
           "StateMismatch", "Timeout", "Unreachable"]


class DefinitionError(OperatorError):
    """One or more problems in the definitions, each already formatted as FILE:LINE:COL: path: msg."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class DriverError(OperatorError):
    """A device did not do what was asked. ``device`` names it (server, switch, target)."""

    def __init__(self, device: str, message: str) -> None:
        self.device = device
        super().__init__(f"{device}: {message}")


class Unreachable(DriverError):
    """The device does not answer on the network."""


class AuthFailed(DriverError):
    """The device answered and refused our credentials."""


class Timeout(DriverError):
    """The device answered but did not reach the asked state before the deadline."""


class StateMismatch(DriverError):
    """Read-back disagrees with the intent (e.g. a BMC that says Off was done but reads On)."""


class Rejected(DriverError):
    """The device refused a command (switch error pattern, tgtadm failure)."""


class ListenError(OperatorError):
    """A listener of the controller cannot open its port: in use, not permitted, no such address."""

    @classmethod
    def from_oserror(cls, what: str, proto: str, host: str, port: int, exc: OSError) -> ListenError:
        hints = {errno.EADDRINUSE: "address already in use (another controller, or a lab, already listens there)",
                 errno.EACCES: "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)",
                 errno.EADDRNOTAVAIL: "cannot assign that address (not an address of this host)"}
        why = hints.get(exc.errno or 0, exc.strerror or str(exc))
        return cls(f"cannot listen for {what} on {proto} {host}:{port}: {why}")
