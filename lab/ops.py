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
    return {"servers": servers, "targets": targets, "observer": lab.observer.verdict(),
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
    if kind == "power-button":
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
    elif kind == "controller-stall":
        _controller_stall(lab, target, opts.get("seconds", 5.0), on)
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
    if target != "controller":
        raise OperatorError(f"controller-kill wants the target 'controller', got {target!r}")
    if clear:
        raise OperatorError("controller-kill is an event: there is nothing to clear")
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


def _controller_stall(lab: Any, target: str, seconds: float, on: bool) -> None:
    if target != "controller":
        raise OperatorError(f"controller-stall wants the target 'controller', got {target!r}")
    stall = lab.running.pop((target, "controller-stall"), None)
    if stall is not None:
        stall.stop()
    if on:
        lab.running[(target, "controller-stall")] = faults.Stall(faults.controller_pid(lab.controller), seconds)


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
