"""The controller's detection wiring, in process (no lab): what ``Ctx.alive_evidence`` answers, the
confirm step and the storm brake's queue asking it, watching personas whose operation waits, and the
status document telling the truth about them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aimctl.daemon import Controller
from aimctl.detect.storm import Queued
from aimctl.failover.runner import Step, run_steps
from aimctl.failover.steps import s_confirm
from aimctl.loader import load
from aimctl.overlay import Listen
from tests.conftest import DEFINITIONS

SECRETS = ("ARRAY_PASSWORD", "BMC_PASSWORD", "EXCH_PASSWORD", "IPMI_PASSWORD", "SWITCH_ENABLE", "SWITCH_PASSWORD")


@pytest.fixture
def ctrl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Controller]:
    for name in SECRETS:
        monkeypatch.setenv(f"AIMCTL_{name}", "unit-secret")
    defs = load(DEFINITIONS, use_cache=False)
    key = tmp_path / "hb.key"
    key.write_text("k" * 32)
    for p in defs.personas.values():  # the reference files point at /etc/aimctl/keys
        object.__setattr__(p, "spec", p.spec.model_copy(update={"heartbeat_key": f"file:{key}"}))
    # Never started: nothing polls, nothing listens beyond the two bound sockets.
    c = Controller(defs, Listen(heartbeat="127.0.0.1:0", snmp="127.0.0.1:0", heartbeat_interval=0.5), tmp_path / "s")
    yield c
    c.stop()


def bmc_reads(c: Controller, monkeypatch: pytest.MonkeyPatch, answers: dict[str, str]) -> None:
    now = time.monotonic()

    def reading(server: str) -> tuple[str, float, float | None]:
        return answers.get(server, "unknown"), now, now

    monkeypatch.setattr(c.poller, "reading", reading)


def test_alive_evidence_asks_only_about_what_the_detector_started(ctrl: Controller,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    bmc_reads(ctrl, monkeypatch, {"r720-1": "on", "r720-3": "on"})
    assert ctrl.alive_evidence("exchange1", "r720-1") is None  # no operation: nothing to second-guess
    op = ctrl.journal.open_operation("failover", "exchange1", {"trigger": "PersonaPresumedDead"},
                                     from_server="r720-1")
    why = ctrl.alive_evidence("exchange1", "r720-1")
    assert why is not None and why.startswith("BMC reads On")
    # A standby given up on reads On because we powered it: not evidence.
    assert ctrl.alive_evidence("exchange1", "r720-3") is None
    ctrl.journal.set_state(op, "failed", "test")
    ctrl.journal.open_operation("failover", "exchange1", {"trigger": "operator"}, from_server="r720-1")
    assert ctrl.alive_evidence("exchange1", "r720-1") is None  # an operator's decision stands


def test_confirm_stops_a_failover_of_a_live_body_before_touching_anything(
    ctrl: Controller, monkeypatch: pytest.MonkeyPatch
) -> None:
    bmc_reads(ctrl, monkeypatch, {"r720-1": "on"})
    op = ctrl.journal.open_operation("failover", "exchange1", {"trigger": "PersonaPresumedDead"},
                                     from_server="r720-1")
    res = run_steps(ctrl.journal, op, [Step("confirm", s_confirm)], ctrl.ctx)
    assert res.state == "aborted"
    assert res.result.startswith("confirm: not dead after all: BMC reads On")
    # The same with the BMC still silent: confirm lets it go on.
    bmc_reads(ctrl, monkeypatch, {"r720-2": "no-answer"})
    op2 = ctrl.journal.open_operation("failover", "exchange2", {"trigger": "PersonaPresumedDead"},
                                      from_server="r720-2")
    assert run_steps(ctrl.journal, op2, [Step("confirm", s_confirm)], ctrl.ctx).state == "done"


def test_a_queued_trigger_is_rechecked_when_taken_up(ctrl: Controller, monkeypatch: pytest.MonkeyPatch) -> None:
    bmc_reads(ctrl, monkeypatch, {"r720-1": "on"})
    q = Queued("exchange1", "exchange", "PersonaPresumedDead", "no heartbeat; BMC silent", "r720-1")
    ctrl._pending["exchange1"] = q
    ctrl._starting.add("exchange1")
    ctrl._start_queued(q)
    assert ctrl.journal.operations() == []  # no operation opened
    assert "exchange1" not in ctrl._pending and "exchange1" not in ctrl._starting
    assert "failover.not-dead" in (ctrl.state / "audit.log").read_text()


def test_a_persona_whose_operation_waits_is_still_watched_and_status_tells(
    ctrl: Controller, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 11 hole 3: while exchange2's operation waited in needs-operator, its body lost power and
    status kept saying it was alive."""
    op = ctrl.journal.open_operation("failover", "exchange2", {"trigger": "operator"}, from_server="r720-2")
    ctrl.journal.set_state(op, "needs-operator", "choose: no standby: r720-3 quarantined")
    t0 = time.monotonic()
    ctrl.snapshot(t0)
    assert ctrl.observer.watches()["exchange2"].server == "r720-2"
    # No heartbeats, and the power button: the BMC reads off. The truth is dead, and shown as such.
    monkeypatch.setattr(ctrl.poller, "answer", lambda server: ("off", t0))
    for i in range(1, 8):
        ctrl.detector.tick(t0 + i * 0.5, ctrl.snapshot)
    st = ctrl.status()["personas"]["exchange2"]
    assert st["detector"] == "dead", st
    assert "BMC reports off" in st["detector_reason"] or "dead" in st["detector_reason"]
    assert st["operation"] == op and st["operation_state"] == "needs-operator"
    assert st["waiting"] == {"state": "needs-operator", "reason": "choose: no standby: r720-3 quarantined"}
    # Its death is alerted, but never queued behind the waiting operation: its operator decides.
    ctrl._storm_brake()
    assert "exchange2" not in ctrl._pending
    # A running operation is the operation's business: not watched, and said so.
    ctrl.journal.set_state(op, "running", "resumed")
    ctrl.snapshot(t0 + 5)
    assert "exchange2" not in ctrl.observer.watches()
    assert ctrl.status()["personas"]["exchange2"]["detector"] == "-"


