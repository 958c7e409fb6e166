"""Run an operation as a list of idempotent steps through the journal (DESIGN.md rule 3).

For each step not yet done: commit its intent, call it, commit its result. Which steps are done is
*replayed from the journal records*, never held in memory, so a controller killed anywhere resumes
by calling ``run_steps`` again: a step with an intent but no result runs again with
``resumed=True`` (read the world first, then act only if needed).

A step ends in one of four ways:
- it returns a ``StepOutcome`` (ok or skipped) -> next step;
- it raises ``Retarget`` -> the steps from ``to_step`` on are undone in the replay and run again
  (a standby that did not heartbeat in time: fence it, choose the next one);
- it raises ``NeedsOperator`` / ``AwaitingApproval`` -> the operation stops in that state and keeps
  its leases; calling ``run_steps`` again re-runs the same step;
- it raises ``StepFailed`` -> the operation is failed (nothing left half-done that needs a human);
  ``Aborted`` is the same for an operation that should not have run (the body is alive after all).
Any other exception means the world is in an unknown state: the operation stops in
needs-operator, never guesses. ``JournalInterrupted`` (leadership or the journal's store lost)
is not the step's failure: ``run_steps`` stops there like a crash and a later run resumes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from aimctl.errors import DriverError
from aimctl.journal import TERMINAL, JournalInterrupted, JournalStore, Operation, Record, ServerMark
from aimctl.secrets import mask

log = logging.getLogger(__name__)
C = TypeVar("C")


class NeedsOperator(Exception):
    """Stop here and ask a human; the reason is what the operator reads at 3 a.m.

    ``facts`` and ``server_marks`` are what the step learned before it stopped (e.g. a standby it
    fenced and gave up on); they are committed with the failed result, in the same transaction.
    """

    state = "needs-operator"

    def __init__(self, reason: str, facts: Mapping[str, Any] | None = None,
                 server_marks: Mapping[str, ServerMark] | None = None) -> None:
        self.reason = reason
        self.facts = dict(facts or {})
        self.server_marks = dict(server_marks or {})
        super().__init__(reason)


class AwaitingApproval(NeedsOperator):
    state = "waiting-approval"


class StepFailed(Exception):
    """A permanent failure that leaves nothing for an operator to untangle."""

    state = "failed"

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class Aborted(StepFailed):
    """The operation should not go on and nothing was touched (e.g. the body is alive after all)."""

    state = "aborted"


class Retarget(Exception):
    """Go back to ``to_step`` with new facts (e.g. excluded standbys) and run from there again."""

    def __init__(self, reason: str, to_step: str, facts: Mapping[str, Any] | None = None,
                 server_marks: Mapping[str, ServerMark] | None = None) -> None:
        self.reason, self.to_step = reason, to_step
        self.facts = dict(facts or {})
        self.server_marks = dict(server_marks or {})
        super().__init__(reason)


@dataclass(frozen=True)
class StepOutcome:
    status: str = "ok"  # ok | skipped
    detail: Mapping[str, Any] = field(default_factory=dict)
    facts: Mapping[str, Any] = field(default_factory=dict)  # merged into the operation's facts
    assignment: Mapping[str, str | None] | None = None  # persona -> server, same transaction
    server_marks: Mapping[str, ServerMark] | None = None

    @classmethod
    def ok(cls, **detail: Any) -> StepOutcome:
        return cls("ok", detail)

    @classmethod
    def skipped(cls, reason: str) -> StepOutcome:
        return cls("skipped", {"reason": reason})


@dataclass(frozen=True)
class StepCall:
    op: Operation  # fresh from the journal: facts hold what earlier steps decided
    resumed: bool  # this step already had an intent: it may have acted; read the world first
    attempt: int  # intents of this step so far, this one included


@dataclass(frozen=True)
class Step(Generic[C]):
    name: str
    fn: Callable[[C, StepCall], StepOutcome]
    # What the intent record says the step is about to do (e.g. {"server": "r720-1"}).
    describe: Callable[[C, Operation], Mapping[str, Any]] | None = None

    def run(self, ctx: C, call: StepCall) -> StepOutcome:
        return self.fn(ctx, call)


@dataclass(frozen=True)
class StepEvent:
    """Told to listeners after each record is committed (change notes, metrics, logs)."""

    op_id: str
    step: str
    phase: str  # intent | result
    status: str | None
    detail: Mapping[str, Any]
    duration_s: float | None


@dataclass(frozen=True)
class RunResult:
    op_id: str
    state: str
    result: str


@dataclass
class Progress:
    done: set[str] = field(default_factory=set)
    tried: dict[str, int] = field(default_factory=dict)  # step -> intents since the last retarget
    retargets: int = 0


def replay(records: Sequence[Record], names: Sequence[str]) -> Progress:
    """Which steps are done, from the records alone (the only memory that survives a crash)."""
    p = Progress()
    for r in records:
        if r.phase == "intent":
            p.tried[r.step] = p.tried.get(r.step, 0) + 1
        elif r.status in ("ok", "skipped"):
            p.done.add(r.step)
        elif r.status == "retarget":
            p.retargets += 1
            target = str(r.detail.get("retarget_to", ""))
            again = names[names.index(target):] if target in names else []
            for name in again:
                p.done.discard(name)
                p.tried.pop(name, None)
    return p


def run_steps(
    journal: JournalStore,
    op_id: str,
    steps: Sequence[Step[C]],
    ctx: C,
    *,
    listener: Callable[[StepEvent], None] | None = None,
    max_retargets: int = 8,
) -> RunResult:
    names = [s.name for s in steps]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate step names in {names}")
    op = journal.operation(op_id)
    if op.state in TERMINAL:
        return RunResult(op.id, op.state, op.result)
    if op.state != "running":
        journal.set_state(op_id, "running", f"resumed from {op.state}")

    def tell(step: str, phase: str, status: str | None, detail: Mapping[str, Any], dur: float | None) -> None:
        if listener is None:
            return
        try:
            listener(StepEvent(op_id, step, phase, status, detail, dur))
        except Exception:  # a listener (webhook, metrics) never breaks a failover
            log.exception("step listener failed for %s %s %s", op_id, step, phase)

    while True:
        progress = replay(journal.records(op_id), names)
        if progress.retargets > max_retargets:
            return _stop(journal, op_id, "needs-operator", f"gave up after {progress.retargets} retargets")
        step = next((s for s in steps if s.name not in progress.done), None)
        if step is None:
            # The last step may leave a one-line summary for the operation's result.
            last = journal.records(op_id)[-1:]
            summary = str(last[0].detail.get("summary", "")) if last else ""
            return _stop(journal, op_id, "done", summary or f"completed {len(steps)} steps")
        op = journal.operation(op_id)
        if op.state != "running":  # ended from outside (an operator abandoned it): act no further
            return RunResult(op.id, op.state, op.result)
        attempt = progress.tried.get(step.name, 0) + 1
        resumed = attempt > 1
        intent = _describe(step, ctx, op)
        if resumed:
            intent["resumed"] = True
        journal.intent(op_id, step.name, intent)
        tell(step.name, "intent", None, intent, None)
        started = time.monotonic()
        try:
            outcome = step.run(ctx, StepCall(op, resumed, attempt))
        except Retarget as r:
            detail = {"reason": r.reason, "retarget_to": r.to_step}
            if r.to_step not in names:
                raise ValueError(f"step {step.name} retargets to unknown step {r.to_step!r}") from None
            journal.result(op_id, step.name, "retarget", detail, facts=r.facts, server_marks=r.server_marks)
            tell(step.name, "result", "retarget", detail, time.monotonic() - started)
            continue
        except JournalInterrupted:
            # Lost leadership or the journal's store: stop as a crash would, writing nothing (the
            # world is as the step left it; whoever leads next resumes it from its intent).
            raise
        except Exception as exc:
            cause = _interrupted(exc)
            if cause is not None:  # e.g. a NeedsOperator raised while handling a refused device call
                raise cause from exc
            if isinstance(exc, NeedsOperator):
                return _fail(journal, op_id, step.name, exc.state, exc.reason, started, tell, exc.facts,
                             exc.server_marks)
            if isinstance(exc, StepFailed):
                return _fail(journal, op_id, step.name, exc.state, exc.reason, started, tell)
            if isinstance(exc, DriverError):
                # A device that did not answer or refused: expected in the field, and its message names
                # the device and what it said. The world may be half-way: an operator decides.
                log.warning("step %s of %s: %s", step.name, op_id, exc)
                reason = f"{exc}; fix it, then `aimctl retry {op_id}` (or abandon it)"
                return _fail(journal, op_id, step.name, "needs-operator", reason, started, tell)
            log.exception("step %s of %s raised", step.name, op_id)
            reason = f"unexpected {type(exc).__name__}: {exc}"
            return _fail(journal, op_id, step.name, "needs-operator", reason, started, tell)
        if outcome.status not in ("ok", "skipped"):
            raise ValueError(f"step {step.name} returned status {outcome.status!r}; raise to fail")
        journal.result(op_id, step.name, outcome.status, outcome.detail, facts=outcome.facts,
                       assignment_change=outcome.assignment, server_marks=outcome.server_marks)
        tell(step.name, "result", outcome.status, outcome.detail, time.monotonic() - started)


def _interrupted(exc: BaseException) -> JournalInterrupted | None:
    """The lost leadership (or journal) behind ``exc``, if it was raised while handling one."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, JournalInterrupted):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _describe(step: Step[C], ctx: C, op: Operation) -> dict[str, Any]:
    """The intent record: what the step says it is about to do. Words never stop a failover."""
    if step.describe is None:
        return {}
    try:
        return dict(step.describe(ctx, op))
    except Exception as exc:  # noqa: BLE001 - logged; the step still runs and records its result
        log.exception("describing step %s of %s failed", step.name, op.id)
        return {"describe_failed": f"{type(exc).__name__}: {exc}"}


def _fail(journal: JournalStore, op_id: str, step: str, state: str, reason: str, started: float,
          tell: Callable[[str, str, str | None, Mapping[str, Any], float | None], None],
          facts: Mapping[str, Any] | None = None, server_marks: Mapping[str, ServerMark] | None = None) -> RunResult:
    # Two commits: a crash between them leaves a failed result in a running operation, and a
    # resume runs the step again, which fails again the same way.
    detail = {"reason": mask(reason), "stopped": state}
    journal.result(op_id, step, "failed", detail, facts=facts, server_marks=server_marks)
    tell(step, "result", "failed", detail, time.monotonic() - started)
    return _stop(journal, op_id, state, f"{step}: {reason}")


def _stop(journal: JournalStore, op_id: str, state: str, reason: str) -> RunResult:
    journal.set_state(op_id, state, reason)
    return RunResult(op_id, state, mask(reason))
