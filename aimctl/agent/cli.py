"""``aimctl-agent run``: the persona agent's command line (also ``aimctl agent run`` on a controller).

Standard library only (argparse): a persona host installs ``aimctl[agent]`` and nothing of the
controller's; a typer command line would bring pydantic with it.

The heartbeat key is only ever read from a file that nobody but its owner can read (mode 0600 or
0400, as systemd's LoadCredential= makes it); it never appears on a command line, where any local
user could read it from /proc.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import signal
import stat
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from aimctl.agent import bootfacts
from aimctl.agent.checks import load_checks_file
from aimctl.agent.run import run_agent
from aimctl.core import secrets
from aimctl.core.durations import parse_duration
from aimctl.core.errors import OperatorError
from aimctl.core.names import HOSTNAME_RE, NAME_RE

MIN_KEY_BYTES = 16


def read_key_file(path: Path) -> bytes:
    """The key as the controller reads ``file:`` references: the file's text, stripped."""
    try:
        st = path.stat()
    except OSError as exc:
        raise OperatorError(f"key file {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise OperatorError(f"key file {path}: not a regular file")
    if st.st_mode & 0o077:
        raise OperatorError(
            f"key file {path}: mode {stat.S_IMODE(st.st_mode):04o} lets others read it; run: chmod 600 {path}"
        )
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise OperatorError(f"key file {path}: cannot read: {exc}") from None
    if len(text.encode()) < MIN_KEY_BYTES:
        raise OperatorError(f"key file {path}: key shorter than {MIN_KEY_BYTES} bytes")
    secrets.register(text)
    return text.encode()


def parse_controller(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise OperatorError(f"--controller must be HOST:PORT, got {value!r}")
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        if not HOSTNAME_RE.match(host):
            raise OperatorError(f"--controller: not a host name or IPv4 address: {host!r}") from None
    return host, int(port)


def parser(prog: str = "aimctl-agent") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="The persona agent: heartbeats and service checks.")
    commands = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    r = commands.add_parser("run", help="Send signed heartbeats for PERSONA and watch its services until stopped.",
                            description="Send signed heartbeats for PERSONA and watch its services until stopped.")
    r.add_argument("--persona", required=True, help="Persona name, as in the definitions.")
    r.add_argument("--controller", required=True, action="append",
                   help="HOST:PORT of a controller's heartbeat receiver; for a cluster, every controller"
                        " (repeat the option, or HOST:PORT,HOST:PORT,...).")
    r.add_argument("--key-file", required=True, type=Path, help="File holding the persona's heartbeat key (mode 0600).")
    r.add_argument("--interval", default="1s", help="Heartbeat interval, e.g. 1s, 500ms (default 1s).")
    r.add_argument("--checks", type=Path, help="YAML file of service checks.")
    r.add_argument("--restarts", type=int,
                   help="Restarts per failed service before reporting unhealthy (default 3, or the checks file's).")
    r.add_argument("-v", "--verbose", action="store_true")
    r.add_argument("--ibft", type=Path, default=bootfacts.IBFT_INITIATOR,
                   help="The iBFT initiator name: a rehearsal boot is told by it (default %(default)s).")
    return p


def run(persona: str, controller: str | Sequence[str], key_file: Path, interval: str = "1s",
        checks: Path | None = None, restarts: int | None = None, verbose: bool = False,
        ibft: Path = bootfacts.IBFT_INITIATOR) -> int:
    """Send signed heartbeats for PERSONA and watch its services until stopped; the exit status."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    secrets.install_log_masking()
    try:
        if not NAME_RE.match(persona):
            raise OperatorError(f"--persona: bad name {persona!r} (lower-case letters, digits, '-')")
        named = [controller] if isinstance(controller, str) else list(controller)
        targets = [parse_controller(x) for c in named for x in c.split(",")]
        try:
            interval_s = parse_duration(interval)
        except ValueError as exc:
            raise OperatorError(f"--interval: {exc}") from None
        if not 0.01 <= interval_s <= 600:
            raise OperatorError("--interval must be between 10ms and 10m")
        key = read_key_file(key_file)
        specs, file_restarts = load_checks_file(checks) if checks is not None else ([], None)
        budget = restarts if restarts is not None else file_restarts if file_restarts is not None else 3
        if not 0 <= budget <= 100:
            raise OperatorError("--restarts must be 0-100")
    except OperatorError as exc:
        print(f"error: {secrets.mask(str(exc))}", file=sys.stderr)
        return 2

    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        run_agent(persona, targets, key, interval_s, specs, budget, stop_event=stop,
                  rehearsal=bootfacts.is_rehearsal(bootfacts.boot_initiator(ibft)))
    except OSError as exc:  # e.g. the controller's host name does not resolve
        print(f"error: {persona}: cannot send heartbeats to {', '.join(named)}: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "aimctl-agent") -> int:
    """The exit status: 0 after a stop, 2 for an operator's mistake (argparse's usage errors too)."""
    args = parser(prog).parse_args(argv)
    return run(args.persona, args.controller, args.key_file, args.interval, args.checks, args.restarts,
               args.verbose, args.ibft)


if __name__ == "__main__":
    raise SystemExit(main())
