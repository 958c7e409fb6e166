"""Hooks as the definitions give them (the model's classes), the runner's order/timeout/retry rules,
and script hooks (real local processes)."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from aimctl import secrets
from aimctl.model import ExchangeDagHook, HookPoint, PoolFile, ScriptHook, SshCommandHook
from aimctl.recovery.hooks import HookContext, HookSpecError, clip, label, run_hooks

CTX = HookContext(
    persona="exchange1", old_server="r720-1", new_server="r720-3", failover_id="fo-20260101-0001"
)


def script(tmp_path: Path, name: str, body: str) -> str:
    p = tmp_path / name
    p.write_text("#!/bin/sh\n" + body)
    p.chmod(p.stat().st_mode | stat.S_IXUSR)
    return str(p)


def script_hook(path: str, **kw: object) -> ScriptHook:
    return ScriptHook.model_validate({"hook": "script", "path": path, **kw})


def test_script_gets_the_failovers_facts_and_no_controller_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIMCTL_EXCH_PASSWORD", "hunter2-secret")
    path = script(tmp_path, "facts.sh", 'env | grep -E "^(AIMCTL_|PATH=)" | sort\necho "args: $*"\n')
    [r] = run_hooks(
        [script_hook(path, args=["web1", "--drain"], point="post-recovery")], CTX, "post-recovery"
    )
    assert r.ok and r.kind == "script" and r.point == "post-recovery" and r.attempts == 1
    for line in (
        "AIMCTL_PERSONA=exchange1",
        "AIMCTL_OLD_SERVER=r720-1",
        "AIMCTL_NEW_SERVER=r720-3",
        "AIMCTL_FAILOVER_ID=fo-20260101-0001",
        "AIMCTL_POINT=post-recovery",
        "args: web1 --drain",
    ):
        assert line in r.output
    assert "AIMCTL_EXCH_PASSWORD" not in r.output and "hunter2" not in r.output
    assert r.started <= r.ended and r.to_record()["ok"] is True


def test_failing_script_reports_exit_and_output(tmp_path: Path) -> None:
    path = script(tmp_path, "bad.sh", "echo draining; echo 'pool not found' >&2; exit 3\n")
    [r] = run_hooks([script_hook(path)], CTX, "post-boot")
    assert not r.ok and r.error == "exited 3" and "draining" in r.output and "pool not found" in r.output


def test_timeout_kills_the_script_and_its_children(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    path = script(tmp_path, "slow.sh", f"sleep 30 & echo $! > {pidfile}\nwait\n")
    t0 = time.monotonic()
    [r] = run_hooks([script_hook(path, timeout="0.5s")], CTX, "post-boot")
    assert time.monotonic() - t0 < 5
    assert not r.ok and r.error is not None and "timed out after 0.5s" in r.error
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_retry_after_a_failure_succeeds(tmp_path: Path) -> None:
    counter = tmp_path / "n"
    path = script(
        tmp_path,
        "flaky.sh",
        f"n=$(cat {counter} 2>/dev/null || echo 0); echo $((n+1)) > {counter}\n"
        f'[ "$n" -ge 1 ] || {{ echo first try fails; exit 1; }}\necho second try works\n',
    )
    events: list[str] = []
    [r] = run_hooks(
        [script_hook(path, retries=2, retry_wait="0s")], CTX, "post-boot", on_event=events.append
    )
    assert r.ok and r.attempts == 2
    assert "--- attempt 1: exited 1" in r.output and "second try works" in r.output
    assert any("retrying in 0s" in e for e in events)


def test_retries_exhausted_and_timeouts_are_retried(tmp_path: Path) -> None:
    path = script(tmp_path, "slow.sh", "exec sleep 30\n")
    t0 = time.monotonic()
    [r] = run_hooks([script_hook(path, timeout="0.3s", retries=1, retry_wait="0s")], CTX, "post-boot")
    assert not r.ok and r.attempts == 2 and "timed out" in (r.error or "")
    assert 0.6 <= time.monotonic() - t0 < 5


def test_hooks_run_in_order_only_for_their_point_and_stop_at_first_failure(tmp_path: Path) -> None:
    log = tmp_path / "log"
    plan: list[tuple[HookPoint, int]] = [
        ("pre-fence", 0),
        ("post-boot", 0),
        ("post-boot", 1),
        ("post-boot", 0),
    ]
    specs = [
        script_hook(script(tmp_path, f"h{i}.sh", f"echo {i} >> {log}\nexit {code}\n"), point=pt)
        for i, (pt, code) in enumerate(plan)
    ]
    results = run_hooks(specs, CTX, "post-boot")
    assert [(r.name, r.ok) for r in results] == [("script h1.sh", True), ("script h2.sh", False)]
    assert log.read_text().split() == ["1", "2"]
    assert run_hooks(specs, CTX, "pre-failback") == []


def test_missing_script_is_a_failed_result(tmp_path: Path) -> None:
    [r] = run_hooks([script_hook(str(tmp_path / "nope.sh"))], CTX, "post-boot")
    assert not r.ok and "does not exist or is not executable" in (r.error or "")


def test_output_is_masked_and_clipped(tmp_path: Path) -> None:
    secrets.register("s3cr3t-value-123")
    path = script(tmp_path, "loud.sh", "echo token=s3cr3t-value-123\nhead -c 20000 /dev/zero | tr '\\0' x\n")
    [r] = run_hooks([script_hook(path)], CTX, "post-boot")
    assert "s3cr3t" not in r.output and "token=***" in r.output
    assert len(r.output) < 8100 and "characters cut" in r.output
    assert clip("a" * 10, 4) == "aa\n... [6 characters cut] ...\naa"


def test_unknown_point_refused() -> None:
    with pytest.raises(HookSpecError):
        run_hooks([], CTX, "post-lunch")
    with pytest.raises(ValidationError):
        script_hook("/bin/true", point="post-lunch")


DAG = {
    "hook": "exchange-dag",
    "dag": "DAG1",
    "server": "EXCH1",
    "via": "ssh://administrator@exchmgmt.lab:22",
    "credentials": "env:AIMCTL_EXCH_PW",
}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("dag", "DAG1'; Remove-MailboxDatabase"),
        ("server", "$(Get-Process)"),
        ("server", "EXCH1\n"),
        ("dag", "DAG`1"),
        ("via", "ssh://admin@host;rm -rf /:22"),
        ("via", "http://exchmgmt.lab"),
        ("via", "ssh://admin@exchmgmt.lab:99999"),
        ("credentials", "plain-password"),
        ("via", "ssh://admin@bad..host:22"),
        ("host_key", "yes please"),
        ("poll", "0s"),
        ("timeout", "0s"),
    ],
)
def test_exchange_dag_spec_refuses_bad_values(field: str, value: str) -> None:
    with pytest.raises(ValidationError):
        ExchangeDagHook.model_validate({**DAG, field: value})


def test_exchange_dag_spec_defaults_and_label() -> None:
    h = ExchangeDagHook.model_validate({**DAG, "timeout": "20m", "retries": 1})
    assert (h.hook, h.point, h.host_key, h.timeout, label(h)) == (
        "exchange-dag",
        "post-boot",
        "known-hosts",
        1200.0,
        "exchange-dag DAG1/EXCH1",
    )
    pinned = "SHA256:" + "A" * 43
    assert ExchangeDagHook.model_validate({**DAG, "host_key": pinned}).host_key == pinned
    # Accepting any host key is only ever asked for by name; "auto" is auto-add's earlier spelling.
    assert ExchangeDagHook.model_validate({**DAG, "host_key": "auto-add"}).host_key == "auto-add"
    assert ExchangeDagHook.model_validate({**DAG, "host_key": "auto"}).host_key == "auto"


def test_drifted_hook_defaults_are_settled() -> None:
    """The hook schema is said once (aimctl.model); these are the defaults it settled on."""
    dag = ExchangeDagHook.model_validate(DAG)
    assert (dag.point, dag.timeout, dag.retries, dag.retry_wait, dag.poll, dag.host_key) == (
        "post-boot", 600.0, 0, 10.0, 15.0, "known-hosts")
    cmd = {"hook": "ssh-command", "via": "ssh://a@h", "credentials": "env:X"}
    assert SshCommandHook.model_validate({**cmd, "command": "x" * 1024}).host_key == "known-hosts"
    with pytest.raises(ValidationError, match="at most 1024 characters"):
        SshCommandHook.model_validate({**cmd, "command": "x" * 1025})
    sh = script_hook("/bin/true")
    assert (sh.point, sh.timeout, sh.retries, sh.retry_wait, sh.args) == ("post-boot", 600.0, 0, 10.0, [])


def test_hooks_in_a_pool_file_are_the_runnable_ones(tmp_path: Path) -> None:
    """What the loader builds from a definition is what run_hooks runs: no translation between them."""
    path = script(tmp_path, "ok.sh", "echo from-definition\n")
    pool = PoolFile.model_validate({
        "pool": "p", "members": [], "quarantine_vlan": 999,
        "networks": {"scn": {"vlan": 4004, "subnet": "10.40.4.0/24", "primary": 1}},
        "personas": {"web1": {
            "home": "s1", "storage": "a1", "initiator": "iqn.2026-01.lab.host:web1",
            "boot": {"target": "iqn.2026-01.lab.storage:web1-boot", "lun": 1},
            "addresses": {"scn": "10.40.4.11"}, "heartbeat_key": "env:K",
            "recovery": [{"hook": "script", "path": path, "point": "post-recovery"}],
        }},
    })
    [r] = run_hooks(pool.personas["web1"].recovery, CTX, "post-recovery")
    assert r.ok and r.output.strip() == "from-definition" and r.name == "script ok.sh"


def test_context_refuses_values_that_are_not_plain_names() -> None:
    with pytest.raises(HookSpecError):
        HookContext(persona="exchange1; reboot", old_server="r720-1", new_server="r720-3", failover_id="x")
    HookContext(
        persona="exchange1", old_server="", new_server="r720-3", failover_id="x"
    )  # first boot: no old


def test_ssh_command_spec_checks() -> None:
    cmd = {"hook": "ssh-command", "via": "ssh://a@h", "credentials": "env:X"}
    for bad in ("", "   ", "Restart\x00"):
        with pytest.raises(ValidationError):
            SshCommandHook.model_validate({**cmd, "command": bad})
    h = SshCommandHook.model_validate({**cmd, "command": "Restart-Service {persona}",
                                       "credentials": "file:/etc/aimctl/pw"})
    assert h.hook == "ssh-command" and label(h) == "ssh-command"


def test_exchange_dag_unreachable_host_is_a_failed_result(monkeypatch: pytest.MonkeyPatch) -> None:
    # Port 1 on loopback refuses at once: the hook ends in a result, not an exception.
    monkeypatch.setenv("AIMCTL_EXCH_PW", "pw-for-test")
    via = "ssh://administrator@127.0.0.1:1"
    spec = ExchangeDagHook.model_validate({**DAG, "via": via, "timeout": "5s"})
    [r] = run_hooks([spec], CTX, "post-boot")
    assert not r.ok and "127.0.0.1:1" in (r.error or "") and "SSH connection failed" in (r.error or "")


def test_exchange_dag_missing_secret_is_a_failed_result(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIMCTL_EXCH_PW", raising=False)
    [r] = run_hooks([ExchangeDagHook.model_validate(DAG)], CTX, "post-boot")
    assert not r.ok and "AIMCTL_EXCH_PW is not set" in (r.error or "")


def test_scripts_are_not_run_through_a_shell(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = script(tmp_path, "echo.sh", 'printf "%s|" "$@"\n')
    # The model refuses such arguments when the definitions load; built past it, they still reach
    # the script as plain words: no shell ever reads them.
    hook = ScriptHook.model_construct(hook="script", path=path, args=[f"; touch {marker}", "$(id)"],
                                      point="post-boot", timeout=5.0, retries=0, retry_wait=0.0)
    [r] = run_hooks([hook], CTX, "post-boot")
    assert r.ok and r.output == f"; touch {marker}|$(id)|" and not marker.exists()
    assert os.environ.get("AIMCTL_PERSONA") is None  # facts go to the child only
