"""Every decision in one sentence: what operators read in status, timelines, the API and alerts.

Pure functions over what the journal and the detector already hold (step details, operation
facts, detector reasons): the sentence is made where it is shown, so a step never has to carry
prose, and an old journal reads in today's words. Golden tests pin the main paths.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from aimctl.failover.planner import choice_sentence

__all__ = ["choice_sentence", "clock", "detector_sentence", "operation_sentence", "step_sentence"]

TRIGGERS = {
    "PersonaDead": "dead",
    "PersonaPresumedDead": "presumed dead",
    "PersonaUnhealthy": "unhealthy (its agent gave up restarting its services)",
    "operator": "failed over by an operator",
    "planned": "a planned move",
    "suspect": "a planned move off a suspect body",
    "drift": "a drift repair",
}


def clock(t: float | None) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(t)) + " UTC" if t else "an unknown time"


def _n(items: Any, word: str, plural: str | None = None) -> str:
    n = len(items) if items is not None else 0
    return f"{n} {word if n == 1 else plural or word + 's'}"


def step_sentence(step: str, status: str | None, detail: Mapping[str, Any], op: Mapping[str, Any]) -> str:
    """One sentence for one step attempt of a timeline (``op``: the operation as a dict)."""
    persona = op.get("persona", "")
    facts = op.get("facts") or {}
    if status in (None, "running", "interrupted"):
        return f"{step} {'running' if status == 'running' else 'cut short (resumed from the journal)'}"
    if status == "failed":
        stopped = detail.get("stopped") or "failed"
        return f"{step} failed, operation {stopped}: {detail.get('reason', 'no reason recorded')}"
    if status == "retarget":
        return f"{step}: {detail.get('reason', 'retargeting')}"
    if status == "skipped":
        return f"{step} skipped: {detail.get('reason', '')}".rstrip(": ")
    if step == "confirm":
        trigger = str(detail.get("trigger") or facts.get("trigger") or op.get("kind", ""))
        words = TRIGGERS.get(trigger, trigger)
        return f"{persona} {words}: {detail.get('evidence', '')}".rstrip(": ") if trigger.startswith("Persona") \
            else f"{words}: {detail.get('evidence', '')}".rstrip(": ")
    if step == "approve":
        return f"approved by {detail.get('approved_by', 'an operator')}"
    if step == "choose":
        if detail.get("sentence"):
            return str(detail["sentence"])
        return choice_sentence(persona, detail.get("to"), detail.get("why") or [], detail.get("rejected") or {})
    if step == "fence":
        old = op.get("from_server") or "the old body"
        st = detail.get("storage") or {}
        parts = [f"fenced {old}: CHAP secret of {persona} rotated on {_n(st.get('targets'), 'target')}"
                 + (" and the old one refused" if st.get("old_secret_refused") else "")]
        power = str(detail.get("power", ""))
        parts.append("power off read back" if "read back" in power else f"power {power}")
        if detail.get("quarantine"):
            parts.append("ports quarantined at once (the power-off could not be read back)")
        if detail.get("agent_stopped"):
            parts.append("its agent had stopped the persona first")
        return "; ".join(parts)
    if step == "storage":
        targets = detail.get("targets") or {}
        users = sorted({str(v.get("chap_user")) for v in targets.values() if isinstance(v, dict)})
        acls = sorted({a for v in targets.values() if isinstance(v, dict) for a in v.get("acl") or []})
        return (f"{_n(targets, 'target')} let in only {', '.join(acls) or 'nobody'} with CHAP account "
                f"{', '.join(users) or '-'} (read back)")
    if step == "bootcfg":
        return (f"boot config of {detail.get('server')} set to {detail.get('target')} LUN {detail.get('lun')} as "
                f"{detail.get('initiator')} (read back)")
    if step == "switch":
        ports = detail.get("ports") or {}
        n = sum(len(v) for v in ports.values() if isinstance(v, list))
        return f"{n} port(s) on {_n(ports, 'switch', 'switches')} set in one session each and read back"
    if step == "power_on":
        return f"{detail.get('server')} powered {detail.get('power', 'on')}"
    if step == "heartbeat":
        return f"first heartbeat of {persona} from {detail.get('server')} {detail.get('waited_s')}s after power-on"
    if step == "recovery":
        hooks = detail.get("hooks") or []
        if not hooks:
            return "no recovery hooks defined"
        bad = [h.get("hook", "?") for h in hooks if not h.get("ok")]
        return f"{_n(hooks, 'hook')} ran" + (f", failed: {', '.join(map(str, bad))}" if bad else ", all ok")
    if step == "done":
        return str(detail.get("summary") or "done")
    if step == "repair":
        return str(detail.get("sentence") or "repaired and read back")
    if step == "resolve":  # an operator's exit: retry, mark-fenced, abandon
        what = str(detail.get("action", "resolved"))
        if detail.get("server"):
            what += f" {detail['server']}"
        note = f": {detail['note']}" if detail.get("note") else ""
        return f"{what} by {detail.get('by', 'an operator')}{note}"
    return str(detail.get("reason") or detail.get("summary") or f"{step} {status}")


def operation_sentence(op: Mapping[str, Any]) -> str:
    """Where an operation stands, and why, in one sentence."""
    kind, persona, state = op.get("kind", ""), op.get("persona", ""), op.get("state", "")
    facts = op.get("facts") or {}
    src, dst = op.get("from_server") or "?", facts.get("to") or op.get("to_server")
    head = f"{op.get('id')}: {kind} of {persona} from {src}" + (f" to {dst}" if dst else "")
    result = str(op.get("result") or "")
    if state == "done":
        return f"{head}: done" + (f" ({result})" if result else "")
    if state == "needs-operator":
        step, _, why = result.partition(": ")
        return f"{head}: stopped at {step} and waits for an operator: {why or result}"
    if state == "waiting-approval":
        return f"{head}: waits for approval ({result or 'manual policy'})"
    if state == "running":
        return f"{head}: running"
    return f"{head}: {state}" + (f": {result}" if result else "")


def detector_sentence(persona: str, state: str, reason: str, since: float | None) -> str:
    """A persona's detector state with its reason and when it began."""
    if state == "alive":
        return f"{persona} alive: {reason or 'heartbeats fresh'}"
    verdict = {
        "suspect": "suspect (not failed over: one source is not enough)",
        "unreachable": "unreachable, not dead (not failed over: a partition)",
        "dead": "dead",
        "presumed-dead": "presumed dead (moves only through a confirmed fence)",
        "unhealthy": "unhealthy",
    }.get(state, state)
    return f"{persona} {verdict} since {clock(since)}: {reason}"
