"""Service checks on the persona OS, and the auto pilot that restarts before it gives up.

A check has the shape of a persona's ``services`` entry in the definitions (name, process, tcp,
command, restart) plus optional ``stop`` and ``timeout``; every probe it names must pass. Commands
are split with ``shlex`` and run without a shell, so no value is ever interpreted by one.

Auto pilot (restart, then failover): each consecutive failure of a check uses one attempt of its
budget and, when the check has a restart command, restarts the service. When the budget is used up
and the check still fails, the persona is reported unhealthy and the controller decides on
failover. A check that passes ``stable_rounds`` times in a row gets its budget back.
"""

from __future__ import annotations

import logging
import os
import shlex
import socket
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from aimctl.agent.wire import Health
from aimctl.core.errors import OperatorError
from aimctl.core.names import NAME_RE

log = logging.getLogger(__name__)

_FIELDS = ("name", "process", "tcp", "command", "restart", "stop", "timeout")


@dataclass(frozen=True)
class CheckSpec:
    name: str
    process: str | None = None
    tcp: tuple[str, int] | None = None
    command: tuple[str, ...] | None = None
    restart: tuple[str, ...] | None = None
    stop: tuple[str, ...] | None = None
    timeout_s: float = 5.0

    @classmethod
    def from_obj(cls, obj: Any, where: str = "check") -> CheckSpec:
        """Build from a mapping or from any object with the same attribute names (the model's
        ServiceCheck); raise OperatorError naming the field on a bad value."""

        def get(key: str) -> Any:
            return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)

        if isinstance(obj, dict):
            extra = set(obj) - set(_FIELDS)
            if extra:
                raise OperatorError(f"{where}: unknown field(s) {', '.join(sorted(extra))}")
        name = get("name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise OperatorError(f"{where}: name must be lower-case letters, digits and '-': {name!r}")
        where = f"{where} {name}"
        tcp = get("tcp")
        tcp_pair: tuple[str, int] | None = None
        if tcp is not None:
            host, _, port = str(tcp).rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise OperatorError(f"{where}: tcp must be HOST:PORT, got {tcp!r}")
            tcp_pair = (host, int(port))
        process = get("process")
        if process is not None and (not isinstance(process, str) or not process or "/" in process):
            raise OperatorError(f"{where}: process must be a process name, got {process!r}")
        command = _argv(get("command"), where, "command")
        if process is None and tcp_pair is None and command is None:
            raise OperatorError(f"{where}: needs at least one of process, tcp, command")
        timeout = get("timeout")
        timeout_s = 5.0 if timeout is None else float(timeout)
        if not 0 < timeout_s <= 300:
            raise OperatorError(f"{where}: timeout must be 0-300 seconds")
        return cls(
            name,
            process,
            tcp_pair,
            command,
            _argv(get("restart"), where, "restart"),
            _argv(get("stop"), where, "stop"),
            timeout_s,
        )


def _argv(value: object, where: str, what: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    try:
        argv = shlex.split(value) if isinstance(value, str) else [str(v) for v in value]  # type: ignore[attr-defined]
    except (ValueError, TypeError) as exc:
        raise OperatorError(f"{where}: {what} is not a command line: {exc}") from None
    if not argv:
        raise OperatorError(f"{where}: {what} is empty")
    return tuple(argv)


def load_checks_file(path: Path) -> tuple[list[CheckSpec], int | None]:
    """YAML: either a list of checks or ``{services: [...], restarts: N}``."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise OperatorError(f"{path}: cannot read checks file: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise OperatorError(f"{path}: not valid YAML: {exc}") from None
    restarts = None
    if isinstance(data, dict):
        unknown = set(data) - {"services", "restarts"}
        if unknown:
            raise OperatorError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}")
        restarts = data.get("restarts")
        if restarts is not None and (not isinstance(restarts, int) or not 0 <= restarts <= 100):
            raise OperatorError(f"{path}: restarts must be an integer 0-100")
        data = data.get("services", [])
    if not isinstance(data, list):
        raise OperatorError(f"{path}: want a list of services or a mapping with 'services'")
    return [CheckSpec.from_obj(item, f"{path}: services[{i}]") for i, item in enumerate(data)], restarts


# ---------------------------------------------------------------------------- probes


def process_running(name: str) -> bool:
    """Linux /proc scan; the kernel keeps only the first 15 bytes of a process name in ``comm``."""
    want = name[:15]
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/comm") as f:
                    if f.read().rstrip("\n") == want:
                        return True
            except OSError:  # the process ended while we looked
                continue
    return False


def tcp_open(host: str, port: int, timeout_s: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def run_ok(argv: tuple[str, ...], timeout_s: float) -> bool:
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout_s,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("command %s failed to run: %s", argv[0], exc)
        return False
    return done.returncode == 0


def probe(spec: CheckSpec) -> str | None:
    """None when healthy, else which probe failed."""
    if spec.process is not None and not process_running(spec.process):
        return f"process {spec.process} not running"
    if spec.tcp is not None and not tcp_open(spec.tcp[0], spec.tcp[1], spec.timeout_s):
        return f"tcp {spec.tcp[0]}:{spec.tcp[1]} refused"
    if spec.command is not None and not run_ok(spec.command, spec.timeout_s):
        return f"command {spec.command[0]} failed"
    return None


# ---------------------------------------------------------------------------- auto pilot


@dataclass
class _Track:
    spec: CheckSpec
    used: int = 0
    passes: int = 0
    restarts: int = 0


@dataclass
class AutoPilot:
    checks: list[CheckSpec]
    restarts: int = 3
    stable_rounds: int = 30
    _tracks: list[_Track] = field(init=False)

    def __post_init__(self) -> None:
        self._tracks = [_Track(c) for c in self.checks]

    def restarts_done(self, name: str) -> int:
        return sum(t.restarts for t in self._tracks if t.spec.name == name)

    def round(self) -> tuple[Health, str]:
        """Probe every check once, act on failures, and say how the persona is."""
        worst, reasons = Health.OK, []
        for t in self._tracks:
            failure = probe(t.spec)
            if failure is None:
                t.passes += 1
                if t.passes >= self.stable_rounds:
                    t.used = 0
                continue
            t.passes = 0
            if t.used >= self.restarts:
                worst = Health.UNHEALTHY
                reasons.append(f"{t.spec.name}: {failure} after {self.restarts} restarts")
                continue
            t.used += 1
            worst = max(worst, Health.DEGRADED)
            if t.spec.restart is not None:
                t.restarts += 1
                log.warning("%s: %s; restarting (%d/%d)", t.spec.name, failure, t.used, self.restarts)
                run_ok(t.spec.restart, max(t.spec.timeout_s, 30.0))
                reasons.append(f"{t.spec.name}: restarted {t.used}/{self.restarts}")
            else:
                reasons.append(f"{t.spec.name}: {failure} ({t.used}/{self.restarts})")
        return worst, "; ".join(reasons)

    def stop_services(self) -> None:
        """Run each check's stop command (planned failback), last check first."""
        for t in reversed(self._tracks):
            if t.spec.stop is not None:
                log.info("stopping %s", t.spec.name)
                run_ok(t.spec.stop, max(t.spec.timeout_s, 60.0))


def specs(items: Iterable[Any]) -> list[CheckSpec]:
    return [CheckSpec.from_obj(i) for i in items]
