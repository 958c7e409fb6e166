"""What a step is about to do, in words, from one view of the operation.

Each failover step has an ``explain`` function (next to the step in ``steps.py``) that turns a
``View`` into the lines an operator reads. The same functions write the journal's intent records
(``view_of`` a running operation) and ``aimctl plan failover`` (``plan_view``), so the dry run and
the journal cannot tell two different stories.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aimctl.drivers.protocols import PortIntent
from aimctl.drivers.registry import render_switch_lines
from aimctl.errors import OperatorError
from aimctl.failover.context import Ctx
from aimctl.failover.planner import Choice, choose
from aimctl.journal import Operation
from aimctl.loader import Definitions

Renderer = Callable[[str, list[PortIntent]], list[str]]


@dataclass(frozen=True)
class View:
    defs: Definitions
    persona: str
    kind: str
    old: str | None  # the body the persona leaves (None: it had none)
    new: str | None  # the standby it goes to (None: no standby can take it)
    why: tuple[str, ...] = ()  # why ``new`` (or why nothing)
    rejected: Mapping[str, str] = field(default_factory=dict)  # pool members not taken, and why
    facts: Mapping[str, Any] = field(default_factory=dict)  # the operation's facts so far
    boot_timer_s: float = 0.0
    switch_deadline_s: float = 60.0
    render: Renderer | None = None  # exact switch CLI lines, when a renderer is at hand

    @property
    def spec(self) -> Any:
        return self.defs.personas[self.persona].spec


def candidates(ctx: Ctx, op: Operation) -> tuple[dict[str, str], set[str], dict[str, str]]:
    """The planner's inputs for ``op``, read from the journal now: assignment, quarantined, unavailable."""
    assignment = {p: s for p, s in ctx.journal.assignment().items() if s}
    assignment[op.persona] = op.from_server or assignment.get(op.persona, "")
    quarantined = set(ctx.journal.quarantined())
    unavailable = dict(ctx.bmc_unhealthy())
    for lease in ctx.journal.leases():
        if lease.name.startswith("server:") and lease.holder != op.id:
            unavailable[lease.name[7:]] = f"in use by {lease.holder}"
    for s in op.facts.get("failed_standbys", []):
        # A standby given up on is quarantined with it; once an operator has cleared it (checked it,
        # fixed it), a retry may choose it again.
        if s in quarantined:
            unavailable[s] = "failed to boot this persona in this operation"
    return assignment, quarantined, unavailable


def view_of(ctx: Ctx, op: Operation, step: str) -> View:
    """A running operation as its next step sees it. Until a standby is chosen (and for the choose
    step itself), the standby shown is the one the planner would pick now."""
    spec = ctx.defs.personas[op.persona].spec
    new = op.facts.get("to")
    why: tuple[str, ...] = ()
    rejected: Mapping[str, str] = {}
    if step == "choose" or new is None:
        try:
            c = choose(ctx.defs, op.persona, *candidates(ctx, op), to=op.facts.get("requested_to"))
        except OperatorError as exc:
            c = Choice(None, [str(exc)])
        new, why, rejected = c.server, tuple(c.why), c.rejected
    def render(sw: str, intents: list[PortIntent]) -> list[str]:
        return render_switch_lines(ctx.defs.switches[sw].os, intents)

    return View(ctx.defs, op.persona, op.kind, op.from_server, new, why, rejected, op.facts,
                ctx.settings.boot_timer_override_s or spec.boot_timer, ctx.settings.switch_deadline_s, render)


def plan_view(defs: Definitions, persona: str, old: str, c: Choice, render: Renderer | None,
              switch_deadline_s: float = 60.0) -> View:
    """A failover that has not happened: the planner's choice, the definitions' timers."""
    return View(defs, persona, "failover", old, c.server, tuple(c.why), c.rejected, {},
                defs.personas[persona].spec.boot_timer, switch_deadline_s, render)
