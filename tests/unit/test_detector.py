"""The failure detector: DESIGN.md rule 2 as a table, as properties, and as a running loop."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aimctl.agent.wire import Health, Heartbeat
from aimctl.detect import alerts
from aimctl.detect.detector import (
    Decision,
    Detector,
    DetectorState,
    Event,
    Observation,
    Params,
    PersonaDead,
    PersonaPresumedDead,
    PersonaRecovered,
    PersonaUnhealthy,
    PersonaUnreachable,
    aggregate_links,
    decide,
)
from aimctl.detect.observe import Observer
from aimctl.errors import OperatorError
from aimctl.records.sinks import sign

P = Params()  # miss 2.5 intervals, confirm 1 more, recover after 3 beats


def obs(hb_age: float, **kw: Any) -> Observation:
    kw.setdefault("interval", 1.0)
    kw.setdefault("grace_s", 30.0)
    return Observation("exchange1", hb_age, **kw)


FRESH, MISSING, LONG = 0.4, 3.0, 4.0

DEAD, PRESUMED, UNREACHABLE, UNHEALTHY, RECOVERED = (
    PersonaDead,
    PersonaPresumedDead,
    PersonaUnreachable,
    PersonaUnhealthy,
    PersonaRecovered,
)

# (case, previous state, back_at, observation, expected state, expected event type)
# fmt: off
TABLE: list[tuple[str, str, int | None, Observation, str, type | None]] = [
    ("heartbeats flowing", "alive", None, obs(FRESH, bmc="on", links="up"), "alive", None),
    ("one lost heartbeat plus jitter is nothing", "alive", None, obs(2.0, bmc="on"), "alive", None),
    ("missing alone is only suspicion", "alive", None, obs(MISSING, bmc="on", links="up"), "suspect", None),
    ("missing, BMC silent, links unknown", "alive", None, obs(MISSING), "suspect", None),
    ("power button: BMC reads off", "alive", None, obs(MISSING, bmc="off"), "dead", DEAD),
    ("BMC reports the host failed", "suspect", None, obs(MISSING, bmc="failed"), "dead", DEAD),
    ("SCN links down, BMC silent", "suspect", None, obs(MISSING, links="down"), "dead", DEAD),
    ("SCN links down, BMC on", "suspect", None, obs(MISSING, bmc="on", links="down"), "dead", DEAD),
    ("partition: BMC on, links up", "suspect", None, obs(LONG, bmc="on", links="up"), "unreachable",
     UNREACHABLE),
    ("partition without SNMP data", "suspect", None, obs(LONG, bmc="on"), "unreachable", UNREACHABLE),
    ("BMC on but not yet confirmed", "suspect", None, obs(3.4, bmc="on", links="up"), "suspect", None),
    ("unreachable stays quiet", "unreachable", None, obs(60, bmc="on", links="up"), "unreachable", None),
    ("BMC silent within grace", "suspect", None, obs(20, bmc_silent_s=10), "suspect", None),
    ("BMC and heartbeats silent past grace", "suspect", None, obs(40, bmc_silent_s=30), "presumed-dead",
     PRESUMED),
    ("BMC silent for long, beats just missing", "suspect", None, obs(MISSING, bmc_silent_s=3600), "suspect",
     None),
    ("heartbeats silent past grace, BMC just silent", "suspect", None, obs(40, bmc_silent_s=5), "suspect",
     None),
    ("unreachable, then BMC silent", "unreachable", None, obs(40, bmc_silent_s=31), "presumed-dead",
     PRESUMED),
    ("partition, then the host really dies", "unreachable", None, obs(60, bmc="off"), "dead", DEAD),
    ("presumed dead stays quiet", "presumed-dead", None, obs(90, bmc_silent_s=80), "presumed-dead",
     None),
    ("presumed dead, BMC back, says off", "presumed-dead", None, obs(90, bmc="off"), "dead", DEAD),
    ("presumed dead not undone by BMC on", "presumed-dead", None, obs(90, bmc="on"), "presumed-dead",
     None),
    ("dead is sticky", "dead", None, obs(90, bmc="on", links="up"), "dead", None),
    ("first heartbeat back after dead", "dead", None, obs(FRESH, beats=10), "dead", None),
    ("third heartbeat back after dead", "dead", 10, obs(FRESH, beats=12), "alive", RECOVERED),
    ("second heartbeat back after unreachable", "unreachable", 10, obs(FRESH, beats=11), "unreachable",
     None),
    ("recovered from presumed dead", "presumed-dead", 3, obs(FRESH, beats=5), "alive", RECOVERED),
    ("suspect clears without an event", "suspect", None, obs(FRESH), "alive", None),
    ("agent gave up on its services", "alive", None, obs(FRESH, health="unhealthy"), "unhealthy", UNHEALTHY),
    ("still unhealthy: no repeat", "unhealthy", None, obs(FRESH, health="unhealthy"), "unhealthy", None),
    ("healthy again needs 3 beats", "unhealthy", None, obs(FRESH, beats=4), "unhealthy", None),
    ("healthy again", "unhealthy", 4, obs(FRESH, beats=6), "alive", RECOVERED),
    ("back from dead but unhealthy", "dead", 4, obs(FRESH, beats=6, health="unhealthy"), "unhealthy",
     UNHEALTHY),
    ("unhealthy host powered off", "unhealthy", None, obs(MISSING, bmc="off"), "dead", DEAD),
    ("degraded is not unhealthy", "alive", None, obs(FRESH, health="degraded"), "alive", None),
    ("longer interval: 3s old is fresh", "alive", None, obs(3.0, interval=2.0, bmc="off"), "alive", None),
    # A BMC never answered yet is unknown: not silent (no grace runs), not on (no partition verdict).
    ("BMC unknown, heartbeats long gone", "suspect", None, obs(90, bmc="unknown"), "suspect", None),
    ("BMC unknown never makes a partition", "suspect", None, obs(LONG, bmc="unknown", links="up"), "suspect",
     None),
    ("BMC unknown, links down: dead", "suspect", None, obs(MISSING, bmc="unknown", links="down"), "dead", DEAD),
    ("BMC unknown after a partition verdict", "unreachable", None, obs(90, bmc="unknown"), "unreachable", None),
    # Re-observing after the controller's own stall: no verdict, whatever the sources held.
    ("stall: BMC off held back", "suspect", None, obs(MISSING, bmc="off", settling="stall"), "suspect", None),
    ("stall: alive becomes suspect only", "alive", None, obs(MISSING, bmc="off", settling="stall"), "suspect",
     None),
    ("stall: no partition verdict", "suspect", None, obs(LONG, bmc="on", settling="stall"), "suspect", None),
    ("stall: no presumed death", "suspect", None, obs(40, bmc_silent_s=30, settling="stall"), "suspect", None),
    ("stall: unreachable stays", "unreachable", None, obs(60, bmc="off", settling="stall"), "unreachable", None),
    ("stall: dead stays dead", "dead", None, obs(60, bmc="off", settling="stall"), "dead", None),
    ("stall: fresh heartbeats still count", "suspect", None, obs(FRESH, settling="stall"), "alive", None),
    ("stall: recovery still counts", "dead", 10, obs(FRESH, beats=12, settling="stall"), "alive", RECOVERED),
]
# fmt: on


@pytest.mark.parametrize(("case", "prev", "back_at", "o", "state", "event"), TABLE, ids=[t[0] for t in TABLE])
def test_decide_table(
    case: str, prev: str, back_at: int | None, o: Observation, state: str, event: type | None
) -> None:
    d = decide(DetectorState(prev, back_at), o, P)  # type: ignore[arg-type]
    assert d.state.state == state, d.reason
    assert (type(d.event) if d.event else None) is event, d.reason
    if d.event is not None:
        assert d.event.persona == "exchange1" and d.event.reason


def test_wire_health_enum_is_understood() -> None:
    o = obs(FRESH, health=Health.UNHEALTHY)
    assert o.health == "unhealthy"
    assert decide(DetectorState(), o, P).state.state == "unhealthy"


def run(seq: list[Observation], start: str = "alive") -> tuple[list[str], list[Event]]:
    state, states, events = DetectorState(start), [], []  # type: ignore[arg-type]
    for o in seq:
        d: Decision = decide(state, o, P)
        state = d.state
        states.append(state.state)
        if d.event:
            events.append(d.event)
    return states, events


def test_flapping_partition_alerts_once() -> None:
    # Heartbeats come and go, two at a time, while the BMC says on: one alert, no recovery storm.
    seq, beats = [], 0
    for _ in range(10):
        seq += [obs(5.0, bmc="on", links="up", beats=beats)]
        beats += 1
        seq += [obs(FRESH, bmc="on", beats=beats)]
        beats += 1
        seq += [obs(FRESH, bmc="on", beats=beats)]
    states, events = run(seq)
    assert [type(e) for e in events] == [PersonaUnreachable]
    assert states[-1] == "unreachable"


def test_power_button_is_dead_within_three_intervals() -> None:
    # Detector ticks every quarter interval; the BMC poller already reads "off".
    t, last_hb = 0.0, 0.0
    while True:
        t += 0.25
        d = decide(DetectorState("suspect" if t - last_hb > 2.5 else "alive"), obs(t - last_hb, bmc="off"), P)
        if d.state.state == "dead":
            break
    assert t <= 3.0


def test_aggregate_links() -> None:
    assert aggregate_links(["down", "down"]) == "down"
    assert aggregate_links(["down", "up"]) == "up"
    assert aggregate_links(["down", "unknown"]) == "unknown"
    assert aggregate_links([]) == "unknown"


# ---------------------------------------------------------------------------- properties

def test_no_bmc_answer_yet_is_never_a_second_source() -> None:
    """However long heartbeats and a never-answered BMC are silent, nobody dies (issue 11, hole 11a)."""
    state = DetectorState()
    for age in (0.5, 3.0, 10.0, 30.0, 300.0, 3600.0):
        d = decide(state, obs(age, bmc="unknown", bmc_silent_s=age, grace_s=10.0), P)
        assert d.state.state in ("alive", "suspect"), d
        assert "first contact" in d.reason or d.state.state == "alive"
        state = d.state


no_second_source = st.builds(
    lambda age, beats_step, health, bmc, silent, links, grace: (
        age,
        beats_step,
        health,
        bmc,
        silent,
        links,
        grace,
    ),
    st.floats(0, 200),
    st.integers(0, 2),
    st.sampled_from(["ok", "degraded", "unhealthy", "stopped"]),
    st.sampled_from(["on", "no-answer", "unknown"]),
    st.floats(0, 200),
    st.sampled_from(["up", "unknown"]),
    st.floats(1, 100),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(no_second_source, min_size=1, max_size=40))
def test_never_dead_without_a_second_source(steps: list[tuple[Any, ...]]) -> None:
    state, beats, grace_seen = DetectorState(), 0, False
    for age, step, health, bmc, silent, links, grace in steps:
        beats += step
        o = obs(age, beats=beats, health=health, bmc=bmc, bmc_silent_s=silent, links=links, grace_s=grace)
        d = decide(state, o, P)
        assert d.state.state != "dead"
        if d.state.state == "presumed-dead" and state.state != "presumed-dead":
            assert bmc == "no-answer" and silent >= grace and age >= grace and age > P.miss_intervals
            grace_seen = True
        if d.state.state == "presumed-dead":
            assert grace_seen
        if d.event is not None:
            assert d.state.state != state.state, "an event without a transition"
        state = d.state


any_obs = st.builds(
    lambda age, beats, health, bmc, silent, links: obs(
        age, beats=beats, health=health, bmc=bmc, bmc_silent_s=silent, links=links
    ),
    st.floats(0, 100),
    st.integers(0, 1000),
    st.sampled_from(["ok", "unhealthy"]),
    st.sampled_from(["on", "off", "failed", "no-answer"]),
    st.floats(0, 100),
    st.sampled_from(["up", "down", "unknown"]),
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["alive", "suspect", "unreachable", "dead", "presumed-dead", "unhealthy"]), any_obs)
def test_entering_dead_needs_a_second_source_and_fresh_heartbeats_never_kill(
    prev: str, o: Observation
) -> None:
    d = decide(DetectorState(prev), o, P)  # type: ignore[arg-type]
    if d.state.state == "dead" and prev != "dead":
        assert o.bmc in ("off", "failed") or o.links == "down"
        assert o.hb_age > P.miss_intervals * o.interval
    if o.hb_age <= P.miss_intervals * o.interval and prev in ("alive", "suspect"):
        assert d.state.state in ("alive", "unhealthy")


# ---------------------------------------------------------------------------- the loop


class Beats:
    """An in-memory heartbeat source with the receiver's query shape."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple[float, Heartbeat]] = {}
        self.count: dict[str, int] = {}

    def beat(self, persona: str, at: float, sent_at: float, health: Health = Health.OK) -> None:
        n = self.count.get(persona, 0) + 1
        self.count[persona] = n
        self.seen[persona] = (at, Heartbeat(persona, 1, n, sent_at, health))

    def last_seen(self, persona: str) -> tuple[float, Heartbeat] | None:
        return self.seen.get(persona)

    def beats(self, persona: str) -> int:
        return self.count.get(persona, 0)


