"""Every decision in one sentence: the sentences of the main paths, pinned.

The inputs are what the journal and the detector hold on each path (step details as the steps
record them, operation facts, detector reasons); the output is what `aimctl status`, `timeline`,
the API and the alerts show. Update with AIMCTL_UPDATE_GOLDEN=1 after a deliberate change.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from aimctl.detect.escalation import PastFailover, escalation
from aimctl.detect.racks import Death, rack_events
from aimctl.detect.suspect import Signals, load_table, preempt_decision, suspect_verdict
from aimctl.drivers.protocols import LogEntry
from aimctl.failover.planner import choose
from aimctl.loader import load
from aimctl.model import Escalation, Preempt
from aimctl.records.sentences import choice_sentence, detector_sentence, operation_sentence, step_sentence
from aimctl.reconcile.spares import spares
from tests.conftest import DEFINITIONS

GOLDEN = Path(__file__).parent / "sentences" / "main_paths.txt"
T = 1_795_780_800.0  # 2026-11-27 12:00:00 UTC

FAILOVER: dict[str, Any] = {
    "id": "fo-20261127-0001", "kind": "failover", "persona": "exchange1", "from_server": "r720-1",
    "state": "done", "result": "exchange1 on r720-3",
    "facts": {"trigger": "PersonaDead", "evidence": "no heartbeat for 1.4s; BMC reports off", "to": "r720-3"},
}
STEPS: list[tuple[str, str, dict[str, Any]]] = [
    ("confirm", "ok", {"evidence": "no heartbeat for 1.4s; BMC reports off", "trigger": "PersonaDead"}),
    ("approve", "skipped", {"reason": "automatic policy"}),
    ("fence", "ok", {"storage": {"targets": ["iqn.2026-01.lab.storage:exchange1-boot",
                                             "iqn.2026-01.lab.storage:exchange1-db"],
                                 "chap_user": "aimctl-exchange1", "old_secret_refused": True},
                     "power": {"power": "off (read back)"}, "graceful": False, "agent_stopped": False}),
    ("storage", "ok", {"targets": {"t1": {"acl": ["iqn.1991-05.com.microsoft:exchange1"],
                                          "chap_user": "aimctl-exchange1"},
                                   "t2": {"acl": ["iqn.1991-05.com.microsoft:exchange1"],
                                          "chap_user": "aimctl-exchange1"}}}),
    ("bootcfg", "ok", {"server": "r720-3", "initiator": "iqn.1991-05.com.microsoft:exchange1",
                       "target": "iqn.2026-01.lab.storage:exchange1-boot", "lun": 1}),
    ("switch", "ok", {"ports": {"sw1": ["1/g5 trunk 4004", "1/g6 trunk 100,200", "1/g1 access 999",
                                       "1/g2 access 999"],
                                "sw2": ["1/g5 trunk 4004", "1/g6 trunk 100,200", "1/g1 access 999",
                                        "1/g2 access 999"]}}),
    ("power_on", "ok", {"server": "r720-3", "power": "on (read back)"}),
    ("heartbeat", "ok", {"server": "r720-3", "waited_s": 1.62}),
    ("recovery", "ok", {"hooks": [{"hook": "exchange-dag", "ok": True}], "recovery": "ok"}),
    ("done", "ok", {"summary": "exchange1 on r720-3"}),
]


def lines() -> list[str]:
    defs = load(DEFINITIONS, use_cache=False)
    out = ["# failover after a power-button death (timeline sentences, then the operation)"]
    c = choose(defs, "exchange1", defs.homes(), set())
    out.append(f"choose: {choice_sentence('exchange1', c.server, c.why, c.rejected)}")
    for step, status, detail in STEPS:
        out.append(f"{step}: {step_sentence(step, status, detail, FAILOVER)}")
    out.append(operation_sentence(FAILOVER))

    out.append("# no standby: why not each one")
    c = choose(defs, "exchange1", defs.homes(), {"r720-3"})
    out.append(choice_sentence("exchange1", c.server, c.why, c.rejected))

    out.append("# fence not confirmable: stopped for an operator")
    stopped = {**FAILOVER, "state": "needs-operator",
               "result": "fence: fence not confirmed: power-off not read back (r720-1: power-off not read back) "
                         "and quarantine failed (switch: sw1: no answer within 10s); nothing moved"}
    out.append(step_sentence("fence", "failed", {"reason": stopped["result"].split(": ", 1)[1],
                                                 "stopped": "needs-operator"}, stopped))
    out.append(operation_sentence(stopped))
    out.append(step_sentence("resolve", "ok", {"action": "mark-fenced", "server": "r720-1", "by": "ops(admin)",
                                               "note": "pulled the power cords"}, stopped))

    out.append("# why dead, why not dead (detector)")
    out.append(detector_sentence("exchange1", "dead", "no heartbeat for 1.4s; BMC reports off", T))
    out.append(detector_sentence("exchange2", "unreachable", "no heartbeat for 2.1s but BMC reports on and links "
                                                             "are up: partition, no failover", T))
    out.append(detector_sentence("exchange1", "presumed-dead", "no heartbeat for 31.0s; BMC silent for 31s "
                                                               "(grace 30s)", T))
    out.append(detector_sentence("web1", "alive", "heartbeats fresh", None))

    out.append("# escalation limit")
    hist = [PastFailover("fo-20261127-0001", T - 1200, "r620-2", "r620-4", "done"),
            PastFailover("fo-20261127-0002", T - 300, "r620-4", "r620-3", "done")]
    v = escalation("web2", hist, T, Escalation())
    out.append(v.sentence)
    esc = {"id": "fo-20261127-0003", "kind": "failover", "persona": "web2", "from_server": "r620-3",
           "state": "needs-operator", "result": f"confirm: {v.sentence}", "facts": {}}
    out.append(operation_sentence(esc))

    out.append("# suspect bodies and planned moves")
    ecc = LogEntry("Sel/1", message="Correctable ECC memory error logging limit reached for DIMM A1.",
                   sensor="memory")
    sv = suspect_verdict(Signals("r720-2", "warning", (ecc,), {4: (97.0, 98.0, 99.0)}), Preempt(), load_table(), 100)
    out.append(sv.sentence)
    out.append(preempt_decision("exchange2", "r720-2", sv, Preempt(), False, True, _now()).sentence)
    out.append(preempt_decision("exchange2", "r720-2", sv, Preempt(action="move", change_approval=True), False, True,
                                _now()).sentence)
    move = {"id": "mv-20261127-0001", "kind": "move", "persona": "exchange2", "from_server": "r720-2",
            "state": "waiting-approval", "result": "approve: waiting for change CHG1000002 to be approved",
            "facts": {"trigger": "suspect", "evidence": sv.sentence}}
    out.append(step_sentence("confirm", "ok", {"evidence": sv.sentence, "trigger": "suspect"}, move))
    out.append(operation_sentence(move))

    out.append("# racks and spares")
    deaths = [Death("exchange1", "r720-1", "a1", "a1-pdu1", 100.0), Death("exchange2", "r720-2", "a1", "a1-pdu1",
                                                                          100.4)]
    out.append(rack_events(deaths, 101.0, 60, 2, {})[0].sentence)
    assignment = defs.homes()
    out.append(spares(defs, "exchange", assignment, set(), {}).sentence)
    out.append(spares(defs, "exchange", assignment, set(),
                      {"r720-3": "hardware does not match: r720-3 reports 176 GB memory (declared 192 GB)"}).sentence)

    out.append("# drift repair")
    rep = {"id": "rp-20261127-0001", "kind": "repair", "persona": "exchange2", "from_server": "r720-2",
           "state": "done", "result": "exchange2 repaired and read back",
           "facts": {"trigger": "drift", "subject": "exchange2"}}
    out.append(step_sentence("confirm", "ok", {"evidence": "sw1 port 1/g4 (r720-2 channel 3, exchange2) carries "
                                                           "trunk vlan 200, expected trunk vlan 100,200"}, rep))
    out.append(step_sentence("repair", "ok", {"sentence": "repaired exchange2: 1 port(s) set back"}, rep))
    out.append(operation_sentence(rep))
    return out


def _now():  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    return datetime(2026, 11, 27, 8, 0, tzinfo=UTC)


def test_sentences_of_the_main_paths_are_golden() -> None:
    text = "\n".join(lines()) + "\n"
    if os.environ.get("AIMCTL_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_every_sentence_is_one_line() -> None:
    for line in lines():
        assert "\n" not in line and line.strip() == line
