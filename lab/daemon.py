"""The lab process: every protocol server the definitions describe, on 127.0.0.1 with free ports.

Started by ``aimctl lab up`` (detached) or by the test fixtures. It writes ``LABDIR/endpoints.yaml``
(the controller's overlay) and ``LABDIR/control.json`` (its own control API), then serves until
``aimctl lab down``. All parts live in this one process so the hosts, the SCN relay and
``lab status`` can read BMC power and switch port state in process — never over a switch's only
SSH session.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import signal
import socket

from lab.ports import free_port
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from aimctl.drivers import snapnames
from aimctl.drivers.tgt import LocalRunner, TgtStorage
from aimctl.drivers.tgt_snap import TgtSnapshots
from aimctl.loader import Definitions, load
from lab import control
from lab.apps.dag_sim import DagSimulator
from lab.apps.inbox import Mailbox, TrapInbox
from lab.bmc.ipmi import IpmiLab, IpmiSystemSpec
from lab.bmc.redfish import RedfishLab, RedfishSystemSpec
from lab.hosts.services import ServiceDoors
from lab.hosts.simulator import BootConfig, Host, PersonaRuntime, parse_ipxe, redfish_boot
from lab.network.relay import ScnRelay
from lab.network.switches import SwitchLab, SwitchSpec
from lab.network.traps import TrapSender, cable_ifindex
from lab.storage.observer import AccessObserver
from lab.storage.tgt import LunSpec, TgtLab

log = logging.getLogger("lab")

LAB_USER = "admin"


def write_secret(path: Path, value: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value)
    return f"file:{path}"


class Lab:
    def __init__(self, defs: Definitions, state: Path, power_delay_s: float, boot_s: float,
                 heartbeat_s: float, tcp_timeout_s: float, resync_s: float) -> None:
        self.defs = defs
        self.state = state
        self.power_delay_s = power_delay_s
        self.boot_s = boot_s
        self.heartbeat_s = heartbeat_s
        self.tcp_timeout_s = tcp_timeout_s
        self.resync_s = resync_s
        self.secret_dir = state / "secrets"
        self.hosts: dict[str, Host] = {}
        self.stop_event = threading.Event()
        self.lock = threading.RLock()
        self.controller = {"heartbeat": free_port(socket.SOCK_DGRAM), "snmp": free_port(socket.SOCK_DGRAM),
                           "api": free_port()}
        self.faults: dict[tuple[str, str], bool] = {}
        # faults that keep acting until cleared (storms, flaps, stalls), by (target, kind)
        self.running: dict[tuple[str, str], Any] = {}
        # servers whose next boot-config clear by a controller switches storage-error on
        self.storage_step_armed: set[str] = set()
        self.cluster: Any = None  # lab.cluster.members.LabCluster once `cluster-up` ran

    # ------------------------------------------------------------------ start

    def start(self) -> None:
        t0 = time.monotonic()
        d = self.defs
        self.passwords = {k: secrets.token_urlsafe(12) for k in ("bmc", "switch", "enable", "dag")}
        self.refs = {k: write_secret(self.secret_dir / f"{k}-password", v) for k, v in self.passwords.items()}
        self.keys: dict[str, bytes] = {}
        self.chap: dict[str, str] = {}
        for name in d.personas:
            key = secrets.token_hex(32)
            write_secret(self.secret_dir / f"{name}.hbkey", key)
            self.keys[name] = key.encode()
            self.chap[name] = secrets.token_urlsafe(12)[:16]
            write_secret(self.secret_dir / f"{name}.chap", self.chap[name])
        redfish = [s for s, v in d.servers.items() if v.bmc.kind == "redfish"]
        ipmi = [s for s, v in d.servers.items() if v.bmc.kind == "ipmi"]
        self.redfish = RedfishLab([RedfishSystemSpec(s, power_on=False, boot_nic=d.servers[s].boot_nic,
                                                     model=d.servers[s].model, cores=d.servers[s].cores,
                                                     memory_gb=d.servers[s].memory_gb,
                                                     macs=list(d.servers[s].nic_macs) or None)
                                   for s in redfish], self.state / "redfish", {LAB_USER: self.passwords["bmc"]},
                                  power_delay_s=self.power_delay_s, per_system_ports=True, tls=True)
        self.redfish_port = self.redfish.start() if redfish else 0
        self.ipmi = IpmiLab([IpmiSystemSpec(s, power_on=False, model=d.servers[s].model, cores=d.servers[s].cores,
                                            memory_gb=d.servers[s].memory_gb) for s in ipmi],
                            {LAB_USER: self.passwords["bmc"]},
                            power_delay_s=self.power_delay_s)
        self.ipmi_ports = self.ipmi.start() if ipmi else {}
        ports: dict[str, list[str]] = {}
        for srv in d.servers.values():
            for cable in srv.channels.values():
                ports.setdefault(cable.switch, []).append(cable.port)
        self.switches = SwitchLab([SwitchSpec(n, sw.os, sorted(ports.get(n, []))) for n, sw in d.switches.items()],
                                  LAB_USER, self.passwords["switch"], self.passwords["enable"])
        self.switch_ports = self.switches.start()
        from lab.ops import home_port_intents, wait_homes

        for sw, intents in home_port_intents(self).items():
            for i in intents:
                self.switches.reset_port(sw, i.port, i)
        self.tgt = TgtLab(self.state / "tgt")
        self.tgt_port = self.tgt.start()
        self.storage = TgtStorage("127.0.0.1", self.tgt_port, LocalRunner(env=self.tgt.admin_env))
        self.snapshot_dir = self.tgt.dir / "snapshots"
        self.snapshots = TgtSnapshots(self.storage, str(self.snapshot_dir))
        self._provision_storage()
        self._provision_gold()
        self.traps = TrapSender("127.0.0.1", self.controller["snmp"], "public")
        # Where the controller's alerts land: a real SMTP server and a real trap receiver.
        self.mailbox = Mailbox()
        self.mail_port = self.mailbox.start()
        self.trap_inbox = TrapInbox("public")
        self.trap_inbox_port = self.trap_inbox.start()
        self.relay = ScnRelay(("127.0.0.1", self.controller["heartbeat"]), self._scn_reachable)
        for s in d.servers:
            self.relay.add_server(s)
        self.relay.start()
        self._start_dag()
        self.observer = AccessObserver(self.tgt.admin_env, interval_s=0.1)
        self.observer.start()
        self.services = ServiceDoors(list(d.servers), self.state)
        self.runtimes = self._runtimes()  # one table for every host: a persona adopted later boots anywhere
        for s in d.servers:
            self.hosts[s] = Host(s, self._boot_reader(s), self.runtimes, ("127.0.0.1", self.relay.port(s)),
                                 self.boot_s, self.tcp_timeout_s, on_persona=self._persona_changed,
                                 service=self.services.check(s))
        self.redfish.watch_boot_writes(self._boot_written)
        self.redfish.subscribe(self._power_changed)
        self.ipmi.subscribe(self._power_changed)
        self.boot_dir = self.state / "boot"
        self.boot_dir.mkdir(exist_ok=True)
        self._write_endpoints()
        self.home_all(power=True)
        threading.Thread(target=self._ticker, name="lab-tick", daemon=True).start()
        wait_homes(self, 60.0)
        self.up_s = time.monotonic() - t0
        log.info("lab up in %.2fs", self.up_s)

    def _runtimes(self) -> dict[str, PersonaRuntime]:
        return {n: PersonaRuntime(n, [(x.target, x.lun) for x in p.spec.data], self.keys[n], self.heartbeat_s,
                                  p.spec.initiator)
                for n, p in self.defs.personas.items()}

    def _provision_gold(self) -> None:
        """One gold image per pool, named after it: a generalized boot LUN (label ``gold:<pool>``, it takes
        its identity from its initiator name), snapshotted as ``gold.<pool>``."""
        for pool in self.defs.pools:
            target = f"iqn.2026-01.lab.storage:gold-{pool}"
            self.tgt.add_lun(LunSpec(target, 1, 16, f"gold:{pool}"))
            self.snapshots.snapshot(snapnames.set_id(snapnames.gold_label(pool)), [(target, 1)])

    def adopt(self, persona: str, initiator: str, key_file: str, data: list[tuple[str, int]]) -> dict[str, Any]:
        """A persona made after the lab started (from a gold image): the stand-in for the operator
        installing its agent's key. Hosts can boot it from then on."""
        key = Path(key_file).read_text().strip().encode()
        self.runtimes[persona] = PersonaRuntime(persona, [(t, int(n)) for t, n in data], key, self.heartbeat_s,
                                                initiator)
        return {"ok": True, "persona": persona}

    def _provision_storage(self) -> None:
        for name, p in self.defs.personas.items():
            spec = p.spec
            self.tgt.add_lun(LunSpec(spec.boot.target, spec.boot.lun, 16, name))
            for x in spec.data:
                self.tgt.add_lun(LunSpec(x.target, x.lun, 16, None))
        self.reset_storage()

    def reset_storage(self) -> None:
        """Each target back to its persona's initiator and initial CHAP secret, no sessions (in parallel:
        tgtadm is a process per call and most of a reset's time)."""
        from concurrent.futures import ThreadPoolExecutor

        def one(name: str, target: str) -> None:
            initiator = self.defs.personas[name].spec.initiator
            for ini in self.storage.initiators(target):
                if ini != initiator:
                    self.storage.unbind(target, ini)
            self.storage.set_chap(target, chap_user(name), self.chap[name])
            if initiator not in self.storage.initiators(target):
                self.storage.bind(target, initiator)
            self.storage.kill_sessions(target)

        jobs = [(n, t) for n, p in self.defs.personas.items() for t in [p.spec.boot.target] + [x.target for x in p.spec.data]]
        with ThreadPoolExecutor(max_workers=8) as pool:
            for f in [pool.submit(one, n, t) for n, t in jobs]:
                f.result()
        # Rehearsal targets a story left behind (scratch clones only: nothing else is ever deleted).
        scratch = f"{self.snapshot_dir}/scratch/"
        for name, view in self.storage.targets_of().items():
            if view.backing and all(p.startswith(scratch) for p in view.backing.values()):
                self.snapshots.delete_clone(name)

    def _start_dag(self) -> None:
        members: dict[str, str] = {}
        self.dag_persona: dict[str, str] = {}
        for name, p in self.defs.personas.items():
            for h in p.spec.recovery:
                if h.hook == "exchange-dag":
                    members[h.server] = name
        self.dag: DagSimulator | None = None
        if len(members) < 2:
            return
        servers = sorted(members)
        dbs = {f"DB{i + 1:02d}": [servers[i % len(servers)]] + [s for s in servers if s != servers[i % len(servers)]]
               for i in range(4)}
        self.dag = DagSimulator(dag="DAG1", members=members, databases=dbs, resync_s=self.resync_s,
                                username=LAB_USER, password=self.passwords["dag"])
        self.dag_port = self.dag.start()
        self.dag_persona = {v: k for k, v in members.items()}
        self.dag_up: dict[str, bool] = {}
        # The management host is reached over MAPI: through any running member whose MAPI port carries it.
        self.dag.set_reachable(lambda: any(h.status.booted in self.dag_persona and self._carries(s, "mapi")
                                           for s, h in self.hosts.items()))

    # ------------------------------------------------------------------ reachability (in process)

    def _carries(self, server: str, network: str) -> bool:
        pool = self.defs.pools[self.defs.server_pool[server]]
        net = pool.networks[network]
        srv = self.defs.servers[server]
        for ch in (net.primary, net.secondary):
            cable = srv.channels.get(ch) if ch is not None else None
            if cable and self.switches.carries(cable.switch, cable.port, net.vlan):
                return True
        return False

    def _scn_reachable(self, server: str) -> bool:
        # A body without power sends nothing, whatever its agent thread still tries.
        host = self.hosts.get(server)
        if host is None or not host.status.power:
            return False
        pool = self.defs.pools[self.defs.server_pool[server]]
        if self._carries(server, pool.scn):
            return True
        # The isolated rehearsal VLAN reaches the controller's heartbeat receiver (nothing else).
        vlan = pool.rehearsal.vlan
        scn = pool.networks[pool.scn]
        srv = self.defs.servers[server]
        return vlan is not None and any(
            (cable := srv.channels.get(ch)) is not None and self.switches.carries(cable.switch, cable.port, vlan)
            for ch in (scn.primary, scn.secondary) if ch is not None)

    # ------------------------------------------------------------------ events

    def _power_changed(self, server: str, on: bool) -> None:
        host = self.hosts.get(server)
        if host is None:
            return
        host.power_changed(on)
        # A body losing power takes its links down with it: the switch sends the traps.
        for cable in self.defs.servers[server].channels.values():
            self.traps.link(cable.switch, cable_ifindex(self.defs, cable), on)

    def _boot_written(self, server: str, changes: dict[str, Any]) -> None:
        # storage-step-error: a controller fencing this body clears its boot config after the
        # storage fence and before the storage step, so storage management breaks right there.
        if server in self.storage_step_armed and "InitiatorName" in changes and not changes["InitiatorName"]:
            self.storage_step_armed.discard(server)
            log.warning("storage-step-error: %s's boot config cleared; storage management fails from now", server)
            self.tgt.set_fault("storage-error", True)

    def _persona_changed(self, server: str, persona: str, up: bool) -> None:
        if self.dag and persona in self.dag_persona and not up:
            self.dag.host_died(persona)
            self.dag_up[persona] = False

    def _ticker(self) -> None:
        while not self.stop_event.wait(0.2):
            for h in list(self.hosts.values()):
                h.tick()
            if self.dag:
                # DAG copies come back only once the persona runs *and* its MAPI network reaches it.
                running = {h.status.booted: s for s, h in self.hosts.items() if h.status.booted}
                for persona in self.dag_persona:
                    srv = running.get(persona)
                    ok = srv is not None and "mapi" in self.defs.pools[self.defs.personas[persona].pool].networks \
                        and self._carries(srv, "mapi")
                    if ok and not self.dag_up.get(persona):
                        self.dag.host_alive(persona)
                        self.dag_up[persona] = True
                    elif not ok and self.dag_up.get(persona):
                        self.dag.host_died(persona)
                        self.dag_up[persona] = False

    # ------------------------------------------------------------------ boot config as the body sees it

    def _boot_reader(self, server: str) -> Any:
        if self.defs.servers[server].bmc.kind == "redfish":
            def read() -> BootConfig | None:
                return redfish_boot(self.redfish.iscsi_boot(server))
            return read

        def read_ipxe() -> BootConfig | None:
            if self.ipmi.boot_device(server) not in ("network", "pxe"):
                return None
            # The controller serves /boot/<server>.ipxe; before it runs, the site's boot files are used.
            from lab.hosts.simulator import fetch_ipxe

            url = f"http://127.0.0.1:{self.controller['api']}/boot/{server}.ipxe"
            cfg = fetch_ipxe(url)
            if cfg is None and (self.boot_dir / f"{server}.ipxe").exists():
                cfg = parse_ipxe((self.boot_dir / f"{server}.ipxe").read_text())
            return cfg
        return read_ipxe

    def home_boot_config(self, server: str, persona: str) -> None:
        from aimctl.drivers.protocols import IscsiBoot
        spec = self.defs.personas[persona].spec
        boot = IscsiBoot(spec.initiator, spec.boot.target, spec.boot.lun, "127.0.0.1", self.tgt_port,
                         chap_user(persona), self.chap[persona])
        if self.defs.servers[server].bmc.kind == "redfish":
            self.redfish.set_iscsi_boot(server, boot)
        else:
            from aimctl.drivers.ipxe import render_ipxe
            (self.boot_dir / f"{server}.ipxe").write_text(render_ipxe(boot))
            self.ipmi.set_boot_device(server, "network")

    def home_all(self, power: bool) -> None:
        homes = {s: p for p, s in self.defs.homes().items()}
        for s in self.defs.servers:
            if s in homes:
                self.home_boot_config(s, homes[s])
        for s in self.defs.servers:
            on = power and s in homes
            if self.defs.servers[s].bmc.kind == "redfish":
                self.redfish.set_power(s, on)
            else:
                self.ipmi.set_power(s, on)

    # ------------------------------------------------------------------ endpoints overlay

    def _write_endpoints(self) -> None:
        d = self.defs
        bmc_cred = {"username": LAB_USER, "password": self.refs["bmc"]}
        sw_cred = {"username": LAB_USER, "password": self.refs["switch"], "enable": self.refs["enable"]}
        servers: dict[str, dict[str, Any]] = {}
        for s, v in d.servers.items():
            if v.bmc.kind == "redfish":
                # HTTPS with the lab's self-signed certificate, verified against it (as production
                # verifies a BMC's certificate against its CA).
                servers[s] = {"bmc": {"address": "127.0.0.1", "port": self.redfish.port_of(s), "tls": True,
                                      "ca_file": str(self.redfish.state_dir / "cert.pem"),
                                      "system_id": self.redfish.system_path(s).rsplit("/", 1)[-1],
                                      "credentials": bmc_cred}}
            else:
                servers[s] = {"bmc": {"address": "127.0.0.1", "port": self.ipmi_ports[s], "credentials": bmc_cred}}
            if v.boot_address is not None:
                servers[s]["boot_address"] = "127.0.0.1"  # the lab's bodies fetch their iPXE script from here
        personas: dict[str, Any] = {}
        for n, p in d.personas.items():
            entry: dict[str, Any] = {"heartbeat_key": f"file:{self.secret_dir / (n + '.hbkey')}",
                                     "initial_chap": f"file:{self.secret_dir / (n + '.chap')}"}
            rec = {}
            for i, h in enumerate(p.spec.recovery):
                if h.hook == "exchange-dag" and self.dag:
                    rec[i] = {"via": f"ssh://{LAB_USER}@127.0.0.1:{self.dag_port}", "credentials": self.refs["dag"],
                              "host_key": "auto-add",
                              # the lab's copies resynchronize in seconds: look often
                              "poll": f"{max(0.1, min(2.0, self.resync_s / 5)):.2f}s"}
            if rec:
                entry["recovery"] = rec
            personas[n] = entry
        doc = {
            "servers": servers,
            "switches": {n: {"address": "127.0.0.1", "port": p, "credentials": sw_cred}
                         for n, p in self.switch_ports.items()},
            "storage": {n: {"portal": "127.0.0.1", "port": self.tgt_port, "management": "local",
                            "control_socket": self.tgt.env["TGT_IPC_SOCKET"], "snapshot_dir": str(self.snapshot_dir)}
                        for n in d.storage},
            "personas": personas,
            "controller": {"heartbeat": f"127.0.0.1:{self.controller['heartbeat']}",
                           "snmp": f"127.0.0.1:{self.controller['snmp']}",
                           "api": f"127.0.0.1:{self.controller['api']}",
                           "snmp_community": "public", "heartbeat_interval": self.heartbeat_s,
                           "bmc_poll_interval": min(1.0, self.heartbeat_s),
                           "alert_smtp": f"127.0.0.1:{self.mail_port}", "alert_mail_from": "aimctl@lab.test",
                           "alert_mail_to": ["oncall@lab.test"],
                           "alert_snmp": f"127.0.0.1:{self.trap_inbox_port}", "alert_snmp_community": "public"},
            "lab": {"control": f"127.0.0.1:{control.port_of(self.state)}", "power_delay_s": self.power_delay_s,
                    "boot_s": self.boot_s},
        }
        path = self.state / "endpoints.yaml"
        path.write_text("# written by `aimctl lab up`: the controller's overlay for this lab\n"
                        + yaml.safe_dump(doc, sort_keys=True))

    # ------------------------------------------------------------------ stop

    def stop(self) -> None:
        self.stop_event.set()
        for key in list(self.running):
            try:
                self.running.pop(key).stop()
            except Exception as exc:  # noqa: BLE001 - keep stopping the rest
                log.warning("stopping fault %s: %s", key, exc)
        if self.cluster is not None:
            try:
                self.cluster.stop()
            except Exception as exc:  # noqa: BLE001 - keep stopping the rest
                log.warning("stopping the controller cluster: %s", exc)
        for h in self.hosts.values():
            h.drop_all()
        for part in ("services", "observer", "relay", "traps", "mailbox", "trap_inbox", "dag", "switches", "redfish",
                     "ipmi", "tgt"):
            obj = getattr(self, part, None)
            if obj is None:
                continue
            try:
                obj.stop()
            except Exception as exc:  # noqa: BLE001 - keep stopping the rest
                log.warning("stopping %s: %s", part, exc)


