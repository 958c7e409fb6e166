"""What the lab's control API does: status read in process, fault injection, reset to the homes."""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

from aimctl.drivers.protocols import PortIntent, PortMode
from aimctl.errors import OperatorError
from lab import faults
from lab.network.traps import cable_ifindex

log = logging.getLogger(__name__)

FAULTS = faults.NAMES
BMC_FAULTS = {"bmc-down": "down", "bmc-slow": "slow", "bmc-lies": "lies", "bmc-auth": "auth", "bmc-phantom": "phantom"}
# Faults of the lab's controller cluster (``aimctl lab up --etcd 3 --controllers 3``), by member name;
# controller-kill and controller-pause also take ``controller``: the one controller the overlay names.
CLUSTER_FAULTS = ("controller-kill", "controller-pause", "etcd-member-kill", "controller-etcd-cut")
INTRUDER = "iqn.2026-01.lab.intruder:{persona}"
FLAPS = 4  # linkDown/linkUp pairs a link-flap sends


def _server_bmc(lab: Any, server: str) -> Any:
    if server not in lab.defs.servers:
        raise OperatorError(f"unknown server {server!r}")
    return lab.redfish if lab.defs.servers[server].bmc.kind == "redfish" else lab.ipmi


def status(lab: Any) -> dict[str, Any]:
    d = lab.defs
    servers = {}
    for s, srv in d.servers.items():
        bmc = _server_bmc(lab, s)
        channels = {}
        for ch, cable in sorted(srv.channels.items()):
            st = lab.switches.port_state(cable.switch, cable.port)
            channels[str(ch)] = {"switch": cable.switch, "port": cable.port,
                                 "mode": st.mode.value if st.mode else None, "vlans": list(st.vlans)}
        if srv.bmc.kind == "redfish":
            raw = lab.redfish.iscsi_boot(s) or {}
            boot = {k: raw.get(k) for k in ("InitiatorName", "PrimaryTargetName", "PrimaryLUN", "CHAPUsername")}
        else:
            boot = {"boot_device": lab.ipmi.boot_device(s)}
        servers[s] = {"bmc": srv.bmc.kind, "power": "on" if bmc.power(s) else "off", **lab.hosts[s].snapshot(),
                      "boot_config": boot, "channels": channels, "service_restarts": lab.services.restarts(s),
                      "faults": sorted(k for (t, k), on in lab.faults.items() if on and t == s)}
    targets = {}
    for iqn, view in lab.tgt.show_targets().items():
        targets[iqn] = {"acl": list(view.acl), "accounts": list(view.accounts),
                        "sessions": [{"initiator": i, "alias": a} for i, a in view.nexus]}
    cluster = getattr(lab, "cluster", None)
    return {"servers": servers, "targets": targets, "observer": lab.observer.verdict(),
            "alerts": {"mail": len(lab.mailbox.read()), "traps": len(lab.trap_inbox.read())},
            "cluster": cluster.status() if cluster is not None else None,
            "relay": {"forwarded": dict(lab.relay.forwarded), "dropped": dict(lab.relay.dropped),
                      "loss": dict(lab.relay.loss)},
            "dag": lab.dag.distribution() if lab.dag else None,
            "faults": [{"kind": k, "target": t} for (t, k), on in lab.faults.items() if on]}


