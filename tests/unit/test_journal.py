"""Journal, leases and the step runner (DESIGN.md rule 3: journal first, resume to the same end)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from aimctl.errors import OperatorError, Unreachable
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
    LeaseHeld,
    ServerMark,
    persona_lease,
    server_lease,
)
from aimctl.journal import schema as journal_schema
from aimctl.secrets import register

REPO = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self, t: float = 1_795_400_000.0) -> None:  # 2026-11-23
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def journal(tmp_path: Path, clock: Clock) -> Any:
    j = Journal(tmp_path / "ctrl" / "journal.db", clock=clock)
    yield j
    j.close()


def ok_step(name: str, calls: list[tuple[str, bool]]) -> Step[None]:
    def fn(ctx: None, call: StepCall) -> StepOutcome:
        calls.append((name, call.resumed))
        return StepOutcome.ok()
    return Step(name, fn)


# -- the database ------------------------------------------------------------------------------


def test_wal_full_sync_schema_version_and_private_file(journal: Journal) -> None:
    db = sqlite3.connect(journal.path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == journal_schema.SCHEMA_VERSION
    assert journal._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert oct(journal.path.stat().st_mode & 0o777) == oct(0o600)
    db.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    Journal(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {journal_schema.SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(OperatorError, match="schema version"):
        Journal(path)


def test_records_are_append_only(journal: Journal) -> None:
    op = journal.open_operation("failover", "ex1")
    journal.intent(op, "confirm", {})
    db = sqlite3.connect(journal.path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE records SET step = 'x'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("DELETE FROM records")
    db.close()


def test_operation_ids_count_per_kind_and_day(journal: Journal, clock: Clock) -> None:
    assert journal.open_operation("failover", "ex1") == "fo-20261123-0001"
    assert journal.open_operation("failover", "ex2") == "fo-20261123-0002"
    assert journal.open_operation("move", "ex1") == "mv-20261123-0001"
    clock.t += 86400
    assert journal.open_operation("failback", "ex1") == "fb-20261124-0001"
    with pytest.raises(ValueError):
        journal.open_operation("reboot", "ex1")
    assert [o.id for o in journal.operations(limit=2)] == ["fb-20261124-0001", "mv-20261123-0001"]


def test_secrets_never_reach_the_journal(journal: Journal) -> None:
    register("s3cr3t-chap-value")
    op = journal.open_operation("failover", "ex1", {"note": "chap s3cr3t-chap-value"})
    journal.intent(op, "storage", {"secret": "s3cr3t-chap-value"})
    raw = journal.path.read_bytes() + Path(str(journal.path) + "-wal").read_bytes()
    assert b"s3cr3t-chap-value" not in raw
    assert journal.records(op)[0].detail == {"secret": "***"}


# -- the runner ----------------------------------------------------------------------------------


def test_intent_is_committed_before_the_step_acts(journal: Journal) -> None:
    op = journal.open_operation("failover", "ex1")
    seen: list[Any] = []

    def fence(ctx: None, call: StepCall) -> StepOutcome:
        # Another connection (as a second process would) must already see the committed intent.
        other = sqlite3.connect(journal.path)
        seen.extend(other.execute("SELECT step, phase, status FROM records WHERE op_id = ?", (op,)).fetchall())
        other.close()
        return StepOutcome.ok()

    run_steps(journal, op, [Step("fence", fence, describe=lambda c, o: {"server": "s1"})], None)
    assert seen == [("fence", "intent", None)]
    recs = journal.records(op)
    assert [(r.step, r.phase, r.status) for r in recs] == [("fence", "intent", None), ("fence", "result", "ok")]
    assert recs[0].detail == {"server": "s1"}


class Crash(BaseException):
    """Stands for the process dying in the middle of a step."""


def test_resume_reruns_only_the_interrupted_step_with_resumed(journal: Journal) -> None:
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


def test_needs_operator_keeps_leases_and_resumes_the_same_step(journal: Journal) -> None:
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


def test_awaiting_approval_failed_and_unexpected_errors(journal: Journal) -> None:
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


def test_a_device_that_fails_stops_for_an_operator_in_its_own_words(journal: Journal) -> None:
    def bmc(ctx: None, call: StepCall) -> StepOutcome:
        raise Unreachable("r720-3", "write iSCSI boot: no answer from https://10.0.0.3")

    op = journal.open_operation("failover", "ex1", leases=["persona:ex1"])
    r = run_steps(journal, op, [Step("bootcfg", bmc)], None)
    assert r.state == "needs-operator" and "unexpected" not in r.result
    assert r.result == (f"bootcfg: r720-3: write iSCSI boot: no answer from https://10.0.0.3; fix it, then "
                        f"`aimctl retry {op}` (or abandon it)")
    assert [x.name for x in journal.leases()] == ["persona:ex1"]  # it waits, holding its persona


def test_retarget_reruns_from_the_target_step_and_gives_up(journal: Journal) -> None:
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


def test_step_result_and_the_state_it_changes_commit_together(journal: Journal) -> None:
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


def test_leases_exclude_renew_expire_and_are_all_or_nothing(journal: Journal, clock: Clock) -> None:
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


def test_open_operation_takes_its_leases_or_nothing(journal: Journal) -> None:
    first = journal.open_operation("failover", "ex1", leases=[persona_lease("ex1"), server_lease("s1")])
    with pytest.raises(LeaseHeld):
        journal.open_operation("move", "ex1", leases=[persona_lease("ex1"), server_lease("s3")])
    assert [o.id for o in journal.operations()] == [first]
    assert {x.name for x in journal.leases()} == {"persona:ex1", "server:s1"}


def test_commit_hook_sees_every_record(tmp_path: Path) -> None:
    seen: list[int] = []
    j = Journal(tmp_path / "j.db", on_commit=seen.append)
    op = j.open_operation("failover", "ex1")
    j.intent(op, "confirm")
    j.result(op, "confirm", "ok")
    assert len(seen) == 3 and seen == sorted(seen)
    j.close()


# -- kill the controller at every journal record ----------------------------------------------


def _toy(state: Path, crash_at: int | None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("AIMCTL_CRASH_AT_RECORD", None)
    if crash_at is not None:
        env["AIMCTL_CRASH_AT_RECORD"] = str(crash_at)
    cmd = [sys.executable, "-m", "tests.unit.toy_workflow", str(state)]
    return subprocess.run(cmd, check=False, env=env, cwd=REPO, capture_output=True, text=True, timeout=60)


def _final(state: Path) -> dict[str, Any]:
    j = Journal(state / "journal.db")
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


def test_killed_at_every_record_resumes_to_the_same_end(tmp_path: Path) -> None:
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    ref = _toy(ref_dir, None)
    assert ref.returncode == 0, ref.stderr
    total = int(ref.stdout.strip())
    expected = _final(ref_dir)
    assert expected["state"] == "done" and expected["assignment"] == {"ex1": "s4"}
    assert expected["quarantined"] == ["s3"] and expected["leases"] == []
    assert total > 20

    def crash_and_resume(n: int) -> tuple[int, int, dict[str, Any]]:
        state = tmp_path / f"n{n}"
        state.mkdir()
        first = _toy(state, n)
        second = _toy(state, None)
        assert second.returncode == 0, second.stderr
        return first.returncode, n, _final(state)

    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = list(pool.map(crash_and_resume, range(1, total + 1)))
    for rc, n, got in runs:
        assert rc == CRASH_EXIT_CODE, f"run crashing at record {n} exited {rc}"
        for key in ("world", "actions", "state", "result", "assignment", "quarantined", "leases", "ops"):
            assert got[key] == expected[key], f"crash at record {n}: {key} differs"
        assert _without_resumes(got["records"]) == expected["records"], f"crash at record {n}"
    # A crash right after an intent makes the resumed run say so; some N must have hit one.
    assert sum(1 for _, _, got in runs if got["resumed"]) >= 10
