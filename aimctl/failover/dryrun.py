"""A failover as an ordered list of steps and actions, touching nothing (``aimctl plan``).

The words come from each step's own ``explain`` (``steps.FAILOVER``), the same ones a real failover
writes into its journal intent records; only the view differs (the planner's choice instead of a
running operation's facts).
"""

from __future__ import annotations

from typing import Any

from aimctl.errors import OperatorError
from aimctl.failover.describe import Renderer, plan_view
from aimctl.failover.planner import choose
from aimctl.failover.steps import FAILOVER
from aimctl.loader import Definitions


def plan_failover(defs: Definitions, persona: str, assignment: dict[str, str], quarantined: set[str],
                  to: str | None = None, render: Renderer | None = None) -> dict[str, Any]:
    if persona not in defs.personas:
        raise OperatorError(f"unknown persona {persona!r} (known: {', '.join(sorted(defs.personas))})")
    old = assignment.get(persona)
    if old is None:
        raise OperatorError(f"persona {persona} is not assigned to any server")
    others = {p: s for p, s in assignment.items() if p != persona}
    choice = choose(defs, persona, others | {persona: old}, quarantined, to=to)
    if choice.server is None:
        why = choice.why + [f"{s}: {r}" for s, r in sorted(choice.rejected.items())]
        return {"persona": persona, "from": old, "to": None, "why": why, "steps": []}
    view = plan_view(defs, persona, old, choice, render)
    steps = [{"name": name, "actions": actions} for name, _, explain in FAILOVER if (actions := explain(view))]
    return {"persona": persona, "from": old, "to": choice.server, "why": choice.why, "steps": steps}
