"""The verdict asked again at the moment of acting (issue 11 item 4): a table, and properties."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aimctl.detect.recheck import Evidence, alive_evidence


def ev(trigger: str = "PersonaDead", **kw: Any) -> Evidence:
    kw.setdefault("verdict_body", True)
    kw.setdefault("hb_age", 30.0)
    kw.setdefault("interval", 1.0)
    return Evidence(trigger=trigger, **kw)


# (case, evidence, alive?, words the sentence must contain)
# fmt: off
TABLE: list[tuple[str, Evidence, bool, str]] = [
    ("dead: BMC still off", ev(bmc="off"), False, ""),
    ("dead: BMC silent", ev(bmc="no-answer"), False, ""),
    ("dead: BMC never answered", ev(bmc="unknown"), False, ""),
    ("dead, but the BMC reads On now, links up", ev(bmc="on", links="up", bmc_read_age=0.4), True, "BMC reads On"),
    ("presumed dead, BMC answers On after all", ev("PersonaPresumedDead", bmc="on"), True, "unreachable, not dead"),
    ("BMC On but every SCN link down: still dead", ev(bmc="on", links="down"), False, ""),
    ("BMC On but it sent a failure alert", ev(bmc="on", links="up", bmc_alert=True), False, ""),
    ("fresh heartbeat", ev(hb_age=0.5, bmc="off"), True, "fresh heartbeats"),
    ("heartbeat 2.4 intervals old is fresh", ev(hb_age=2.4, bmc="no-answer"), True, "fresh heartbeats"),
    ("heartbeat 3 intervals old is not", ev(hb_age=3.0, bmc="no-answer"), False, ""),
    ("never heard since start", ev(hb_age=None, bmc="no-answer"), False, ""),
    ("fresh but unhealthy agent: the body lives", ev(hb_age=0.5, health="unhealthy"), True, "fresh heartbeats"),
    ("fresh 'stopped' is no sign of life for the persona", ev(hb_age=0.5, health="stopped", bmc="off"), False, ""),
    ("unhealthy: body on proves nothing", ev("PersonaUnhealthy", hb_age=9.0, bmc="on", links="up"), False, ""),
    ("unhealthy: still unhealthy", ev("PersonaUnhealthy", hb_age=0.5, health="unhealthy", bmc="on"), False, ""),
    ("unhealthy: services back", ev("PersonaUnhealthy", hb_age=0.5, health="ok"), True, "services recovered"),
    ("unhealthy: degraded counts as back", ev("PersonaUnhealthy", hb_age=0.5, health="degraded"), True, "recovered"),
    ("a standby given up on: its BMC is On because we powered it", ev(verdict_body=False, bmc="on", links="up"),
     False, ""),
    ("a standby that heartbeats after all", ev(verdict_body=False, hb_age=0.3, bmc="on"), True, "fresh"),
    ("an operator's failover is never second-guessed here", ev("operator", bmc="on", links="up"), False, ""),
]
# fmt: on


@pytest.mark.parametrize(("case", "e", "alive", "words"), TABLE, ids=[t[0] for t in TABLE])
def test_recheck_table(case: str, e: Evidence, alive: bool, words: str) -> None:
    why = alive_evidence(e)
    assert (why is not None) == alive, why
    if alive:
        assert words in str(why)


evidence = st.builds(
    Evidence,
    trigger=st.sampled_from(["PersonaDead", "PersonaPresumedDead", "PersonaUnhealthy", "operator"]),
    verdict_body=st.booleans(),
    hb_age=st.one_of(st.none(), st.floats(0, 100)),
    interval=st.floats(0.1, 5),
    health=st.sampled_from(["ok", "degraded", "unhealthy", "stopped"]),
    bmc=st.sampled_from(["on", "off", "failed", "no-answer", "unknown"]),
    bmc_read_age=st.one_of(st.none(), st.floats(0, 10)),
    links=st.sampled_from(["up", "down", "unknown"]),
    bmc_alert=st.booleans(),
)


@settings(max_examples=200, deadline=None)
@given(evidence)
def test_alive_needs_fresh_heartbeats_or_a_bmc_on_without_death_signal(e: Evidence) -> None:
    why = alive_evidence(e)
    if why is None:
        return
    fresh = e.hb_age is not None and e.hb_age <= 2.5 * e.interval
    bmc_says_alive = e.bmc == "on" and e.links != "down" and not e.bmc_alert and e.verdict_body
    assert fresh or bmc_says_alive
    if not fresh:
        assert e.trigger in ("PersonaDead", "PersonaPresumedDead")