def test_waiting_operations_keep_their_leases(ctrl: Controller) -> None:
    """A needs-operator operation waits as long as the operator takes: its leases are renewed, so a
    lapsed one never lets another operation take the standby it half-configured. A finished
    operation's leases are not revived."""
    waiting = ctrl.journal.open_operation("failover", "exchange1", from_server="r720-1",
                                          leases=["persona:exchange1", "server:r720-1"], ttl_s=1.0)
    ctrl.journal.acquire_lease("server:r720-3", waiting, 1.0)
    ctrl.journal.set_state(waiting, "needs-operator", "switch: sw2 failed")
    done = ctrl.journal.open_operation("failover", "web2", leases=["persona:web2"], ttl_s=1.0)
    ctrl.journal.set_state(done, "done", "web2 on r620-4")
    assert ctrl.renew_leases() == 3
    left = {x.name: x.expires - ctrl.journal.now() for x in ctrl.journal.leases()}
    assert set(left) == {"persona:exchange1", "server:r720-1", "server:r720-3"}
    assert all(v > 3 * 3600 - 60 for v in left.values()), left
    assert {x["name"] for x in ctrl.status()["leases"]} == set(left)


def test_a_failed_standby_an_operator_cleared_may_be_chosen_again(ctrl: Controller) -> None:
    """A standby that did not boot the persona is quarantined with it; the operator checks it,
    clears it and retries: the same operation may choose it again (it used to stay excluded for the
    operation's whole life, so the retry could only answer "no standby")."""
    from aimctl.failover.describe import candidates

    op_id = ctrl.journal.open_operation("failover", "exchange1", {"failed_standbys": ["r720-3"]},
                                        from_server="r720-1", leases=["persona:exchange1"])
    ctrl.journal.quarantine("r720-3", "did not boot exchange1", failed=True)
    _, quarantined, unavailable = candidates(ctrl.ctx, ctrl.journal.operation(op_id))
    assert "r720-3" in quarantined and unavailable["r720-3"] == "failed to boot this persona in this operation"
    ctrl.journal.clear("r720-3", by="admin")
    _, quarantined, unavailable = candidates(ctrl.ctx, ctrl.journal.operation(op_id))
    assert "r720-3" not in quarantined and "r720-3" not in unavailable
