"""Real etcd members for the lab and the tests (Debian's etcd-server, /usr/bin/etcd 3.4).

Each member gets free 127.0.0.1 ports and its own data dir; members can be killed and started
again on the same data dir (``etcd-member-kill`` and its ``--clear``). Never a mock etcd.
"""

from __future__ import annotations

import json
import os
import shutil
import signal

from lab.ports import free_port
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from aimctl.errors import OperatorError

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class EtcdCluster:
    def __init__(self, root: Path, size: int = 1, *, name: str = "e") -> None:
        if not Path(ETCD).exists():
            raise OperatorError(f"etcd not found ({ETCD}); install the Debian package etcd-server (make setup)")
        self.root = root
        self.members = [Member(f"{name}{i + 1}", free_port(), free_port(), root / f"{name}{i + 1}")
                        for i in range(size)]
        self._initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    @property
    def endpoints(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", m.client_port) for m in self.members]

    @property
    def url(self) -> str:
        """``etcd://HOST:PORT,...`` as ``controller run --cluster`` takes it."""
        return "etcd://" + ",".join(f"127.0.0.1:{m.client_port}" for m in self.members)

    def member(self, name: str) -> Member:
        for m in self.members:
            if m.name == name:
                return m
        raise OperatorError(f"no etcd member {name!r} (have {', '.join(m.name for m in self.members)})")

    def start(self, timeout_s: float = 20.0) -> EtcdCluster:
        self.root.mkdir(parents=True, exist_ok=True)
        for m in self.members:
            self._spawn(m, new=True)
        self.wait_healthy(timeout_s)
        return self

    def _spawn(self, m: Member, new: bool) -> None:
        m.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        log = open(self.root / f"{m.name}.log", "ab")
        cmd = [ETCD, "--name", m.name, "--data-dir", str(m.data_dir),
               "--listen-client-urls", m.client_url, "--advertise-client-urls", m.client_url,
               "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
               "--initial-cluster", self._initial, "--initial-cluster-state", "new",
               "--initial-cluster-token", f"aimctl-{self.root.name}",
               # Lab-sized timing: a lost member is noticed and a new raft leader elected in well under
               # a controller's lease TTL (defaults are 100 ms / 1 s; loaded CI machines need slack).
               "--heartbeat-interval", "100", "--election-timeout", "1000",
               "--log-level", "warn", "--logger", "zap"]
        m.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  start_new_session=True, env={**os.environ, "ETCD_UNSUPPORTED_ARCH": ""})

    def healthy(self, m: Member) -> bool:
        try:
            with urllib.request.urlopen(m.client_url + "/health", timeout=1) as r:
                return bool(json.loads(r.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def wait_healthy(self, timeout_s: float = 20.0, members: list[Member] | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        want = members or [m for m in self.members if m.alive()]
        while time.monotonic() < deadline:
            if all(self.healthy(m) for m in want):
                return
            dead = [m.name for m in want if not m.alive()]
            if dead:
                raise OperatorError(f"etcd member(s) {', '.join(dead)} exited; see {self.root}/*.log")
            time.sleep(0.05)
        raise OperatorError(f"etcd not healthy after {timeout_s:.0f}s; see {self.root}/*.log")

    def kill(self, name: str) -> None:
        m = self.member(name)
        if m.alive() and m.proc is not None:
            os.killpg(m.proc.pid, signal.SIGKILL)
            m.proc.wait(10)

    def restart(self, name: str) -> None:
        m = self.member(name)
        if not m.alive():
            self._spawn(m, new=False)

    def stop(self, remove: bool = False) -> None:
        for m in self.members:
            if m.alive() and m.proc is not None:
                m.proc.terminate()
        for m in self.members:
            if m.proc is not None:
                try:
                    m.proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(m.proc.pid, signal.SIGKILL)
                    m.proc.wait(5)
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)
