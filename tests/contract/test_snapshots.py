"""Contract suite for ``Snapshots``: TgtSnapshots against a real tgtd (TgtLab), run twice — commands
here (LocalRunner) and behind a real SSH server (SshRunner), like the StorageAccess suite.

Checked by third parties too: the lab's own tgtadm view, the backing files' bytes, and real iSCSI
logins and reads with libiscsi. The tgt behaviours the driver is built on (what stops I/O, what
does not) have their own tests here, so a tgt upgrade that changes them is noticed.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aimctl.drivers import snapnames
from aimctl.drivers.protocols import Snapshots
from aimctl.drivers.runner import LocalRunner
from aimctl.drivers.tgt import TgtStorage
from aimctl.drivers.tgt_snap import TgtSnapshots, UnknownSnapshot
from aimctl.errors import OperatorError, Rejected
from lab.storage.iscsi_session import HeldSession, LoginFailed
from lab.storage.tgt import LunSpec, TgtLab
# The same runners as the StorageAccess suite: local, and a real SSH server (``runner`` uses this module's ``tgt``).
from tests.contract.test_storage import Counting, runner, sshd  # noqa: F401
from tests.waiting import wait_for

pytestmark = pytest.mark.lab

INI = "iqn.1991-05.com.microsoft:exchange1"
REHEARSAL_INI = "iqn.1991-05.com.microsoft:exchange1-rehearsal"
_n = itertools.count(1)


@pytest.fixture(scope="module")
def tgt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TgtLab]:
    lab = TgtLab(tmp_path_factory.mktemp("snapshots") / "tgt")
    lab.start()
    try:
        yield lab
    finally:
        lab.stop()


@pytest.fixture
def storage(tgt: TgtLab, runner: Counting) -> TgtStorage:
    return TgtStorage("127.0.0.1", tgt.port, runner)


@pytest.fixture
def snaps(tgt: TgtLab, storage: TgtStorage) -> TgtSnapshots:
    return TgtSnapshots(storage, str(tgt.dir / "snapshots"))


def persona(tgt: TgtLab, label: str = "exchange1") -> tuple[str, str]:
    """A boot target (labelled LUN) and a data target, as a persona has."""
    i = next(_n)
    boot, data = f"iqn.2026-01.lab.storage:snap{i}-boot", f"iqn.2026-01.lab.storage:snap{i}-db"
    tgt.add_lun(LunSpec(boot, 1, 4, label))
    tgt.add_lun(LunSpec(data, 1, 4, None))
    return boot, data


def backing(tgt: TgtLab, target: str, lun: int = 1) -> Path:
    return Path(tgt.show_targets()[target].backing[lun])


def scribble(path: Path, at: int, data: bytes) -> None:
    with open(path, "r+b") as fh:
        fh.seek(at)
        fh.write(data)


def states(tgt: TgtLab) -> set[str]:
    return {v.state for v in tgt.show_targets().values()}


def cmd_pdus(tgt: TgtLab, tid: str, sid: int) -> int:
    """SCSI command PDUs tgtd has received on the session's connection (``--op stat --mode session``:
    counted on arrival, before the target's state is looked at)."""
    out = tgt.run("--op", "stat", "--mode", "session", "--tid", tid, "--sid", str(sid))
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["sid", "cid"])
    cols = lines[header].split()
    return int(lines[header + 1].split()[cols.index("cmd_pdus")])


# ---------------------------------------------------------------------------- what tgt does (the driver's premises)


