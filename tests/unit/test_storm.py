"""The storm brake's decision (issue 12: a pure function out of the daemon), as a table."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from aimctl.detect.storm import PoolLoad, Queued, StormPlan, plan_storm

X = ("exchange1", "exchange2")
W = ("web1", "web2", "web3", "web4")


def load(personas: tuple[str, ...], troubled: tuple[str, ...] = (), running: int = 0, limit: int = 2,
         percent: int = 50) -> PoolLoad:
    return PoolLoad(personas, troubled, running, limit, percent)


def q(persona: str, pool: str = "exchange", server: str | None = None, trigger: str = "PersonaDead") -> Queued:
    return Queued(persona, pool, trigger, "BMC reports off", server or {"exchange1": "r720-1",
                                                                        "exchange2": "r720-2"}.get(persona, "s"))


HOMES: dict[str, str | None] = {"exchange1": "r720-1", "exchange2": "r720-2", "web1": "s", "web2": "s",
                                "web3": "s", "web4": "s"}


def run(pools: Mapping[str, PoolLoad], queued: list[Queued], states: Mapping[str, str],
        busy: frozenset[str] = frozenset(), auto: frozenset[str] = frozenset(),
        operator: frozenset[str] = frozenset(), assignment: Mapping[str, str | None] = HOMES) -> StormPlan:
    return plan_storm(pools, queued, states, assignment, busy, auto, operator)


def summary(p: StormPlan) -> tuple[list[str], list[str], list[str], list[str], list[str]]:
    return (sorted(p.pause), sorted(p.resume), [x.persona for x, _ in p.start], [x.persona for x, _ in p.drop],
            sorted(p.hold))


# (case, pools, queued, detector states, busy, auto-paused, operator-paused, assignment,
#  expected (pause, resume, start, drop, hold))
# fmt: off
CASES = [
    ("one death starts", {"exchange": load(X, ("exchange1",))}, [q("exchange1")], {"exchange1": "dead"},
     frozenset(), frozenset(), frozenset(), HOMES, ([], [], ["exchange1"], [], [])),
    ("two of two in trouble: pause, the death waits", {"exchange": load(X, X)}, [q("exchange1")],
     {"exchange1": "dead", "exchange2": "unreachable"}, frozenset(), frozenset(), frozenset(), HOMES,
     (["exchange"], [], [], [], ["exchange1"])),
    ("paused, stays paused while the storm lasts", {"exchange": load(X, X)}, [q("exchange1")],
     {"exchange1": "dead", "exchange2": "unreachable"}, frozenset(), frozenset({"exchange"}), frozenset(), HOMES,
     ([], [], [], [], ["exchange1"])),
    ("the stale trigger: the persona recovered while paused -> dropped, never started",
     {"exchange": load(X, ("exchange2",))}, [q("exchange1")], {"exchange1": "alive", "exchange2": "unreachable"},
     frozenset(), frozenset({"exchange"}), frozenset(), HOMES, ([], ["exchange"], [], ["exchange1"], [])),
    ("storm over: the queued death that is still dead starts", {"exchange": load(X, ("exchange1",))},
     [q("exchange1")], {"exchange1": "dead", "exchange2": "alive"}, frozenset(), frozenset({"exchange"}),
     frozenset(), HOMES, ([], ["exchange"], ["exchange1"], [], [])),
    ("one in trouble is never a storm", {"exchange": load(X, ("exchange1",), percent=10)}, [q("exchange1")],
     {"exchange1": "dead"}, frozenset(), frozenset(), frozenset(), HOMES, ([], [], ["exchange1"], [], [])),
    ("half is not above half", {"web": load(W, ("web1", "web2"))}, [q("web1", "web"), q("web2", "web")],
     {"web1": "dead", "web2": "dead"}, frozenset(), frozenset(), frozenset(), HOMES,
     ([], [], ["web1", "web2"], [], [])),
    ("limit: oldest first, the rest held", {"web": load(W, ("web1", "web2"), limit=1)},
     [q("web2", "web"), q("web1", "web")], {"web1": "dead", "web2": "dead"}, frozenset(), frozenset(),
     frozenset(), HOMES, ([], [], ["web2"], [], ["web1"])),
    ("limit counts running operations", {"web": load(W, ("web1",), running=2)}, [q("web1", "web")],
     {"web1": "dead"}, frozenset(), frozenset(), frozenset(), HOMES, ([], [], [], [], ["web1"])),
    ("an operator's pause holds even without a storm", {"exchange": load(X, ("exchange1",))}, [q("exchange1")],
     {"exchange1": "dead"}, frozenset(), frozenset(), frozenset({"exchange"}), HOMES,
     ([], [], [], [], ["exchange1"])),
    ("an operator's pause is never lifted by the brake", {"exchange": load(X)}, [], {},
     frozenset(), frozenset(), frozenset({"exchange"}), HOMES, ([], [], [], [], [])),
    ("an operation holds the persona: dropped, its operator decides", {"exchange": load(X, ("exchange1",))},
     [q("exchange1")], {"exchange1": "dead"}, frozenset({"exchange1"}), frozenset(), frozenset(), HOMES,
     ([], [], [], ["exchange1"], [])),
    ("moved since the verdict: dropped", {"exchange": load(X, ("exchange1",))}, [q("exchange1")],
     {"exchange1": "dead"}, frozenset(), frozenset(), frozenset(), {**HOMES, "exchange1": "r720-3"},
     ([], [], [], ["exchange1"], [])),
    ("no state any more (forgotten) counts as recovered", {"exchange": load(X)}, [q("exchange1")], {},
     frozenset(), frozenset(), frozenset(), HOMES, ([], [], [], ["exchange1"], [])),
    ("pools are independent", {"exchange": load(X, X), "web": load(W, ("web1",))},
     [q("exchange1"), q("web1", "web")], {"exchange1": "dead", "exchange2": "dead", "web1": "dead"},
     frozenset(), frozenset(), frozenset(), HOMES, (["exchange"], [], ["web1"], [], ["exchange1"])),
]
# fmt: on


@pytest.mark.parametrize(("case", "pools", "queued", "states", "busy", "auto", "operator", "assignment", "want"),
                         CASES, ids=[c[0] for c in CASES])
def test_storm_table(case: str, pools: dict[str, PoolLoad], queued: list[Queued], states: dict[str, str],
                     busy: frozenset[str], auto: frozenset[str], operator: frozenset[str],
                     assignment: dict[str, str | None], want: tuple[list[str], ...]) -> None:
    plan = run(pools, queued, states, busy, auto, operator, assignment)
    assert summary(plan) == want
    # Every decision carries its one-sentence reason.
    for why in [*plan.pause.values(), *plan.resume.values(), *(w for _, w in plan.start), *(w for _, w in plan.drop),
                *plan.hold.values()]:
        assert why and "\n" not in why


def test_pause_reason_names_the_troubled() -> None:
    plan = run({"exchange": load(X, X)}, [], {"exchange1": "dead", "exchange2": "unreachable"})
    assert "2 of 2" in plan.pause["exchange"] and "exchange1, exchange2" in plan.pause["exchange"]
