"""The access observer against real double logins, and the lab's promise that tgtd never outlives it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from lab.storage.iscsi_session import HeldSession
from lab.storage.observer import AccessObserver
from lab.storage.tgt import LunSpec, TgtLab
from tests.waiting import until

pytestmark = pytest.mark.lab

INI = "iqn.1991-05.com.microsoft:exchange1"
BOOT = "iqn.2026-01.lab.storage:obs-exchange1-boot"
DATA = "iqn.2026-01.lab.storage:obs-exchange1-db"




def make_lab(path: Path) -> TgtLab:
    lab = TgtLab(path)
    lab.start()
    for t in (BOOT, DATA):
        lab.add_lun(LunSpec(t, 1, 8, "exchange1" if t == BOOT else None))
        lab.run("--op", "bind", "--mode", "target", "--tid", str(lab.show_targets()[t].tid), "-Q", INI)
    return lab


@pytest.fixture(scope="module")
def tgt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TgtLab]:
    lab = make_lab(tmp_path_factory.mktemp("obs") / "tgt")
    try:
        yield lab
    finally:
        lab.stop()


@pytest.fixture
def observer(tgt: TgtLab) -> Iterator[AccessObserver]:
    ob = AccessObserver(tgt.admin_env, interval_s=0.1)
    ob.start()
    try:
        yield ob
    finally:
        ob.stop()




def login(tgt: TgtLab, target: str, alias: str) -> HeldSession:
    return HeldSession.login(f"127.0.0.1:{tgt.port}", target, 1, INI, alias, None, None)


def test_one_host_is_clean(tgt: TgtLab, observer: AccessObserver, held: list[HeldSession]) -> None:
    held += [login(tgt, BOOT, "r720-1"), login(tgt, DATA, "r720-1"), login(tgt, BOOT, "r720-1")]
    t0 = time.monotonic()
    assert until(lambda: observer.verdict()["samples"] >= 8)
    v = observer.verdict()
    assert v["double_access"] == 0 and v["evidence"] == []
    assert v["errors"] == 0
    # At least 5 Hz, measured (the gap bound catches a stalled sampler, the rate a slow one). The gap
    # allows one late sample: on two busy cores with the suite's two workers one gap was 0.235 s.
    assert v["samples"] / (time.monotonic() - t0) >= 5
    assert v["max_gap_s"] < 0.5


def test_catches_a_real_double_login(tgt: TgtLab, observer: AccessObserver, held: list[HeldSession]) -> None:
    # The persona moved with its initiator name: both bodies log in as exchange1, only the alias differs.
    held += [login(tgt, BOOT, "r720-1")]
    held[0].freeze()  # the old body died without logout
    held += [login(tgt, BOOT, "r720-3")]
    assert until(lambda: observer.verdict()["double_access"] >= 1)
    v = observer.verdict()
    ev = v["evidence"][0]
    assert ev["target"] == BOOT
    assert ev["aliases"] == ["r720-1", "r720-3"]
    assert isinstance(ev["time"], float) and abs(ev["time"] - time.time()) < 10
    # Fencing ends it: the target kills the old body's session, and the count stops growing.
    view = tgt.show_targets()[BOOT]
    sid = next(n.sid for n in view.sessions if n.alias == "r720-1")
    tgt.run("--op", "delete", "--mode", "conn", "--tid", str(view.tid), "--sid", str(sid), "--cid", "0")
    assert until(lambda: [a for _, a in tgt.show_targets()[BOOT].nexus] == ["r720-3"])
    observer.sample()
    before = observer.verdict()["double_access"]
    for _ in range(3):
        observer.sample()
    assert observer.verdict()["double_access"] == before
    observer.reset()
    assert observer.verdict()["double_access"] == 0


def test_observer_counts_failed_reads(tgt: TgtLab) -> None:
    ob = AccessObserver({"TGT_IPC_SOCKET": str(Path(tgt.env["TGT_IPC_SOCKET"]).parent / "nowhere")})
    ob.sample()
    v = ob.verdict()
    assert v["samples"] == 0 and v["errors"] == 1 and v["last_error"]


def test_observer_keeps_seeing_during_a_storage_error(tgt: TgtLab, observer: AccessObserver) -> None:
    tgt.set_fault("storage-error", True)
    try:
        n = observer.verdict()["samples"]
        assert until(lambda: observer.verdict()["samples"] >= n + 3)
        assert observer.verdict()["errors"] == 0
    finally:
        tgt.set_fault("storage-error", False)


def tgtd_of(state: Path) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["name"]):
        try:
            if p.info["name"] == "tgtd" and str(state) in p.environ().get("TGT_IPC_SOCKET", ""):
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def test_stop_leaves_no_tgtd_even_with_frozen_sessions_and_a_stopped_daemon(tmp_path: Path) -> None:
    lab = make_lab(tmp_path / "tgt")
    sessions: list[HeldSession] = []
    try:
        pid = lab.pid
        assert pid and tgtd_of(tmp_path)
        sessions = [login(lab, BOOT, "r720-1"), login(lab, DATA, "r720-1"), login(lab, BOOT, "r720-2")]
        sessions[0].freeze()
        def read_on() -> None:
            try:
                while True:
                    sessions[2].read_label()
            except OSError:
                pass  # the target went away under it: expected
        reader = threading.Thread(target=read_on, daemon=True)
        reader.start()  # I/O in flight while it stops
        lab.set_fault("storage-hang", True)
        t0 = time.monotonic()
        lab.stop()
        took = time.monotonic() - t0
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        assert tgtd_of(tmp_path) == []
        assert took < 5
        lab.stop()  # idempotent
        assert until(lambda: not any(s.alive for s in sessions[1:]))
        reader.join(timeout=5)
        assert not reader.is_alive()
    finally:
        lab.stop()
        for s in sessions:
            s.drop()