def test_lun_offline_does_not_stop_a_disk_but_target_offline_does(tgt: TgtLab) -> None:
    boot, _ = persona(tgt)
    tid = str(tgt.show_targets()[boot].tid)
    tgt.run("--op", "bind", "--mode", "target", "--tid", tid, "--initiator-name", INI)
    portal = f"127.0.0.1:{tgt.port}"
    s = HeldSession.login(portal, boot, 1, INI, "r720-1", None, None, timeout_s=1)  # a short SCSI timeout
    pool = cf.ThreadPoolExecutor(1)
    try:
        tgt.run("--op", "update", "--mode", "logicalunit", "--tid", tid, "--lun", "1", "--params", "online=0")
        assert s.read_label() == "exchange1", "an 'Online: No' disk LUN still serves reads (sbc checks removable only)"
        tgt.run("--op", "update", "--mode", "logicalunit", "--tid", tid, "--lun", "1", "--params", "online=1")
        tgt.run("--op", "update", "--mode", "target", "--tid", tid, "--name", "state", "--value", "offline")
        sid = tgt.show_targets()[boot].sessions[0].sid
        before = cmd_pdus(tgt, tid, sid)
        pending = pool.submit(s.read_label)
        # The READ must have reached tgtd while the target is offline before anything else is
        # concluded: under load the initiator's thread can send it late, after ``ready``.
        wait_for(lambda: cmd_pdus(tgt, tid, sid) != before, 10, "the READ reaching tgtd")
        with pytest.raises(LoginFailed):  # no new login while offline
            HeldSession.login(portal, boot, 1, INI, "r720-3", None, None, timeout_s=2)
        assert not pending.done(), "a command to an offline target is held, not served"
        tgt.run("--op", "update", "--mode", "target", "--tid", tid, "--name", "state", "--value", "ready")
        # ...and dropped: it is not served after ready either; the initiator's own timeout ends it.
        with pytest.raises(OSError, match="timed out"):
            pending.result(timeout=10)
    finally:
        tgt.run("--op", "update", "--mode", "target", "--tid", tid, "--name", "state", "--value", "ready")
        s.drop()
        pool.shutdown(wait=False)


# ---------------------------------------------------------------------------- the contract


def test_is_a_snapshots(snaps: TgtSnapshots) -> None:
    assert isinstance(snaps, Snapshots)


def test_snapshot_set_is_listed_read_back_and_leaves_targets_ready(snaps: TgtSnapshots, tgt: TgtLab) -> None:
    boot, data = persona(tgt)
    scribble(backing(tgt, data), 8192, b"committed database page")
    set_id = snapnames.set_id("exchange1")
    got = snaps.snapshot(set_id, [(boot, 1), (data, 1)])
    assert [(s.target, s.lun, s.set) for s in got] == [(boot, 1, set_id), (data, 1, set_id)]
    assert all(s.size == 4 * 1024 * 1024 and s.method in ("reflink", "copy") and s.frozen_s > 0 for s in got)
    assert states(tgt) == {"ready"}
    listed = {s.id: s for s in snaps.snapshots("exchange1")}
    assert {s.id for s in got} <= set(listed)
    copy = Path(snaps.dir) / f"{got[1].id}.img"
    assert copy.read_bytes() == backing(tgt, data).read_bytes()
    assert not list(Path(snaps.dir).glob("*.part"))
    # Again with the same set (a resumed operation): the same snapshots, nothing more.
    again = snaps.snapshot(set_id, [(boot, 1), (data, 1)])
    assert [s.id for s in again] == [s.id for s in got]


def test_restore_writes_the_snapshot_back_in_place(snaps: TgtSnapshots, storage: TgtStorage, tgt: TgtLab,
                                                   held: list[HeldSession]) -> None:
    boot, _ = persona(tgt)
    live = backing(tgt, boot)
    inode = live.stat().st_ino
    snap = snaps.snapshot(snapnames.set_id("exchange1"), [(boot, 1)])[0]
    scribble(live, 0, b"ransomware".ljust(512, b"\0"))
    snaps.restore(snap.id, boot, 1)
    assert live.read_bytes() == (Path(snaps.dir) / f"{snap.id}.img").read_bytes()
    assert live.stat().st_ino == inode, "same file: tgtd keeps its descriptor and the LUN its identity"
    assert tgt.show_targets()[boot].state == "ready"
    storage.bind(boot, INI)
    held.append(HeldSession.login(f"127.0.0.1:{tgt.port}", boot, 1, INI, "r720-1", None, None))
    assert held[0].read_label() == "exchange1", "an initiator reads the restored bytes through tgtd"