def fault(lab: Any, kind: str, target: str, clear: bool, after: int | None = None,
          **params: Any) -> dict[str, Any]:
    """Inject (or clear) one fault of the catalogue (``lab.faults``) on ``target``; ``params`` are
    the kind's options (e.g. ``after`` for switch-hang, ``delay_s`` for bmc-slow)."""
    opts = faults.check_params(kind, {"after": after, **params})
    on = not clear
    d = lab.defs
    if kind == "power-button" and "," in target:
        # Many bodies at once (a PDU trips): pressed together, not one after another.
        from concurrent.futures import ThreadPoolExecutor

        names = target.split(",")
        with ThreadPoolExecutor(max_workers=len(names)) as pool:
            for f in [pool.submit(fault, lab, kind, n, clear) for n in names]:
                f.result()
        return {"ok": True, "kind": kind, "target": target, "active": on}
    if kind in CLUSTER_FAULTS and target != "controller":
        cluster = getattr(lab, "cluster", None)
        if cluster is None:
            raise OperatorError(f"{kind}: no controller cluster in this lab (aimctl lab up --etcd 3 --controllers 3)"
                                + ("; the lab's single controller is the target 'controller'"
                                   if kind in ("controller-kill", "controller-pause") else ""))
        cluster.fault(kind, target, on)
    elif kind == "power-button":
        if clear:
            _server_bmc(lab, target).set_power(target, True)
        else:
            _server_bmc(lab, target).press_power_button(target)
    elif kind in BMC_FAULTS:
        _server_bmc(lab, target).set_fault(target, BMC_FAULTS[kind], on, opts.get("delay_s"))
    elif kind == "bmc-alert":
        # The host crashed under a live BMC: the BMC sends its alert trap, naming itself by its server.
        _server_bmc(lab, target)
        if not clear:
            lab.traps.bmc_alert(target)
        return {"ok": True, "kind": kind, "target": target, "active": False}
    elif kind == "switch-hang":
        if target not in d.switches:
            raise OperatorError(f"unknown switch {target!r}")
        lab.switches.set_fault(target, "hang", on, after=int(opts.get("after", 0)))
    elif kind == "switch-reject":
        if target not in d.switches:
            raise OperatorError(f"unknown switch {target!r}")
        lab.switches.set_fault(target, "reject", on)  # the first config command of each session is refused
    elif kind == "storage-error":
        lab.tgt.set_fault("storage-error", on)
    elif kind == "storage-step-error":
        _storage_step_error(lab, target, on)
    elif kind == "scn-partition":
        _server_bmc(lab, target)
        (lab.relay.partitioned.discard if clear else lab.relay.partitioned.add)(target)
    elif kind == "scn-loss":
        for s in _servers_or_all(lab, target):
            if on:
                lab.relay.loss[s] = opts.get("percent", 3.0) / 100
            else:
                lab.relay.loss.pop(s, None)
    elif kind == "scn-flap":
        _repeating(lab, kind, target, on, lambda: _scn_flap(lab, target, opts.get("period_s", 1.0)))
    elif kind == "trap-storm":
        _repeating(lab, kind, target, on, lambda: _trap_storm(lab, target, int(opts.get("rate", 100))))
    elif kind == "boot-fail":
        _server_bmc(lab, target)
        lab.hosts[target].boot_fail = on
    elif kind in ("health-degrade", "event-log", "hw-mismatch", "link-flap"):
        _body_fault(lab, kind, target, on)
    elif kind == "vlan-change":
        _vlan_change(lab, target)
    elif kind == "acl-add":
        if target not in d.personas:
            raise OperatorError(f"acl-add wants a persona, got {target!r}")
        t = d.personas[target].spec.boot.target
        intruder = INTRUDER.format(persona=target)
        (lab.storage.bind if on else lab.storage.unbind)(t, intruder)
    elif kind == "service-fail":
        _server_bmc(lab, target)
        lab.services.set_down(target, on)
    elif kind == "dag-copy-failed":
        _dag_copy_failed(lab, target, on)
    elif kind == "link-down":
        server, _, ch = target.partition(":")
        srv = d.servers.get(server)
        if srv is None or (ch and (not ch.isdigit() or int(ch) not in srv.channels)):
            raise OperatorError(f"link-down wants SERVER or SERVER:CHANNEL, got {target!r}")
        chans = [int(ch)] if ch else sorted(srv.channels)
        for c in chans:
            _set_link(lab, _port(lab, srv.channels[c]), not on)
    elif kind == "controller-kill":
        return _controller_kill(lab, target, opts.get("delay_s", 0.0), clear)
    elif kind in ("etcd-member-kill", "controller-etcd-cut"):
        raise OperatorError(f"{kind} wants a cluster member (c1, e1, ...), not {target!r}")
    elif kind == "controller-pause":
        _controller_pause(lab, opts.get("seconds"), on)
    lab.faults[(target, kind)] = on
    return {"ok": True, "kind": kind, "target": target, "active": on}


def _servers_or_all(lab: Any, target: str) -> list[str]:
    if target == "all":
        return list(lab.defs.servers)
    _server_bmc(lab, target)
    return [target]


def _port(lab: Any, cable: Any) -> faults.Port:
    return faults.Port(cable.switch, cable.port, cable_ifindex(lab.defs, cable))


def _set_link(lab: Any, p: faults.Port, up: bool) -> None:
    """A port goes down or up on the switch, and the switch says so in a trap."""
    lab.switches.set_link(p.switch, p.port, up)
    lab.traps.link(p.switch, p.ifindex, up)


def _repeating(lab: Any, kind: str, target: str, on: bool, start: Any) -> None:
    """Faults that act until cleared run a thread each (``lab.running``), stopped on clear and reset."""
    key = (target, kind)
    running = lab.running.pop(key, None)
    if running is not None:
        running.stop()
    if on:
        lab.running[key] = start()


def _scn_flap(lab: Any, server: str, period_s: float) -> faults.Repeating:
    _server_bmc(lab, server)
    srv = lab.defs.servers[server]
    net = lab.defs.pools[lab.defs.server_pool[server]].networks[lab.defs.pools[lab.defs.server_pool[server]].scn]
    ports = [_port(lab, srv.channels[c]) for c in (net.primary, net.secondary) if c is not None and c in srv.channels]
    return faults.flap(ports, period_s, lambda p, up: _set_link(lab, p, up))


