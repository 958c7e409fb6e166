"""Hook points around the fence: order and that a failing hook never stands between a body and its fence."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

from aimctl.drivers.protocols import PowerState
from aimctl.failover import fence as F
from aimctl.failover import steps as W
from aimctl.failover.context import Settings
from aimctl.failover.runner import StepCall
from aimctl.journal import Operation


class FakePower:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def off(self, deadline_s: float = 0) -> None:
        self.log.append("power-off")

    def state(self) -> PowerState:
        return PowerState.OFF


def make_ctx(log: list[str], hook_ok: bool) -> Any:
    def run_hooks(op: Operation, point: str) -> list[dict[str, Any]]:
        log.append(f"hook:{point}")
        return [{"name": point, "ok": hook_ok}]

    drivers = SimpleNamespace(power=lambda s: FakePower(log),
                              bootcfg=lambda s: SimpleNamespace(clear=lambda: log.append("bootcfg-clear")))
    ctx = SimpleNamespace(run_hooks=run_hooks, drivers=drivers, pool=ThreadPoolExecutor(2),
                          stop_persona=lambda p, d: log.append("agent-stop") or True,
                          alive_evidence=lambda p, s: None,
                          settings=Settings())
    return ctx


def op(kind: str) -> Operation:
    return Operation("x-1", kind, "exchange1", "r720-1", None, "running", "", 0.0, 0.0, {})


def test_failback_order_and_failed_hooks_do_not_block(monkeypatch: Any) -> None:
    log: list[str] = []
    monkeypatch.setattr(F, "storage_fence", lambda ctx, p, key: log.append("storage-fence") or {"targets": []})
    out = W.s_fence(make_ctx(log, hook_ok=False), StepCall(op("failback"), resumed=False, attempt=1))
    assert log.index("hook:pre-failback") < log.index("agent-stop") < log.index("hook:pre-fence")
    assert log.index("hook:pre-fence") < log.index("storage-fence")
    assert "power-off" in log and out.status == "ok"
    assert [h["name"] for h in out.detail["hooks"]] == ["pre-failback", "pre-fence"]


def test_failover_runs_pre_fence_only_and_not_again_on_resume(monkeypatch: Any) -> None:
    log: list[str] = []
    monkeypatch.setattr(F, "storage_fence", lambda ctx, p, key: {"targets": []})
    W.s_fence(make_ctx(log, hook_ok=True), StepCall(op("failover"), resumed=False, attempt=1))
    assert [x for x in log if x.startswith("hook")] == ["hook:pre-fence"] and "agent-stop" not in log
    log.clear()
    W.s_fence(make_ctx(log, hook_ok=True), StepCall(op("failover"), resumed=True, attempt=2))
    assert not [x for x in log if x.startswith("hook")]
