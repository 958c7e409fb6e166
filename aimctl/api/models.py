"""Request and response bodies of the API, as pydantic models.

The same models validate what comes in, shape what goes out, and are the OpenAPI document's
schemas (``aimctl.api.openapi``): the document cannot drift from the handlers.
"""

from __future__ import annotations

from typing import Annotated, Any, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, create_model

from aimctl import journal

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


Note = Annotated[str, StringConstraints(max_length=500)]


class RetryRequest(In):
    note: Note = ""


# Lifecycle (archives, restore, gold-image personas, rehearsals): names are checked here, the rest
# (IQN shapes, archive ids and times) by ``aimctl.lifecycle`` before anything is touched.
Word = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9.:_+-]*$")]


class ArchiveRequest(In):
    persona: NameStr


class RestoreRequest(In):
    persona: NameStr
    at: Word  # an archive id, a time (ISO 8601) or "latest"
    change: ChangeId | None = None


class RehearseRequest(In):
    persona: NameStr
    on: NameStr | None = None


class NewPersonaRequest(In):
    name: NameStr
    pool: NameStr
    gold: Word
    initiator: Word | None = None
    target: Word | None = None
    home: NameStr | None = None


class StartPersonaRequest(In):
    on: NameStr | None = None
    change: ChangeId | None = None


class ClusterQuery(In):
    probe: bool = True  # False: from memory, without asking each etcd endpoint


class MarkFencedRequest(In):
    server: NameStr
    note: Note = ""


class AbandonRequest(In):
    persona_on: Annotated[str, StringConstraints(pattern=r"^(keep|none|[a-z][a-z0-9-]{0,62})$")] = "keep"
    note: Note = ""


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


class Waiting(Out):
    state: str
    reason: str
    exits: list[str] = Field(default_factory=list, description="The operator's ways out (rule 7), as CLI commands")


class PersonaStatus(Out):
    pool: str
    server: str | None
    heartbeat_age_s: float | None
    health: str | None
    detector: str
    detector_reason: str | None = None
    bmc: str | None
    operation: str | None
    operation_state: str | None = None
    queued: str | None = None
    waiting: Waiting | None = None
    why: str | None = Field(None, description="Where the persona stands and why, in one sentence")


class PoolPause(Out):
    pool: str
    paused: bool
    by: str | None = None
    reason: str = ""
    since: float | None = None


class LeaseHeldNow(Out):
    name: str = Field(description="The server or persona held")
    holder: str = Field(description="The operation holding it")
    expires_in_s: float = Field(description="Seconds left before the lease lapses unless renewed")


class Status(Out):
    personas: dict[str, PersonaStatus]
    quarantined: dict[str, journal.ServerStatus]
    leases: list[LeaseHeldNow] = Field(default_factory=list, description="Who holds what (a waiting operation"
                                                                         " keeps its leases)")
    receiver: dict[str, Any]
    paused_pools: dict[str, str] = Field(description="Pools the storm brake paused, with why")
    operator_paused_pools: dict[str, str] = Field(description="Pools an operator paused, with why")
    operator_paused: dict[str, PoolPause] = Field(description="Pools an operator paused: who, why, since when")
    queued: list[str]
    detector_stalls: int
    bmcs: dict[str, str]
    pools: dict[str, Any] | None = Field(default_factory=dict, description="Per pool: spares (N+k) and why"
                                                                        " (null while the journal is unreachable)")
    suspects: Any = None
    drift_open: Any = None
    oversight_error: str | None = Field(None, description="Why pools, suspects and drift are missing")
    journal_error: str = Field("", description="Why the journal (etcd when clustered) cannot be read, if so")
    cluster: dict[str, Any] | None = Field(None, description="Clustered: this member, the leader, why not acting")


class Step(Out):
    step: str
    started: float | None
    ended: float | None
    duration_s: float | None
    status: str
    resumed: bool
    intent: dict[str, Any]
    detail: dict[str, Any]
    sentence: str | None = None


# The journal's own dataclasses are the API's shapes for an operation and a server's marks (pydantic
# validates and documents stdlib dataclasses): one definition, no copy to drift.
Operation = journal.Operation
ServerMarkOut = journal.ServerStatus

OperationDetail = create_model(
    "OperationDetail", __config__=ConfigDict(extra="forbid"),
    **{name: (tp, ...) for name, tp in get_type_hints(journal.Operation).items()},  # type: ignore[call-overload]
    timeline=(list[Step], ...), change=(dict[str, Any] | None, ...), sentence=(str | None, None),
)


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
