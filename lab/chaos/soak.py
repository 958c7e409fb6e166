"""The chaos soak's runner: ``aimctl lab chaos --minutes N --seed S``.

Each round: plan it (``rules.plan_round``, from a random generator seeded by the soak's seed and
the round's number, so a round's choices can be told again), inject its faults through the lab's
control API, let the real controller act, clear the faults, answer every operation that waits the
way an operator would (the real ``aimctl`` command line: approve, retry, mark-fenced, abandon),
do the operator's maintenance (power off, clear, failback), wait for rest, and check the
invariants (``rules.check``). A controller that dies (``controller-kill``) is started again on its
state, as systemd's ``Restart=always`` would.

A violation is reported with the seed, the round, its plan and the evidence. ``fail_fast`` stops
there (the test); otherwise the world is reset (lab reset, a fresh controller state) and the
soak goes on, so a 30-minute run counts every violation it can find.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

from aimctl.errors import OperatorError
from aimctl.loader import Definitions, load
from lab import control
from lab.chaos import rules
from lab.controller_proc import ControllerProcess
from lab.faults import KINDS

log = logging.getLogger("lab.chaos")

REPO = Path(__file__).resolve().parents[2]
ACT_S = 45.0  # a round's faults stay at most this long before they are cleared
NOISE_S = 6.0  # a noise-only round watches this long that nobody is failed over
REST_S = 75.0  # after clearing, answering and healing: how long the world may take to come to rest
CHILD_MAX_AGE_S = 90.0  # a child of the controller or the lab older than this has leaked


@dataclass
class RoundReport:
    round: int
    plan: str
    seconds: float = 0.0
    operations: dict[str, str] = field(default_factory=dict)  # op id -> how it ended (state: result)
    exits: list[str] = field(default_factory=list)  # what the operator did
    waited: list[str] = field(default_factory=list)  # operations that stopped for an operator, and why
    heals: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    restarts: int = 0


@dataclass
class SoakResult:
    seed: int
    minutes: float
    rounds: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    violations: list[dict[str, Any]] = field(default_factory=list)
    needs_operator: int = 0  # operations that stopped in needs-operator, answered by the soak's operator
    approvals: int = 0  # operations that waited for an approval (manual policy, a change record)
    exits: Counter[str] = field(default_factory=Counter)
    operations: Counter[str] = field(default_factory=Counter)  # end states of every operation seen
    controller_restarts: int = 0
    world_resets: int = 0
    observer_samples: int = 0
    observer_max_gap_s: float = 0.0
    double_access: int = 0
    round_reports: list[RoundReport] = field(default_factory=list)
    elapsed_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {"seed": self.seed, "minutes": round(self.elapsed_s / 60, 2), "planned_minutes": self.minutes,
                "rounds": self.rounds, "faults": dict(sorted(self.faults.items())),
                "fault_kinds": len(self.faults), "catalogue_kinds": len(KINDS),
                "violations": len(self.violations), "violation_details": self.violations, "needs_operator": self.needs_operator, "approvals": self.approvals,
                "exits": dict(sorted(self.exits.items())), "operations": dict(sorted(self.operations.items())),
                "controller_restarts": self.controller_restarts, "world_resets": self.world_resets,
                "double_access": self.double_access, "observer_samples": self.observer_samples,
                "observer_max_gap_s": self.observer_max_gap_s,
                "rounds_detail": [r.__dict__ for r in self.round_reports]}


class Violated(AssertionError):
    """A soak invariant did not hold (raised in fail-fast mode)."""


class Soak:
    def __init__(self, lab_state: Path, definitions: Path, workdir: Path, seed: int, minutes: float,
                 fail_fast: bool = False, say: Callable[[str], None] = print, replay: rules.Plan | None = None) -> None:
        self.replay = replay  # one round with exactly these faults, then stop
        self.lab_state, self.definitions, self.workdir = lab_state, definitions, workdir
        self.seed, self.minutes, self.fail_fast, self.say = seed, minutes, fail_fast, say
        self.defs: Definitions = load(definitions, use_cache=False)
        self.result = SoakResult(seed, minutes)
        self.ctrl: ControllerProcess | None = None
        self.dead_sessions: set[int] = set()
        self.generation = 0
        self.tries: Counter[str] = Counter()
        self.seen_ops: dict[str, str] = {}
        self.reported: set[str] = set()
        self.observer_before = (0, 0)  # (samples, double access) the observer counted before a world reset

    # ------------------------------------------------------------------ the lab and the controller

    def lab(self, action: str, body: dict[str, Any] | None = None) -> Any:
        return control.call(self.lab_state, action, body)

    def fault(self, inj: rules.Injection, clear: bool = False) -> Any:
        return self.lab("fault", {"kind": inj.kind, "target": inj.target, "clear": clear, **inj.params})

    def overlay(self) -> Path:
        doc = yaml.safe_load((self.lab_state / "endpoints.yaml").read_text())
        # The lab stories' short timers, and DAG hooks that give up in seconds, not minutes.
        doc["controller"].update({"power_deadline": 4.0, "boot_timer_override": 8.0, "switch_timeout": 2.0,
                                  "switch_deadline": 4.0})
        for entry in doc.get("personas", {}).values():
            for hook in (entry.get("recovery") or {}).values():
                hook.update({"timeout": "6s", "retries": 0})
        path = self.workdir / "endpoints.yaml"
        path.write_text(yaml.safe_dump(doc))
        return path

    def start_controller(self, fresh: bool) -> None:
        if fresh:
            self.generation += 1
        state = self.workdir / f"ctrl{self.generation}"
        self.ctrl = ControllerProcess(self.definitions, self.overlay(), state).start()

    def supervise(self) -> None:
        """Restart the controller if it died (a ``controller-kill``), on the same state."""
        c = self.ctrl
        if c is not None and c.proc is not None and c.proc.poll() is not None:
            self.dead_sessions.add(c.proc.pid)
            self.say(f"    controller pid {c.proc.pid} died ({c.proc.returncode}); restarting it on its state")
            self.result.controller_restarts += 1
            self.start_controller(fresh=False)

    def api(self, path: str) -> Any:
        assert self.ctrl is not None
        for _ in range(50):
            self.supervise()
            try:
                return self.ctrl.api.get(path)
            except OperatorError:
                if self.ctrl.proc is not None and self.ctrl.proc.poll() is None:
                    # stalled (SIGSTOP) or starting: the client's own timeout already waited
                    time.sleep(0.2)
                    continue
        raise OperatorError(f"controller does not answer {path}")

    def aimctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The operator's command line, exactly as typed at 3 a.m."""
        assert self.ctrl is not None
        r = subprocess.run([sys.executable, "-m", "aimctl.cli", *args, "--state", str(self.ctrl.state)],
                           capture_output=True, text=True, cwd=REPO, timeout=120)
        line = (r.stdout.strip().splitlines() or [""])[-1] if r.returncode == 0 else r.stderr.strip()[-300:]
        self.say(f"    $ aimctl {' '.join(args)} -> {r.returncode}: {line}")
        return r

    # ------------------------------------------------------------------ looking

    def world(self) -> rules.World:
        d = self.defs
        st = self.api("/v1/status")
        switches = {pool: tuple(sorted({c.switch for s in p.members for c in d.servers[s].channels.values()}))
                    for pool, p in d.pools.items()}
        dag = frozenset(n for n, p in d.personas.items() if any(h.hook == "exchange-dag" for h in p.spec.recovery))
        return rules.World(
            pool_of={n: p.pool for n, p in d.personas.items()}, home=d.homes(),
            members={pool: tuple(p.members) for pool, p in d.pools.items()}, switches=switches,
            redfish=frozenset(s for s, v in d.servers.items() if v.bmc.kind == "redfish"), dag=dag,
            assignment={p: v["server"] for p, v in st["personas"].items()},
            quarantined=frozenset(st["quarantined"]))

    def look(self, leaks: bool = False) -> rules.Seen:
        """One look at the controller and the lab (and, for the round's check, the process table)."""
        st = self.api("/v1/status")
        ops = [o for o in self.api("/v1/failovers?limit=500")]
        for o in ops:
            self.seen_ops[f"{self.generation}:{o['id']}"] = f"{o['state']}: {o['result']}"
        waiting = [rules.Waiting(o["id"], o["persona"], o["state"], o["result"], o["kind"]) for o in ops
                   if o["state"] in ("running", "needs-operator", "waiting-approval")]
        ls = self.lab("status")
        bodies = {s: rules.Body(v["power"] == "on", v["booted"], v["state"]) for s, v in ls["servers"].items()}
        ob = ls["observer"]
        self.result.observer_samples = self.observer_before[0] + ob["samples"]
        self.result.observer_max_gap_s = max(self.result.observer_max_gap_s, ob["max_gap_s"])
        return rules.Seen(
            assignment={p: v["server"] for p, v in st["personas"].items()},
            heartbeat_age={p: v["heartbeat_age_s"] for p, v in st["personas"].items()},
            bodies=bodies, waiting=waiting,
            leases={x["name"]: (x["holder"], x["expires_in_s"]) for x in st.get("leases", [])},
            double_access=ob["double_access"], evidence=ob["evidence"][:3], leaked=self.leaked() if leaks else [],
            observer_blind_s=ob["max_gap_s"])

    def leaked(self) -> list[str]:
        """Processes that outlived what started them: anything left in the session of a controller
        that was killed, or a child of the running controller or of the lab older than it may be."""
        assert self.ctrl is not None and self.ctrl.proc is not None
        ctrl_pid = self.ctrl.proc.pid
        try:
            lab_pid = int((self.lab_state / "pid").read_text())
        except (OSError, ValueError):
            lab_pid = -1
        now, out = time.time(), []
        for p in psutil.process_iter(["pid", "name", "create_time", "cmdline"]):
            try:
                sid = os.getsid(p.pid)
            except (ProcessLookupError, PermissionError):
                continue
            if p.pid in (ctrl_pid, lab_pid) or p.info["name"] == "tgtd":
                continue
            age = now - (p.info["create_time"] or now)
            what = f"pid {p.pid} {' '.join(p.info['cmdline'] or [])[:120]!r} (age {age:.0f}s, session {sid})"
            if sid in self.dead_sessions:
                out.append(f"{what}: outlived its killed controller")
            elif sid in (ctrl_pid, lab_pid) and age > CHILD_MAX_AGE_S:
                out.append(f"{what}: child of the {'controller' if sid == ctrl_pid else 'lab'} for too long")
        return out

    def wait_rest(self, deadline_s: float, at_least_s: float = 0.0, leaks: bool = False) -> rules.Seen:
        start = time.monotonic()
        seen = self.look()
        while time.monotonic() - start < deadline_s:
            if time.monotonic() - start >= at_least_s and rules.settled(seen):
                break
            time.sleep(0.5)
            seen = self.look()
        return self.look(leaks=True) if leaks else seen

    # ------------------------------------------------------------------ the operator

    def answer(self, rep: RoundReport) -> None:
        """Answer every operation that waits, until none does or each was answered enough."""
        for _ in range(6):
            seen = self.wait_rest(REST_S)
            waiting = [op for op in seen.waiting if op.state != "running"]
            if not waiting:
                return
            for op in waiting:
                ex = rules.operator_exit(op, self.tries[op.id], seen.bodies)
                self.tries[op.id] += 1
                if self.tries[op.id] == 1:
                    if op.state == "needs-operator":
                        self.result.needs_operator += 1
                        rep.waited.append(f"{op.id} ({op.persona}): {op.reason[:300]}")
                    else:
                        self.result.approvals += 1
                if ex.pull_plug and ex.server:
                    self.lab("fault", {"kind": "power-button", "target": ex.server})
                args = {"approve": ["approve", op.id],
                        "retry": ["retry", op.id, "--no-wait", "--note", ex.note],
                        "mark-fenced": ["mark-fenced", op.id, ex.server or "", "--no-wait", "--note", ex.note],
                        "abandon": ["abandon", op.id, "--note", ex.note]}[ex.action]
                r = self.aimctl(*args)
                rep.exits.append(f"{ex.action} {op.id}" + (f" {ex.server}" if ex.server else "") +
                                 ("" if r.returncode == 0 else f" (refused: {r.stderr.strip()[-120:]})"))
                if r.returncode == 0:
                    self.result.exits[ex.action] += 1

    def heal(self, rep: RoundReport, rng: random.Random, failback: bool = True) -> None:
        seen = self.wait_rest(REST_S)
        for h in rules.heal_plan(self.world(), seen.bodies, seen.waiting, rng, failback_share=0.5 if failback else -1):
            if h.action == "failback" and not failback:
                continue
            rep.heals.append(f"{h.action} {h.target}")
            if h.action == "power-off":
                self.lab("fault", {"kind": "power-button", "target": h.target})
            elif h.action == "clear":
                self.aimctl("clear", h.target)
            elif h.action == "failback":
                self.aimctl("failback", h.target, "--no-wait")

    # ------------------------------------------------------------------ a round

    def run_round(self, n: int, given: rules.Plan | None = None) -> RoundReport:
        rng = random.Random(f"{self.seed}:{n}")
        plan = given or rules.plan_round(rng, self.world())
        rep = RoundReport(n, plan.text())
        self.say(f"round {n}: {plan.text()}")
        t0 = time.monotonic()
        restarts0 = self.result.controller_restarts
        injected: list[rules.Injection] = []
        try:
            for inj in plan.injections:
                self.fault(inj)
                injected.append(inj)
                self.result.faults[inj.kind] += 1
            if plan.death is None:
                self.wait_rest(NOISE_S, at_least_s=NOISE_S)
            else:
                # At least long enough for the detector to see the death (a few heartbeats).
                self.wait_rest(ACT_S, at_least_s=3.0)
        finally:
            for inj in injected:
                if not KINDS[inj.kind].one_shot:
                    try:
                        self.fault(inj, clear=True)
                    except OperatorError as exc:
                        self.say(f"    clearing {inj.text()}: {exc}")
        # The operator's round: repair what is broken first (a quarantined body may be the standby a
        # waiting failover needs), answer what waits, send personas home, answer again.
        self.heal(rep, rng, failback=False)
        self.answer(rep)
        self.heal(rep, rng)
        self.answer(rep)
        seen = self.wait_rest(REST_S, leaks=True)
        violations = rules.check(seen)
        if violations:
            # One more wait and look: a world still settling is not yet a violation.
            seen = self.wait_rest(REST_S, leaks=True)
            violations = rules.check(seen)
        if any(v.invariant == "operation stuck" for v in violations):
            rep.violations.append(f"the stuck controller's threads: {self.thread_dump(n)}")
        rep.violations[:0] = [v.text() for v in violations]
        rep.seconds = round(time.monotonic() - t0, 1)
        rep.restarts = self.result.controller_restarts - restarts0
        return rep

    def thread_dump(self, n: int) -> str:
        """Every thread's stack of the running controller (it dumps them on SIGUSR1), kept in a file."""
        assert self.ctrl is not None and self.ctrl.proc is not None
        out = self.ctrl.state / "controller.out"
        size = out.stat().st_size if out.exists() else 0
        os.kill(self.ctrl.proc.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (not out.exists() or out.stat().st_size == size):
            time.sleep(0.1)
        time.sleep(0.3)  # let the dump finish
        dump = self.workdir / f"threads-round{n}.txt"
        with open(out, "rb") as fh:
            fh.seek(size)
            dump.write_bytes(fh.read())
        return str(dump)

    def run(self) -> SoakResult:
        t0 = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.lab("reset")
        self.start_controller(fresh=True)
        assert self.ctrl is not None
        self.ctrl.wait(self.ctrl.all_alive, 30, "every persona heartbeating")
        try:
            n = 0
            while time.monotonic() - t0 < self.minutes * 60:
                n += 1
                rep = self.run_round(n, self.replay)
                self.result.rounds = n
                self.result.round_reports.append(rep)
                for op_id, end in self.seen_ops.items():
                    if op_id not in self.reported and not end.startswith(("running", "needs-operator",
                                                                          "waiting-approval")):
                        rep.operations[op_id] = end
                        self.reported.add(op_id)
                self.say(f"  round {n} took {rep.seconds}s; operations {rep.operations or '-'}; "
                         f"waited {rep.waited or '-'}; exits {rep.exits or '-'}; heals {rep.heals or '-'}")
                if rep.violations:
                    for v in rep.violations:
                        self.result.violations.append({"seed": self.seed, "round": n, "plan": rep.plan,
                                                       "violation": v})
                        self.say(f"  VIOLATION (seed {self.seed}, round {n}, plan: {rep.plan}): {v}; replay: "
                                 f"aimctl lab chaos --seed {self.seed} --plan '{rep.plan}'")
                    if self.fail_fast:
                        raise Violated(f"seed {self.seed}, round {n} ({rep.plan}): " + " | ".join(rep.violations)
                                       + f"; replay the run: aimctl lab chaos --seed {self.seed} --minutes "
                                       f"{self.minutes:g}; replay the round's faults alone: aimctl lab chaos "
                                       f"--seed {self.seed} --plan '{rep.plan}' (controller state {self.ctrl.state})")
                    self.reset_world()
                if self.replay is not None:
                    break
        finally:
            self.result.elapsed_s = time.monotonic() - t0
            ends = Counter(e.split(":", 1)[0] for e in self.seen_ops.values())  # (this controller state's)
            self.result.operations = ends
            self.result.double_access = self.observer_before[1] + self.lab("status")["observer"]["double_access"]
            if self.ctrl is not None:
                self.ctrl.stop()
        return self.result

    def reset_world(self) -> None:
        """After a violation: the lab back to its homes and a controller on a fresh state."""
        self.result.world_resets += 1
        ob = self.lab("status")["observer"]  # the lab's reset starts the observer's counts afresh
        self.observer_before = (self.observer_before[0] + ob["samples"], self.observer_before[1] + ob["double_access"])
        if self.ctrl is not None:
            self.ctrl.stop()
        self.lab("reset")
        self.tries.clear()
        self.start_controller(fresh=True)
        assert self.ctrl is not None
        self.ctrl.wait(self.ctrl.all_alive, 30, "every persona heartbeating")


def run(lab_state: Path, definitions: Path, minutes: float, seed: int, out: Path | None = None,
        fail_fast: bool = False, say: Callable[[str], None] = print, replay: str | None = None) -> SoakResult:
    """Run the soak against the running lab at ``lab_state``; write the figures to ``out``.
    ``replay``: one round with exactly the faults of a reported plan, from the homes. The controllers'
    state directories (journal, logs, thread dumps) are kept when a violation was found."""
    work = Path(tempfile.mkdtemp(prefix="aimctl-chaos-work-"))
    plan = rules.parse_plan(replay) if replay else None
    try:
        result = Soak(lab_state, definitions, work, seed, minutes, fail_fast, say, plan).run()
    except Violated:
        say(f"evidence kept in {work}")
        raise
    if result.violations:
        say(f"evidence kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result.summary(), indent=1, default=str) + "\n")
    return result
