"""The exchange-dag hook against the lab's DAG simulator, over real SSH (paramiko both ends)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from aimctl.drivers.ssh import SshSession, SshTarget
from aimctl.errors import AuthFailed
from aimctl.model import ExchangeDagHook, SshCommandHook
from aimctl.recovery.exchange_dag import Thresholds, run_exchange_dag
from aimctl.recovery.hooks import HookContext, HookResult, run_hooks
from lab.apps.dag_sim import DagSimulator

pytestmark = pytest.mark.lab

PASSWORD = "dag-sim-pw-7731"
PREFERRED = {"EXCH1": ["DB01", "DB03"], "EXCH2": ["DB02", "DB04"]}
CTX = HookContext(persona="exchange1", old_server="r720-1", new_server="r720-3", failover_id="fo-1")


@pytest.fixture
def sim(monkeypatch: pytest.MonkeyPatch) -> Iterator[DagSimulator]:
    s = DagSimulator(resync_s=1.0, password=PASSWORD)
    s.start()
    monkeypatch.setenv("AIMCTL_TEST_EXCH_PW", PASSWORD)
    yield s
    s.stop()


def hook(sim: DagSimulator, **kw: object) -> ExchangeDagHook:
    args: dict[str, object] = {
        "hook": "exchange-dag",
        "dag": "DAG1",
        "server": "EXCH1",
        "via": f"ssh://administrator@127.0.0.1:{sim.port}",
        "credentials": "env:AIMCTL_TEST_EXCH_PW",
        "host_key": sim.host_key_fingerprint,
        "poll": "100ms",
        "timeout": "15s",
    }
    return ExchangeDagHook.model_validate({**args, **kw})


def run(sim: DagSimulator, **kw: object) -> tuple[HookResult, list[str]]:
    events: list[str] = []
    [r] = run_hooks([hook(sim, **kw)], CTX, "post-boot", on_event=events.append)
    return r, events


def test_failover_then_recovery_returns_actives_to_preference_1(sim: DagSimulator) -> None:
    assert sim.distribution() == PREFERRED
    sim.host_died("exchange1")
    assert sim.distribution() == {"EXCH1": [], "EXCH2": ["DB01", "DB02", "DB03", "DB04"]}
    assert {v[0] for k, v in sim.copy_states().items() if k.endswith("EXCH1")} == {"ServiceDown"}
    t0 = time.monotonic()
    sim.host_alive("exchange1")
    assert {v[0] for k, v in sim.copy_states().items() if k.endswith("EXCH1")} == {"Initializing"}
    r, events = run(sim)
    assert r.ok, r.error
    assert 0.9 < time.monotonic() - t0 < 10  # it waited for the resync clock
    assert sim.distribution() == PREFERRED
    assert r.data["before"] == {"EXCH1": [], "EXCH2": ["DB01", "DB02", "DB03", "DB04"]}
    assert r.data["after"] == PREFERRED and r.data["actions"] == []
    said = "\n".join(events)
    assert "waiting: DB01\\EXCH1" in said and "active after: EXCH1=[DB01 DB03]" in said
    assert "redistributing DAG1" in r.output
    # The redistribution came after the last copy-status read that was not yet good enough.
    assert sum("RedistributeActiveDatabases.ps1" in c for c in sim.commands) == 1


def test_failed_copy_is_suspended_then_resumed_then_rebalanced(sim: DagSimulator) -> None:
    sim.host_died("exchange1")
    sim.host_alive("exchange1", failed=["DB03"])
    assert sim.copy_states()["DB03\\EXCH1"][0] == "Failed"
    r, _ = run(sim)
    assert r.ok, r.error
    assert r.data["actions"] == ["suspend DB03\\EXCH1", "resume DB03\\EXCH1"]
    verbs = [c.split(" ", 1)[0] for c in sim.commands]
    assert (
        verbs.index("Suspend-MailboxDatabaseCopy")
        < verbs.index("Resume-MailboxDatabaseCopy")
        < verbs.index("&")
    )
    assert sim.distribution() == PREFERRED


def test_suspended_copy_on_a_live_member_is_resumed(sim: DagSimulator) -> None:
    shell = SshSession(SshTarget("administrator", "127.0.0.1", sim.port), PASSWORD, host_key=sim.host_key_fingerprint)
    with shell:
        assert (
            shell.run("Suspend-MailboxDatabaseCopy -Identity 'DB02\\EXCH1' -Confirm:$false", 5).exit_status
            == 0
        )
        out = run_exchange_dag(shell, "DAG1", "EXCH1", 10, 0.1, Thresholds(), lambda m: None)
    assert out.ok and out.actions == ["resume DB02\\EXCH1"] and out.before == out.after == PREFERRED


def test_too_short_deadline_is_a_failed_result_naming_the_copies(sim: DagSimulator) -> None:
    sim.host_died("exchange1")
    sim.host_alive("exchange1")
    r, _ = run(sim, timeout="400ms")
    assert not r.ok and r.error is not None
    assert "deadline of 0s passed" in r.error or "deadline of 1s passed" in r.error
    assert "copies on EXCH1 not healthy" in r.error and "DB01\\EXCH1" in r.error
    assert r.data["before"]["EXCH2"] == ["DB01", "DB02", "DB03", "DB04"]
    assert not any("RedistributeActiveDatabases" in c for c in sim.commands)


def test_unreachable_management_host_fails_clearly_after_retries(sim: DagSimulator) -> None:
    sim.set_reachable(lambda: False)
    r, events = run(sim, retries=1, retry_wait="0s")
    assert not r.ok and r.attempts == 2
    assert r.error is not None and f"127.0.0.1:{sim.port}" in r.error and "SSH connection failed" in r.error
    assert sim.commands == [] and any("retrying" in e for e in events)


def test_path_lost_mid_run_fails_clearly(sim: DagSimulator) -> None:
    sim.host_died("exchange1")
    sim.host_alive("exchange1")
    sim.set_reachable(lambda: len(sim.commands) < 3)  # the MAPI path drops while waiting
    r, _ = run(sim)
    assert not r.ok and "SSH session lost" in (r.error or "")


def test_wrong_dag_name_fails_fast(sim: DagSimulator) -> None:
    r, _ = run(sim, dag="DAG9")
    assert not r.ok and "no mailbox databases found in DAG DAG9" in (r.error or "")


def test_pinned_host_key_mismatch_sends_no_credentials(sim: DagSimulator) -> None:
    r, _ = run(sim, host_key="SHA256:" + "A" * 43)
    assert not r.ok and "is not the pinned" in (r.error or "") and sim.commands == []
    assert run(sim, host_key="auto-add")[0].ok  # asked for by name: any key (the lab's policy)


def test_wrong_password_is_auth_failed_and_masked(sim: DagSimulator) -> None:
    with pytest.raises(AuthFailed, match="SSH login as administrator refused"):
        SshSession(SshTarget("administrator", "127.0.0.1", sim.port), "not-the-password", host_key="auto-add").connect()


def test_ssh_command_hook_substitutes_facts_and_reports_powershell_errors(sim: DagSimulator) -> None:
    via = f"ssh://administrator@127.0.0.1:{sim.port}"
    spec = SshCommandHook.model_validate({
        "hook": "ssh-command", "via": via, "credentials": "env:AIMCTL_TEST_EXCH_PW", "host_key": "auto-add",
        "command": "Test-ServiceHealth {persona} {failover_id}", "timeout": "5s",
    })
    [r] = run_hooks([spec], CTX, "post-boot")
    assert not r.ok and r.error == "exited 1" and "'Test-ServiceHealth' is not recognized" in r.output
    assert sim.commands == ["Test-ServiceHealth exchange1 fo-1"]
    ok = SshCommandHook.model_validate({
        "hook": "ssh-command", "via": via, "credentials": "env:AIMCTL_TEST_EXCH_PW", "host_key": "auto-add",
        "timeout": "5s", "command": "Resume-MailboxDatabaseCopy -Identity 'DB01\\EXCH2' -Confirm:$false",
    })
    assert "isn't suspended" in run_hooks([ok], CTX, "post-boot")[0].output


def test_simulator_answers_exchange_shaped_csv(sim: DagSimulator) -> None:
    shell = SshSession(SshTarget("administrator", "127.0.0.1", sim.port), PASSWORD, host_key=sim.host_key_fingerprint)
    with shell:
        from aimctl.recovery.exchange_dag import cmd_copy_status, cmd_databases

        dbs = shell.run(cmd_databases("DAG1"), 5).stdout
        cs = shell.run(cmd_copy_status("DAG1"), 5).stdout
    assert dbs.splitlines()[:2] == [
        '"Name","Server","ActivationPreference"',
        '"DB01","EXCH1","{[EXCH1, 1], [EXCH2, 2]}"',
    ]
    assert cs.startswith(
        '"Name","DatabaseName","MailboxServer","Status","CopyQueueLength","ReplayQueueLength"\r\n'
    )
    assert '"DB01\\EXCH1","DB01","EXCH1","Mounted","0","0"' in cs
