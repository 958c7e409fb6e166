"""Run the real controller as a child process against a lab (demo, e2e tests, benchmarks)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from aimctl.api.client import ApiClient
from aimctl.errors import OperatorError

REPO = Path(__file__).resolve().parent.parent


class ControllerProcess:
    def __init__(self, definitions: Path, overlay: Path, state: Path, env: dict[str, str] | None = None,
                 args: list[str] | None = None) -> None:
        self.definitions, self.overlay, self.state = definitions, overlay, state
        self.env = env or {}
        self.args = list(args or [])  # e.g. --config FILE for a cluster member
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30.0) -> ControllerProcess:
        self.state.mkdir(parents=True, exist_ok=True, mode=0o700)
        (self.state / "api.json").unlink(missing_ok=True)
        log = open(self.state / "controller.out", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aimctl.cli", "controller", "run", "--definitions", str(self.definitions),
             "--overlay", str(self.overlay), "--state", str(self.state), *self.args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
            env={**os.environ, **self.env}, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if (self.state / "api.json").exists():
                try:
                    info = json.loads((self.state / "api.json").read_text())
                    if info.get("pid") == self.proc.pid:
                        return self
                except ValueError:
                    pass
            if self.proc.poll() is not None:
                # Its last words say why (a definition refused, a port taken): the log may not outlive the lab.
                out = self.state / "controller.out"
                last = out.read_text(errors="replace").strip().splitlines()[-3:] if out.exists() else []
                raise OperatorError(f"controller exited ({self.proc.returncode}): {' | '.join(last)}; see {out}")
            time.sleep(0.05)
        self.stop()
        raise OperatorError(f"controller API not up after {timeout_s}s; see {self.state / 'controller.out'}")

    @property
    def api(self) -> ApiClient:
        return ApiClient(self.state)

    def wait(self, pred: Any, timeout_s: float, what: str, poll_s: float = 0.1) -> Any:
        deadline = time.monotonic() + timeout_s
        last: Any = None
        while time.monotonic() < deadline:
            last = pred()
            if last:
                return last
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"controller died while waiting for {what}")
            time.sleep(poll_s)
        raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last: {last!r})")

    def all_alive(self) -> bool:
        st = self.api.get("/v1/status")["personas"]
        return all(v["heartbeat_age_s"] is not None and v["heartbeat_age_s"] < 2.5 for v in st.values())

    def kill(self) -> None:
        """As a crash would: no chance to clean up."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
