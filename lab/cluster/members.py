"""The lab's controller cluster: etcd members, controllers as real processes, and their faults.

``aimctl lab up --etcd 3 --controllers 3`` (or the ``cluster-up`` control action) starts N etcd
members and N controllers ``c1..cN``. Each controller has its own state dir, heartbeat, trap and
API ports (the SCN relay and the trap sender send to all), and reaches every etcd member through
its own TCP relays, so one controller can be cut from etcd while the others carry on. The members
share the cluster key file and the API token (as operators would copy them).

Faults: ``controller-kill cN`` (SIGKILL; ``--clear`` starts it again), ``controller-pause cN``
(SIGSTOP; ``--clear`` sends SIGCONT), ``etcd-member-kill eN`` (``--clear`` restarts it on its data
dir), ``controller-etcd-cut cN`` (its relays drop every byte; ``--clear`` lets them through).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from aimctl.journal.secretbox import make_key_file
from aimctl.errors import OperatorError
from lab.cluster.etcd import EtcdCluster
from lab.ports import free_port as _free
from lab.cluster.tcprelay import TcpRelay
from lab.controller_proc import ControllerProcess

# Short enough for lab stories to take seconds, within the rule renew + 2 x retry <= ttl.
LAB_TIMING = {"ttl": "4s", "renew": "500ms", "retry": "1500ms"}


def repeated_failover_definitions(src: Path, dst: Path) -> Path:
    """A copy of the definitions in which exchange1 may be failed over again and again: the cluster
    stories and the HA benchmark do that on purpose within minutes, past its pool's escalation limit
    (2 automatic failovers an hour, then an operator decides). Nothing else differs."""
    shutil.copytree(src, dst)
    pool = dst / "exchange.yaml"
    text = pool.read_text()
    if "max_retargets: 2\n" not in text:
        raise OperatorError(f"{pool}: no 'max_retargets: 2' line to put the escalation limit after")
    pool.write_text(text.replace("max_retargets: 2\n", "max_retargets: 2\nescalation: {max_failovers: 100}\n", 1))
    return dst


@dataclass
class Slot:
    name: str
    state: Path
    heartbeat: int
    snmp: int
    api: int
    relays: list[TcpRelay] = field(default_factory=list)
    proc: ControllerProcess | None = None
    paused: bool = False

    def pid(self) -> int | None:
        p = self.proc.proc if self.proc else None
        return p.pid if p is not None and p.poll() is None else None


class LabCluster:
    def __init__(self, lab: Any, root: Path, etcd_members: int = 3, controllers: int = 3, name: str = "lab",
                 controller: dict[str, Any] | None = None, timing: dict[str, Any] | None = None,
                 definitions: str | None = None) -> None:
        if not 1 <= etcd_members <= 5 or not 1 <= controllers <= 5:
            raise OperatorError("a lab cluster has 1-5 etcd members and 1-5 controllers")
        self.lab = lab
        self.root = root
        self.name = name
        # The controllers' definitions: the lab's, or a copy that differs only in policy (a test that
        # fails one persona over and over raises its pool's escalation limit, say).
        self.definitions = Path(definitions) if definitions else Path(lab.defs.root)
        self.overrides = dict(controller or {})
        self.timing = {**LAB_TIMING, **(timing or {})}
        self.etcd = EtcdCluster(root / "etcd", etcd_members)
        self.slots = [Slot(f"c{i + 1}", root / f"c{i + 1}", _free(socket.SOCK_DGRAM), _free(socket.SOCK_DGRAM), _free())
                      for i in range(controllers)]

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> dict[str, Any]:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.etcd.start()
        key = self.root / "cluster.key"
        if not key.exists():
            make_key_file(key)
        token = self.root / "api-token"
        if not token.exists():  # made once, before the controllers start in parallel and copy it
            fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(32) + "\n")
        for slot in self.slots:
            slot.relays = [TcpRelay(ep) for ep in self.etcd.endpoints]
            self.lab.relay.add_controller(("127.0.0.1", slot.heartbeat))
            self.lab.traps.add_target(("127.0.0.1", slot.snmp))
        self.start_controllers()
        return self.status()

    def _write_files(self, slot: Slot) -> tuple[Path, Path]:
        slot.state.mkdir(parents=True, exist_ok=True, mode=0o700)
        doc = yaml.safe_load((self.lab.state / "endpoints.yaml").read_text())
        doc["controller"].update({"heartbeat": f"127.0.0.1:{slot.heartbeat}", "snmp": f"127.0.0.1:{slot.snmp}",
                                  "api": f"127.0.0.1:{slot.api}", **self.overrides})
        overlay = slot.state / "endpoints.yaml"
        overlay.write_text(yaml.safe_dump(doc))
        config = slot.state / "controller.yaml"
        etcd = "etcd://" + ",".join(f"127.0.0.1:{r.port}" for r in slot.relays)
        config.write_text(yaml.safe_dump({"cluster": {"etcd": etcd, "name": self.name, "member": slot.name,
                                                      "key_file": str(self.root / "cluster.key"), **self.timing}}))
        # Members of a cluster share their tokens (the CLI follows a follower's redirect with it).
        shutil.copy2(self.root / "api-token", slot.state / "api-token")
        os.chmod(slot.state / "api-token", 0o600)
        return overlay, config

    def start_controller(self, slot: Slot) -> None:
        overlay, config = self._write_files(slot)
        slot.proc = ControllerProcess(self.definitions, overlay, slot.state, args=["--config", str(config)],
                                      env={"AIMCTL_LOG": "INFO"})
        slot.paused = False
        slot.proc.start(timeout_s=60)

    def start_controllers(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(len(self.slots)) as pool:
            for f in [pool.submit(self.start_controller, s) for s in self.slots if s.pid() is None]:
                f.result()

    def restart(self, name: str | None = None, controller: dict[str, Any] | None = None,
                timing: dict[str, Any] | None = None) -> dict[str, Any]:
        """Stop every controller and start them again — under a new cluster name, a fresh journal."""
        self.stop_controllers()
        if name:
            self.name = name
        if controller is not None:
            self.overrides = dict(controller)
        if timing is not None:
            self.timing = {**LAB_TIMING, **timing}
        for slot in self.slots:
            for r in slot.relays:
                r.cut = False
        self.start_controllers()
        return self.status()

    def stop_controllers(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        def stop(slot: Slot) -> None:
            if slot.proc is not None and slot.proc.proc is not None:
                if slot.paused:
                    os.kill(slot.proc.proc.pid, signal.SIGCONT)
                    slot.paused = False
                slot.proc.stop()

        with ThreadPoolExecutor(len(self.slots)) as pool:
            list(pool.map(stop, self.slots))

    def stop(self) -> None:
        self.stop_controllers()
        for slot in self.slots:
            for r in slot.relays:
                r.stop()
            self.lab.relay.remove_controller(("127.0.0.1", slot.heartbeat))
            self.lab.traps.remove_target(("127.0.0.1", slot.snmp))
        self.etcd.stop(remove=True)

    # -- faults -------------------------------------------------------------------------------

    def slot(self, name: str) -> Slot:
        for s in self.slots:
            if s.name == name:
                return s
        raise OperatorError(f"no controller {name!r} in the lab cluster (have {', '.join(s.name for s in self.slots)})")

    def fault(self, kind: str, target: str, on: bool) -> None:
        if kind == "etcd-member-kill":
            (self.etcd.kill if on else self.etcd.restart)(target)
            return
        slot = self.slot(target)
        if kind == "controller-kill":
            if on:
                if slot.proc is not None:
                    slot.proc.kill()
                slot.paused = False
            elif slot.pid() is None:
                self.start_controller(slot)
        elif kind == "controller-pause":
            pid = slot.pid()
            if pid is None:
                raise OperatorError(f"controller {target} is not running")
            os.kill(pid, signal.SIGSTOP if on else signal.SIGCONT)
            slot.paused = on
        elif kind == "controller-etcd-cut":
            for r in slot.relays:
                r.cut = on
        else:
            raise OperatorError(f"not a cluster fault: {kind}")

    # -- view ---------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name, "prefix": f"/aimctl/{self.name}/", "timing": self.timing,
            "etcd": [{"name": m.name, "client": m.client_url, "alive": m.alive()} for m in self.etcd.members],
            "etcd_url": self.etcd.url,
            "controllers": [{"name": s.name, "pid": s.pid(), "paused": s.paused,
                             "etcd_cut": any(r.cut for r in s.relays), "state": str(s.state),
                             "api": f"http://127.0.0.1:{s.api}", "heartbeat": s.heartbeat} for s in self.slots],
        }