class Bmc:
    def __init__(self) -> None:
        self.answers: dict[str, tuple[str, float]] = {}

    def answer(self, server: str) -> tuple[str, float]:
        return self.answers.get(server, ("on", 0.0))  # type: ignore[return-value]


class Sink:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)


def test_detector_loop_with_skewed_sender_clocks() -> None:
    now = [1000.0]
    beats, bmc, sink = Beats(), Bmc(), Sink()
    observer = Observer(beats, bmc, clock=lambda: now[0])  # type: ignore[arg-type]
    observer.watch("exchange1", "r720-1", (1, 2))
    observer.watch("exchange2", "r720-2", (1, 2))
    det = Detector(alerts.FanOut([sink, alerts.LoggingAlerts()]))
    for step in range(40):  # 10 s at 4 ticks per interval
        now[0] += 0.25
        if step % 4 == 0:
            # exchange2's clock is a year off either way: it must not matter.
            beats.beat("exchange1", now[0], sent_at=time.time())
            beats.beat("exchange2", now[0], sent_at=time.time() + (3e7 if step % 8 else -3e7))
        det.tick(now[0], observer)
    assert sink.events == []
    assert det.state("exchange2").state == "alive"
    # exchange1's body loses power: the BMC reads off; exchange2 is partitioned.
    bmc.answers["r720-1"] = ("off", now[0])
    t_cut = now[0]
    dead_at = None
    for _ in range(40):
        now[0] += 0.25
        det.tick(now[0], observer)
        if dead_at is None and det.state("exchange1").state == "dead":
            dead_at = now[0]
    assert dead_at is not None and dead_at - t_cut <= 3.0
    assert [(type(e), e.persona) for e in sink.events] == [
        (PersonaDead, "exchange1"),
        (PersonaUnreachable, "exchange2"),
    ]
    assert all(e.at > 0 for e in sink.events)


