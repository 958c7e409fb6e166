"""Environment problems of the controller's listeners and state dir: one line, exit 2, no traceback
(issue 11, hole 9: "started while its SNMP port was taken, it died with a raw OSError traceback").

``aimctl controller run`` as an operator starts it, with an overlay that points every device at a
closed port on 127.0.0.1 (nothing here ever reaches the production addresses of ``personas/``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from aimctl.loader import load
from tests.conftest import DEFINITIONS, REPO

ENV = {f"AIMCTL_{n}": "lab-secret" for n in ("ARRAY_PASSWORD", "BMC_PASSWORD", "EXCH_PASSWORD", "IPMI_PASSWORD",
                                             "SWITCH_ENABLE", "SWITCH_PASSWORD")}


def free(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def overlay_file(where: Path) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    defs = load(DEFINITIONS, use_cache=False)
    closed = free(socket.SOCK_STREAM)  # nothing listens there
    doc = {
        "servers": {s: {"bmc": {"address": "127.0.0.1", "port": closed, "tls": False}} for s in defs.servers},
        "switches": {s: {"address": "127.0.0.1", "port": closed} for s in defs.switches},
        "personas": {p: {"heartbeat_key": "env:AIMCTL_TEST_HBKEY"} for p in defs.personas},
        "controller": {"heartbeat": f"127.0.0.1:{free(socket.SOCK_DGRAM)}",
                       "snmp": f"127.0.0.1:{free(socket.SOCK_DGRAM)}",
                       "api": f"127.0.0.1:{free(socket.SOCK_STREAM)}"},
    }
    path = where / "endpoints.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def start(overlay: Path, state: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "aimctl.cli", "controller", "run", "--definitions", str(DEFINITIONS),
         "--overlay", str(overlay), "--state", str(state)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, **ENV, "AIMCTL_TEST_HBKEY": "k" * 32})


WHAT = {"heartbeat": "persona heartbeats on UDP", "snmp": "SNMP traps (switch links, BMC alerts) on UDP",
        "api": "the API on TCP"}


def test_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    """Each of the three listeners taken in turn (three controllers started at once, each finding
    its own port taken): one line naming the port and what it is for, exit 2."""
    held, runs = [], {}
    try:
        for which in WHAT:
            ov = overlay_file(tmp_path / which)
            host, port = yaml.safe_load(ov.read_text())["controller"][which].rsplit(":", 1)
            kind = socket.SOCK_STREAM if which == "api" else socket.SOCK_DGRAM
            s = socket.socket(socket.AF_INET, kind)
            s.bind((host, int(port)))
            if kind == socket.SOCK_STREAM:
                s.listen(1)
            held.append(s)
            runs[which] = (int(port), start(ov, tmp_path / which / "ctrl"))
        for which, (port, proc) in runs.items():
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 2, err
            assert "Traceback" not in out + err
            lines = err.strip().splitlines()
            assert lines == [f"error: cannot listen for {WHAT[which]} 127.0.0.1:{port}: address already in use "
                             "(another controller, or a lab, already listens there)"], err
    finally:
        for _port, proc in runs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        for s in held:
            s.close()


def test_state_dir_problems_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from aimctl.daemon import Controller, check_state_dir
    from aimctl.errors import OperatorError
    from aimctl.overlay import Listen

    afile = tmp_path / "ctrl"
    afile.write_text("not a directory")
    with pytest.raises(OperatorError, match=f"^state dir {afile}: not a directory$"):
        check_state_dir(afile)
    with pytest.raises(OperatorError, match=f"^state dir {afile / 'x'}: cannot create it: Not a directory$"):
        check_state_dir(afile / "x")
    # Something in the way of the journal file: said in one line, before any port is bound.
    state = tmp_path / "state"
    (state / "journal.db").mkdir(parents=True)
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(OperatorError) as err:
        Controller(load(DEFINITIONS, use_cache=False), Listen(), state)
    assert str(err.value).startswith(f"state dir {state}: cannot open the journal: ")
    assert "\n" not in str(err.value)
