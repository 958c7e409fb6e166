"""Why a failover does not start: the controller's limits, on a controller that is never started.

Every endpoint of the definitions is pointed at 127.0.0.1 (a closed port) so nothing real can be
touched; the operations are opened in the journal as the controller would have.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from aimctl.daemon import Controller, StormBrake, WaitForRepair
from aimctl.detect.detector import DetectorState
from aimctl.detect.storm import Queued
from aimctl.errors import OperatorError
from aimctl.journal import persona_lease, server_lease
from aimctl.loader import load
from aimctl.overlay import Listen, Overlay, apply
from tests.conftest import DEFINITIONS

SECRETS = ("AIMCTL_BMC_PASSWORD", "AIMCTL_SWITCH_PASSWORD", "AIMCTL_SWITCH_ENABLE", "AIMCTL_ARRAY_PASSWORD",
           "AIMCTL_IPMI_PASSWORD", "AIMCTL_EXCH_PASSWORD")


@pytest.fixture
def controller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Controller]:
    for var in SECRETS:
        monkeypatch.setenv(var, "unused-secret")
    key = tmp_path / "hb.key"
    key.write_text("k" * 32)
    defs = load(DEFINITIONS, use_cache=False)
    pool = defs.pools["exchange"]
    defs.pools["exchange"] = pool.model_copy(update={"storm": pool.storm.model_copy(update={"per_rack": 1})})
    ov = Overlay.model_validate({
        "servers": {s: {"bmc": {"address": "127.0.0.1", "port": 9, "tls": False}} for s in defs.servers},
        "switches": {s: {"address": "127.0.0.1", "port": 9} for s in defs.switches},
        "storage": {s: {"portal": "127.0.0.1", "port": 9} for s in defs.storage},
        "personas": {p: {"heartbeat_key": f"file:{key}"} for p in defs.personas},
        "controller": Listen(heartbeat="127.0.0.1:0", snmp="127.0.0.1:0", api="127.0.0.1:0").model_dump(),
    })
    c = Controller(apply(defs, ov), ov.controller, tmp_path / "ctrl")
    spawned: list[str] = []
    monkeypatch.setattr(c, "_spawn", spawned.append)  # nothing runs: only what the controller decides
    c.spawned = spawned  # type: ignore[attr-defined]
    try:
        yield c
    finally:
        c.stop()


def past_failover(c: Controller, persona: str, frm: str, to: str, state: str = "done") -> str:
    op = c.journal.open_operation("failover", persona, {"actor": "controller", "to": to, "trigger": "PersonaDead"},
                                  from_server=frm)
    c.journal.set_state(op, state, f"{persona} on {to}")
    return op


def test_beyond_the_escalation_limit_the_failover_stops_with_its_history(controller: Controller) -> None:
    c = controller
    first = past_failover(c, "web2", "r620-2", "r620-4")
    second = past_failover(c, "web2", "r620-4", "r620-3")
    c.journal.set_assignment("web2", "r620-3", "test")
    op_id = c.start_failover("web2", "PersonaDead", "no heartbeat for 1.4s; BMC reports off")
    op = c.journal.operation(op_id)
    assert op.state == "needs-operator" and c.spawned == []  # type: ignore[attr-defined]
    assert first in op.result and second in op.result and "limit 2" in op.result
    assert [h["op_id"] for h in op.facts["escalation"]] == [first, second]
    steps = c.journal.steps(op_id)
    assert [(s["step"], s["status"]) for s in steps] == [("confirm", "failed")]
    # An operator's own failover is not limited.
    c.journal.set_state(op_id, "aborted", "operator")
    assert c.start_failover("web2", "operator", "requested", actor="ops(admin)")
    assert len(c.spawned) == 1  # type: ignore[attr-defined]


def test_a_death_during_a_drift_repair_waits_for_it_and_is_never_dropped(controller: Controller) -> None:
    c = controller
    c.journal.open_operation("repair", "exchange2", {"subject": "exchange2"}, from_server="r720-2",
                             leases=[persona_lease("exchange2"), server_lease("r720-2")])
    with pytest.raises(WaitForRepair, match="waiting for drift repair rp-"):
        c.start_failover("exchange2", "PersonaDead", "BMC reports off")
    q = Queued("exchange2", "exchange", "PersonaDead", "BMC reports off", None)
    c._pending["exchange2"] = q
    c._start_queued(q)
    held = c.held_why("exchange2")
    assert "exchange2" in c._pending and held is not None and "drift repair" in held
    with pytest.raises(OperatorError, match="already has an operation"):
        c.start_failover("exchange2", "planned", "move", kind="move", to="r720-3", actor="ops(admin)")


def test_the_rack_limit_queues_a_second_death_out_of_one_rack(controller: Controller) -> None:
    c = controller
    c.journal.open_operation("failover", "exchange1", {"actor": "controller"}, from_server="r720-1",
                             leases=[persona_lease("exchange1"), server_lease("r720-1")])
    with pytest.raises(StormBrake, match=r"rack brake: 1 failover\(s\) out of rack a1 already running \(limit 1\)"):
        c.start_failover("exchange2", "PersonaDead", "BMC reports off")
    assert c.spawned == []  # type: ignore[attr-defined]


def test_the_storm_brake_counts_personas_whose_failover_already_started(controller: Controller) -> None:
    """Both actives of the exchange pool die; the first one's failover started before the second was
    seen dead (the detector forgot it then). The brake must still see two of two in trouble."""
    c = controller
    c.journal.open_operation("failover", "exchange1", {"actor": "controller"}, from_server="r720-1")
    c.detector._states["exchange2"] = DetectorState("dead")
    c._storm_brake()
    assert "exchange" in c.paused and "2 of 2 personas" in c.paused["exchange"]


def test_rack_events_are_paged_once(controller: Controller) -> None:
    c = controller
    got: list[object] = []
    c.alerts = type("Sink", (), {"emit": lambda self, e: got.append(e)})()  # type: ignore[assignment]
    c.oversight.on_death("exchange1", 100.0)
    c.oversight.on_death("exchange2", 100.5)
    c.oversight.on_death("exchange2", 101.0)  # the same burst, seen again
    racks = [e for e in got if type(e).__name__ == "RackEventAlert"]
    assert len(racks) == 1 and dataclasses.asdict(racks[0])["persona"] == "a1"  # type: ignore[call-overload]
