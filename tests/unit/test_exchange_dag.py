"""The DAG hook's parsers and decisions, on output shaped as Exchange prints it.

Fixtures in ``fixtures/exchange/`` follow Exchange 2010's ``ConvertTo-Csv -NoTypeInformation``:
quoted headers and values, CRLF, ``$null`` written as nothing, copy names ``DB01\\EXCH1``, a
possible BOM and a WARNING line before the header, and activation preferences as
``{[EXCH1, 1], [EXCH2, 2]}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from aimctl.errors import Timeout
from aimctl.recovery import exchange_dag as ed
from aimctl.recovery.exchange_dag import CommandResult, CopyStatus, Thresholds

FIX = Path(__file__).parent / "fixtures" / "exchange"


def fx(name: str) -> str:
    return (FIX / name).read_bytes().decode("utf-8")


def copies(name: str) -> list[ed.Copy]:
    return ed.parse_copy_status(fx(name))


DBS = ed.parse_databases(fx("databases.csv"))

# ------------------------------------------------------------------------------ parsers


def test_copy_status_after_failover_reads_empty_queues_as_unknown() -> None:
    cs = copies("copystatus_after_failover.csv")
    assert len(cs) == 8
    down = [c for c in cs if c.server == "EXCH1"]
    assert {c.status for c in down} == {CopyStatus.SERVICE_DOWN}
    assert all(c.copy_queue is None and c.replay_queue is None for c in down)
    assert cs[4] == ed.Copy("DB01", "EXCH2", CopyStatus.MOUNTED, "Mounted", 0, 0)
    assert cs[4].identity == "DB01\\EXCH2"


def test_copy_status_quirks_bom_warning_spaces_unknown_status() -> None:
    cs = copies("copystatus_quirks.csv")
    assert [c.identity for c in cs] == [
        "Mailbox Database 0311695863\\EXCH1",
        "Mailbox Database 0311695863\\EXCH2",
        "DB02\\EXCH1",
        "DB02\\EXCH2",
    ]
    assert cs[0].status is CopyStatus.DISCONNECTED_AND_RESYNCHRONIZING and cs[0].copy_queue == 51
    assert cs[2].status is CopyStatus.MISCONFIGURED and cs[2].copy_queue is None
    assert cs[3].status is CopyStatus.UNKNOWN and cs[3].raw_status == "SomethingNew"


def test_status_enum_names_match_not_display_text() -> None:
    assert CopyStatus.parse("FailedAndSuspended") is CopyStatus.FAILED_AND_SUSPENDED
    assert CopyStatus.parse("serviceDown") is CopyStatus.SERVICE_DOWN
    assert [c.status for c in copies("copystatus_stuck.csv")[:3]] == [
        CopyStatus.FAILED,
        CopyStatus.FAILED_AND_SUSPENDED,
        CopyStatus.SUSPENDED,
    ]


def test_databases_preference_sorted_by_number_not_by_position() -> None:
    assert [(d.name, d.server, d.preference) for d in DBS] == [
        ("DB01", "EXCH2", ("EXCH1", "EXCH2")),
        ("DB02", "EXCH2", ("EXCH2", "EXCH1")),
        ("DB03", "EXCH2", ("EXCH1", "EXCH2")),
        ("DB04", "EXCH2", ("EXCH2", "EXCH1")),
    ]


def test_preference_forms() -> None:
    assert ed.parse_preference("{[EXCH1, 1], [EXCH2, 2]}") == ("EXCH1", "EXCH2")
    assert ed.parse_preference("[exch2, 2] [exch1, 1]") == ("EXCH1", "EXCH2")


def test_type_name_instead_of_values_is_a_clear_error() -> None:
    with pytest.raises(ed.OutputError, match="not a list of \\[server, n\\] pairs"):
        ed.parse_databases(fx("databases_typename.csv"))


def test_no_objects_means_no_header_at_all() -> None:
    assert ed.parse_copy_status("") == [] and ed.parse_databases("\r\n") == []


def test_text_without_header_is_refused() -> None:
    with pytest.raises(ed.OutputError, match="no CSV header"):
        ed.parse_copy_status(fx("error_not_found.txt"))


def test_hostile_names_in_output_are_refused() -> None:
    text = '"Name","Status"\r\n"DB01\\EXCH1\'; Remove-MailboxDatabase","Healthy"\r\n'
    with pytest.raises(ed.UnsafeName):
        ed.parse_copy_status(text)


# ------------------------------------------------------------------------------ decisions


@pytest.mark.parametrize(
    ("fixture", "server", "want"),
    [
        ("copystatus_after_failover.csv", "EXCH1", False),  # ServiceDown
        ("copystatus_after_failover.csv", "EXCH2", True),  # all Mounted
        (
            "copystatus_resyncing.csv",
            "EXCH1",
            False,
        ),  # Initializing / Resynchronizing / Healthy but 37 behind
        ("copystatus_stuck.csv", "EXCH1", False),
        ("copystatus_healthy_unbalanced.csv", "EXCH1", True),  # queues 2 and 1 are within 10/50
        ("copystatus_balanced.csv", "exch1", True),
        ("copystatus_balanced.csv", "EXCH3", False),  # not a member: never "healthy"
    ],
)
def test_healthy_enough(fixture: str, server: str, want: bool) -> None:
    assert ed.healthy_enough(copies(fixture), server, Thresholds()) is want


def test_thresholds_apply_to_healthy_copies() -> None:
    cs = copies("copystatus_healthy_unbalanced.csv")
    assert not ed.healthy_enough(cs, "EXCH1", Thresholds(copy_queue=1))
    assert ed.not_ready(cs, "EXCH1", Thresholds(copy_queue=1)) == [
        "DB02\\EXCH1 Healthy (copy queue 2, replay queue 0)"
    ]
    assert ed.not_ready(cs, "EXCH3", Thresholds()) == ["no database copies on EXCH3"]


def test_actions_suspend_failed_resume_suspended() -> None:
    acts = ed.actions(copies("copystatus_stuck.csv"))
    assert [(a.verb, a.copy.identity) for a in acts] == [
        ("suspend", "DB01\\EXCH1"),
        ("resume", "DB02\\EXCH1"),
        ("resume", "DB03\\EXCH1"),
    ]
    assert acts[0].command == "Suspend-MailboxDatabaseCopy -Identity 'DB01\\EXCH1' -Confirm:$false"
    assert acts[1].command == "Resume-MailboxDatabaseCopy -Identity 'DB02\\EXCH1' -Confirm:$false"
    assert ed.actions(copies("copystatus_stuck.csv"), "EXCH2") == []
    assert ed.actions(copies("copystatus_resyncing.csv")) == []


def test_distribution_and_misplaced() -> None:
    after = copies("copystatus_after_failover.csv")
    assert ed.distribution(after) == {"EXCH1": [], "EXCH2": ["DB01", "DB02", "DB03", "DB04"]}
    assert ed.misplaced(after, DBS) == []  # EXCH1's copies are down: nothing could move there
    unbalanced = copies("copystatus_healthy_unbalanced.csv")
    assert ed.misplaced(unbalanced, DBS) == [
        "DB01 active on EXCH2, preference 1 is EXCH1",
        "DB03 active on EXCH2, preference 1 is EXCH1",
    ]
    balanced = copies("copystatus_balanced.csv")
    assert ed.distribution(balanced) == {"EXCH1": ["DB01", "DB03"], "EXCH2": ["DB02", "DB04"]}
    assert ed.misplaced(balanced, DBS) == []


# ------------------------------------------------------------------------------ commands and injection


def test_commands_are_pinned() -> None:
    assert ed.cmd_copy_status("DAG1") == (
        "$copies = @(); foreach ($s in @((Get-DatabaseAvailabilityGroup -Identity 'DAG1').Servers)) "
        "{ $copies += @(Get-MailboxDatabaseCopyStatus -Server $s) }; $copies | Select-Object "
        "Name,DatabaseName,MailboxServer,Status,CopyQueueLength,ReplayQueueLength "
        "| ConvertTo-Csv -NoTypeInformation"
    )
    assert ed.cmd_databases("DAG1").startswith(
        "Get-MailboxDatabase | Where-Object { [string]$_.MasterServerOrAvailabilityGroup -eq 'DAG1' } | "
    )
    assert ed.cmd_redistribute("DAG1") == (
        "& (Join-Path $exscripts 'RedistributeActiveDatabases.ps1') -DagName 'DAG1' "
        "-BalanceDbsByActivationPreference -Confirm:$false"
    )
    for cmd in (
        ed.cmd_copy_status("DAG1"),
        ed.cmd_databases("DAG1"),
        ed.cmd_redistribute("DAG1"),
        ed.cmd_suspend("Mailbox Database 1", "EXCH1"),
    ):
        assert '"' not in cmd and "ConvertTo-Json" not in cmd  # PowerShell 2.0, OpenSSH quoting


HOSTILE = [
    "DAG1'; Remove-MailboxDatabase DB01 -Confirm:$false; '",
    "$(Remove-MailboxDatabase DB01)",
    "DAG1`nRemove-MailboxDatabase",
    "DAG1\nRemove-MailboxDatabase",
    "DAG1\u2019; x",
    'DAG1"',
    "DAG 1",
    "",
    "D" * 65,
    "-DAG1",
    "DAG1;",
    "DAG1|Out-Null",
    "DAG1\\x",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_injection_refused_at_validation(name: str) -> None:
    for build in (
        ed.cmd_copy_status,
        ed.cmd_databases,
        ed.cmd_redistribute,
        lambda n: ed.cmd_suspend("DB01", n),
        lambda n: ed.cmd_resume("DB01", n),
    ):
        with pytest.raises(ed.UnsafeName):
            build(name)


@pytest.mark.parametrize("name", ["DB01'; x", "DB01\\EXCH2", "$(x)", "DB01`", "DB01\n", " DB01", "DB01 "])
def test_database_names_refused(name: str) -> None:
    with pytest.raises(ed.UnsafeName):
        ed.cmd_suspend(name, "EXCH1")


def test_quote_doubles_every_powershell_quote() -> None:
    assert ed.ps_quote("a'b\u2019c") == "'a''b\u2019\u2019c'"


# ------------------------------------------------------------------------------ the flow, on replayed output


@dataclass
class Replay:
    """Answers each command kind from a list of fixture texts, the last one repeating."""

    answers: dict[str, list[CommandResult]]
    sent: list[str] = field(default_factory=list)

    def run(self, command: str, timeout_s: float) -> CommandResult:
        self.sent.append(command)
        kind = next(
            k
            for k in (
                "Get-MailboxDatabaseCopyStatus",
                "Get-MailboxDatabase",
                "Suspend",
                "Resume",
                "Redistribute",
            )
            if k in command
        )
        queue = self.answers[kind]
        return queue.pop(0) if len(queue) > 1 else queue[0]


def ok(name: str | None = None) -> CommandResult:
    return CommandResult(0, fx(name) if name else "", "")


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


def run(shell: Replay, deadline_s: float = 600.0) -> tuple[ed.DagOutcome, list[str]]:
    clock, log = FakeClock(), list[str]()
    out = ed.run_exchange_dag(
        shell, "DAG1", "EXCH1", deadline_s, 15.0, Thresholds(), log.append, clock=clock, sleep=clock.sleep
    )
    return out, log


def test_flow_waits_repairs_redistributes_and_verifies() -> None:
    shell = Replay(
        {
            "Get-MailboxDatabase": [ok("databases.csv")],
            "Get-MailboxDatabaseCopyStatus": [
                ok("copystatus_after_failover.csv"),
                ok("copystatus_stuck.csv"),
                ok("copystatus_resyncing.csv"),
                ok("copystatus_healthy_unbalanced.csv"),
                ok("copystatus_balanced.csv"),
            ],
            "Suspend": [ok()],
            "Resume": [ok()],
            "Redistribute": [ok()],
        }
    )
    out, log = run(shell)
    assert out.ok, out.error
    assert out.before == {"EXCH1": [], "EXCH2": ["DB01", "DB02", "DB03", "DB04"]}
    assert out.after == {"EXCH1": ["DB01", "DB03"], "EXCH2": ["DB02", "DB04"]}
    assert out.actions == ["suspend DB01\\EXCH1", "resume DB02\\EXCH1", "resume DB03\\EXCH1"]
    verbs = [c.split(" ", 1)[0] for c in shell.sent]
    assert verbs.index("&") > max(i for i, v in enumerate(verbs) if v.startswith(("Suspend", "Resume")))
    assert any("waiting: DB01\\EXCH1 ServiceDown" in m for m in log)


def test_deadline_while_resynchronizing_fails_with_the_copies_named() -> None:
    shell = Replay(
        {
            "Get-MailboxDatabase": [ok("databases.csv")],
            "Get-MailboxDatabaseCopyStatus": [ok("copystatus_resyncing.csv")],
        }
    )
    out, _ = run(shell, deadline_s=100)
    assert not out.ok and out.error is not None
    assert (
        "deadline of 100s passed" in out.error and "DB02\\EXCH1 Resynchronizing (copy queue 1243" in out.error
    )
    assert not any("Redistribute" in c for c in shell.sent)


def test_redistribution_that_does_not_land_fails() -> None:
    shell = Replay(
        {
            "Get-MailboxDatabase": [ok("databases.csv")],
            "Get-MailboxDatabaseCopyStatus": [ok("copystatus_healthy_unbalanced.csv")],
            "Redistribute": [ok()],
        }
    )
    out, _ = run(shell, deadline_s=60)
    assert not out.ok and "after redistribution DB01 active on EXCH2, preference 1 is EXCH1" in (
        out.error or ""
    )


def test_command_error_fails_with_first_stderr_line() -> None:
    shell = Replay({"Get-MailboxDatabase": [CommandResult(1, "", fx("error_not_found.txt"))]})
    out, _ = run(shell)
    assert not out.ok and "Couldn't find database copy" in (out.error or "")


def test_stuck_copy_is_not_hammered() -> None:
    shell = Replay(
        {
            "Get-MailboxDatabase": [ok("databases.csv")],
            "Get-MailboxDatabaseCopyStatus": [ok("copystatus_stuck.csv")],
            "Suspend": [ok()],
            "Resume": [ok()],
        }
    )
    out, _ = run(shell, deadline_s=3600)
    assert not out.ok
    assert sum(c.startswith("Suspend") and "DB01" in c for c in shell.sent) == ed.MAX_ACTIONS_PER_COPY


def test_wrong_dag_or_server_fails_fast() -> None:
    out, _ = run(Replay({"Get-MailboxDatabase": [ok()]}))
    assert "no mailbox databases found in DAG DAG1" in (out.error or "")
    shell = Replay({"Get-MailboxDatabase": [ok("databases.csv")]})
    out = ed.run_exchange_dag(shell, "DAG1", "EXCH9", 60, 1, Thresholds(), lambda m: None)
    assert "EXCH9 holds no copy" in (out.error or "") and len(shell.sent) == 1


def test_bad_name_refused_before_any_command() -> None:
    shell = Replay({})
    with pytest.raises(ed.UnsafeName):
        ed.run_exchange_dag(
            shell,
            "DAG1'; Remove-DatabaseAvailabilityGroup DAG1",
            "EXCH1",
            60,
            1,
            Thresholds(),
            lambda m: None,
        )
    assert shell.sent == []


def test_deadline_hitting_inside_a_command_still_names_what_was_awaited() -> None:
    clock = FakeClock()

    class SlowShell(Replay):
        def run(self, command: str, timeout_s: float) -> CommandResult:
            if "CopyStatus" in command and len(self.sent) >= 2:
                clock.t += timeout_s  # the shell used all the time it was given
                raise Timeout("127.0.0.1:22", f"command did not finish within {timeout_s:g}s")
            return super().run(command, timeout_s)

    shell = SlowShell(
        {
            "Get-MailboxDatabase": [ok("databases.csv")],
            "Get-MailboxDatabaseCopyStatus": [ok("copystatus_resyncing.csv")],
        }
    )
    out = ed.run_exchange_dag(
        shell, "DAG1", "EXCH1", 20, 15, Thresholds(), lambda m: None, clock=clock, sleep=clock.sleep
    )
    assert out.error is not None and out.error.startswith(
        "DAG1: deadline of 20s passed: copies on EXCH1 not healthy"
    )