def test_a_stall_of_the_controller_re_observes_before_any_verdict() -> None:
    """Issue 11 hole 12: the detector notices a gap between its own ticks and gives no verdict until
    every source was read again (here: the BMC answer read before the stall is "on", stale)."""
    now = [1000.0]
    beats, bmc, sink = Beats(), Bmc(), Sink()
    observer = Observer(beats, bmc, clock=lambda: now[0])  # type: ignore[arg-type]
    observer.watch("exchange1", "r720-1", (1, 2))
    det = Detector(sink, P)
    for _ in range(8):
        now[0] += 0.25
        beats.beat("exchange1", now[0], sent_at=time.time())
        det.tick(now[0], observer)
    last_beat = now[0]
    # The controller stops for 5 intervals; the host died 1 s into it (no heartbeats since).
    now[0] += 5.0
    assert det.tick(now[0], observer) == []
    assert det.stalls == 1
    assert det.state("exchange1").state == "suspect"
    assert "stall" in det.reason("exchange1")
    # Still inside the window: the stale "on" must not make a partition verdict.
    now[0] += 1.0
    assert det.tick(now[0], observer) == []
    assert det.state("exchange1").state == "suspect"
    # The poller reads the BMC again: off. The window ends (2 intervals): one verdict, the right one.
    bmc.answers["r720-1"] = ("off", now[0])
    while now[0] < last_beat + 5.0 + 2.0 + 0.5:
        now[0] += 0.25
        det.tick(now[0], observer)
    assert [type(e) for e in sink.events] == [PersonaDead]


