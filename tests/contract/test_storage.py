"""Contract suite for ``StorageAccess``: TgtStorage against a real tgtd (TgtLab), run twice —
tgtadm here (LocalRunner) and tgtadm behind a real SSH server (SshRunner).

Every write is checked by a third party too: the lab's own tgtadm view, ``iscsi-inq`` logins and
HeldSession logins with libiscsi, never only by the driver's read-back.
"""

from __future__ import annotations

import itertools
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import paramiko
import pytest

from aimctl.drivers.protocols import StorageAccess
from aimctl.drivers.runner import Arg, CommandResult, LocalRunner, SshRunner
from aimctl.drivers.ssh import fingerprint
from aimctl.drivers.tgt import TgtStorage
from aimctl.errors import DriverError, OperatorError, Rejected, Timeout, Unreachable
from lab.storage.iscsi_session import AUTH, HeldSession, LoginFailed
from lab.storage.tgt import LunSpec, TgtLab
from tests.waiting import until

pytestmark = pytest.mark.lab

INI = "iqn.1991-05.com.microsoft:exchange1"
OTHER = "iqn.1991-05.com.microsoft:exchange2"
USER = "aimctl-exchange1"
OLD, NEW = "Old-Secret-12345", "New-Secret-67890"
SSH_USER, SSH_PASSWORD = "storadm", "ssh-pass-4f1b7c"
_names = itertools.count(1)


# ---------------------------------------------------------------------------- a real SSH server


class ShellServer:
    """SSH server that runs each exec request with /bin/sh here (stdin, stdout, stderr, exit status)."""

    def __init__(self) -> None:
        self.key = paramiko.ECDSAKey.generate()
        self.commands: list[str] = []
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self.port = self._sock.getsockname()[1]
        self._transports: list[paramiko.Transport] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            t = paramiko.Transport(conn)
            t.add_server_key(self.key)
            self._transports.append(t)
            t.start_server(server=_Iface(self))

    def run(self, chan: paramiko.Channel, command: str) -> None:
        self.commands.append(command)
        try:
            stdin = bytearray()
            while chunk := chan.recv(65536):  # the client closes stdin right after sending it
                stdin += chunk
            p = subprocess.run(["/bin/sh", "-c", command], input=bytes(stdin), capture_output=True, check=False)
            chan.sendall(p.stdout)
            chan.sendall_stderr(p.stderr)
            chan.send_exit_status(p.returncode)
            chan.shutdown_write()  # EOF, not close: a close may overtake the exec reply
        except (OSError, EOFError, paramiko.SSHException):
            pass  # the client gave up (its timeout): nobody to answer

    def stop(self) -> None:
        self._sock.close()
        for t in self._transports:
            t.close()


class _Iface(paramiko.ServerInterface):  # type: ignore[misc]
    def __init__(self, server: ShellServer) -> None:
        self.server = server

    def get_allowed_auths(self, username: str) -> str:
        return "password"

    def check_auth_password(self, username: str, password: str) -> int:
        ok = (username, password) == (SSH_USER, SSH_PASSWORD)
        return int(paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED)

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return int(paramiko.OPEN_SUCCEEDED if kind == "session" else paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED)

    def check_channel_exec_request(self, channel: Any, command: bytes) -> bool:
        threading.Thread(target=self.server.run, args=(channel, command.decode()), daemon=True).start()
        return True


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tgt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TgtLab]:
    lab = TgtLab(tmp_path_factory.mktemp("storage") / "tgt")
    lab.start()
    try:
        yield lab
    finally:
        lab.stop()


@pytest.fixture(scope="module")
def sshd() -> Iterator[ShellServer]:
    srv = ShellServer()
    try:
        yield srv
    finally:
        srv.stop()


