"""Request and response bodies of the API, as pydantic models.

The same models validate what comes in, shape what goes out, and are the OpenAPI document's
schemas (``aimctl.api.openapi``): the document cannot drift from the handlers.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

# The shapes of names the API accepts; what does not fit is refused (400) before any handler runs.
NameStr = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,62}$")]
OpId = Annotated[str, StringConstraints(pattern=r"^(CHG[0-9]{7}|[a-z]{2}-[0-9]{8}-[0-9]{4,9})$")]
ChangeId = Annotated[str, StringConstraints(pattern=r"^CHG[0-9]{7}$")]
Reason = Annotated[str, StringConstraints(max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")]


class In(BaseModel):
    """A request body: unknown fields are refused, so a typo is an error, not a silent default."""

    model_config = ConfigDict(extra="forbid")


class Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- requests ----------------------------------------------------------------------------------


class FailoverRequest(In):
    persona: NameStr
    to: NameStr | None = None


class MoveRequest(In):
    persona: NameStr
    to: NameStr
    change: ChangeId | None = None


class FailbackRequest(In):
    persona: NameStr
    change: ChangeId | None = None


class PauseRequest(In):
    reason: Reason = ""


class ListQuery(In):
    limit: Annotated[int, Field(ge=1, le=1000)] = 50


class AuditQuery(In):
    limit: Annotated[int, Field(ge=1, le=1000)] = 100


class PlanQuery(In):
    persona: NameStr
    to: NameStr | None = None


# -- responses ---------------------------------------------------------------------------------


class Started(Out):
    id: str


class Cleared(Out):
    cleared: str


class PersonaStatus(Out):
    pool: str
    server: str | None
    heartbeat_age_s: float | None
    health: str | None
    detector: str
    operation: str | None
    bmc: str | None


class ServerMarkOut(Out):
    name: str
    quarantined: bool
    reason: str
    by: str
    since: float | None
    failed: bool


class PoolPause(Out):
    pool: str
    paused: bool
    by: str | None = None
    reason: str = ""
    since: float | None = None


class Status(Out):
    personas: dict[str, PersonaStatus]
    quarantined: dict[str, ServerMarkOut]
    receiver: dict[str, Any]
    paused_pools: dict[str, str] = Field(description="Pools the storm brake paused, with why")
    operator_paused: dict[str, PoolPause] = Field(description="Pools an operator paused")
    queued: list[str]


class Operation(Out):
    id: str
    kind: str
    persona: str
    from_server: str | None
    to_server: str | None
    state: str
    result: str
    created: float
    updated: float
    facts: dict[str, Any]


class Step(Out):
    step: str
    started: float | None
    ended: float | None
    duration_s: float | None
    status: str
    resumed: bool
    intent: dict[str, Any]
    detail: dict[str, Any]


class OperationDetail(Operation):
    timeline: list[Step]
    change: dict[str, Any] | None


class PlanStep(Out):
    name: str
    actions: list[str]


class Plan(Out):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)

    persona: str
    from_: str | None = Field(alias="from")
    to: str | None
    why: list[str]
    steps: list[PlanStep]


class AuditEntry(Out):
    model_config = ConfigDict(extra="allow")


class Error(Out):
    error: str