def test_a_stall_without_a_death_gives_no_verdict() -> None:
    now = [1000.0]
    beats, bmc, sink = Beats(), Bmc(), Sink()
    observer = Observer(beats, bmc, clock=lambda: now[0])  # type: ignore[arg-type]
    observer.watch("exchange1", "r720-1", (1, 2))
    det = Detector(sink, P)
    det.tick(now[0], observer)
    # Stalled 4 s; heartbeats kept arriving (timed by arrival) but the receiver drains them late.
    now[0] += 4.0
    det.tick(now[0], observer)
    for i in range(1, 5):
        beats.beat("exchange1", now[0] - 4.0 + i, sent_at=time.time())
    for _ in range(20):
        now[0] += 0.25
        if int(now[0] * 4) % 4 == 0:
            beats.beat("exchange1", now[0], sent_at=time.time())
        det.tick(now[0], observer)
    assert sink.events == []
    assert det.state("exchange1").state == "alive"


def test_ticks_at_their_pace_are_no_stall() -> None:
    det = Detector(Sink(), P)
    for i in range(40):
        det.tick(i * 0.5, lambda now: [obs(FRESH)])  # two ticks an interval: slow, not stalled
    assert det.stalls == 0


def test_a_broken_sink_does_not_stop_detection() -> None:
    class Broken:
        def emit(self, event: Event) -> None:
            raise RuntimeError("boom")

    det = Detector(Broken())
    events = det.tick(1.0, lambda now: [obs(MISSING, bmc="off")])
    assert [type(e) for e in events] == [PersonaDead]


