"""A failover as an ordered list of steps and actions, touching nothing (``aimctl plan``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aimctl.drivers.protocols import PortIntent
from aimctl.errors import OperatorError
from aimctl.failover.planner import choose, merge_intents, port_intents, quarantine_intents
from aimctl.loader import Definitions

Renderer = Callable[[str, list[PortIntent]], list[str]]


def _intent_text(i: PortIntent) -> str:
    vl = ",".join(str(v) for v in i.vlans)
    return f"{i.port}: {i.mode.value} vlan {vl}"


def plan_failover(defs: Definitions, persona: str, assignment: dict[str, str], quarantined: set[str],
                  to: str | None = None, render: Renderer | None = None, kind: str = "failover") -> dict[str, Any]:
    pd = defs.personas.get(persona)
    if pd is None:
        raise OperatorError(f"unknown persona {persona!r} (known: {', '.join(sorted(defs.personas))})")
    spec = pd.spec
    old = assignment.get(persona)
    if old is None:
        raise OperatorError(f"persona {persona} is not assigned to any server")
    others = {p: s for p, s in assignment.items() if p != persona}
    choice = choose(defs, persona, others | {persona: old}, quarantined, to=to)
    if choice.server is None:
        why = choice.why + [f"{s}: {r}" for s, r in sorted(choice.rejected.items())]
        return {"persona": persona, "from": old, "to": None, "why": why, "steps": []}
    new = choice.server
    old_srv, new_srv = defs.servers[old], defs.servers[new]
    targets = [spec.boot.target] + [d.target for d in spec.data]
    storage = defs.storage[spec.storage]
    steps: list[dict[str, Any]] = []

    def step(name: str, *actions: str) -> None:
        steps.append({"name": name, "actions": list(actions)})

    if kind == "failover":
        step("confirm", f"{persona} on {old}: missing heartbeats confirmed by a second source "
                        f"(BMC {old_srv.bmc.kind} reports off/failed, or SNMP linkDown on SCN channels)")
    else:
        step("confirm", f"planned {kind}: {persona}'s agent on {old} is asked to stop it cleanly first")
    if spec.policy == "manual" and kind == "failover":
        step("approve", f"wait for `aimctl approve` (confirm timeout {int(spec.confirm_timeout)}s, "
                        f"then {spec.on_confirm_timeout})")
    step("choose", f"{new}: " + "; ".join(choice.why),
         *[f"not {s}: {r}" for s, r in sorted(choice.rejected.items())])
    fence = [f"rotate CHAP account of {persona} on {t} ({spec.storage}); kill every session to it; "
             f"prove a login with the old secret is refused" for t in targets]
    fence += [f"power off {old} via {old_srv.bmc.kind} BMC {old_srv.bmc.address} (ForceOff) and read back Off",
              f"clear iSCSI boot config of {old} (NIC {old_srv.boot_nic})",
              f"if the power-off cannot be read back: quarantine {old}'s ports now (VLAN "
              f"{defs.pools[pd.pool].quarantine_vlan}) and read back; else in the switch step",
              "if neither is confirmed: stop in needs-operator, move nothing"]
    step("fence", *fence)
    step("storage", *[f"{t}: ACL bound to {spec.initiator} only; CHAP account aimctl-{persona} with the new "
                      f"secret; read back" for t in targets])
    how = "Redfish iSCSIBoot on " + new_srv.boot_nic if new_srv.bmc.kind == "redfish" else \
        f"iPXE sanboot script /boot/{new}.ipxe + next boot from network (IPMI)"
    step("bootcfg", f"{new}: {how}: initiator {spec.initiator}, target {spec.boot.target} LUN {spec.boot.lun} "
                    f"at {storage.portal}:{storage.port}, CHAP aimctl-{persona}/<new secret>; read back")
    per_switch = merge_intents(port_intents(defs, persona, new), quarantine_intents(defs, old))
    sw_actions = []
    for sw, intents in sorted(per_switch.items()):
        sw_def = defs.switches[sw]
        sw_actions.append(f"{sw} ({sw_def.os}, one session): " + "; ".join(_intent_text(i) for i in intents))
        if render is not None:
            sw_actions.extend(f"  {sw}> {line}" for line in render(sw, intents))
        sw_actions.append(f"  {sw}: read back touched ports and compare; on mismatch restore and stop")
    step("switch", *sw_actions)
    step("power_on", f"power on {new} via {new_srv.bmc.kind} BMC and read back On")
    step("heartbeat", f"wait up to {int(spec.boot_timer)}s for {persona}'s signed heartbeat from {new}; "
                      f"else fence {new}, mark it failed and retarget (at most {defs.pools[pd.pool].max_retargets})")
    hooks = [f"{h.point}: {h.hook}" + (f" {h.dag} on {h.server}" if h.hook == "exchange-dag" else "")
             for h in spec.recovery]
    step("recovery", *(hooks or ["no recovery hooks defined"]))
    step("done", f"assignment {persona} -> {new}; {old} quarantined until cleared; change record closed")
    return {"persona": persona, "from": old, "to": new, "why": choice.why, "steps": steps}
