"""HeldSession against a real tgtd: what a booted host does with its boot LUN.

Each check is seen from both ends: the initiator (label read, LoginFailed reason, ``alive``) and
the target (the I_T nexus list tgtd prints, alias included).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from lab.storage.iscsi_session import AUTH, NOT_PERMITTED, TIMEOUT, UNREACHABLE, HeldSession, LoginFailed
from lab.storage.tgt import LunSpec, TgtLab
from tests.waiting import until

pytestmark = pytest.mark.lab

INI = "iqn.1991-05.com.microsoft:exchange1"
OTHER = "iqn.1991-05.com.microsoft:intruder"
OPEN = "iqn.2026-01.lab.storage:held-open"      # ACL: INI, no CHAP
CHAP = "iqn.2026-01.lab.storage:held-chap"      # ACL: INI, CHAP
NOACL = "iqn.2026-01.lab.storage:held-noacl"    # nobody bound
USER, SECRET = "aimctl-exchange1", "Held-Secret-1234"


@pytest.fixture(scope="module")
def tgt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TgtLab]:
    lab = TgtLab(tmp_path_factory.mktemp("held") / "tgt")
    lab.start()
    try:
        for t in (OPEN, CHAP, NOACL):
            lab.add_lun(LunSpec(t, 1, 8, "exchange1"))
        for t in (OPEN, CHAP):
            lab.run("--op", "bind", "--mode", "target", "--tid", str(lab.show_targets()[t].tid), "-Q", INI)
        lab.run("--op", "new", "--mode", "account", "--user", USER, "--password", SECRET)
        lab.run("--op", "bind", "--mode", "account", "--tid", str(lab.show_targets()[CHAP].tid), "--user", USER)
        yield lab
    finally:
        lab.stop()


def portal(lab: TgtLab) -> str:
    return f"127.0.0.1:{lab.port}"


def nexus(lab: TgtLab, target: str) -> list[tuple[str, str]]:
    return lab.show_targets()[target].nexus






def test_login_reads_the_label_and_shows_the_alias(tgt: TgtLab, held: list[HeldSession]) -> None:
    s = HeldSession.login(portal(tgt), OPEN, 1, INI, "r720-1", None, None)
    held.append(s)
    assert s.read_label() == "exchange1"
    assert s.alive
    assert nexus(tgt, OPEN) == [(INI, "r720-1")]
    s.logout()
    assert not s.alive
    assert until(lambda: nexus(tgt, OPEN) == [])


def test_login_with_chap(tgt: TgtLab, held: list[HeldSession]) -> None:
    s = HeldSession.login(portal(tgt), CHAP, 1, INI, "r720-2", USER, SECRET)
    held.append(s)
    assert s.read_label() == "exchange1"
    s.logout()


@pytest.mark.parametrize("target, initiator, user, secret, reason", [
    (OPEN, OTHER, None, None, NOT_PERMITTED),          # wrong initiator name: not in the ACL
    (NOACL, INI, None, None, NOT_PERMITTED),           # a target nobody is bound to
    (CHAP, INI, USER, "Wrong-Secret-999", AUTH),      # wrong CHAP secret
    (CHAP, INI, "someone-else", SECRET, AUTH),         # wrong CHAP user
    (CHAP, INI, None, None, AUTH),                     # CHAP required, none offered
], ids=["wrong-initiator", "no-acl", "wrong-secret", "wrong-user", "no-chap"])
def test_refused_logins_say_why(tgt: TgtLab, target: str, initiator: str, user: str | None,
                                secret: str | None, reason: str) -> None:
    with pytest.raises(LoginFailed) as err:
        HeldSession.login(portal(tgt), target, 1, initiator, "r720-3", user, secret)
    assert err.value.reason == reason
    assert SECRET not in str(err.value) and "Wrong-Secret" not in str(err.value)
    assert nexus(tgt, target) == []


def test_unreachable_portal(tgt: TgtLab) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(LoginFailed) as err:
        HeldSession.login(f"127.0.0.1:{port}", OPEN, 1, INI, "r720-3", None, None)
    assert err.value.reason == UNREACHABLE


def test_timeout_when_the_target_does_not_answer(tgt: TgtLab) -> None:
    tgt.set_fault("storage-hang", True)
    try:
        t0 = time.monotonic()
        with pytest.raises(LoginFailed) as err:
            HeldSession.login(portal(tgt), OPEN, 1, INI, "r720-3", None, None, timeout_s=1)
        assert err.value.reason == TIMEOUT
        assert time.monotonic() - t0 < 4
    finally:
        tgt.set_fault("storage-hang", False)
    # The abandoned login leaves no session behind once tgtd answers again.
    assert until(lambda: nexus(tgt, OPEN) == [])


def test_freeze_leaves_the_nexus_until_the_target_kills_it(tgt: TgtLab, held: list[HeldSession]) -> None:
    s = HeldSession.login(portal(tgt), OPEN, 1, INI, "r720-1", None, None)
    held.append(s)
    s.freeze()
    # A frozen body neither logs out nor closes: the target keeps seeing it, read after read.
    for _ in range(5):
        assert nexus(tgt, OPEN) == [(INI, "r720-1")]
        assert s.alive
    tid = tgt.show_targets()[OPEN].tid
    conns = tgt.run("--op", "show", "--mode", "conn", "--tid", str(tid))
    sid = conns.split("Session: ")[1].split()[0]
    tgt.run("--op", "delete", "--mode", "conn", "--tid", str(tid), "--sid", sid, "--cid", "0")
    assert until(lambda: nexus(tgt, OPEN) == [])
    assert until(lambda: not s.alive), "a frozen session must learn that the target closed it"
    s.drop()


def test_drop_closes_without_logout(tgt: TgtLab, held: list[HeldSession]) -> None:
    s = HeldSession.login(portal(tgt), OPEN, 1, INI, "r720-1", None, None)
    held.append(s)
    s.freeze()
    s.drop()
    assert not s.alive
    assert until(lambda: nexus(tgt, OPEN) == [])


def test_many_sessions_in_one_process(tgt: TgtLab, held: list[HeldSession]) -> None:
    n = 24

    def one(i: int) -> HeldSession:
        return HeldSession.login(portal(tgt), OPEN if i % 2 else CHAP, 1, INI, f"host-{i}",
                                 None if i % 2 else USER, None if i % 2 else SECRET)
    t0 = time.monotonic()
    with ThreadPoolExecutor(n) as pool:
        many = list(pool.map(one, range(n)))
    held.extend(many)
    with ThreadPoolExecutor(n) as pool:
        labels = list(pool.map(lambda s: s.read_label(), many))
    assert labels == ["exchange1"] * n
    assert sorted(a for _, a in nexus(tgt, OPEN) + nexus(tgt, CHAP)) == sorted(f"host-{i}" for i in range(n))
    for s in held[: n // 2]:
        s.freeze()
    with ThreadPoolExecutor(n) as pool:
        list(pool.map(lambda s: s.logout(), held[n // 2:]))
        list(pool.map(lambda s: s.drop(), held[: n // 2]))
    assert until(lambda: nexus(tgt, OPEN) == [] and nexus(tgt, CHAP) == [])
    assert time.monotonic() - t0 < 10


def test_logout_and_drop_are_quiet_on_a_dead_session(tgt: TgtLab, held: list[HeldSession]) -> None:
    s = HeldSession.login(portal(tgt), OPEN, 1, INI, "r720-1", None, None)
    held.append(s)
    tid = tgt.show_targets()[OPEN].tid
    sid = tgt.run("--op", "show", "--mode", "conn", "--tid", str(tid)).split("Session: ")[1].split()[0]
    tgt.run("--op", "delete", "--mode", "conn", "--tid", str(tid), "--sid", sid, "--cid", "0")
    assert s.wait_dead(5), "a serviced session sees the target close it"
    with pytest.raises(OSError):
        s.read_label()
    s.logout()
    s.drop()
    assert not s.alive
