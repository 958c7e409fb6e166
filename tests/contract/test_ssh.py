"""The one SSH transport (``aimctl.drivers.ssh``) against a real SSH server (paramiko, lab.apps.ssh_exec).

The storage runner and the hooks have their own suites over it (test_storage, test_dag_hook); these
are the transport's promises both rely on: which host keys are trusted, what a lost connection
does, deadlines and output limits.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from aimctl.drivers.ssh import MAX_OUTPUT, SshSession, SshTarget
from aimctl.errors import AuthFailed, OperatorError, Timeout, Unreachable
from lab.apps.ssh_exec import ExecServer

pytestmark = pytest.mark.lab

USER, PASSWORD = "ops", "ssh-transport-pw-0b7e"


class Far:
    """The far side: answers ``echo X``, ``big N`` (N bytes of stdout) and ``wait`` (until released)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.logins = 0
        self.server = ExecServer(self.handle, USER, PASSWORD, name="ssh-test")
        check = self.server.check_password

        def counting(username: str, password: str) -> bool:
            self.logins += 1
            return check(username, password)

        self.server.check_password = counting  # type: ignore[method-assign]

    def handle(self, command: str) -> tuple[str, str, int]:
        verb, _, rest = command.partition(" ")
        if verb == "echo":
            return rest + "\n", "", 0
        if verb == "big":
            return "x" * int(rest), "e" * int(rest), 0
        if verb == "wait":
            self.release.wait(10)
            return "", "", 0
        return "", f"{verb}: not found\n", 127


@pytest.fixture
def far() -> Iterator[Far]:
    f = Far()
    f.server.start()
    yield f
    f.release.set()
    f.server.stop()


def session(far: Far, **kw: object) -> SshSession:
    return SshSession(SshTarget(USER, "127.0.0.1", far.server.port), PASSWORD, **kw)  # type: ignore[arg-type]


def test_url_and_host_key_policy_are_checked_before_any_connection() -> None:
    assert SshTarget.parse("ssh://root@array1.lab") == SshTarget("root", "array1.lab", 22)
    for bad in ("ssh://root@host;reboot", "ssh://root@host:0", "http://root@host", "ssh://host"):
        with pytest.raises(OperatorError, match="want ssh://user@host"):
            SshTarget.parse(bad)
    with pytest.raises(OperatorError, match="host_key"):
        SshSession(SshTarget("a", "h"), "pw", host_key="yes")


def test_an_unknown_host_is_refused_by_default_before_credentials(far: Far) -> None:
    with pytest.raises(Unreachable, match="SSH connection failed.*known_hosts"):
        session(far).run("echo hi", 5)
    assert far.logins == 0


def test_any_key_only_when_asked_by_name(far: Far) -> None:
    with session(far, host_key="auto-add") as s:
        r = s.run("echo hi", 5)
    assert (r.exit_status, r.stdout, r.stderr) == (0, "hi\n", "")
    assert far.logins == 1


def test_a_pinned_key_that_differs_sends_no_credentials(far: Far) -> None:
    with pytest.raises(AuthFailed, match="is not the pinned"):
        session(far, host_key="SHA256:" + "A" * 43).run("echo hi", 5)
    assert far.logins == 0
    with session(far, host_key=far.server.host_key_fingerprint) as s:
        assert s.run("nope", 5).exit_status == 127


def test_a_connection_lost_between_commands_is_reopened_once(far: Far) -> None:
    s = session(far, host_key=far.server.host_key_fingerprint)
    try:
        assert s.run("echo one", 5).stdout == "one\n"
        for t in list(far.server._transports):  # the far side drops the idle connection
            t.close()
        assert s.run("echo two", 5).stdout == "two\n"
        assert far.logins == 2
    finally:
        s.close()


def test_a_command_past_its_deadline_is_a_timeout_naming_it(far: Far) -> None:
    with session(far, host_key="auto-add") as s:
        with pytest.raises(Timeout, match="tgtadm --op show did not finish within 0.3s"):
            s.run("wait", 0.3, shown="tgtadm --op show")
        far.release.set()


def test_output_is_capped_per_stream(far: Far) -> None:
    with session(far, host_key="auto-add") as s:
        r = s.run(f"big {MAX_OUTPUT + 1000}", 30)
    assert r.exit_status == 0 and len(r.stdout) == len(r.stderr) == MAX_OUTPUT