# ---------------------------------------------------------------------------- webhooks


class _Hook(http.server.BaseHTTPRequestHandler):
    got: list[tuple[dict[str, str], bytes]]
    release: threading.Event

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.release.wait(5)
        self.got.append((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hook_server() -> Iterator[tuple[str, list[tuple[dict[str, str], bytes]], threading.Event]]:
    got: list[tuple[dict[str, str], bytes]] = []
    release = threading.Event()
    handler = type("Hook", (_Hook,), {"got": got, "release": release})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    th = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    th.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/alerts", got, release
    release.set()
    srv.shutdown()
    srv.server_close()


def wait_for(cond: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        time.sleep(0.01)


@pytest.fixture
def hook_secret(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AIMCTL_TEST_ALERT_SECRET", "s3cret-webhook-key")
    return "env:AIMCTL_TEST_ALERT_SECRET"


def test_webhook_posts_signed_json(hook_server: Any, hook_secret: str) -> None:
    url, got, release = hook_server
    release.set()
    hook = alerts.WebhookAlerts(url, hook_secret)
    hook.emit(PersonaDead("exchange1", "BMC reports off", at=5.0))
    wait_for(lambda: hook.delivered == 1)
    hook.close()
    headers, body = got[0]
    doc = json.loads(body)
    assert doc["event"] == "PersonaDead" and doc["record"]["persona"] == "exchange1"
    assert headers["X-Aimctl-Signature"] == sign(b"s3cret-webhook-key", body)
    assert headers["X-Aimctl-Signature"] != sign(b"other", body)


def test_webhook_failures_are_logged_not_raised(
    hook_server: Any, hook_secret: str, caplog: pytest.LogCaptureFixture
) -> None:
    url, _got, _release = hook_server  # the server holds every request: the client must time out
    slow = alerts.WebhookAlerts(url, hook_secret, timeout_s=1.5)
    t0 = time.monotonic()
    slow.emit(PersonaDead("exchange1", "x"))
    # emit never waits for the network: a caller that waited would be held the whole 1.5 s
    # (the margin is for a loaded machine's scheduling, not for the network)
    assert time.monotonic() - t0 < 0.75
    wait_for(lambda: slow.failed == 1)
    down = alerts.WebhookAlerts("http://127.0.0.1:9/alerts", hook_secret, timeout_s=0.5)
    down.emit(PersonaDead("exchange1", "x"))
    wait_for(lambda: down.failed == 1)
    slow.close(1)
    down.close(1)
    assert "not delivered" in caplog.text
    with pytest.raises(OperatorError, match="http"):
        alerts.WebhookAlerts("file:///etc/passwd", hook_secret)
