"""``Snapshots`` for a Linux tgt target: copies of the LUNs' backing files, here or over SSH.

What tgt requires of a copy (read in tgt 1.0.85's source, ``usr/target.c`` and ``usr/sbc.c``, and
tried against this machine's tgtd):

- tgt has no snapshot of its own and **no lock** an outside copier could take: its ``rdwr``
  backing store ``pread``s and ``pwrite``s the file from worker threads. A copy made while an
  initiator writes can hold half of a write.
- Taking the **LUN** offline (``--params online=0``) does not stop I/O to a disk: sbc checks it only
  for removable media (tried: a READ(10) to an "Online: No" disk LUN is still answered), whatever
  the man page says.
- Taking the **target** offline (``--op update --mode target --name state --value offline``) does:
  tgtd then refuses every new SCSI command to every LUN of the target before it reaches the
  backing store, and every new login. Commands already handed to the backing store finish;
  ``--op stat`` counts submitted and done commands per LUN and nexus, so we wait until they match.

So a snapshot is: every target of the set offline (together, so the boot and data LUNs of a persona
are copied at one instant and their writes keep their order) -> wait for the counters to settle ->
copy each backing file -> targets ``ready`` again (in a ``finally``). The copy is *crash-consistent*:
what the persona had been told was written is in it, as after a power cut at that instant.

The cost, measured: tgtd does not answer a command that arrives while its target is offline, not
even after ``ready`` (tried: the initiator's READ timed out; in the source, ``target_cmd_queue``
answers ``-EBUSY`` and ``iscsi_task_execute`` drops that error, so the task is never answered); the
initiator retries it after its own SCSI timeout (Windows: 60 s). So the freeze must be short: the
copy is a ``cp --reflink=always`` where the filesystem shares extents (xfs, btrfs: milliseconds,
whatever the size) and a sparse ``cp`` where it cannot (ext4: the whole file's time, see
bench/lifecycle.py). Every snapshot says
which it was and how long the targets were frozen. A controller killed mid-freeze leaves them
offline until its operation resumes (re-running the snapshot thaws them).

Copies go to ``<dir>/<id>.img.part`` and are renamed when complete and synced, so a listing never
shows half a snapshot. Read-backs: a snapshot by its size; a restore byte for byte (the persona is
down anyway, and must come back as it was); a clone by its size and first MiB (its boot proves the
rest, and a full compare would double a rehearsal's storage time). A restore writes the snapshot back into the LUN's own file (same inode: tgtd
keeps its open descriptor and LUN identity) with the target offline, which also keeps logins out.
Clones live in ``<dir>/scratch/`` (rehearsals; the only targets ``delete_clone`` removes) or
``<dir>/luns/`` (new personas). Every value reaching a command line is checked first.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Sequence

from aimctl.drivers import snapnames
from aimctl.drivers.protocols import Snapshot
from aimctl.drivers.runner import Arg, CommandResult, display
from aimctl.drivers.tgt import TgtStorage
from aimctl.drivers.tgt_show import TargetView, parse_conns, parse_stats
from aimctl.errors import OperatorError, Rejected, StateMismatch, Timeout
from aimctl.secrets import mask
from aimctl.validation import IQN_RE

log = logging.getLogger(__name__)

_PATH_RE = re.compile(r"^/[A-Za-z0-9_.:+/-]{1,400}\Z")
CLONE_HEAD = 1 << 20  # what a clone's read-back compares: its first MiB (partition table, boot sectors)
_NO_REFLINK = ("not supported", "Invalid cross-device link", "Inappropriate ioctl", "Invalid argument")


class UnknownSnapshot(OperatorError):
    http_status = 404


def check_path(path: str, what: str) -> str:
    if not _PATH_RE.match(path) or "/../" in path + "/" or "/./" in path + "/" or "//" in path:
        raise OperatorError(f"{what} {path!r} refused: want an absolute path of [A-Za-z0-9_.:+/-]")
    return path


class TgtSnapshots:
    def __init__(self, storage: TgtStorage, snapshot_dir: str, *, copy_timeout_s: float = 3600.0,
                 drain_timeout_s: float = 10.0, poll_s: float = 0.01) -> None:
        self.st = storage
        self.runner = storage.runner
        self.dir = check_path(snapshot_dir.rstrip("/") or "/", "snapshot_dir")
        self.device = storage.device
        self.copy_timeout_s, self.drain_timeout_s, self.poll_s = copy_timeout_s, drain_timeout_s, poll_s
        self._reflink: bool | None = None  # learnt on the first copy: can this filesystem share extents?

    # ------------------------------------------------------------------ commands

    def _run(self, argv: Sequence[Arg], timeout_s: float = 10.0) -> CommandResult:
        r = self.runner.run(argv, timeout_s)
        if r.exit_status != 0:
            msg = mask((r.stderr.strip() or r.stdout.strip() or f"exit status {r.exit_status}").splitlines()[-1])
            raise Rejected(self.device, f"{display(argv)}: {msg}")
        return r

    def _state(self, tid: int, state: str) -> None:
        self.st.tgtadm("--op", "update", "--mode", "target", "--tid", str(tid), "--name", "state", "--value", state)

    def _sizes(self, paths: Sequence[str]) -> list[int]:
        out = self._run(["stat", "-c", "%s", "--", *paths]).stdout.split()
        return [int(x) for x in out]

    def _sync(self, *paths: str) -> None:
        self._run(["sync", "--", *paths], self.copy_timeout_s)

    def _copy(self, src: str, dst: str) -> str:
        """One file, extents shared when the filesystem can (then the copy costs no time)."""
        if self._reflink is not False:
            r = self.runner.run(["cp", "--reflink=always", "--", src, dst], self.copy_timeout_s)
            if r.exit_status == 0:
                self._reflink = True
                return "reflink"
            if self._reflink is None and not any(s in r.stderr for s in _NO_REFLINK):
                raise Rejected(self.device, f"cp {src} {dst}: {mask(r.stderr.strip())[:300]}")
        # Plain cp from here: its sparse detection (SEEK_HOLE) keeps a thin LUN thin, and it copies in
        # the kernel (copy_file_range), which --reflink=never turns off (a read/write loop, 3-4x
        # slower) and --sparse=always too (it reads every block to look for zeros).
        self._run(["cp", "--reflink=auto", "--", src, dst], self.copy_timeout_s)
        self._reflink = False
        return "copy"

    def _same(self, a: str, b: str, head: int | None = None) -> bool:
        """Byte for byte (or the first ``head`` bytes: a clone's boot sectors, its boot proves the rest)."""
        r = self.runner.run(["cmp", "-s", *(["-n", str(head)] if head else []), "--", a, b], self.copy_timeout_s)
        if r.exit_status > 1:
            raise Rejected(self.device, f"cmp {a} {b}: {mask(r.stderr.strip())[:300]}")
        return r.exit_status == 0

    def _path(self, n: snapnames.SnapshotName) -> str:
        return f"{self.dir}/{n.file}"

    def _clone_path(self, target: str, lun: int, scratch: bool) -> str:
        return f"{self.dir}/{'scratch' if scratch else 'luns'}/{target}+{lun}.img"

    def _backing(self, view: TargetView, lun: int) -> str:
        path = view.backing.get(lun)
        if path is None:
            raise Rejected(self.device, f"{view.name} has no LUN {lun} with a backing file")
        return check_path(path, f"backing file of {view.name} LUN {lun}")

    def _views(self) -> dict[str, TargetView]:
        return self.st.targets_of()

    def _view(self, target: str) -> TargetView:
        views = self._views()
        if target not in views:
            raise Rejected(self.device, f"target {target} does not exist")
        return views[target]

    # ------------------------------------------------------------------ freeze

    def _drain(self, want: set[tuple[int, int]]) -> None:
        """Wait until every command already handed to these LUNs' backing stores is done."""
        end = time.monotonic() + self.drain_timeout_s
        wait = threading.Event()
        for tid in sorted({t for t, _ in want}):
            while True:
                busy = [s for s in parse_stats(self.st.tgtadm("--op", "stat", "--mode", "target", "--tid", str(tid)))
                        if (s.tid, s.lun) in want and s.in_flight]
                if not busy:
                    break
                if time.monotonic() > end:
                    raise Timeout(self.device, f"target tid {tid}: {sum(s.in_flight for s in busy)} command(s) "
                                               f"still in flight after {self.drain_timeout_s:g}s offline")
                wait.wait(self.poll_s)

    def _thaw(self, tids: Sequence[int]) -> None:
        errors = []
        for tid in tids:
            try:
                self._state(tid, "ready")
            except OperatorError as exc:  # try every target: one that stays offline is an outage
                errors.append(str(exc))
        if errors:
            raise Rejected(self.device, "could not bring targets back to ready (their personas' I/O waits): "
                           + "; ".join(errors))

    # ------------------------------------------------------------------ Snapshots

    def snapshots(self, label: str | None = None) -> list[Snapshot]:
        r = self.runner.run(["find", self.dir, "-maxdepth", "1", "-type", "f", "-name", "*.img",
                             "-printf", "%f\\t%s\\n"], 30.0)
        if r.exit_status != 0 and "No such file" not in r.stderr:
            raise Rejected(self.device, f"listing {self.dir}: {mask(r.stderr.strip())[:300]}")
        out = []
        for line in r.stdout.splitlines():
            fname, _, size = line.partition("\t")
            n = snapnames.parse_file(fname)
            if n is None or not size.isdigit() or (label is not None and n.label != label):
                continue
            out.append(Snapshot(n.id, n.set, n.label, n.target, n.lun, n.created, int(size)))
        return sorted(out, key=lambda s: (s.created, s.id))

    def _find(self, snapshot_id: str) -> tuple[snapnames.SnapshotName, Snapshot]:
        n = snapnames.parse_id(snapshot_id)
        got = next((s for s in self.snapshots(n.label) if s.id == snapshot_id), None)
        if got is None:
            raise UnknownSnapshot(f"{self.device}: no snapshot {snapshot_id} in {self.dir}")
        return n, got

    def snapshot(self, set_id: str, luns: Sequence[tuple[str, int]]) -> list[Snapshot]:
        names = list(dict.fromkeys(snapnames.name_of(set_id, t, lun) for t, lun in luns))
        if not names:
            raise OperatorError(f"{self.device}: snapshot {set_id}: no LUNs given")
        views = self._views()
        sources = []
        for n in names:
            if n.target not in views:
                raise Rejected(self.device, f"target {n.target} does not exist")
            sources.append((n, views[n.target].tid, self._backing(views[n.target], n.lun)))
        self._run(["mkdir", "-p", "-m", "0700", "--", self.dir])
        tids = sorted({tid for _, tid, _ in sources})
        methods = []
        parts = [self._path(n) + ".part" for n, _, _ in sources]
        started = time.monotonic()
        try:
            try:
                for tid in tids:
                    self._state(tid, "offline")
                self._drain({(tid, n.lun) for n, tid, _ in sources})
                for (_, _, src), part in zip(sources, parts):
                    methods.append(self._copy(src, part))
            finally:
                self._thaw(tids)
        except BaseException:
            self.runner.run(["rm", "-f", "--", *parts], 30.0)
            raise
        frozen_s = time.monotonic() - started
        self._sync(*parts)
        for n, _, _ in sources:
            self._run(["mv", "-f", "-T", "--", self._path(n) + ".part", self._path(n)])
        self._sync(self.dir)
        views = self._views()
        still = [views[n.target].name for n, _, _ in sources if views.get(n.target, TargetView("", 0)).state != "ready"]
        if still:
            raise StateMismatch(self.device, f"targets not ready after the snapshot: {', '.join(sorted(set(still)))}")
        want = self._sizes([src for _, _, src in sources])
        got = {s.id: s for s in self.snapshots(names[0].label)}
        out = []
        for (n, _, _), size, method in zip(sources, want, methods):
            s = got.get(n.id)
            if s is None or s.size != size:
                raise StateMismatch(self.device, f"snapshot {n.id} reads {s.size if s else 'missing'} bytes, "
                                                 f"its LUN {size}")
            out.append(Snapshot(s.id, s.set, s.label, s.target, s.lun, s.created, s.size, method, round(frozen_s, 6)))
        log.info("%s: snapshot %s of %d LUN(s) by %s, targets frozen %.3fs", self.device, set_id, len(out),
                 "/".join(sorted(set(methods))), frozen_s)
        return out

    def restore(self, snapshot_id: str, target: str, lun: int) -> None:
        snapnames.name_of(snapnames.parse_id(snapshot_id).set, target, lun)  # checks target and LUN first
        n, snap = self._find(snapshot_id)
        view = self._view(target)
        live = self._backing(view, lun)
        conns = parse_conns(self.st.tgtadm("--op", "show", "--mode", "conn", "--tid", str(view.tid)))
        if conns or view.sessions:
            who = ", ".join(sorted({c.initiator for c in conns} | {s.initiator for s in view.sessions}))
            raise Rejected(self.device, f"restore of {target} LUN {lun} refused: {who} logged in "
                                        "(the persona must be fenced first)")
        size = self._sizes([live])[0]
        if size != snap.size:
            raise Rejected(self.device, f"restore of {target} LUN {lun} refused: the snapshot is {snap.size} bytes, "
                                        f"the LUN {size}")
        try:
            self._state(view.tid, "offline")  # no login may slip in while the bytes change
            self._copy(self._path(n), live)
            self._sync(live)
            if not self._same(self._path(n), live):
                raise StateMismatch(self.device, f"{target} LUN {lun} does not read back as snapshot {snapshot_id}")
        finally:
            self._thaw([view.tid])
        log.info("%s: %s LUN %d restored from %s", self.device, target, lun, snapshot_id)

    def clone(self, snapshot_id: str, target: str, lun: int, scratch: bool = True) -> None:
        snapnames.name_of(snapnames.parse_id(snapshot_id).set, target, lun)
        if not 1 <= lun <= 255:
            raise OperatorError(f"{self.device}: clone LUN {lun} refused: want 1-255 (LUN 0 is tgtd's own)")
        n, snap = self._find(snapshot_id)
        dst = self._clone_path(target, lun, scratch)
        views = self._views()
        if target in views:
            if views[target].backing.get(lun) == dst and self._same(self._path(n), dst, CLONE_HEAD):
                return  # made by an earlier attempt of the same operation
            raise Rejected(self.device, f"clone refused: target {target} already exists")
        self._run(["mkdir", "-p", "-m", "0700", "--", dst.rsplit("/", 1)[0]])
        self._copy(self._path(n), dst + ".part")
        self._sync(dst + ".part")
        self._run(["mv", "-f", "-T", "--", dst + ".part", dst])
        if self._sizes([dst])[0] != snap.size or not self._same(self._path(n), dst, CLONE_HEAD):
            self._run(["rm", "-f", "--", dst])
            raise StateMismatch(self.device, f"clone of {snapshot_id} does not read back as the snapshot")
        made = False
        try:
            with self.st.lock:
                views = self._views()
                if target in views:
                    raise Rejected(self.device, f"clone refused: target {target} appeared meanwhile")
                tid = max((v.tid for v in views.values()), default=0) + 1
                self.st.tgtadm("--op", "new", "--mode", "target", "--tid", str(tid), "--targetname", target)
                made = True
                self.st.tgtadm("--op", "new", "--mode", "logicalunit", "--tid", str(tid), "--lun", str(lun),
                               "--backing-store", dst)
            got = self._view(target)
            if got.backing.get(lun) != dst or got.acl:
                raise StateMismatch(self.device, f"{target} reads LUN {lun} at {got.backing.get(lun)} and ACL "
                                                 f"{got.acl}; want {dst} and nobody")
        except BaseException:
            # Refused whole: no target half made.
            if made:
                self.st.tgtadm("--op", "delete", "--mode", "target", "--tid", str(tid), "--force", missing_ok=True)
            self._run(["rm", "-f", "--", dst])
            raise
        log.info("%s: %s LUN %d cloned from %s", self.device, target, lun, snapshot_id)

    def delete(self, snapshot_id: str) -> None:
        n = snapnames.parse_id(snapshot_id)
        self._run(["rm", "-f", "--", self._path(n)])
        if any(s.id == snapshot_id for s in self.snapshots(n.label)):
            raise StateMismatch(self.device, f"snapshot {snapshot_id} still listed after delete")

    def delete_clone(self, target: str) -> None:
        if not IQN_RE.match(target):
            raise OperatorError(f"{self.device}: target {target!r} refused: not an iqn. name")
        scratch = f"{self.dir}/scratch/"
        views = self._views()
        view = views.get(target)
        if view is not None:
            paths = [view.backing.get(lun, "") for lun in view.luns]
            if not paths or not all(p.startswith(scratch) for p in paths):
                raise Rejected(self.device, f"{target} is not a scratch clone (its LUNs are {paths or 'none'}); "
                                            "refusing to delete it")
            with self.st.lock:
                for ini in view.acl:
                    self.st.tgtadm("--op", "unbind", "--mode", "target", "--tid", str(view.tid), "--initiator-name",
                                   ini, missing_ok=True)
            self.st.kill_sessions(target)
            with self.st.lock:
                self.st.tgtadm("--op", "delete", "--mode", "target", "--tid", str(view.tid), "--force",
                               missing_ok=True)
                self.st.forget_accounts(set(view.accounts))
            if target in self._views():
                raise StateMismatch(self.device, f"{target} still exists after delete")
        # The copies (also one left behind by an attempt that died before its target was made).
        r = self.runner.run(["find", f"{self.dir}/scratch", "-maxdepth", "1", "-name", f"{target}+*.img*",
                             "-delete"], 30.0)
        if r.exit_status != 0 and "No such file" not in r.stderr:
            raise Rejected(self.device, f"removing the copies of {target}: {mask(r.stderr.strip())[:300]}")
