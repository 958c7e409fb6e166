"""One contract for every journal backend: SQLite (embedded) and etcd (clustered, a real member).

DESIGN.md rule 3 (journal first, resume to the same end) and rule 8 (only the leader writes) as
tests. Each test runs once per backend; the etcd runs share one member started for the session
(``lab.fixtures.etcd``), each test under its own key prefix with its own election.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from aimctl.journal.etcdkv import Etcd
from aimctl.cluster.leadership import NO_TOKEN, Leadership, Timing
from aimctl.journal.secretbox import SecretBox
from aimctl.errors import Unreachable
from aimctl.failover.runner import (
    AwaitingApproval,
    NeedsOperator,
    Retarget,
    Step,
    StepCall,
    StepFailed,
    StepOutcome,
    run_steps,
)
from aimctl.journal import (
    CRASH_EXIT_CODE,
    Journal,
    JournalStore,
    LeaseHeld,
    ServerMark,
    etcd_journal,
    persona_lease,
    server_lease,
)
from aimctl.secrets import register
from lab.cluster.etcd import EtcdCluster
from lab.fixtures import etcd  # noqa: F401 - the session etcd member

REPO = Path(__file__).resolve().parents[2]
KEY = bytes(range(32))


class Clock:
    def __init__(self, t: float = 1_795_400_000.0) -> None:  # 2026-11-23
        self.t = t

    def __call__(self) -> float:
        return self.t


@dataclass
class Backend:
    kind: str
    tmp: Path
    clock: Clock
    cluster: EtcdCluster | None = None
    prefix: str = ""
    lead: Leadership | None = None
    opened: list[JournalStore] = field(default_factory=list)

    def make(self, on_commit: Callable[[int], None] | None = None) -> JournalStore:
        if self.kind == "sqlite":
            j: JournalStore = Journal(self.tmp / "ctrl" / "journal.db", clock=self.clock, on_commit=on_commit)
        else:
            assert self.cluster is not None and self.lead is not None
            lead = self.lead
            j = etcd_journal(Etcd(self.cluster.endpoints), self.prefix, lambda: lead.token,
                             secrets=SecretBox(KEY), clock=self.clock, on_commit=on_commit)
        self.opened.append(j)
        return j

    def raw(self) -> bytes:
        """Everything the backend stored, as bytes on disk / values in etcd."""
        if self.kind == "sqlite":
            return b"".join(p.read_bytes() for p in (self.tmp / "ctrl").rglob("*") if p.is_file())
        assert self.cluster is not None
        return b"".join(x.key.encode() + x.value for x in Etcd(self.cluster.endpoints).range(self.prefix, prefix=True))

    def toy_env(self, state: Path) -> dict[str, str]:
        if self.kind == "sqlite":
            return {}
        assert self.cluster is not None
        host, port = self.cluster.endpoints[0]
        return {"AIMCTL_TOY_ETCD": f"{host}:{port}", "AIMCTL_TOY_PREFIX": f"{self.prefix}{state.name}/"}

    def for_toy(self, state: Path) -> JournalStore:
        if self.kind == "sqlite":
            return Journal(state / "journal.db")
        assert self.cluster is not None
        return etcd_journal(Etcd(self.cluster.endpoints), f"{self.prefix}{state.name}/", lambda: NO_TOKEN)


def elect(cluster: EtcdCluster, prefix: str, member: str, ttl_s: float = 10) -> Leadership:
    lead = Leadership(Etcd(cluster.endpoints), prefix, member, timing=Timing(ttl_s=ttl_s, renew_s=2, retry_s=1))
    for _ in range(5):
        lead.run_once()
        if lead.is_leader():
            return lead
    raise AssertionError(f"{member} was not elected")


@pytest.fixture(params=["sqlite", "etcd"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    b = Backend(request.param, tmp_path, Clock())
    if b.kind == "etcd":
        b.cluster = request.getfixturevalue("etcd")
        b.prefix = f"/t-{uuid.uuid4().hex[:10]}/"
        b.lead = elect(b.cluster, b.prefix, "m1")
    yield b
    for j in b.opened:
        j.close()
    if b.lead is not None:
        b.lead.stop()


@pytest.fixture
def journal(backend: Backend) -> JournalStore:
    return backend.make()


@pytest.fixture
def clock(backend: Backend) -> Clock:
    return backend.clock


def ok_step(name: str, calls: list[tuple[str, bool]]) -> Step[None]:
    def fn(ctx: None, call: StepCall) -> StepOutcome:
        calls.append((name, call.resumed))
        return StepOutcome.ok()
    return Step(name, fn)


def test_secrets_never_reach_the_journal(journal: JournalStore, backend: Backend) -> None:
    register("s3cr3t-chap-value")
    op = journal.open_operation("failover", "ex1", {"note": "chap s3cr3t-chap-value"})
    journal.intent(op, "storage", {"secret": "s3cr3t-chap-value"})
    journal.set_state(op, "needs-operator", "failed with s3cr3t-chap-value")
    assert b"s3cr3t-chap-value" not in backend.raw()
    assert journal.records(op)[0].detail == {"secret": "***"}


def test_change_records_are_numbered_once_per_operation(journal: JournalStore) -> None:
    a = journal.open_operation("failover", "ex1")
    b = journal.open_operation("move", "ex2")
    first, created = journal.change_open(a, {"number": "", "state": "new", "notes": []})
    assert created and first["number"] == "CHG1000001"
    again, created = journal.change_open(a, {"number": "", "state": "other"})
    assert not created and again == first  # resume opens the same record
    second, _ = journal.change_open(b, {"number": "", "state": "new", "notes": []})
    assert second["number"] == "CHG1000002"
    updated = journal.change_update("CHG1000001", lambda r: r["notes"].append("fence ok"))
    assert updated is not None and updated["notes"] == ["fence ok"]
    assert journal.change_for_op(a) == updated and journal.change_get("CHG1000001") == updated
    assert journal.change_update("CHG9999999", lambda r: None) is None
    assert journal.change_get("CHG9999999") is None and journal.change_for_op("fo-x") is None
    assert [r["number"] for r in journal.change_list()] == ["CHG1000002", "CHG1000001"]


def test_drift_findings_open_resolve_and_come_back(journal: JournalStore, clock: Clock) -> None:
    found = types.SimpleNamespace(key="ports:sw1:1/g3", kind="ports", persona="ex1", server="s1", device="sw1",
                                  what="1/g3 carries VLAN 7", expected="trunk 100", observed="trunk 100,7")
    other = types.SimpleNamespace(**{**found.__dict__, "key": "acl:t1", "device": "array1", "what": "extra ACL"})
    new, gone = journal.sync_findings([found, other], checked={"ports:sw1:1/g3", "acl:t1"})
    assert [f.key for f in new] == ["ports:sw1:1/g3", "acl:t1"] and gone == []
    journal.mark_alerted(["acl:t1"])
    journal.set_repair_op("ports:sw1:1/g3", "rp-20261123-0001")
    clock.t += 10
    new, gone = journal.sync_findings([other], checked={"ports:sw1:1/g3"})  # acl:t1 not read: stays open
    assert new == [] and [f.key for f in gone] == ["ports:sw1:1/g3"]
    assert [(f.key, f.alerted) for f in journal.findings()] == [("acl:t1", True)]
    stored = {f.key: f for f in journal.findings(include_resolved=True)}
    assert stored["ports:sw1:1/g3"].repair_op == "rp-20261123-0001" and stored["ports:sw1:1/g3"].resolved == clock.t
    clock.t += 10
    new, _ = journal.sync_findings([found], checked={"ports:sw1:1/g3"})  # back again: a new occurrence
    assert [(f.key, f.since, f.alerted, f.repair_op) for f in new] == [("ports:sw1:1/g3", clock.t, False, None)]


def test_heartbeat_marks_round_trip(journal: JournalStore) -> None:
    assert journal.heartbeat_marks() == {}
    big = 2**64 - 1  # boot ids are unsigned 64-bit
    journal.save_heartbeat_marks({"ex1": (big, 41, (7, 8)), "ex2": (3, 1, ())})
    journal.save_heartbeat_marks({"ex1": (big, 42, (7, 8))})
    assert journal.heartbeat_marks() == {"ex1": (big, 42, (7, 8)), "ex2": (3, 1, ())}


def test_operator_pauses_survive_and_the_first_pause_stays(journal: JournalStore) -> None:
    assert journal.pool_pauses() == {}
    assert journal.pause_pool("web", "ops(operator)", "switch work tonight")
    assert not journal.pause_pool("web", "someone-else", "again")  # the first pause and its reason stay
    p = journal.pool_pauses()["web"]
    assert (p.pool, p.by, p.reason) == ("web", "ops(operator)", "switch work tonight")
    assert journal.resume_pool("web") and not journal.resume_pool("web")
    assert journal.pool_pauses() == {}


def test_operations_revision_moves_with_every_operation_write(journal: JournalStore, clock: Clock) -> None:
    before = journal.operations_revision()
    clock.t += 0.001
    op = journal.open_operation("failover", "ex1", {}, from_server="r1")
    opened = journal.operations_revision()
    assert opened[1] == before[1] + 1 and opened[0] > before[0]
    clock.t += 0.001
    journal.intent(op, "confirm", {})
    assert journal.operations_revision()[0] > opened[0]


def test_secret_state_round_trips_and_is_never_plain(journal: JournalStore, backend: Backend) -> None:
    assert journal.secret_get("chap/ex1.current") is None
    journal.secret_put("chap/ex1.current", "Zq8-secret-ex1-value")
    journal.secret_put("chap/ex1.fo-1", "next-secret-value-1")
    assert journal.secret_get("chap/ex1.current") == "Zq8-secret-ex1-value"
    journal.secret_delete("chap/ex1.fo-1")
    assert journal.secret_get("chap/ex1.fo-1") is None
    if backend.kind == "etcd":
        assert b"Zq8-secret-ex1-value" not in backend.raw()  # sealed with the cluster key
    with pytest.raises(ValueError):
        Journal(backend.tmp / "x" / "journal.db").secret_get("../escape")


def test_operation_ids_count_per_kind_and_day(journal: JournalStore, clock: Clock) -> None:
    assert journal.open_operation("failover", "ex1") == "fo-20261123-0001"
    assert journal.open_operation("failover", "ex2") == "fo-20261123-0002"
    assert journal.open_operation("move", "ex1") == "mv-20261123-0001"
    clock.t += 86400
    assert journal.open_operation("failback", "ex1") == "fb-20261124-0001"
    with pytest.raises(ValueError):
        journal.open_operation("reboot", "ex1")
    assert [o.id for o in journal.operations(limit=2)] == ["fb-20261124-0001", "mv-20261123-0001"]


# -- the runner ----------------------------------------------------------------------------------


def test_intent_is_committed_before_the_step_acts(journal: JournalStore, backend: Backend) -> None:
    op = journal.open_operation("failover", "ex1")
    seen: list[Any] = []

    def fence(ctx: None, call: StepCall) -> StepOutcome:
        # Another reader (as a second process would) must already see the committed intent.
        other = backend.make()
        seen.extend((r.step, r.phase, r.status) for r in other.records(op))
        other.close()
        return StepOutcome.ok()

    run_steps(journal, op, [Step("fence", fence, describe=lambda c, o: {"server": "s1"})], None)
    assert seen == [("fence", "intent", None)]
    recs = journal.records(op)
    assert [(r.step, r.phase, r.status) for r in recs] == [("fence", "intent", None), ("fence", "result", "ok")]
    assert recs[0].detail == {"server": "s1"}


class Crash(BaseException):
    """Stands for the process dying in the middle of a step."""


def test_resume_reruns_only_the_interrupted_step_with_resumed(journal: JournalStore) -> None:
    op = journal.open_operation("failover", "ex1")
    calls: list[tuple[str, bool]] = []
    world: dict[str, int] = {"fenced": 0, "switch_writes": 0}
    crash = {"armed": True}

    def fence(ctx: None, call: StepCall) -> StepOutcome:
        calls.append(("fence", call.resumed))
        if call.resumed and world["fenced"]:  # read the world first
            return StepOutcome.ok(already=True)
        world["fenced"] += 1
        if crash["armed"]:
            crash["armed"] = False
            raise Crash()  # acted, then died before the result was written
        return StepOutcome.ok()

    steps = [ok_step("confirm", calls), Step("fence", fence), ok_step("switch", calls)]
    with pytest.raises(Crash):
        run_steps(journal, op, steps, None)
    assert journal.pending(op) == ("fence", "intent")
    assert journal.operation(op).state == "running"
    result = run_steps(journal, op, steps, None)
    assert result.state == "done"
    assert calls == [("confirm", False), ("fence", False), ("fence", True), ("switch", False)]
    assert world["fenced"] == 1  # the read-first step did not act twice
    timeline = journal.steps(op)
    assert [(t["step"], t["status"], t["resumed"]) for t in timeline] == [
        ("confirm", "ok", False), ("fence", "interrupted", False), ("fence", "ok", True), ("switch", "ok", False)]
    assert all(t["duration_s"] is not None for t in timeline if t["status"] == "ok")
    # Running a finished operation again is a no-op.
    assert run_steps(journal, op, steps, None).state == "done"
    assert len(calls) == 4


def test_needs_operator_keeps_leases_and_resumes_the_same_step(journal: JournalStore) -> None:
    op = journal.open_operation("failover", "ex1", leases=[persona_lease("ex1"), server_lease("s1")])
    calls: list[tuple[str, bool]] = []
    answers = iter([NeedsOperator("fence not confirmed: BMC of s1 does not answer"), None])

    def fence(ctx: None, call: StepCall) -> StepOutcome:
        calls.append(("fence", call.resumed))
        exc = next(answers)
        if exc:
            raise exc
        return StepOutcome.ok()

    steps = [ok_step("confirm", calls), Step("fence", fence)]
    r = run_steps(journal, op, steps, None)
    assert (r.state, r.result) == ("needs-operator", "fence: fence not confirmed: BMC of s1 does not answer")
    assert [x.holder for x in journal.leases()] == [op, op]
    assert [o.id for o in journal.unfinished_operations()] == [op]
    r = run_steps(journal, op, steps, None)
    assert r.state == "done"
    assert calls == [("confirm", False), ("fence", False), ("fence", True)]
    assert journal.leases() == []  # a finished operation lets go of its servers


def test_awaiting_approval_failed_and_unexpected_errors(journal: JournalStore) -> None:
    def wait(ctx: None, call: StepCall) -> StepOutcome:
        raise AwaitingApproval("change CHG0001001 needs approval")

    def fail(ctx: None, call: StepCall) -> StepOutcome:
        raise StepFailed("no standby qualifies for ex1")

    def bug(ctx: None, call: StepCall) -> StepOutcome:
        raise KeyError("to_server")

    op1 = journal.open_operation("move", "ex1", leases=["persona:ex1"])
    assert run_steps(journal, op1, [Step("approve", wait)], None).state == "waiting-approval"
    op2 = journal.open_operation("failover", "ex2", leases=["persona:ex2"])
    assert run_steps(journal, op2, [Step("choose", fail)], None).state == "failed"
    op3 = journal.open_operation("failover", "ex3")
    r = run_steps(journal, op3, [Step("switch", bug)], None)
    assert r.state == "needs-operator" and "unexpected KeyError" in r.result
    assert [x.name for x in journal.leases()] == ["persona:ex1"]  # the failed op released its lease
    assert journal.records(op2)[-1].detail == {"reason": "no standby qualifies for ex1", "stopped": "failed"}


def test_a_device_that_fails_stops_for_an_operator_in_its_own_words(journal: JournalStore) -> None:
    def bmc(ctx: None, call: StepCall) -> StepOutcome:
        raise Unreachable("r720-3", "write iSCSI boot: no answer from https://10.0.0.3")

    op = journal.open_operation("failover", "ex1", leases=["persona:ex1"])
    r = run_steps(journal, op, [Step("bootcfg", bmc)], None)
    assert r.state == "needs-operator" and "unexpected" not in r.result
    assert r.result == (f"bootcfg: r720-3: write iSCSI boot: no answer from https://10.0.0.3; fix it, then "
                        f"`aimctl retry {op}` (or abandon it)")
    assert [x.name for x in journal.leases()] == ["persona:ex1"]  # it waits, holding its persona


def test_retarget_reruns_from_the_target_step_and_gives_up(journal: JournalStore) -> None:
    op = journal.open_operation("failover", "ex1")
    calls: list[tuple[str, bool]] = []

    def heartbeat(ctx: None, call: StepCall) -> StepOutcome:
        calls.append(("heartbeat", call.resumed))
        raise Retarget("no heartbeat", "choose", facts={"tries": call.op.facts.get("tries", 0) + 1})

    steps = [ok_step("confirm", calls), ok_step("choose", calls), Step("heartbeat", heartbeat)]
    r = run_steps(journal, op, steps, None, max_retargets=2)
    assert r.state == "needs-operator" and "3 retargets" in r.result
    assert calls == [("confirm", False)] + [("choose", False), ("heartbeat", False)] * 3
    assert journal.operation(op).facts == {"tries": 3}


def test_step_result_and_the_state_it_changes_commit_together(journal: JournalStore) -> None:
    journal.seed_assignment({"ex1": "s1", "ex2": "s2"})
    journal.seed_assignment({"ex1": "s9"})  # seeding never overrides the journal
    op = journal.open_operation("failover", "ex1")
    with pytest.raises(AttributeError):  # fails inside the transaction, after the record insert
        journal.result(op, "switch", "ok", {}, assignment_change={"ex1": "s3"},
                       server_marks={"s1": types.SimpleNamespace(reason="x")})  # type: ignore[dict-item]
    assert journal.records(op) == []
    assert journal.assignment() == {"ex1": "s1", "ex2": "s2"}
    journal.result(op, "switch", "ok", {"ports": 4}, facts={"to_server": "s3"}, assignment_change={"ex1": "s3"},
                   server_marks={"s1": ServerMark("fenced: BMC reads off", failed=True)})
    assert journal.assignment() == {"ex1": "s3", "ex2": "s2"}
    assert journal.operation(op).to_server == "s3"
    s1 = journal.quarantined()["s1"]
    assert (s1.reason, s1.by, s1.failed) == ("fenced: BMC reads off", op, True)
    assert journal.records(op)[0].detail["assignment"] == {"ex1": "s3"}
    journal.clear("s1", by="alice")
    assert journal.quarantined() == {}
    journal.quarantine("s2", "fan failure", by="bob")
    assert journal.servers()["s2"].by == "bob"


# -- leases --------------------------------------------------------------------------------------


def test_leases_exclude_renew_expire_and_are_all_or_nothing(journal: JournalStore, clock: Clock) -> None:
    assert journal.acquire_lease("server:s1", "fo-1", ttl_s=60)
    assert not journal.acquire_lease("server:s1", "fo-2", ttl_s=60)
    assert journal.acquire_lease("server:s1", "fo-1", ttl_s=60)  # re-entrant for its holder (resume)
    with pytest.raises(LeaseHeld) as held:
        journal.acquire_leases(["server:s3", "server:s1"], "fo-2", ttl_s=60)
    assert held.value.http_status == 409 and "held by fo-1" in str(held.value)
    assert [x.name for x in journal.leases()] == ["server:s1"]  # server:s3 was not taken half-way
    clock.t += 30
    assert journal.renew("server:s1", "fo-1", ttl_s=60)
    clock.t += 59
    assert not journal.acquire_lease("server:s1", "fo-2", ttl_s=60)
    clock.t += 2  # expired: a dead holder does not block forever
    assert journal.acquire_lease("server:s1", "fo-2", ttl_s=60)
    assert not journal.renew("server:s1", "fo-1", ttl_s=60)
    assert not journal.release_lease("server:s1", "fo-1")
    assert journal.release_lease("server:s1", "fo-2")
    assert journal.leases() == []


def test_open_operation_takes_its_leases_or_nothing(journal: JournalStore) -> None:
    first = journal.open_operation("failover", "ex1", leases=[persona_lease("ex1"), server_lease("s1")])
    with pytest.raises(LeaseHeld):
        journal.open_operation("move", "ex1", leases=[persona_lease("ex1"), server_lease("s3")])
    assert [o.id for o in journal.operations()] == [first]
    assert {x.name for x in journal.leases()} == {"persona:ex1", "server:s1"}


def test_commit_hook_sees_every_record(backend: Backend) -> None:
    seen: list[int] = []
    j = backend.make(on_commit=seen.append)
    op = j.open_operation("failover", "ex1")
    j.intent(op, "confirm")
    j.result(op, "confirm", "ok")
    assert len(seen) == 3 and seen == sorted(seen)
    j.close()


# -- kill the controller at every journal record ----------------------------------------------


def _toy(state: Path, crash_at: int | None, backend: Backend) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), **backend.toy_env(state)}
    env.pop("AIMCTL_CRASH_AT_RECORD", None)
    if crash_at is not None:
        env["AIMCTL_CRASH_AT_RECORD"] = str(crash_at)
    cmd = [sys.executable, "-m", "tests.unit.toy_workflow", str(state)]
    return subprocess.run(cmd, check=False, env=env, cwd=REPO, capture_output=True, text=True, timeout=60)


def _final(state: Path, backend: Backend) -> dict[str, Any]:
    j = backend.for_toy(state)
    try:
        op = j.operations()[0]
        recs = j.records(op.id)
        return {
            "world": json.loads((state / "world.json").read_text()),
            "actions": (state / "actions.log").read_text().splitlines(),
            "state": op.state, "result": op.result,
            "assignment": j.assignment(), "quarantined": sorted(j.quarantined()),
            "leases": j.leases(), "ops": len(j.operations()),
            "records": [(r.step, r.phase, r.status) for r in recs],
            "resumed": sum(1 for r in recs if r.detail.get("resumed")),
        }
    finally:
        j.close()


def _without_resumes(records: list[tuple[str, str, str | None]]) -> list[tuple[str, str, str | None]]:
    """Drop intents that a crash cut short (an intent directly followed by another intent)."""
    return [r for i, r in enumerate(records) if not (r[1] == "intent" and i + 1 < len(records)
                                                     and records[i + 1][1] == "intent")]


def test_killed_at_every_record_resumes_to_the_same_end(tmp_path: Path, backend: Backend) -> None:
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    ref = _toy(ref_dir, None, backend)
    assert ref.returncode == 0, ref.stderr
    total = int(ref.stdout.strip())
    expected = _final(ref_dir, backend)
    assert expected["state"] == "done" and expected["assignment"] == {"ex1": "s4"}
    assert expected["quarantined"] == ["s3"] and expected["leases"] == []
    assert total > 20

    def crash_and_resume(n: int) -> tuple[int, int, dict[str, Any]]:
        state = tmp_path / f"n{n}"
        state.mkdir()
        first = _toy(state, n, backend)
        second = _toy(state, None, backend)
        assert second.returncode == 0, second.stderr
        return first.returncode, n, _final(state, backend)

    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = list(pool.map(crash_and_resume, range(1, total + 1)))
    for rc, n, got in runs:
        assert rc == CRASH_EXIT_CODE, f"run crashing at record {n} exited {rc}"
        for key in ("world", "actions", "state", "result", "assignment", "quarantined", "leases", "ops"):
            assert got[key] == expected[key], f"crash at record {n}: {key} differs"
        assert _without_resumes(got["records"]) == expected["records"], f"crash at record {n}"
    # A crash right after an intent makes the resumed run say so; some N must have hit one.
    assert sum(1 for _, _, got in runs if got["resumed"]) >= 10


# -- rule 8: a stale leader's write is refused by etcd itself ---------------------------------------


def test_stale_leaders_write_is_refused_by_etcd_itself(etcd: EtcdCluster) -> None:  # noqa: F811
    prefix = f"/t-{uuid.uuid4().hex[:10]}/"
    old = elect(etcd, prefix, "old")
    sent: list[tuple[list[dict[str, Any]], bool]] = []
    client = Etcd(etcd.endpoints)
    real_txn = client.txn

    def spy(compare: Any, success: Any, failure: Any = None) -> Any:
        res = real_txn(compare, success, failure)
        sent.append((compare, res.succeeded))
        return res

    client.txn = spy  # type: ignore[method-assign]
    j = etcd_journal(client, prefix, lambda: old.token)
    op = j.open_operation("failover", "ex1")
    j.intent(op, "fence", {"server": "s1"})
    # The old leader's lease ends (as when it is paused past its TTL) and another member is elected.
    assert old._lease is not None
    Etcd(etcd.endpoints).revoke(old._lease)
    new = elect(etcd, prefix, "new")
    assert new.token > old.token
    # The old leader has not run a cycle since: in its own eyes it still leads. Nothing in Python
    # stops its write...
    assert old.is_leader()
    with pytest.raises(Exception) as refused:
        j.result(op, "fence", "ok", {"power": "off"})
    assert type(refused.value).__name__ == "WriteRefused"
    # ...etcd did: the transaction carried the old token as its first compare, and etcd answered
    # succeeded=false; nothing was written.
    compare, ok = sent[-1]
    assert compare[0]["target"] == "CREATE" and int(compare[0]["create_revision"]) == old.token
    assert ok is False
    assert [r.phase for r in j.records(op)] == ["intent"]
    # The new leader writes with its own token.
    mine = etcd_journal(Etcd(etcd.endpoints), prefix, lambda: new.token)
    mine.result(op, "fence", "ok", {"power": "off"})
    assert [r.phase for r in mine.records(op)] == ["intent", "result"]
    for x in (old, new):
        x.stop()


def test_a_member_never_elected_cannot_write(etcd: EtcdCluster) -> None:  # noqa: F811
    prefix = f"/t-{uuid.uuid4().hex[:10]}/"
    j = etcd_journal(Etcd(etcd.endpoints), prefix, lambda: NO_TOKEN)
    with pytest.raises(Exception, match="refused by etcd"):
        j.seed_assignment({"ex1": "s1"})
    assert j.assignment() == {}
    assert os.environ.get("AIMCTL_CRASH_AT_RECORD") is None