def test_restore_is_refused_while_anyone_is_logged_in(snaps: TgtSnapshots, storage: TgtStorage, tgt: TgtLab,
                                                      held: list[HeldSession]) -> None:
    boot, _ = persona(tgt)
    snap = snaps.snapshot(snapnames.set_id("exchange1"), [(boot, 1)])[0]
    storage.bind(boot, INI)
    held.append(HeldSession.login(f"127.0.0.1:{tgt.port}", boot, 1, INI, "r720-1", None, None))
    scribble(backing(tgt, boot), 4096, b"newer")
    before = backing(tgt, boot).read_bytes()
    with pytest.raises(Rejected, match="fenced first"):
        snaps.restore(snap.id, boot, 1)
    assert backing(tgt, boot).read_bytes() == before and tgt.show_targets()[boot].state == "ready"


def test_restore_of_another_size_is_refused(snaps: TgtSnapshots, tgt: TgtLab) -> None:
    boot, _ = persona(tgt)
    snap = snaps.snapshot(snapnames.set_id("exchange1"), [(boot, 1)])[0]
    other = f"iqn.2026-01.lab.storage:bigger-{next(_n)}"
    tgt.add_lun(LunSpec(other, 1, 8, None))
    with pytest.raises(Rejected, match="bytes"):
        snaps.restore(snap.id, other, 1)


def test_clone_is_a_new_target_nobody_can_reach_until_bound(snaps: TgtSnapshots, storage: TgtStorage,
                                                           tgt: TgtLab, held: list[HeldSession]) -> None:
    boot, _ = persona(tgt)
    snap = snaps.snapshot(snapnames.set_id("exchange1"), [(boot, 1)])[0]
    clone = f"iqn.2026-01.lab.storage:exchange1-rehearsal-{next(_n)}"
    snaps.clone(snap.id, clone, 1)
    view = tgt.show_targets()[clone]
    assert view.acl == [] and view.backing[1].startswith(f"{snaps.dir}/scratch/")
    snaps.clone(snap.id, clone, 1)  # again (resumed): accepted, nothing new
    with pytest.raises(Rejected, match="already exists"):
        snaps.clone(snap.id, boot, 1)  # never over a real target
    storage.bind(clone, REHEARSAL_INI)
    held.append(HeldSession.login(f"127.0.0.1:{tgt.port}", clone, 1, REHEARSAL_INI, "r720-3", None, None))
    assert held[0].read_label() == "exchange1"
    assert tgt.show_targets()[boot].nexus == [], "the source LUN saw nobody"


def test_delete_clone_removes_only_scratch_clones(snaps: TgtSnapshots, storage: TgtStorage, tgt: TgtLab) -> None:
    boot, _ = persona(tgt)
    snap = snaps.snapshot(snapnames.set_id("exchange1"), [(boot, 1)])[0]
    clone = f"iqn.2026-01.lab.storage:exchange1-rehearsal-{next(_n)}"
    snaps.clone(snap.id, clone, 1)
    storage.bind(clone, REHEARSAL_INI)
    user = f"aimctl-rh-{next(_n)}"
    storage.set_chap(clone, user, "Rehearsal-Secret-1")
    with pytest.raises(Rejected, match="not a scratch clone"):
        snaps.delete_clone(boot)
    assert boot in tgt.show_targets()
    snaps.delete_clone(clone)
    assert clone not in tgt.show_targets()
    assert not list((Path(snaps.dir) / "scratch").glob(f"{clone}+*"))
    assert user not in tgt.run("--op", "show", "--mode", "account"), "its CHAP account goes with it"
    snaps.delete_clone(clone)  # idempotent


def test_delete_clone_drops_its_sessions(snaps: TgtSnapshots, storage: TgtStorage, tgt: TgtLab,
                                         held: list[HeldSession]) -> None:
    boot, _ = persona(tgt)
    snap = snaps.snapshot(snapnames.set_id("exchange1"), [(boot, 1)])[0]
    clone = f"iqn.2026-01.lab.storage:exchange1-rehearsal-{next(_n)}"
    snaps.clone(snap.id, clone, 1)
    storage.bind(clone, REHEARSAL_INI)
    held.append(HeldSession.login(f"127.0.0.1:{tgt.port}", clone, 1, REHEARSAL_INI, "r720-3", None, None))
    held[0].freeze()  # a rehearsal body whose power was cut: its session is half-open
    snaps.delete_clone(clone)
    assert clone not in tgt.show_targets()


