"""Pure decisions behind the console and the boot endpoint: table tests."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from aimctl.api import views
from aimctl.api.auth import Identity
from aimctl.api.sessions import Sessions, same
from aimctl.failover.bootwindow import powering_on, refusal
from aimctl.journal import Record
from aimctl.records.audit import masked
from aimctl.daemon import check_state_dir
from aimctl.errors import OperatorError
from aimctl.secrets import MaskingFilter, mask_fields


def rec(step: str, phase: str = "result", status: str | None = "ok", **detail: object) -> Record:
    return Record("fo-1", 0, step, phase, status if phase == "result" else None, dict(detail), 0.0)


BOOT = [rec("confirm"), rec("choose", to="r620-4"), rec("fence"), rec("storage"),
        rec("bootcfg", "intent"), rec("bootcfg", server="r620-4")]


@pytest.mark.parametrize("records,server,open_", [
    ([], "r620-4", False),
    (BOOT[:5], "r620-4", False),                                     # bootcfg not written yet
    (BOOT, "r620-4", True),                                          # written: the body may fetch it
    (BOOT, "r620-3", False),                                         # another server's script
    (BOOT + [rec("switch"), rec("power_on", server="r620-4"), rec("heartbeat", "intent")], "r620-4", True),
    (BOOT + [rec("power_on"), rec("heartbeat", server="r620-4")], "r620-4", False),   # booted: closed
    (BOOT + [rec("heartbeat", status="retarget")], "r620-4", False),                   # gave up on it
    (BOOT + [rec("heartbeat", status="retarget"), rec("choose", to="r620-3")], "r620-4", False),
    (BOOT[:5] + [rec("bootcfg", status="failed", server="r620-4")], "r620-4", False),
])
def test_boot_window(records: list[Record], server: str, open_: bool) -> None:
    assert powering_on(records, server) is open_


@pytest.mark.parametrize("client,declared,window,why", [
    ("10.0.2.24", "10.0.2.24", "fo-1", None),
    ("::ffff:10.0.2.24", "10.0.2.24", "fo-1", None),
    ("10.0.2.99", "10.0.2.24", "fo-1", "request from 10.0.2.99, not r620-4's boot address 10.0.2.24"),
    ("10.0.2.24", "10.0.2.24", None, "no operation is powering r620-4 on"),
    ("10.0.2.99", None, "fo-1", None),                        # no address declared: the window alone
    ("10.0.2.99", None, None, "no operation is powering r620-4 on"),
    ("not-an-ip", "10.0.2.24", "fo-1", "request from not-an-ip, not r620-4's boot address 10.0.2.24"),
])
def test_boot_script_refusal(client: str, declared: str | None, window: str | None, why: str | None) -> None:
    assert refusal("r620-4", client, declared, window) == why


ADMIN = Identity("root", "admin")
VIEWER = Identity("eve", "viewer")
WEBOPS = Identity("webops", "viewer", (("web", "operator"),))
WEBONLY = Identity("webonly", None, (("web", "admin"),))


@pytest.mark.parametrize("who,pool,busy,on_home,home_q,standby,want", [
    (ADMIN, "exchange", False, True, False, True, ["failover", "move"]),
    (ADMIN, "exchange", False, False, False, True, ["failover", "move", "failback"]),
    (ADMIN, "exchange", False, False, True, True, ["failover", "move"]),     # home quarantined: no failback
    (ADMIN, "exchange", False, False, False, False, ["failback"]),           # no standby: only home
    (ADMIN, "exchange", True, False, False, True, []),                       # an operation holds it
    (VIEWER, "exchange", False, False, False, True, []),
    (WEBOPS, "web", False, True, False, True, ["failover", "move"]),
    (WEBOPS, "exchange", False, True, False, True, []),
    (WEBONLY, "exchange", False, True, False, True, []),
])
def test_persona_actions(who: Identity, pool: str, busy: bool, on_home: bool, home_q: bool, standby: bool,
                         want: list[str]) -> None:
    assert views.persona_actions(who, pool, busy, on_home, home_q, standby) == want


@pytest.mark.parametrize("who,pool,state,quarantined,paused,op,server,pool_actions", [
    (ADMIN, "web", "waiting-approval", True, False, ["approve"], ["clear"], ["pause"]),
    (ADMIN, "web", "running", False, True, [], [], ["resume"]),
    (VIEWER, "web", "waiting-approval", True, False, [], [], []),
    (WEBOPS, "web", "waiting-approval", True, False, ["approve"], [], ["pause"]),   # clear needs admin
    (WEBOPS, "exchange", "waiting-approval", True, False, [], [], []),
    (WEBONLY, "web", "waiting-approval", True, False, ["approve"], ["clear"], ["pause"]),
])
def test_operation_server_and_pool_actions(who: Identity, pool: str, state: str, quarantined: bool, paused: bool,
                                           op: list[str], server: list[str], pool_actions: list[str]) -> None:
    assert views.operation_actions(who, pool, state) == op
    assert views.server_actions(who, pool, quarantined) == server
    assert views.pool_actions(who, pool, paused) == pool_actions


def test_scoped_identity() -> None:
    assert WEBOPS.role_in("web") == "operator" and WEBOPS.role_in("exchange") == "viewer"
    assert WEBONLY.sees("web") and not WEBONLY.sees("exchange") and not WEBONLY.sees(None)
    assert WEBONLY.allows_somewhere("admin") and not VIEWER.allows_somewhere("operator")
    assert WEBOPS.label("web") == "webops(operator)" and WEBONLY.label("exchange") == "webonly(none)"


@pytest.mark.parametrize("entry,cli", [
    ({"action": "POST /v1/move", "detail": {"body": {"persona": "exchange2", "to": "r720-3"}}},
     "aimctl move exchange2 --to r720-3"),
    ({"action": "POST /v1/failovers/{id}/approve", "detail": {"params": {"id": "fo-20261127-0001"}}},
     "aimctl approve fo-20261127-0001"),
    ({"action": "POST /v1/servers/{server}/clear", "detail": {"params": {"server": "r720-1"}}}, "aimctl clear r720-1"),
    ({"action": "POST /v1/pools/{pool}/pause", "detail": {"params": {"pool": "web"}}}, "aimctl pause web"),
    ({"action": "console.signin", "detail": {}}, ""),
])
def test_cli_equivalent(entry: dict[str, object], cli: str) -> None:
    assert views.cli_equivalent(entry) == cli


def test_sessions_expire_and_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Sessions(ttl_s=100, idle_s=10, limit=2)
    t = [1000.0]
    monkeypatch.setattr("aimctl.api.sessions.time.time", lambda: t[0])
    a, sa = s.create(ADMIN, b"d")
    assert s.get(a) is not None and s.get("nope") is None and s.get(None) is None and s.get("x" * 500) is None
    t[0] += 9
    assert s.get(a) is not None  # seen again: idle clock restarts
    t[0] += 11
    assert s.get(a) is None  # idle too long
    b, _ = s.create(ADMIN, b"d")
    c, _ = s.create(VIEWER, b"e")
    d, _ = s.create(VIEWER, b"f")
    assert s.get(b) is None and s.get(c) is not None and s.get(d) is not None  # oldest dropped at the limit
    assert same(sa.csrf, sa.csrf) and not same(sa.csrf, "") and not same(None, None)


def test_state_dir_is_private(tmp_path: Path) -> None:
    d = tmp_path / "a" / "ctrl"
    check_state_dir(d)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)  # as a CLI with the default umask made it before the controller ran
    check_state_dir(loose)
    assert stat.S_IMODE(loose.stat().st_mode) == 0o700
    (tmp_path / "file").write_text("")
    with pytest.raises(OperatorError, match="state dir .*file: not a directory"):
        check_state_dir(tmp_path / "file")


def test_secret_looking_fields_are_masked_in_audit_details_and_log_lines() -> None:
    assert masked({"persona": "x", "token": "t", "heartbeat_key": "k", "nested": [{"Password": "p"}]}) == {
        "persona": "x", "token": "***", "heartbeat_key": "***", "nested": [{"Password": "***"}]}
    assert mask_fields('login password=hunter2 ok {"api_key": "K1"}') == 'login password=*** ok {"api_key": "***"}'
    rec_ = logging.LogRecord("x", logging.INFO, __file__, 1, "sent Authorization: Bearer %s", ("abc.def",), None)
    MaskingFilter().filter(rec_)
    assert rec_.getMessage() == "sent Authorization: ***"
