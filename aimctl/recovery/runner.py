"""The workflow's ``recovery`` step: the persona's hooks from its definition, run by ``hooks.run_hooks``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aimctl.journal import Operation
from aimctl.loader import Definitions
from aimctl.recovery import hooks as H


def hook_runner(defs: Definitions, note: Callable[[Operation, str], None]) -> Callable[[Operation, str], list[dict[str, Any]]]:
    def run(op: Operation, point: str) -> list[dict[str, Any]]:
        spec = defs.personas[op.persona].spec
        specs = [h for h in spec.recovery if h.point == point]
        if not specs:
            return []
        ctx = H.HookContext(op.persona, op.from_server or "", str(op.facts.get("to", "")), op.id,
                            addresses=tuple(sorted((net, str(a)) for net, a in spec.addresses.items())))
        results = H.run_hooks(specs, ctx, point, on_event=lambda msg: note(op, msg))
        return [r.to_record() for r in results]

    return run
