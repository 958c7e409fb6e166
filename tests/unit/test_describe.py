"""Steps describe themselves: the journal's intent records and ``aimctl plan`` come from one source."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from aimctl.drivers.registry import render_switch_lines
from aimctl.failover.context import Settings
from aimctl.failover.dryrun import plan_failover
from aimctl.failover.runner import Step, StepCall, StepOutcome, run_steps
from aimctl.failover.steps import FAILOVER, failover_steps
from aimctl.journal import Journal, persona_lease, server_lease
from aimctl.loader import load
from tests.conftest import DEFINITIONS


@pytest.fixture(scope="module")
def defs() -> Any:
    return load(DEFINITIONS, use_cache=False)


def walk(step: Step[Any], standby: str) -> Step[Any]:
    """The real step with its real describe, acting on nothing: it only records what a real step
    would decide (the standby), so the next steps describe what they would do."""
    def fn(ctx: Any, call: StepCall) -> StepOutcome:
        if step.name == "choose":
            return StepOutcome("ok", facts={"to": standby, "to_server": standby})
        return StepOutcome.ok()

    return Step(step.name, fn, step.describe)


@pytest.mark.parametrize("persona, old", [("web1", "r620-1"), ("exchange1", "r720-1")])
def test_journal_intents_say_what_the_plan_says(defs: Any, tmp_path: Path, persona: str, old: str) -> None:
    j = Journal(tmp_path / "journal.db")
    j.seed_assignment(defs.homes())
    ctx = SimpleNamespace(defs=defs, journal=j, bmc_unhealthy=dict, settings=Settings(), pool=ThreadPoolExecutor(2))
    plan = plan_failover(defs, persona, defs.homes(), set(),
                         render=lambda sw, intents: render_switch_lines(defs.switches[sw].os, intents))
    op_id = j.open_operation("failover", persona, {}, from_server=old,
                             leases=[persona_lease(persona), server_lease(old)])
    res = run_steps(j, op_id, [walk(s, plan["to"]) for s in failover_steps()], ctx)
    assert res.state == "done", res
    intents = {r.step: r.detail["actions"] for r in j.records(op_id) if r.phase == "intent"}
    planned = {s["name"]: s["actions"] for s in plan["steps"]}
    assert list(intents) == [name for name, _, _ in FAILOVER]
    for name, actions in intents.items():
        # A step with nothing to do for this operation says nothing, and the plan leaves it out.
        assert actions == planned.get(name, []), name
    assert any("> switchport access vlan" in a for a in intents["switch"])
    assert planned["choose"][0].startswith(f"{plan['to']}: pool ")
    j.close()
