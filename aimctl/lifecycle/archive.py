"""The archive job: snapshot a persona's boot and data LUNs together, then let expired archives go.

It only reads the persona's storage (its targets freeze for the copy), so it never holds the
persona against a failover: every failure ends the operation (``failed``, leases released) and a
failover of the persona pre-empts it before its snapshot.
"""

from __future__ import annotations

import time

from aimctl.errors import OperatorError
from aimctl.failover.runner import Step, StepCall, StepFailed, StepOutcome
from aimctl.lifecycle.context import LCtx
from aimctl.lifecycle.policy import archive_sets, expired

STEPS = ("snapshot", "prune", "done")


def s_snapshot(lc: LCtx, call: StepCall) -> StepOutcome:
    op = call.op
    by = lc.preempted(op.id)
    if by:
        raise StepFailed(f"pre-empted by {by} before the snapshot; nothing taken")
    luns = lc.luns(op.persona)
    try:
        got = lc.snapshots(op.persona).snapshot(str(op.facts["set"]), luns)
    except OperatorError as exc:
        raise StepFailed(f"no archive taken: {exc}") from None
    detail = {"set": op.facts["set"], "luns": [f"{s.target} LUN {s.lun}" for s in got],
              "method": "/".join(sorted({s.method for s in got})), "frozen_s": max(s.frozen_s for s in got),
              "bytes": sum(s.size for s in got)}
    return StepOutcome("ok", detail, facts={"taken": True})


def s_prune(lc: LCtx, call: StepCall) -> StepOutcome:
    op = call.op
    policy = lc.ctx.defs.pools[lc.ctx.defs.personas[op.persona].pool].archives
    snaps = lc.snapshots(op.persona)
    deleted, errors = [], []
    try:
        sets = archive_sets(snaps.snapshots(op.persona), op.persona, lc.luns(op.persona))
        for s in expired(sets, time.time(), policy, keep_ids=[str(op.facts["set"])]):
            for snap in s.snapshots:
                snaps.delete(snap.id)
            deleted.append(s.id)
    except OperatorError as exc:  # the new archive is safe; old ones go next time
        errors.append(str(exc))
    return StepOutcome.ok(deleted=deleted, **({"reason": "; ".join(errors)} if errors else {}))


def s_done(lc: LCtx, call: StepCall) -> StepOutcome:
    return StepOutcome.ok(summary=f"archive {call.op.facts['set']} of {call.op.persona}")


def archive_steps() -> list[Step[LCtx]]:
    fns = {"snapshot": s_snapshot, "prune": s_prune, "done": s_done}
    return [Step(n, fns[n]) for n in STEPS]
