"""Change records for the operator's change-management system (DESIGN.md rule 5).

Each operation gets one change record in a ServiceNow-like shape. The record itself lives in the
journal (``JournalStore.change_*``: a table in SQLite, keys in etcd), so it survives restarts and
takeovers with the operation it describes;
sinks receive the *whole* record on every event (open, note, approve, close).

Sinks never fail an operation: a failover exists to bring service back, and the change-management
system is often down in the same outage. The journal, the JSONL sink and the audit log stay the
authoritative local record, and because every delivery carries the full record, the next
successful delivery brings the remote copy up to date.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from aimctl.errors import OperatorError
from aimctl.failover.runner import StepEvent
from aimctl.journal import JournalStore, Operation
from aimctl.records.sinks import JsonlSink, WebhookSink, sign
from aimctl.secrets import mask

__all__ = ["ChangeRecords", "ChangeSink", "JsonlSink", "UnknownChange", "WebhookSink", "sign", "snow_time"]

log = logging.getLogger(__name__)
Change = Callable[[dict[str, Any], float], None]

OPEN_STATES = ("new", "implement", "review")
TITLES = {"failover": "Failover", "move": "Planned move", "failback": "Failback", "repair": "Drift repair",
          "restore": "Restore", "rehearsal": "Spare rehearsal", "provision": "New persona from a gold image"}


class UnknownChange(OperatorError):
    http_status = 404


class ChangeSink(Protocol):
    def emit(self, event: str, record: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


def snow_time(t: float) -> str:
    """ServiceNow's date-time format, in UTC."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))


class ChangeRecords:
    def __init__(self, journal: JournalStore, sinks: Sequence[ChangeSink] = ()) -> None:
        self.journal = journal
        self.sinks = list(sinks)

    # -- lifecycle ----------------------------------------------------------------------------

    def open(self, op: Operation, *, require_approval: bool | None = None, description: str = "",
             number: str | None = None) -> dict[str, Any]:
        """The change record for ``op``, created on first call (idempotent: resume calls it again).

        Failovers are emergency changes; planned moves and failbacks are normal changes and need
        approval unless ``require_approval`` says otherwise. ``number``: the operator's own change
        number (``move --change CHG...``), adopted instead of a new one, so that approving that
        number releases the operation gated on it.
        """
        existing = self.for_operation(op.id)
        if existing is not None:
            return existing
        if require_approval is None:
            require_approval = op.kind != "failover"
        now = self.journal.now()
        ci = [x for x in (op.persona, op.from_server, op.to_server) if x]
        where = f" from {op.from_server}" if op.from_server else ""
        where += f" to {op.to_server}" if op.to_server else ""
        record: dict[str, Any] = {
            "number": "",
            "correlation_id": op.id,
            "type": "emergency" if op.kind == "failover" else "normal",
            "short_description": f"{TITLES.get(op.kind, op.kind)} of "
                                 f"{f'persona {op.persona}' if op.persona else 'a body'}{where}",
            "description": mask(description or f"aimctl operation {op.id} ({op.kind}) on persona {op.persona}."),
            "state": "new",
            "approval": "requested" if require_approval else "not-required",
            "approved_by": [],
            "close_code": None,
            "close_notes": "",
            "cmdb_ci": ci,
            "start_date": snow_time(now),
            "end_date": None,
            "work_notes": [],
            "sys_created_by": "aimctl",
        }
        record, created = self.journal.change_open(op.id, record, number)
        if not created:
            return record
        self._emit("open", record)
        return record

    def note(self, op: Operation | str, step: str, text: str) -> dict[str, Any] | None:
        """Append a work note; the first note moves a new change to ``implement``."""
        def change(rec: dict[str, Any], now: float) -> None:
            rec["work_notes"].append({"time": snow_time(now), "step": step, "text": mask(text)})
            if rec["state"] == "new":
                rec["state"] = "implement"
        return self._update_for_op(_op_id(op), "note", change)

    def close(self, op: Operation | str, result: str) -> dict[str, Any] | None:
        """Close with the operation's outcome; an operation waiting for a human stays in ``review``."""
        fresh = self.journal.operation(_op_id(op))

        def change(rec: dict[str, Any], now: float) -> None:
            rec["close_notes"] = mask(result)
            if fresh.state in ("done", "failed", "aborted"):
                rec["state"] = "closed"
                rec["close_code"] = "successful" if fresh.state == "done" else "unsuccessful"
                rec["end_date"] = snow_time(now)
            else:
                rec["state"] = "review"
                rec["work_notes"].append({"time": snow_time(now), "step": "review", "text": mask(result)})
        return self._update_for_op(fresh.id, "close", change)

    def on_step(self, event: StepEvent) -> None:
        """A ``run_steps`` listener: each step result becomes a work note of the operation's change."""
        if event.phase != "result":
            return
        took = f" in {event.duration_s:.1f}s" if event.duration_s is not None else ""
        why = event.detail.get("reason") or event.detail.get("summary") or ""
        self.note(event.op_id, event.step, f"{event.step} {event.status}{took}" + (f": {why}" if why else ""))

    def approve(self, number: str, by: str) -> dict[str, Any]:
        def change(rec: dict[str, Any], now: float) -> None:
            if rec["state"] == "closed":
                raise OperatorError(f"change {number} is closed; it cannot be approved")
            if by not in rec["approved_by"]:
                rec["approved_by"].append(by)
            rec["approval"] = "approved"
            rec["work_notes"].append({"time": snow_time(now), "step": "approve", "text": f"approved by {by}"})
        return self._update(number, "approve", change)

    # -- queries ------------------------------------------------------------------------------

    def is_approved(self, number: str) -> bool:
        rec = self.get(number)
        return rec["approval"] in ("approved", "not-required")

    def exists(self, number: str) -> bool:
        return self.journal.change_get(number) is not None

    def get(self, number: str) -> dict[str, Any]:
        rec = self.journal.change_get(number)
        if rec is None:
            raise UnknownChange(f"no change record {number}")
        return rec

    def for_operation(self, op_id: str) -> dict[str, Any] | None:
        return self.journal.change_for_op(op_id)

    def list(self, limit: int = 50) -> list[dict[str, Any]]:
        return self.journal.change_list(limit)

    def shutdown(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception:
                log.exception("closing change sink %r failed", sink)

    # -- internals ----------------------------------------------------------------------------

    def _update_for_op(self, op_id: str, event: str, change: Change) -> dict[str, Any] | None:
        rec = self.journal.change_for_op(op_id)
        if rec is None:
            log.warning("operation %s has no change record; %s not recorded", op_id, event)
            return None
        return self._update(str(rec["number"]), event, change)

    def _update(self, number: str, event: str, change: Change) -> dict[str, Any]:
        now = self.journal.now()
        rec = self.journal.change_update(number, lambda r: change(r, now))
        if rec is None:
            raise UnknownChange(f"no change record {number}")
        self._emit(event, rec)
        return rec

    def _emit(self, event: str, record: Mapping[str, Any]) -> None:
        for sink in self.sinks:
            try:
                sink.emit(event, record)
            except Exception as exc:  # noqa: BLE001  (never fatal: see the module docstring)
                log.warning("change sink %s failed on %s %s: %s", type(sink).__name__, event,
                            record.get("number"), mask(str(exc)))


def _op_id(op: Operation | str) -> str:
    return op if isinstance(op, str) else op.id