class Counting:
    """A runner that counts what reaches it (to prove refusals happen before any command)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.where, self.calls = inner, inner.where, 0

    def run(self, argv: Sequence[Arg], timeout_s: float = 10.0) -> CommandResult:
        self.calls += 1
        return self.inner.run(argv, timeout_s)  # type: ignore[no-any-return]

    def close(self) -> None:
        self.inner.close()


@pytest.fixture(scope="module", params=["local", "ssh"])
def runner(request: pytest.FixtureRequest, tgt: TgtLab, sshd: ShellServer) -> Iterator[Counting]:
    if request.param == "local":
        inner: Any = LocalRunner(env=tgt.env)
    else:
        inner = SshRunner.from_url(f"ssh://{SSH_USER}@127.0.0.1:{sshd.port}", SSH_PASSWORD, env=tgt.env,
                                   host_key=fingerprint(sshd.key))
    r = Counting(inner)
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def storage(tgt: TgtLab, runner: Counting) -> TgtStorage:
    return TgtStorage("127.0.0.1", tgt.port, runner)


@pytest.fixture
def target(tgt: TgtLab) -> str:
    """A fresh target with one labelled LUN, nobody bound."""
    name = f"iqn.2026-01.lab.storage:contract-{next(_names)}"
    tgt.add_lun(LunSpec(name, 1, 8, "exchange1"))
    return name




def inq(tgt: TgtLab, target: str, initiator: str, user: str = "", secret: str = "") -> int:
    env = {"PATH": "/usr/bin:/bin"} | ({"LIBISCSI_CHAP_USERNAME": user, "LIBISCSI_CHAP_PASSWORD": secret} if user else {})
    return subprocess.run(["iscsi-inq", "-i", initiator, f"iscsi://127.0.0.1:{tgt.port}/{target}/1"], env=env,
                          capture_output=True, timeout=10, check=False).returncode




# ---------------------------------------------------------------------------- the contract


def test_is_a_storage_access(storage: TgtStorage) -> None:
    assert isinstance(storage, StorageAccess)


def test_bind_and_unbind_read_back(storage: TgtStorage, tgt: TgtLab, target: str) -> None:
    assert storage.initiators(target) == []
    storage.bind(target, INI)
    storage.bind(target, INI)  # idempotent
    assert storage.initiators(target) == [INI]
    assert tgt.show_targets()[target].acl == [INI]
    storage.unbind(target, INI)
    storage.unbind(target, INI)
    assert storage.initiators(target) == [] == tgt.show_targets()[target].acl


def test_only_a_bound_initiator_reaches_the_lun(storage: TgtStorage, tgt: TgtLab, target: str) -> None:
    assert inq(tgt, target, INI) != 0
    storage.bind(target, INI)
    assert inq(tgt, target, INI) == 0
    assert inq(tgt, target, OTHER) != 0
    assert storage.login_refused(target, OTHER, "", "") is True
    storage.unbind(target, INI)
    assert inq(tgt, target, INI) != 0


def test_chap_rotation_refuses_the_old_secret(storage: TgtStorage, tgt: TgtLab, target: str,
                                              held: list[HeldSession]) -> None:
    storage.bind(target, INI)
    storage.set_chap(target, USER, OLD)
    assert storage.chap_user(target) == USER
    assert storage.login_refused(target, INI, USER, OLD) is False
    storage.set_chap(target, USER, NEW)
    assert storage.chap_user(target) == USER
    assert storage.login_refused(target, INI, USER, OLD) is True
    assert storage.login_refused(target, INI, USER, NEW) is False
    # Third party: libiscsi logins and the target's own view.
    assert inq(tgt, target, INI, USER, OLD) != 0 and inq(tgt, target, INI, USER, NEW) == 0
    with pytest.raises(LoginFailed) as err:
        HeldSession.login(f"127.0.0.1:{tgt.port}", target, 1, INI, "r720-1", USER, OLD)
    assert err.value.reason == AUTH
    held.append(HeldSession.login(f"127.0.0.1:{tgt.port}", target, 1, INI, "r720-3", USER, NEW))
    assert held[0].read_label() == "exchange1"
    view = tgt.show_targets()[target]
    assert view.accounts == [USER] and view.acl == [INI]
    assert inq(tgt, target, INI) != 0, "no moment without CHAP: a login without it is refused"


def test_rotation_keeps_a_shared_user_on_its_other_targets(storage: TgtStorage, tgt: TgtLab) -> None:
    boot, db = f"iqn.2026-01.lab.storage:shared-boot-{next(_names)}", f"iqn.2026-01.lab.storage:shared-db-{next(_names)}"
    user = f"aimctl-shared-{next(_names)}"
    for t in (boot, db):
        tgt.add_lun(LunSpec(t, 1, 8, None))
        storage.bind(t, INI)
        storage.set_chap(t, user, OLD)
    storage.set_chap(boot, user, NEW)
    views = tgt.show_targets()
    assert views[boot].accounts == [user] and views[db].accounts == [user]
    assert storage.login_refused(db, INI, user, OLD) and not storage.login_refused(db, INI, user, NEW)


def test_rotation_with_several_accounts_does_not_crash_tgtd(storage: TgtStorage, tgt: TgtLab,
                                                             target: str) -> None:
    # Quirk: tgtd 1.0.85 segfaults on the next show after unbinding any account but the last one.
    tid = str(tgt.show_targets()[target].tid)
    extra = [f"stale-{next(_names)}" for _ in range(3)]
    for a in extra:
        tgt.run("--op", "new", "--mode", "account", "--user", a, "--password", OLD)
        tgt.run("--op", "bind", "--mode", "account", "--tid", tid, "--user", a)
    storage.bind(target, INI)
    storage.set_chap(target, USER, NEW)
    assert tgt.show_targets()[target].accounts == [USER]
    remaining = tgt.run("--op", "show", "--mode", "account")
    assert not any(a in remaining for a in extra), "old accounts bound nowhere are deleted"


def test_sessions_with_alias_and_kill(storage: TgtStorage, tgt: TgtLab, target: str,
                                     held: list[HeldSession]) -> None:
    storage.bind(target, INI)
    portal = f"127.0.0.1:{tgt.port}"
    held += [HeldSession.login(portal, target, 1, INI, "r720-1", None, None),
             HeldSession.login(portal, target, 1, INI, "r720-3", None, None)]
    held[0].freeze()  # the dead body's half-open session
    got = storage.sessions(target)
    assert sorted((s.initiator, s.alias) for s in got) == [(INI, "r720-1"), (INI, "r720-3")]
    assert all(s.target == target and s.sid > 0 for s in got) and len({s.sid for s in got}) == 2
    storage.kill_sessions(target, deadline_s=5)
    assert storage.sessions(target) == [] and tgt.show_targets()[target].nexus == []
    assert held[1].wait_dead(5), "the serviced session sees it was killed"
    assert until(lambda: not held[0].alive), "the frozen one too, as soon as it looks"


def test_storage_error_is_a_clear_error(storage: TgtStorage, tgt: TgtLab, target: str) -> None:
    tgt.set_fault("storage-error", True)
    try:
        with pytest.raises(Unreachable) as err:
            storage.bind(target, INI)
        assert "tgtd" in str(err.value) and err.value.device == f"tgt 127.0.0.1:{tgt.port}"
    finally:
        tgt.set_fault("storage-error", False)
    storage.bind(target, INI)
    assert storage.initiators(target) == [INI]


def test_a_hung_tgtd_is_a_timeout(tgt: TgtLab, runner: Counting, target: str) -> None:
    slow = TgtStorage("127.0.0.1", tgt.port, runner, timeout_s=0.5)
    tgt.set_fault("storage-hang", True)
    try:
        t0 = time.monotonic()
        with pytest.raises(Timeout):
            slow.initiators(target)
        assert time.monotonic() - t0 < 3
    finally:
        tgt.set_fault("storage-hang", False)
    assert slow.initiators(target) == []


@pytest.mark.parametrize("call", [
    lambda s, t: s.bind(t, "iqn.2026-01.lab.host:x; rm -rf /"),
    lambda s, t: s.bind(t, "iqn.2026-01.lab.host:x --op delete"),
    lambda s, t: s.unbind(t, "$(reboot)"),
    lambda s, t: s.bind("iqn.2026-01.lab.storage:t`id`", INI),
    lambda s, t: s.set_chap(t, "--password", NEW),
    lambda s, t: s.set_chap(t, USER, "secret with spaces 1"),
    lambda s, t: s.set_chap(t, USER, "x$(id)12345678"),
    lambda s, t: s.login_refused(t, INI, "u'; id", NEW),
    lambda s, t: s.kill_sessions("not-an-iqn"),
], ids=["semicolon", "option", "subshell", "backtick-target", "dash-user", "space-secret", "subshell-secret",
        "quote-user", "bad-target"])
def test_injection_is_refused_before_tgtadm_runs(storage: TgtStorage, runner: Counting, target: str,
                                                 call: Callable[[TgtStorage, str], object]) -> None:
    before = runner.calls
    with pytest.raises(OperatorError) as err:
        call(storage, target)
    assert not isinstance(err.value, DriverError) or "refused" in str(err.value)
    assert runner.calls == before, "nothing may reach tgtadm"


def test_unknown_target_is_rejected(storage: TgtStorage) -> None:
    with pytest.raises(Rejected, match="does not exist"):
        storage.bind("iqn.2026-01.lab.storage:nowhere", INI)


def test_login_refused_raises_when_the_portal_is_unreachable(tgt: TgtLab, runner: Counting, target: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    with pytest.raises(Unreachable):
        TgtStorage("127.0.0.1", dead, runner).login_refused(target, INI, USER, NEW)


def test_secrets_stay_out_of_commands_and_errors(storage: TgtStorage, runner: Counting, sshd: ShellServer,
                                                 tgt: TgtLab, target: str) -> None:
    secret = f"Never-Shown-{next(_names):04d}"
    storage.bind(target, INI)
    storage.set_chap(target, USER, secret)
    assert not any(secret in c for c in sshd.commands), "the SSH exec request never carries a secret"
    tgt.set_fault("storage-error", True)
    try:
        with pytest.raises(DriverError) as err:
            storage.set_chap(target, USER, secret)
    finally:
        tgt.set_fault("storage-error", False)
    assert secret not in str(err.value)
    if runner.where.startswith("ssh://"):
        assert any("read -r" in c for c in sshd.commands)


SHOW = """Target 1: iqn.2026-01.lab.storage:exchange1-boot
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
        I_T nexus: 7
            Initiator: iqn.1991-05.com.microsoft:exchange1 alias: r720-1
            Connection: 0
                IP Address: 127.0.0.1
        I_T nexus: 9
            Initiator: iqn.1991-05.com.microsoft:exchange1 alias: none
            Connection: 0
                IP Address: 127.0.0.1
    LUN information:
        LUN: 0
            Type: controller
        LUN: 1
            Type: disk
            Backing store path: /tmp/x.img
    Account information:
        aimctl-exchange1
        out1 (outgoing)
    ACL information:
        iqn.1991-05.com.microsoft:exchange1
Target 2: iqn.2026-01.lab.storage:empty
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
    LUN information:
        LUN: 0
            Type: controller
    Account information:
    ACL information:
"""


def test_show_output_is_parsed_as_tgtd_prints_it() -> None:
    from aimctl.drivers.tgt_show import parse_conns, parse_targets

    views = parse_targets(SHOW)
    boot = views["iqn.2026-01.lab.storage:exchange1-boot"]
    assert (boot.tid, boot.luns, boot.accounts, boot.outgoing) == (1, [1], ["aimctl-exchange1"], ["out1"])
    assert boot.acl == [INI]
    assert [(n.sid, n.alias) for n in boot.sessions] == [(7, "r720-1"), (9, "")]  # "none": no alias sent
    empty = views["iqn.2026-01.lab.storage:empty"]
    assert (empty.tid, empty.luns, empty.acl, empty.accounts, empty.nexus) == (2, [], [], [], [])
    conns = parse_conns("Session: 7\n    Connection: 0\n        Initiator: iqn.2026-01.lab.host:a\n"
                        "        IP Address: 127.0.0.1\n")
    assert [(c.sid, c.cid, c.initiator) for c in conns] == [(7, 0, "iqn.2026-01.lab.host:a")]