def chap_user(persona: str) -> str:
    return f"aimctl-{persona}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lab.daemon")
    ap.add_argument("--state", required=True, type=Path)
    ap.add_argument("--definitions", default="personas", type=Path)
    ap.add_argument("--power-delay", type=float, default=1.0)
    ap.add_argument("--boot", type=float, default=2.0)
    ap.add_argument("--heartbeat", type=float, default=1.0)
    ap.add_argument("--tcp-timeout", type=float, default=120.0)
    ap.add_argument("--resync", type=float, default=3.0)
    a = ap.parse_args(argv)
    logging.basicConfig(level=os.environ.get("AIMCTL_LAB_LOG", "INFO"), filename=str(a.state / "lab.log"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    defs = load(a.definitions, use_cache=False)
    lab = Lab(defs, a.state, a.power_delay, a.boot, a.heartbeat, a.tcp_timeout, a.resync)
    srv = control.serve(lab, a.state)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    try:
        lab.start()
    except Exception as exc:
        (a.state / "failed").write_text(f"{type(exc).__name__}: {exc}\n")
        log.exception("lab failed to start")
        lab.stop()
        srv.shutdown()
        return 1
    tmp = a.state / "ready.tmp"
    tmp.write_text(json.dumps({"pid": os.getpid(), "up_s": lab.up_s}))
    tmp.replace(a.state / "ready")  # readers poll for it: never let them see half a file
    control.on_shutdown(srv, done.set)
    done.wait()
    lab.stop()
    srv.shutdown()
    for f in ("ready", "control.json"):
        (a.state / f).unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