def test_delete_snapshot(snaps: TgtSnapshots, tgt: TgtLab) -> None:
    boot, _ = persona(tgt, "web1")
    snap = snaps.snapshot(snapnames.set_id("web1"), [(boot, 1)])[0]
    snaps.delete(snap.id)
    assert snap.id not in {s.id for s in snaps.snapshots()}
    snaps.delete(snap.id)  # idempotent
    with pytest.raises(UnknownSnapshot):
        snaps.restore(snap.id, boot, 1)


def test_a_copy_cut_short_is_never_listed(snaps: TgtSnapshots, tgt: TgtLab) -> None:
    boot, _ = persona(tgt)
    name = snapnames.name_of(snapnames.set_id("exchange1"), boot, 1)
    Path(snaps.dir).mkdir(exist_ok=True)
    part = Path(snaps.dir) / (name.file + ".part")
    part.write_bytes(b"half")
    try:
        assert name.id not in {s.id for s in snaps.snapshots()}
    finally:
        part.unlink()


def test_storage_error_leaves_targets_ready_and_no_copy(snaps: TgtSnapshots, tgt: TgtLab) -> None:
    boot, data = persona(tgt)
    tgt.set_fault("storage-error", True)
    try:
        with pytest.raises(OperatorError, match="tgtd"):
            snaps.snapshot(snapnames.set_id("exchange1"), [(boot, 1), (data, 1)])
    finally:
        tgt.set_fault("storage-error", False)
    assert states(tgt) == {"ready"}
    assert not list(Path(snaps.dir).glob("*.part"))


@pytest.mark.parametrize("call", [
    lambda s, t: s.snapshot("exchange1+x; rm -rf /", [(t, 1)]),
    lambda s, t: s.snapshot(snapnames.set_id("exchange1"), [("iqn.2026-01.lab.storage:x`id`", 1)]),
    lambda s, t: s.restore("../../etc/passwd", t, 1),
    lambda s, t: s.clone("exchange1+20260101T000000000Z+iqn.2026-01.lab.storage:a+1", "$(reboot)", 1),
    lambda s, t: s.delete("exchange1+20260101T000000000Z+iqn.2026-01.lab.storage:a+1 -rf /"),
    lambda s, t: s.delete_clone("iqn.2026-01.lab.storage:x;reboot"),
], ids=["set", "target", "restore-id", "clone-target", "delete-id", "delete-clone"])
def test_bad_names_are_refused_before_any_command(snaps: TgtSnapshots, runner: Counting, tgt: TgtLab,
                                                  call: Any) -> None:
    boot, _ = persona(tgt)
    before = runner.calls
    with pytest.raises(OperatorError, match="refused"):
        call(snaps, boot)
    assert runner.calls == before, "nothing may reach a command line"


def test_snapshot_dir_is_checked() -> None:
    with pytest.raises(OperatorError, match="snapshot_dir"):
        TgtSnapshots(TgtStorage("127.0.0.1", 3260, LocalRunner()), "/var/lib/../../etc")


def test_names_round_trip() -> None:
    sid = snapnames.set_id("gold.win2008-exchange", 1_700_000_000.123)
    assert sid == "gold.win2008-exchange+20231114T221320123Z"
    n = snapnames.name_of(sid, "iqn.2026-01.lab.storage:gold-boot", 1)
    assert snapnames.parse_id(n.id) == n and abs(n.created - 1_700_000_000.123) < 1e-6
    assert snapnames.parse_file("exchange1+20231114T221320123Z+iqn.2026-01.lab.storage:x+1.img.part") is None
    with pytest.raises(snapnames.BadSnapshotName):
        snapnames.set_id("Exchange1")


def test_subprocess_view_agrees(tgt: TgtLab) -> None:
    """The driver's parser and tgtadm agree on the state field (the freeze's read-back)."""
    out = subprocess.run(["tgtadm", "--lld", "iscsi", "--op", "show", "--mode", "target"], capture_output=True,
                         text=True, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **tgt.admin_env}, check=True).stdout
    assert out.count("State: ready") == len(tgt.show_targets())
