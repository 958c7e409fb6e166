"""A real agent (thread or process) sending to a real receiver over UDP on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from aimctl.agent import cli as agent_cli
from aimctl.agent import wire
from aimctl.agent.checks import CheckSpec
from aimctl.agent.cli import read_key_file
from aimctl.agent.run import NONCE_WINDOW, REASON_REQUESTED, REASON_STOPPED, _is_stop_request, run_agent
from aimctl.agent.wire import Health
from aimctl.detect.heartbeat import HeartbeatReceiver
from aimctl.errors import OperatorError
from tests import waiting

KEY = b"0123456789abcdef0123456789abcdef"
INTERVAL = 0.05


def wait_for(cond: Callable[[], object]) -> None:
    waiting.wait_for(cond, timeout_s=10.0, poll_s=0.01)


@pytest.fixture
def receiver() -> Iterator[HeartbeatReceiver]:
    r = HeartbeatReceiver("127.0.0.1", 0, {"web1": KEY}).start()
    yield r
    r.stop()


class Agent:
    """run_agent in a thread, stopped and joined at teardown."""

    def __init__(self, receiver: HeartbeatReceiver, **kw: object) -> None:
        self.stop = threading.Event()
        self.result: list[str] = []
        self.shutdowns: list[str] = []
        self.thread = threading.Thread(
            target=lambda: self.result.append(
                run_agent(
                    "web1",
                    ("127.0.0.1", receiver.port),
                    KEY,
                    INTERVAL,
                    stop_event=self.stop,
                    on_shutdown=self.shutdowns.append,
                    **kw,
                )
            ),
            daemon=True,
        )  # type: ignore[arg-type]
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        assert not self.thread.is_alive()


@pytest.fixture
def agents() -> Iterator[Callable[..., Agent]]:
    made: list[Agent] = []

    def make(receiver: HeartbeatReceiver, **kw: object) -> Agent:
        a = Agent(receiver, **kw)
        made.append(a)
        return a

    yield make
    for a in made:
        a.close()


def health(r: HeartbeatReceiver) -> Health | None:
    seen = r.last_seen("web1")
    return None if seen is None else seen[1].health


def test_heartbeats_flow_and_stop_is_announced(
    receiver: HeartbeatReceiver, agents: Callable[..., Agent]
) -> None:
    a = agents(receiver)
    wait_for(lambda: receiver.beats("web1") >= 5)
    assert health(receiver) == Health.OK
    assert receiver.counters()["replay"] == 0
    a.close()
    wait_for(lambda: health(receiver) == Health.STOPPED)  # the last packet may still be in flight
    assert a.result == [REASON_STOPPED] and a.shutdowns == [REASON_STOPPED]


def test_auto_pilot_restarts_n_times_then_reports_unhealthy(
    tmp_path: Path, receiver: HeartbeatReceiver, agents: Callable[..., Agent]
) -> None:
    flag, count = tmp_path / "running", tmp_path / "restarts"
    # The restart "runs" but does not bring the service back.
    check = CheckSpec.from_obj(
        {"name": "mail", "command": f"test -f {flag}", "restart": ["sh", "-c", f"echo restart >> {count}"]}
    )
    agents(receiver, checks=[check], restarts=2)
    wait_for(lambda: health(receiver) == Health.UNHEALTHY)
    assert count.read_text().splitlines() == ["restart", "restart"]
    seen = receiver.last_seen("web1")
    assert seen is not None and "after 2 restarts" in seen[1].reason
    beats = receiver.beats("web1")
    wait_for(lambda: receiver.beats("web1") >= beats + 10)
    assert len(count.read_text().splitlines()) == 2, "no restarts once the budget is used up"
    assert health(receiver) == Health.UNHEALTHY


def test_auto_pilot_restart_that_works_keeps_the_persona(
    tmp_path: Path, receiver: HeartbeatReceiver, agents: Callable[..., Agent]
) -> None:
    flag = tmp_path / "running"
    check = {"name": "mail", "command": f"test -f {flag}", "restart": f"touch {flag}"}
    agents(receiver, checks=[check], restarts=2)
    wait_for(lambda: flag.exists())
    wait_for(lambda: health(receiver) == Health.OK and receiver.beats("web1") > 5)
    flag.unlink()  # the service dies again later: restarted again
    wait_for(lambda: flag.exists())
    wait_for(lambda: health(receiver) == Health.OK)


def test_tcp_and_process_probes(receiver: HeartbeatReceiver, agents: Callable[..., Agent]) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    me = Path("/proc/self/comm").read_text().strip()
    try:
        agents(receiver, checks=[{"name": "svc", "process": me, "tcp": f"127.0.0.1:{port}"}], restarts=0)
        wait_for(lambda: receiver.beats("web1") >= 5)
        assert health(receiver) == Health.OK
    finally:
        listener.close()
    wait_for(lambda: health(receiver) == Health.UNHEALTHY)
    seen = receiver.last_seen("web1")
    assert seen is not None and "refused" in seen[1].reason


def test_signed_stop_request_stops_the_persona(
    tmp_path: Path, receiver: HeartbeatReceiver, agents: Callable[..., Agent]
) -> None:
    stopped = tmp_path / "stopped"
    a = agents(receiver, checks=[{"name": "mail", "command": "true", "stop": f"touch {stopped}"}])
    wait_for(lambda: receiver.beats("web1") >= 3)
    seen = receiver.last_seen("web1")
    assert seen is not None
    addr = receiver.address("web1")  # where the agent listens
    assert addr is not None
    # A correctly signed request from anywhere but the controller's address never reaches it.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = wire.Heartbeat("web1", seen[1].boot_id, seen[1].seq, 0.0, Health.OK, "stop", wire.KIND_STOP)
        s.sendto(wire.encode(KEY, req), addr)
    wait_for(lambda: receiver.beats("web1") >= 6)
    assert not a.result
    assert receiver.send_stop("web1")
    wait_for(lambda: bool(a.result))
    assert a.result == [REASON_REQUESTED] and a.shutdowns == [REASON_REQUESTED]
    assert stopped.exists()
    wait_for(lambda: health(receiver) == Health.STOPPED)  # the last packet may still be in flight


def test_stop_request_checks() -> None:
    def req(
        key: bytes = KEY, persona: str = "web1", boot: int = 7, seq: int = 50, kind: int = wire.KIND_STOP
    ) -> bytes:
        return wire.encode(key, wire.Heartbeat(persona, boot, seq, 0.0, Health.OK, "stop", kind))

    assert _is_stop_request(req(), KEY, "web1", 7, 60)
    assert not _is_stop_request(req(key=b"x" * 32), KEY, "web1", 7, 60)  # forged
    assert not _is_stop_request(req(persona="web2"), KEY, "web1", 7, 60)  # another persona
    assert not _is_stop_request(req(boot=6), KEY, "web1", 7, 60)  # recorded in an earlier boot
    assert not _is_stop_request(req(seq=61), KEY, "web1", 7, 60)  # a nonce we never sent
    assert not _is_stop_request(req(seq=50), KEY, "web1", 7, 50 + NONCE_WINDOW)  # too old
    assert not _is_stop_request(req(kind=wire.KIND_HEARTBEAT), KEY, "web1", 7, 60)  # a reflected heartbeat
    assert not _is_stop_request(b"junk", KEY, "web1", 7, 60)


# ---------------------------------------------------------------------------- the CLI, as a process

CLI = [sys.executable, "-m", "aimctl.agent.cli", "run"]


def key_file(tmp_path: Path, mode: int) -> Path:
    p = tmp_path / "web1.key"
    p.write_text(KEY.decode() + "\n")
    p.chmod(mode)
    return p


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_key_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    key = key_file(tmp_path, mode)
    done = subprocess.run(
        [*CLI, "--persona", "web1", "--controller", "127.0.0.1:9", "--key-file", str(key)],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "chmod 600" in done.stderr and "Traceback" not in done.stderr
    assert KEY.decode() not in done.stderr + done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--controller", "nohost"], "HOST:PORT"),
        (["--controller", "127.0.0.1:99999"], "HOST:PORT"),
        (["--persona", "Bad Name"], "bad name"),
        (["--interval", "5"], "--interval"),
        (["--key-file", "/nonexistent/key"], "No such file"),
        (["--checks", "/nonexistent/checks.yaml"], "cannot read checks file"),
    ],
)
def test_operator_mistakes_exit_2_without_traceback(tmp_path: Path, args: list[str], message: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    # In process: the same command function, without a Python start-up per case.
    opts = {"--persona": "web1", "--controller": "127.0.0.1:9", "--key-file": str(key_file(tmp_path, 0o600))}
    for flag, value in zip(args[::2], args[1::2]):
        opts[flag] = value
    assert agent_cli.main(["run", *[x for kv in opts.items() for x in kv]]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_usage_mistakes_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        agent_cli.main(["run", "--persona", "web1"])
    assert done.value.code == 2 and "--controller" in capsys.readouterr().err


def test_key_file_rules(tmp_path: Path) -> None:
    assert read_key_file(key_file(tmp_path, 0o600)) == KEY
    assert read_key_file(key_file(tmp_path, 0o400)) == KEY  # systemd LoadCredential= makes 0400
    short = tmp_path / "short.key"
    short.write_text("tiny\n")
    short.chmod(0o600)
    with pytest.raises(OperatorError, match="shorter"):
        read_key_file(short)


def test_bad_checks_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checks = tmp_path / "checks.yaml"
    checks.write_text("services:\n  - {name: mail, comand: 'true'}\n")
    key = str(key_file(tmp_path, 0o600))
    argv = [
        "run",
        "--persona",
        "web1",
        "--controller",
        "127.0.0.1:9",
        "--key-file",
        key,
        "--checks",
        str(checks),
    ]
    assert agent_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "services[0]" in err and "comand" in err


def test_agent_process_heartbeats_and_stops_on_sigterm(tmp_path: Path, receiver: HeartbeatReceiver) -> None:
    key = key_file(tmp_path, 0o600)
    checks = tmp_path / "checks.yaml"
    checks.write_text("restarts: 1\nservices:\n  - {name: base, command: 'true'}\n")
    proc = subprocess.Popen(
        [
            *CLI,
            "--persona",
            "web1",
            "--controller",
            f"127.0.0.1:{receiver.port}",
            "--key-file",
            str(key),
            "--interval",
            "50ms",
            "--checks",
            str(checks),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: receiver.beats("web1") >= 3 or proc.poll() is not None)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert KEY.decode() not in " ".join(Path(f"/proc/{proc.pid}/cmdline").read_text().split("\0"))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        wait_for(lambda: health(receiver) == Health.STOPPED)  # the last packet may still be in flight
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def test_the_controllers_command_line_runs_the_same_agent(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from aimctl.cli.main import app

    key = str(key_file(tmp_path, 0o600))
    done = CliRunner().invoke(app, ["agent", "run", "--persona", "Bad Name", "--controller", "127.0.0.1:9",
                                    "--key-file", key])
    assert done.exit_code == 2 and "bad name" in done.stderr