def _trap_storm(lab: Any, target: str, rate: int) -> faults.Repeating:
    if target != "all" and target not in lab.defs.switches:
        raise OperatorError(f"trap-storm wants a switch or 'all', got {target!r}")
    ports = [_port(lab, cable) for srv in lab.defs.servers.values() for cable in srv.channels.values()
             if target in ("all", cable.switch)]

    def bogus(p: faults.Port) -> None:
        if p.port == "?":
            lab.traps.link(p.switch, p.ifindex, False)  # a port the switch does not have
        else:
            lab.traps.link(p.switch, p.ifindex, False, community="not-configured")

    return faults.trap_storm(ports, rate, lambda p, up: lab.traps.link(p.switch, p.ifindex, up), bogus,
                             lambda p: bool(lab.switches.port_link(p.switch, p.port)))


def _storage_step_error(lab: Any, server: str, on: bool) -> None:
    _server_bmc(lab, server)
    if lab.defs.servers[server].bmc.kind != "redfish":
        raise OperatorError(f"storage-step-error is armed by a Redfish boot-config write; {server} is IPMI")
    if on:
        lab.storage_step_armed.add(server)
        return
    fired = lab.faults.get((server, "storage-step-error")) and server not in lab.storage_step_armed
    lab.storage_step_armed.discard(server)
    if fired and not any(on for (_, k), on in lab.faults.items() if k == "storage-error"):
        lab.tgt.set_fault("storage-error", False)


def _dag_copy_failed(lab: Any, target: str, on: bool) -> None:
    if lab.dag is None:
        raise OperatorError("this lab has no DAG")
    member, _, db = target.partition(":")
    member = {p: m for m, p in lab.dag.members.items()}.get(member, member).upper()
    if member not in lab.dag.members:
        raise OperatorError(f"{member} is not a member of {lab.dag.dag} ({', '.join(lab.dag.members)})")
    dbs = [db] if db else lab.dag.copies_of(member)
    for name in dbs:
        try:
            lab.dag.stick_failed(name, member, on)
        except KeyError as exc:
            raise OperatorError(str(exc.args[0])) from None


def _controller_kill(lab: Any, target: str, delay_s: float, clear: bool) -> dict[str, Any]:
    """The lab's single controller (found by the heartbeat or API port the lab gave it): SIGKILL to
    its process group, now or in ``delay_s``. Whatever runs it (systemd, a test) starts it again;
    there is nothing for the lab to clear."""
    if clear:
        return {"ok": True, "kind": "controller-kill", "target": target, "active": False}
    pid = faults.controller_pid(lab.controller)

    def kill() -> None:
        log.warning("controller-kill: SIGKILL to controller pid %d", pid)
        faults.signal_controller(pid, signal.SIGKILL)

    if delay_s > 0:
        t = threading.Timer(delay_s, kill)
        t.daemon = True
        t.start()
    else:
        kill()
    return {"ok": True, "kind": "controller-kill", "target": target, "active": False, "pid": pid,
            "delay_s": delay_s}


def _controller_pause(lab: Any, seconds: float | None, on: bool) -> None:
    """The lab's single controller stopped (SIGSTOP) until cleared, or for ``seconds``: a stall."""
    paused = lab.running.pop(("controller", "controller-pause"), None)
    if paused is not None:
        paused.stop()
    if on:
        lab.running[("controller", "controller-pause")] = faults.Stall(faults.controller_pid(lab.controller), seconds)


def _body_fault(lab: Any, kind: str, target: str, on: bool) -> None:
    """Hardware that starts failing: ``health-degrade SERVER[:critical]``, ``event-log SERVER[:EVENT]``,
    ``hw-mismatch SERVER`` (a DIMM drops out), ``link-flap SERVER[:CHANNEL]`` (linkDown/linkUp pairs)."""
    server, _, arg = target.partition(":")
    bmc = _server_bmc(lab, server)
    hw = bmc.hardware
    if kind == "health-degrade":
        if lab.defs.servers[server].bmc.kind != "redfish":
            raise OperatorError(f"{server}: an IPMI BMC reports no summary health; use event-log")
        hw.set_health(server, ("Critical" if arg == "critical" else "Warning") if on else "OK")
    elif kind == "event-log":
        if on:
            try:
                hw.log(server, arg or "correctable-ecc-limit")
            except ValueError as exc:
                raise OperatorError(str(exc)) from None
        else:
            hw.clear_log(server)
    elif kind == "hw-mismatch":
        (hw.lose_memory if on else hw.reset)(server)
    elif kind == "link-flap" and on:
        srv = lab.defs.servers[server]
        ch = int(arg) if arg else max(srv.channels)  # not an SCN channel by default: flaps, not death
        cable = srv.channels[ch]
        for _ in range(FLAPS):
            for up in (False, True):
                lab.switches.set_link(cable.switch, cable.port, up)
                lab.traps.link(cable.switch, cable_ifindex(lab.defs, cable), up)


