"""``aimctl agent run``: the persona agent's command line.

The heartbeat key is only ever read from a file that nobody but its owner can read (mode 0600 or
0400, as systemd's LoadCredential= makes it); it never appears on a command line, where any local
user could read it from /proc.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import stat
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from aimctl import secrets
from aimctl.agent.checks import load_checks_file
from aimctl.agent.run import run_agent
from aimctl.errors import OperatorError
from aimctl.model import parse_duration
from aimctl.validation import HOSTNAME_RE, NAME_RE

MIN_KEY_BYTES = 16

app = typer.Typer(help="The persona agent: heartbeats and service checks.", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Persona agent commands."""


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


@app.command()
def run(
    persona: Annotated[str, typer.Option(help="Persona name, as in the definitions.")],
    controller: Annotated[list[str], typer.Option(
        help="HOST:PORT of a controller's heartbeat receiver; for a cluster, every controller"
             " (repeat the option, or HOST:PORT,HOST:PORT,...).")],
    key_file: Annotated[Path, typer.Option(help="File holding the persona's heartbeat key (mode 0600).")],
    interval: Annotated[str, typer.Option(help="Heartbeat interval, e.g. 1s, 500ms.")] = "1s",
    checks: Annotated[Path | None, typer.Option(help="YAML file of service checks.")] = None,
    restarts: Annotated[
        int | None,
        typer.Option(
            help="Restarts per failed service before reporting unhealthy (default 3, or the checks file's)."
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Send signed heartbeats for PERSONA and watch its services until stopped."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    secrets.install_log_masking()
    try:
        if not NAME_RE.match(persona):
            raise OperatorError(f"--persona: bad name {persona!r} (lower-case letters, digits, '-')")
        targets = [parse_controller(x) for c in controller for x in c.split(",")]
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
        typer.echo(f"error: {secrets.mask(str(exc))}", err=True)
        raise typer.Exit(2) from None

    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        run_agent(persona, targets, key, interval_s, specs, budget, stop_event=stop)
    except OSError as exc:  # e.g. the controller's host name does not resolve
        typer.echo(f"error: {persona}: cannot send heartbeats to {', '.join(controller)}: {exc}", err=True)
        raise typer.Exit(2) from None


def main() -> None:
    app(prog_name="aimctl agent")


if __name__ == "__main__":
    main()
