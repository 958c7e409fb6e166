"""Cluster stories: three controllers on a three-member etcd, on the session lab.

Each story ends with the access observer clean. The cluster runs with the lab's short timing (TTL
4 s, renew 0.5 s, retry 1.5 s); stories run back to back on one cluster, moving exchange1 between
its home r720-1 and the standby r720-3 (the body a failover leaves is cleared to be the next
standby), so no story waits for a lab reset or a fresh controller.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aimctl.api.client import ApiClient
from aimctl.errors import OperatorError
from lab.cluster.members import repeated_failover_definitions
from lab.fixtures import LabHandle
from tests.waiting import wait_for

pytestmark = pytest.mark.lab

# Lab timing within the rule (0.5 + 2 x 1.5 <= 4): short stories, with room for a loaded CI machine.
TIMING = {"ttl": "4s", "renew": "500ms", "retry": "1500ms"}
TTL_S = 4.0
# Drift passes (their own stories elsewhere) stay out of the way of these: one an hour.
CONTROLLER = {"power_deadline": 4.0, "boot_timer_override": 8.0, "drift_interval": 3600.0}
BODIES = ("r720-1", "r720-3")  # exchange1's home and the pool's standby: it moves between them


class Cluster:
    def __init__(self, lab: LabHandle) -> None:
        self.lab = lab
        self.st: dict[str, Any] = {}

    def up(self, definitions: Path) -> None:
        self.st = self.lab.call("cluster-up", {"etcd": 3, "controllers": 3, "name": f"t{uuid.uuid4().hex[:8]}",
                                               "controller": CONTROLLER, "timing": TIMING,
                                               "definitions": str(definitions)})

    def state_dir(self, member: str) -> Path:
        return Path(next(c["state"] for c in self.st["controllers"] if c["name"] == member))

    def api(self, member: str) -> ApiClient:
        return ApiClient(self.state_dir(member), timeout_s=5)

    def running(self) -> list[str]:
        cl = self.lab.status()["cluster"]
        return [c["name"] for c in cl["controllers"] if c["pid"] and not c["paused"]]

    def ask(self, path: str, members: list[str] | None = None) -> Any:
        """GET from the first member that answers (followers serve reads from etcd)."""
        last: Exception | None = None
        for m in members or self.running():
            try:
                return self.api(m).get(path)
            except OperatorError as exc:
                last = exc
        raise AssertionError(f"no member answered {path}: {last}")

    def leader(self, timeout_s: float = 15.0, not_: str | None = None) -> str:
        def acting() -> str | None:
            for m in self.running():
                if m == not_:
                    continue
                try:
                    if self.api(m).get("/v1/cluster")["acting"]:
                        return m
                except OperatorError:
                    pass
            return None

        return wait_for(acting, timeout_s, "a cluster member leading and acting", poll_s=0.05)

    def all_alive(self, timeout_s: float = 20.0) -> None:
        def alive() -> bool:
            for m in self.running():
                try:
                    st = self.api(m).get("/v1/status")["personas"]
                except OperatorError:
                    continue  # a member still starting (its API not up yet) is not waited for
                if "exchange1" not in st or not all(v["heartbeat_age_s"] is not None and v["heartbeat_age_s"] < 2.0 and v["detector"] == "alive"
                           for v in st.values()):
                    return False
            return True

        wait_for(alive, timeout_s, "every persona heartbeating on every member", poll_s=0.1)

    def ready(self) -> tuple[set[str], str, str]:
        """Before a story: every persona alive everywhere; (operations so far, exchange1's body, leader)."""
        self.all_alive()
        return {o["id"] for o in self.ops()}, self.where(), self.leader()

    def ops(self, persona: str = "exchange1") -> list[dict[str, Any]]:
        return [o for o in self.ask("/v1/failovers?limit=500") if o["persona"] == persona]

    def new_op(self, known: set[str], timeout_s: float = 20.0) -> dict[str, Any]:
        def new() -> dict[str, Any] | None:
            try:
                return next((o for o in self.ops() if o["id"] not in known), None)
            except AssertionError:
                return None  # no member answers yet (etcd coming back)
        return wait_for(new, timeout_s, "a new exchange1 operation", poll_s=0.05)

    def records(self, op_id: str) -> int:
        tl = self.ask(f"/v1/failovers/{op_id}")["timeline"]
        return sum(1 for t in tl if t["started"]) + sum(1 for t in tl if t["ended"])

    def wait_done(self, op_id: str, timeout_s: float = 60.0) -> dict[str, Any]:
        def done() -> Any:
            try:
                op = self.ask(f"/v1/failovers/{op_id}")
            except AssertionError:
                return None
            return op if op["state"] in ("done", "failed", "needs-operator") else None

        op = wait_for(done, timeout_s, f"{op_id} to finish", poll_s=0.1)
        assert op["state"] == "done", (op["state"], op["result"], [(s["step"], s["status"]) for s in op["timeline"]],
                                       self.errors())
        return op  # type: ignore[no-any-return]

    def world(self) -> dict[str, Any]:
        """What a failover leaves: the journal's assignment and marks, and the lab's devices."""
        # Members serve status from a view of the journal refreshed a few times a second: take one
        # read after the operation ended (no operation shown), which is then the end's own view.
        st = wait_for(lambda: (lambda v: v if v["personas"]["exchange1"]["operation"] is None else None)(
            self.ask("/v1/status")), 5, "a status view read after the operation ended", poll_s=0.05)
        ls = self.lab.status()
        servers = {s: (v["power"], v["booted"], v["boot_config"].get("InitiatorName"),
                       {c: (x["mode"], x["vlans"]) for c, x in v["channels"].items()})
                   for s, v in ls["servers"].items()}
        targets = {t: (v["acl"], v["accounts"], sorted({x["alias"] for x in v["sessions"]}))
                   for t, v in ls["targets"].items()}
        return {"assignment": {p: v["server"] for p, v in st["personas"].items()},
                "quarantined": sorted(st["quarantined"]), "servers": servers, "targets": targets, "dag": ls["dag"]}

    def where(self) -> str:
        return str(self.ask("/v1/status")["personas"]["exchange1"]["server"])

    def clear(self, server: str) -> None:
        # Any member takes it: a follower answers 307 with the leader's address, the client follows.
        self.api(self.running()[0]).post(f"/v1/servers/{server}/clear")

    def errors(self) -> list[str]:
        """The members' error lines, for a failure's message."""
        out = []
        for c in self.st["controllers"]:
            path = Path(c["state"]) / "controller.log"
            if path.exists():
                out += [f"{c['name']}: {line[:300]}" for line in path.read_text().splitlines() if " ERROR " in line]
        return out[-30:]

    def log(self, member: str) -> str:
        return (self.state_dir(member) / "controller.log").read_text()

    def clean(self) -> None:
        verdict = self.lab.status()["observer"]
        assert verdict["double_access"] == 0, verdict["evidence"][:5]

    def restore(self) -> None:
        """After a story, whatever it left: faults it set are cleared and bodies out of service are
        cleared, so a failed story does not fail the ones after it on the same cluster."""
        cl = self.lab.status()["cluster"]
        for e in cl["etcd"]:
            if not e["alive"]:
                self.lab.fault("etcd-member-kill", e["name"], clear=True)
        for m in cl["controllers"]:
            if m["paused"]:
                self.lab.fault("controller-pause", m["name"], clear=True)
            if m["etcd_cut"]:
                self.lab.fault("controller-etcd-cut", m["name"], clear=True)
            if not m["pid"]:
                self.lab.fault("controller-kill", m["name"], clear=True)
        self.leader(timeout_s=30)
        for server in set(self.ask("/v1/status")["quarantined"]) & set(BODIES):
            self.clear(server)


@pytest.fixture(scope="module")
def cluster(lab: LabHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    # The stories fail exchange1 over a dozen times in minutes, on purpose: its pool's escalation
    # limit (2 automatic failovers an hour, then an operator decides) is raised in a copy of the
    # definitions; nothing else differs from the lab's.
    defs = repeated_failover_definitions(lab.definitions, tmp_path_factory.mktemp("defs") / "personas")
    assert "max_failovers: 100" in (defs / "exchange.yaml").read_text()
    lab.reset()
    c = Cluster(lab)
    c.up(defs)
    try:
        c.leader()
        c.all_alive()
        yield c
    finally:
        try:
            c.clean()
        finally:
            lab.call("cluster-down")
            lab.reset()


@pytest.fixture(autouse=True)
def _restored(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "cluster" in request.fixturenames:
        request.getfixturevalue("cluster").restore()


def differences(got: dict[str, Any], want: dict[str, Any]) -> list[str]:
    out = []
    for k in want:
        if isinstance(want[k], dict):
            out += [f"{k}.{x}: {got[k].get(x)!r} != {want[k].get(x)!r}" for x in set(want[k]) | set(got[k])
                    if got[k].get(x) != want[k].get(x)]
        elif got[k] != want[k]:
            out.append(f"{k}: {got[k]!r} != {want[k]!r}")
    return out


def mirrored(world: dict[str, Any]) -> dict[str, Any]:
    """The same world with exchange1's two bodies swapped (their cabling is alike, channel by channel)."""
    a, b = BODIES

    def swap(x: Any) -> Any:
        if isinstance(x, str):
            return {a: b, b: a}.get(x, x)
        if isinstance(x, dict):
            return {swap(k): swap(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(swap(v) for v in x)
        return x

    out = swap(world)
    out["quarantined"] = sorted(out["quarantined"])
    return dict(out)


def fail_exchange1(c: Cluster, kill_at: int | None = None) -> tuple[dict[str, Any], str | None]:
    """Pull the power of exchange1's body; with ``kill_at``, SIGKILL the leader once the operation has
    that many journal records. Returns (the finished operation, the killed member)."""
    known, victim, leader = c.ready()
    c.lab.fault("power-button", victim)
    op = c.new_op(known)
    killed = None
    if kill_at is not None:
        wait_for(lambda: c.records(op["id"]) >= kill_at, 30, f"{op['id']} at record {kill_at}", poll_s=0.02)
        c.lab.fault("controller-kill", leader)
        killed = leader
    return c.wait_done(op["id"]), killed


def test_leader_killed_at_random_moments_another_finishes_the_same(cluster: Cluster) -> None:
    c = cluster
    rng = random.Random(20261127)
    # One uninterrupted run: the expected end, and how many records a run writes. The way back
    # (r720-3 -> r720-1) must end as its mirror image: the same with the two bodies' names swapped.
    victim = c.where()
    assert victim == BODIES[0]
    op, _ = fail_exchange1(c)
    total, end = c.records(op["id"]), c.world()
    c.clear(victim)
    expected = {BODIES[0]: (total, end), BODIES[1]: (total, mirrored(end))}
    restarts: list[threading.Thread] = []
    for trial in range(int(os.environ.get("AIMCTL_CLUSTER_TRIALS", "10"))):  # `make soak` runs 60
        victim = c.where()
        total, want = expected[victim]
        kill_at = rng.randint(0, total - 1)
        op, killed = fail_exchange1(c, kill_at)
        got = c.world()
        assert got == want, f"trial {trial}: killed {killed} at record {kill_at}/{total}: {differences(got, want)}"
        steps = [s["step"] for s in op["timeline"] if s["status"] in ("ok", "skipped")]
        assert steps == ["confirm", "approve", "choose", "fence", "storage", "bootcfg", "switch", "power_on",
                         "heartbeat", "recovery", "done"], (trial, kill_at, steps)
        c.clean()
        c.clear(victim)
        assert killed is not None
        # The killed member comes back as a follower while the next trial runs.
        for t in restarts:
            t.join(30)
        t = threading.Thread(target=c.lab.fault, args=("controller-kill", killed, True))
        t.start()
        restarts.append(t)
    for t in restarts:
        t.join(30)
    assert len(c.ops()) == trial + 2  # one operation per death: no takeover started a second one


def test_paused_leader_wakes_fenced_and_changes_nothing(cluster: Cluster) -> None:
    c = cluster
    known, victim, old = c.ready()
    c.lab.fault("power-button", victim)
    op = c.new_op(known)

    seen: list[tuple[str, str]] = []

    def waiting_for_boot() -> bool:
        # Asked of the leader itself, one request a poll: the wait lasts about the lab's boot
        # time (1 s), and a loaded machine must not poll past it.
        tl = c.api(old).get(f"/v1/failovers/{op['id']}")["timeline"]
        seen[:] = [(t["step"], t["status"] or "running") for t in tl]
        return bool(tl) and tl[-1]["step"] == "heartbeat" and tl[-1]["ended"] is None

    try:
        wait_for(waiting_for_boot, 30, "the failover waiting for the persona's heartbeat", poll_s=0.02)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; its steps: {seen}; errors: {c.errors()}") from None
    c.lab.fault("controller-pause", old)
    paused = time.monotonic()
    c.leader(timeout_s=15, not_=old)  # another member takes over
    c.wait_done(op["id"])
    assert time.monotonic() - paused > TTL_S  # paused longer than its lease
    before = c.world()
    c.lab.fault("controller-pause", old, clear=True)  # SIGCONT
    # It wakes mid-step, finishes its wait, and etcd refuses the result it tries to write.
    wait_for(lambda: "journal write refused by etcd" in c.log(old), 15, f"{old}'s refused write in its log")
    wait_for(lambda: c.api(old).get("/v1/cluster")["role"] == "follower", 10, f"{old} a follower")
    assert c.world() == before  # no device changed after it woke
    assert "no device call" not in c.log(old)  # it did not even try one: the refused write stopped it
    # Its leader as read after it woke (never its own ended term, which it no longer shows).
    view = wait_for(lambda: (v := c.api(old).get("/v1/cluster"))["leader"]["member"] not in (None, old) and v,
                    10, f"{old} naming the new leader")
    assert view["refused_writes"] >= 1
    metrics = c.api(old).get("/metrics")
    assert "aimctl_cluster_refused_writes_total 1.0" in metrics or "aimctl_cluster_refused_writes_total" in metrics
    c.clean()
    c.clear(victim)


def test_leader_cut_from_etcd_demotes_before_its_lease_ends(cluster: Cluster) -> None:
    c = cluster
    old = c.leader()
    cut = time.time()
    c.lab.fault("controller-etcd-cut", old)
    try:
        # ?probe=0 answers from memory (no etcd endpoint asked): polled quickly, it dates the stop closely.
        wait_for(lambda: not c.api(old).get("/v1/cluster?probe=0")["acting"], TTL_S, f"{old} to stop acting",
                 poll_s=0.02)
        stopped = time.time()  # it was not acting by now

        def demoted() -> Any:
            view = c.api(old).get("/v1/cluster")
            return view if any(e["event"] == "demoted" and e["time"] >= cut for e in view["events"]) else None

        view = wait_for(demoted, 2 * TTL_S, f"{old}'s demotion in its events")
        # etcd keeps the lease at least TTL from the last renewal sent: it stopped acting before that.
        assert stopped < view["last_renew"] + TTL_S, (stopped, view["last_renew"])
        assert "not renewed" in view["demoted_because"], view["demoted_because"]
        new = c.leader(timeout_s=2 * TTL_S, not_=old)  # the others carry on
        assert new != old
        st = c.api(old).get("/v1/status")  # the cut member still answers, and says why it does not act
        assert st["cluster"]["acting"] is False and st["cluster"]["why_not_acting"]
    finally:
        c.lab.fault("controller-etcd-cut", old, clear=True)
    wait_for(lambda: c.api(old).get("/v1/cluster")["role"] == "follower", 10, f"{old} back as a follower")


def test_one_etcd_member_down_interrupts_nothing(cluster: Cluster) -> None:
    c = cluster
    leader = c.leader()
    before = c.api(leader).get("/v1/cluster")
    c.lab.fault("etcd-member-kill", "e1")
    try:
        victim = c.where()
        op, _ = fail_exchange1(c)
        after = c.api(leader).get("/v1/cluster")
        assert after["acting"] and after["demotions"] == before["demotions"], after
        assert op["state"] == "done"
        c.clean()
        c.clear(victim)
    finally:
        c.lab.fault("etcd-member-kill", "e1", clear=True)


def test_all_etcd_down_nothing_starts_and_work_resumes_when_back(cluster: Cluster) -> None:
    c = cluster
    known, victim, _ = c.ready()
    for m in ("e1", "e2", "e3"):
        c.lab.fault("etcd-member-kill", m)
    try:
        for m in c.running():
            wait_for(lambda m=m: not c.api(m).get("/v1/cluster")["acting"], 2 * TTL_S, f"{m} not acting")
        c.lab.fault("power-button", victim)  # a death while the journal is unreachable
        member = c.running()[0]

        def says_why() -> Any:
            st = c.api(member).get("/v1/status")
            return st if st["journal_error"] and st["personas"]["exchange1"]["detector"] == "dead" else None

        st = wait_for(says_why, 15, "status saying the journal is down, exchange1 dead")
        assert "journal unavailable" in st["cluster"]["why_not_acting"] or not st["cluster"]["acting"]
        assert "aimctl_journal_available 0.0" in c.api(member).get("/metrics")
        back = time.time()
    finally:
        for m in ("e1", "e2", "e3"):
            c.lab.fault("etcd-member-kill", m, clear=True)
    op = c.new_op(known, timeout_s=30)  # the death queued on every member; the next leader starts it
    assert op["created"] >= back - 0.5  # none started while etcd was down
    c.wait_done(op["id"])
    assert len([o for o in c.ops() if o["id"] not in known]) == 1
    c.clean()
    c.clear(victim)


def test_a_death_during_a_leadership_change_is_handled_once(cluster: Cluster) -> None:
    c = cluster
    known, victim, leader = c.ready()
    c.lab.fault("controller-kill", leader)  # the leader dies...
    c.lab.fault("power-button", victim)  # ...and so does exchange1's body, at the same moment
    try:
        op = c.new_op(known, timeout_s=30)
        c.wait_done(op["id"])
        assert [o["id"] for o in c.ops() if o["id"] not in known] == [op["id"]]  # exactly one operation
        c.clean()
        c.clear(victim)
    finally:
        c.lab.fault("controller-kill", leader, clear=True)


def test_followers_serve_reads_and_send_writes_to_the_leader(cluster: Cluster) -> None:
    import urllib.error
    import urllib.request

    c = cluster
    leader = c.leader()
    follower = next(m for m in c.running() if m != leader)
    api = c.api(follower)
    wait_for(lambda: api.get("/v1/cluster")["leader"]["member"] == leader, 5, f"{follower} knowing the leader")
    assert api.get("/v1/failovers") == c.api(leader).get("/v1/failovers")  # reads from etcd, on any member
    req = urllib.request.Request(api.url + "/v1/servers/r720-2/clear", method="POST",
                                 headers={"Authorization": f"Bearer {api._token}"})
    opener = urllib.request.build_opener(type("NoRedirect", (urllib.request.HTTPRedirectHandler,),
                                              {"redirect_request": lambda *a, **k: None}))
    with pytest.raises(urllib.error.HTTPError) as answer:
        opener.open(req, timeout=5)
    leader_api = c.api(leader).get("/v1/cluster")["leader"]["api"]
    assert answer.value.code == 307 and answer.value.headers["Location"] == leader_api + "/v1/servers/r720-2/clear"
    assert api.post("/v1/servers/r720-2/clear") == {"cleared": "r720-2"}  # the client follows it
    assert "server.clear" in (c.state_dir(leader) / "audit.log").read_text()  # done (and audited) by the leader
