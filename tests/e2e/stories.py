"""What the lab stories share: the controller overlay and waits (the fixtures are in conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from lab.controller_proc import ControllerProcess
from lab.fixtures import LabHandle

# Where an operation stops: finished, or waiting for an operator.
ENDED = ("done", "failed", "aborted", "needs-operator")
X1_TARGETS = ("iqn.2026-01.lab.storage:exchange1-boot", "iqn.2026-01.lab.storage:exchange1-db")


def overlay_for(labh: LabHandle, tmp: Path, edit: Callable[[dict[str, Any]], None] | None = None,
                **controller: Any) -> Path:
    doc = labh.overlay()
    # Short timers keep each story to seconds: a BMC that lies costs 4 s, a hung switch line 2 s and
    # a switch step 4 s of retries before it restores what it changed.
    doc["controller"].update({"power_deadline": 4.0, "boot_timer_override": 8.0, "switch_timeout": 2.0,
                              "switch_deadline": 4.0, **controller})
    if edit is not None:
        edit(doc)
    path = tmp / "endpoints.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def controller_for(labh: LabHandle, tmp: Path, definitions: Path | None = None,
                   edit: Callable[[dict[str, Any]], None] | None = None, **controller: Any) -> ControllerProcess:
    """A fresh controller on the story's lab (reset first), started, with every persona heartbeating."""
    labh.reset()
    ctrl = ControllerProcess(definitions or labh.definitions, overlay_for(labh, tmp, edit, **controller), tmp / "ctrl")
    ctrl.start()
    try:
        ctrl.wait(ctrl.all_alive, 20, "every persona heartbeating")
    except BaseException:
        ctrl.stop()
        raise
    return ctrl


def op_of(ctrl: ControllerProcess, persona: str) -> dict[str, Any] | None:
    return next((o for o in ctrl.api.get("/v1/failovers") if o["persona"] == persona), None)


def wait_op(ctrl: ControllerProcess, persona: str, states: tuple[str, ...], timeout_s: float = 60) -> dict[str, Any]:
    def check() -> Any:
        o = op_of(ctrl, persona)
        return o if o and o["state"] in states else None

    return ctrl.wait(check, timeout_s, f"{persona} operation in {states}")  # type: ignore[no-any-return]


def port_vlans(st: dict[str, Any], server: str) -> dict[str, tuple[str, list[int]]]:
    return {c: (x["mode"], x["vlans"]) for c, x in st["servers"][server]["channels"].items()}




def aimctl(ctrl: ControllerProcess, *args: str, timeout_s: float = 90) -> subprocess.CompletedProcess[str]:
    """The real ``aimctl`` command line against the story's controller, as an operator runs it."""
    return subprocess.run([sys.executable, "-m", "aimctl.cli", *args, "--state", str(ctrl.state)],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2], timeout=timeout_s,
                          env={**os.environ, "COLUMNS": "250"})  # a wide terminal: tables are not cut


def restarted(ctrl: ControllerProcess, timeout_s: float = 10) -> ControllerProcess:
    """After a crash: wait for the old process to be gone, then start a new one on the same state
    (what systemd's Restart=always does)."""
    assert ctrl.proc is not None
    ctrl.proc.wait(timeout_s)
    return ControllerProcess(ctrl.definitions, ctrl.overlay, ctrl.state, env=ctrl.env).start()
