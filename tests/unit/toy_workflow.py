"""A toy failover run in a child process by test_journal's kill-at-every-record test.

The "world" is a JSON file (what switches, targets and BMCs would hold); ``actions.log`` gets one
line each time a step actually changes the world. Server s3 never heartbeats, so the run also
retargets once. Usage: ``python -m tests.unit.toy_workflow STATE_DIR``; prints the number of
journal commits at the end. Set AIMCTL_CRASH_AT_RECORD=N to crash after the Nth commit.

With ``AIMCTL_TOY_ETCD=HOST:PORT`` and ``AIMCTL_TOY_PREFIX=/p/`` the journal is the etcd backend:
the toy is elected first (a crashed earlier run of it left its leader key behind: it reclaims it,
which gives it a fresh fencing token) and every write carries that token.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from aimctl.failover.runner import Retarget, Step, StepCall, StepOutcome, run_steps
from aimctl.journal import Journal, JournalStore, ServerMark, commits, persona_lease, server_lease

STANDBYS = ["s3", "s4"]
BROKEN = {"s3"}  # boots, never heartbeats


class World:
    def __init__(self, state: Path) -> None:
        self.path, self.log = state / "world.json", state / "actions.log"

    def read(self) -> dict[str, Any]:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def change(self, action: str, key: str, value: Any) -> None:
        world = self.read()
        world[key] = value
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(world, sort_keys=True))
        tmp.replace(self.path)
        with open(self.log, "a") as f:
            f.write(action + "\n")


def confirm(w: World, call: StepCall) -> StepOutcome:
    return StepOutcome.ok(evidence="bmc off")


def choose(w: World, call: StepCall) -> StepOutcome:
    excluded = call.op.facts.get("excluded", [])
    pick = next(s for s in STANDBYS if s not in excluded)
    return StepOutcome(detail={"standby": pick}, facts={"to_server": pick})


def fence(w: World, call: StepCall) -> StepOutcome:
    # Read first: a step that finds its work done does nothing (the idempotence the journal relies on).
    if w.read().get("fenced") == "s1":
        return StepOutcome.ok(already=True)
    w.change("fence s1", "fenced", "s1")
    return StepOutcome.ok()


def switch(w: World, call: StepCall) -> StepOutcome:
    to = call.op.facts["to_server"]
    if w.read().get(f"vlan:{to}") != 100:
        w.change(f"switch {to}", f"vlan:{to}", 100)
    return StepOutcome.ok(port=to)


def power_on(w: World, call: StepCall) -> StepOutcome:
    to = call.op.facts["to_server"]
    if w.read().get(f"power:{to}") != "on":
        w.change(f"power on {to}", f"power:{to}", "on")
    return StepOutcome.ok()


def heartbeat(w: World, call: StepCall) -> StepOutcome:
    to = call.op.facts["to_server"]
    if to in BROKEN:
        if w.read().get(f"power:{to}") != "off":
            w.change(f"power off {to}", f"power:{to}", "off")
        excluded = [*call.op.facts.get("excluded", []), to]
        raise Retarget(f"{to} did not heartbeat", "choose", facts={"excluded": excluded},
                       server_marks={to: ServerMark("no heartbeat within boot timer", failed=True)})
    return StepOutcome(detail={"summary": f"ex1 runs on {to}"}, assignment={"ex1": to})


STEPS: list[Step[World]] = [Step(n, f) for n, f in [
    ("confirm", confirm), ("choose", choose), ("fence", fence), ("switch", switch),
    ("power_on", power_on), ("heartbeat", heartbeat),
]]


def open_journal(state: Path) -> JournalStore:
    where = os.environ.get("AIMCTL_TOY_ETCD")
    if not where:
        return Journal(state / "journal.db")
    from aimctl.journal.etcdkv import Etcd
    from aimctl.cluster.leadership import Leadership, Timing
    from aimctl.journal import etcd_journal

    host, port = where.rsplit(":", 1)
    etcd = Etcd([(host, int(port))])
    prefix = os.environ["AIMCTL_TOY_PREFIX"]
    lead = Leadership(etcd, prefix, "toy", timing=Timing(ttl_s=10, renew_s=2, retry_s=2))
    for _ in range(10):
        if lead.run_once() in ("renew", "hold"):
            break
    lead.check()
    return etcd_journal(etcd, prefix, lambda: lead.token)


def main(state: Path) -> None:
    journal = open_journal(state)
    journal.seed_assignment({"ex1": "s1"})
    unfinished = journal.unfinished_operations()
    if unfinished:
        op_id = unfinished[0].id
    elif not journal.operations(limit=1):
        op_id = journal.open_operation("failover", "ex1", {"from_server": "s1"}, from_server="s1",
                                       leases=[persona_lease("ex1"), server_lease("s1")])
    else:
        op_id = journal.operations(limit=1)[0].id
    run_steps(journal, op_id, STEPS, World(state))
    print(commits())


if __name__ == "__main__":
    main(Path(sys.argv[1]))
