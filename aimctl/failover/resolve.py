"""An operator's way out of a stopped operation (DESIGN.md rule 7): retry, abandon, mark-fenced.

Pure decisions over an operation and its journal records; the daemon carries them out (journal,
audit, change record) and the API and CLI call the daemon.

- ``retry``: run the operation again from the step that stopped it, after the operator fixed
  something. Steps are idempotent and re-read the world, so this is the same as a resume.
- ``mark-fenced SERVER``: the operator has seen the body is out (pulled, or its power cut at the
  PDU). That human decision stands in for the power-off and quarantine read-backs of rule 1; the
  storage fence must still be proven. The operation then goes on as after ``retry``.
- ``abandon``: end the operation (aborted), release its leases, and say where the persona is.
  Abandoning never touches a device. It is safe because of what it refuses and what it marks:

  * the persona stays on its current server by default: the detector watches it again and fails it
    over anew if it is dead; ``none`` leaves it unassigned (nobody watches it; an operator brings it
    back with ``aimctl failover PERSONA --to SERVER``); the standby this operation chose may be
    named only once the old body's fence was confirmed (two bodies must never both claim it);
  * a standby the operation had started to configure (boot config, ports or power) and that does
    not keep the persona is quarantined: it may hold the persona's boot config or VLANs, or run
    it; an operator checks it, then ``aimctl clear``s it;
  * an old body whose fence was confirmed and that does not keep the persona is quarantined, as a
    failover's ``done`` step would have done.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from aimctl.journal import Operation, Record

WAITING = ("needs-operator", "waiting-approval")
# Steps after which the chosen standby may hold something of the persona.
TOUCH_STANDBY = ("bootcfg", "switch", "power_on", "heartbeat", "recovery")
KEEP = "keep"  # persona_on: leave the assignment as the journal has it
NONE = "none"  # persona_on: unassigned


@dataclass(frozen=True)
class AbandonPlan:
    refusal: str = ""  # non-empty: refuse, change nothing
    assign: str | None = None  # the persona's server after abandoning (None: unassigned)
    change_assignment: bool = False
    quarantine: dict[str, str] = field(default_factory=dict)  # server -> reason


def done_steps(records: Sequence[Record]) -> set[str]:
    return {r.step for r in records if r.phase == "result" and r.status in ("ok", "skipped")}


def started_steps(records: Sequence[Record]) -> set[str]:
    return {r.step for r in records if r.phase == "intent"}


def stopped_at(records: Sequence[Record]) -> str | None:
    """The step whose failure stopped the operation (the last failed result)."""
    failed = [r.step for r in records if r.phase == "result" and r.status == "failed"]
    return failed[-1] if failed else None


def abandon_plan(op: Operation, records: Sequence[Record], current: str | None, persona_on: str) -> AbandonPlan:
    """What abandoning ``op`` does, or why it is refused. ``current``: the persona's server now."""
    if op.state not in WAITING:
        return AbandonPlan(f"{op.id} is {op.state}: only an operation waiting for an operator or an "
                           f"approval can be abandoned")
    done, started = done_steps(records), started_steps(records)
    fenced = "fence" in done and op.from_server is not None
    standby = op.facts.get("to")
    if persona_on == KEEP:
        assign, change = current, False
    elif persona_on == NONE:
        assign, change = None, True
    elif persona_on == op.from_server:
        assign, change = persona_on, persona_on != current
    elif persona_on == standby and standby is not None:
        if not fenced:
            return AbandonPlan(f"{op.persona} can be left on {standby} only once {op.from_server}'s fence is "
                               f"confirmed (it is not): keep it on {op.from_server}, or `none`")
        assign, change = persona_on, True
    else:
        options = ", ".join(x for x in (op.from_server, standby if fenced else None, NONE) if x)
        return AbandonPlan(f"--persona-on {persona_on}: not a server of {op.id} (choose one of: {options})")
    quarantine: dict[str, str] = {}
    if standby and standby != assign and started & set(TOUCH_STANDBY):
        quarantine[standby] = (f"{op.id} was abandoned after it began configuring this standby for "
                               f"{op.persona}: check its boot config, ports and power, then clear it")
    if fenced and op.from_server and op.from_server != assign:
        quarantine[op.from_server] = f"fenced by {op.id} (abandoned)"
    return AbandonPlan("", assign, change, quarantine)


def fence_targets(op: Operation, records: Sequence[Record]) -> list[str]:
    """Bodies an operator may mark as out for ``op``: the old body, standbys given up on, and the
    standby whose fence stopped the heartbeat step."""
    out = [s for s in [op.from_server, *op.facts.get("failed_standbys", [])] if s]
    if stopped_at(records) == "heartbeat" and op.facts.get("to"):
        out.append(str(op.facts["to"]))
    return list(dict.fromkeys(out))


def mark_fenced_refusal(op: Operation, records: Sequence[Record], server: str) -> str:
    if op.state != "needs-operator":
        return f"{op.id} is {op.state}: a body can be marked fenced only while an operation waits for an operator"
    targets = fence_targets(op, records)
    if server not in targets:
        return f"{server} is not a body {op.id} fences (it fences: {', '.join(targets) or 'none'})"
    return ""


def retry_refusal(op: Operation) -> str:
    if op.state != "needs-operator":
        hint = f" (use `aimctl approve {op.id}` or `aimctl abandon {op.id}`)" if op.state == "waiting-approval" else ""
        return f"{op.id} is {op.state}: only an operation waiting for an operator can be retried{hint}"
    return ""