def _vlan_change(lab: Any, target: str) -> None:
    """Someone edits a port behind aimctl's back: a trunk loses its first VLAN, else the port goes to VLAN 1."""
    server, _, ch = target.partition(":")
    srv = lab.defs.servers.get(server)
    if srv is None or not ch.isdigit() or int(ch) not in srv.channels:
        raise OperatorError(f"vlan-change wants SERVER:CHANNEL, got {target!r}")
    cable = srv.channels[int(ch)]
    st = lab.switches.port_state(cable.switch, cable.port)
    if st.mode is PortMode.TRUNK and len(st.vlans) > 1:
        intent = PortIntent(cable.port, PortMode.TRUNK, tuple(sorted(st.vlans))[1:])
    else:
        intent = PortIntent(cable.port, PortMode.ACCESS, (1,))
    lab.switches.reset_port(cable.switch, cable.port, intent)


def cluster_up(lab: Any, body: dict[str, Any]) -> dict[str, Any]:
    """Start (or, with a new ``name``, restart on a fresh journal) the lab's controller cluster."""
    from lab.cluster.members import LabCluster

    with lab.lock:
        if lab.cluster is None:
            lab.cluster = LabCluster(lab, lab.state / "cluster", int(body.get("etcd", 3)),
                                     int(body.get("controllers", 3)), str(body.get("name", "lab")),
                                     body.get("controller"), body.get("timing"), body.get("definitions"))
            try:
                return dict(lab.cluster.start())
            except BaseException:
                lab.cluster.stop()
                lab.cluster = None
                raise
        return dict(lab.cluster.restart(body.get("name"), body.get("controller"), body.get("timing")))


def cluster_down(lab: Any) -> dict[str, Any]:
    with lab.lock:
        if lab.cluster is not None:
            lab.cluster.stop()
            lab.cluster = None
        for key in [k for k in lab.faults if k[1] in CLUSTER_FAULTS]:
            del lab.faults[key]
    return {"ok": True}


def home_port_intents(lab: Any) -> dict[str, list[PortIntent]]:
    """What every cabled port carries in the definitions' home state (standbys: VLAN 1, unconfigured)."""
    from aimctl.failover.planner import port_intents

    d = lab.defs
    homes = {s: p for p, s in d.homes().items()}
    out: dict[str, list[PortIntent]] = {}
    for s, srv in d.servers.items():
        if s in homes:
            for sw, intents in port_intents(d, homes[s], s).items():
                out.setdefault(sw, []).extend(intents)
        else:
            for cable in srv.channels.values():
                out.setdefault(cable.switch, []).append(PortIntent(cable.port, PortMode.ACCESS, (1,)))
    return out


def reset(lab: Any, wait_s: float = 30.0) -> dict[str, Any]:
    """Back to the definitions' homes: faults cleared, power, boot configs, ports, CHAP, sessions, DAG."""
    t0 = time.monotonic()
    with lab.lock:
        for (target, kind), on in list(lab.faults.items()):
            if on and kind != "power-button" and not faults.KINDS[kind].one_shot:
                fault(lab, kind, target, clear=True)
        lab.faults.clear()
        for key in list(lab.running):
            lab.running.pop(key).stop()
        lab.services.reset()
        for s in lab.defs.servers:
            bmc = _server_bmc(lab, s)
            bmc.reset(s, power_on=False)
            lab.hosts[s].power_changed(False)
        for h in lab.hosts.values():
            h.drop_all()
        lab.reset_storage()
        for sw, intents in home_port_intents(lab).items():
            for i in intents:
                lab.switches.reset_port(sw, i.port, i)
                lab.switches.set_link(sw, i.port, True)
        if lab.dag:
            lab.dag.reset()
            lab.dag_up.clear()
        lab.observer.reset()
        lab.mailbox.clear()
        lab.trap_inbox.clear()
        lab.home_all(power=True)
    wait_homes(lab, wait_s)
    return {"ok": True, "reset_s": round(time.monotonic() - t0, 3)}


def wait_homes(lab: Any, wait_s: float) -> None:
    homes = {s: p for p, s in lab.defs.homes().items()}
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if all(lab.hosts[s].status.booted == p for s, p in homes.items()):
            return
        time.sleep(0.05)
    bad = {s: lab.hosts[s].snapshot()["detail"] for s, p in homes.items() if lab.hosts[s].status.booted != p}
    raise OperatorError(f"home personas did not boot within {wait_s:.0f}s: {bad}")
