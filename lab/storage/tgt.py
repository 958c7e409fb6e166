"""The lab's iSCSI storage: one private ``tgtd`` per lab, on 127.0.0.1 and a free port.

tgtd and tgtadm find each other through ``TGT_IPC_SOCKET`` (both append ``.0``, the control port).
The lab keeps two names for the one control socket: ``<dir>/socket.0`` for the drivers (``env``)
and a hard link ``<dir>/lab.0`` for the lab itself (``admin_env``: status, the observer, stop).

Faults (``set_fault``):

- ``storage-error``: the drivers' socket name is unlinked, so every tgtadm the drivers run fails
  for real ("failed to send request hdr to tgt daemon, Transport endpoint is not connected",
  exit 107) — whether run here or through SSH — while iSCSI I/O and the lab's own view go on.
- ``storage-hang``: tgtd is stopped (SIGSTOP): tgtadm hangs until the caller's timeout and held
  sessions freeze. Cleared with SIGCONT.

``stop`` cannot be refused: it resumes a stopped daemon, drops every connection, deletes the
targets and the system, waits a moment, and then SIGKILLs tgtd (it ignores SIGTERM).
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import signal

from lab.ports import free_port
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from aimctl.drivers.tgt_show import TargetView, parse_conns, parse_targets
from aimctl.validation import IQN_RE

__all__ = ["LunSpec", "TargetView", "TgtError", "TgtLab"]

log = logging.getLogger(__name__)


class TgtError(RuntimeError):
    pass


@dataclass
class LunSpec:
    target: str
    lun: int
    size_mb: int
    label: str | None  # written at the start of block 0 (NUL padded): the persona the LUN boots


class TgtLab:
    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir)
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_fh: IO[bytes] | None = None
        self._lock = threading.Lock()
        self._faults: set[str] = set()

    # ------------------------------------------------------------------ environment

    @property
    def env(self) -> dict[str, str]:
        """For the drivers' tgtadm (affected by the ``storage-error`` fault)."""
        return {"TGT_IPC_SOCKET": str(self.dir / "socket")}

    @property
    def admin_env(self) -> dict[str, str]:
        """For the lab's own tgtadm (status, observer): not affected by ``storage-error``."""
        return {"TGT_IPC_SOCKET": str(self.dir / "lab")}

    def run(self, *args: str, timeout_s: float = 10.0) -> str:
        """``tgtadm --lld iscsi ARGS`` on the lab's own socket name; raises TgtError on failure."""
        argv = ["tgtadm", "--lld", "iscsi", *args]
        try:
            p = subprocess.run(argv, env={**os.environ, **self.admin_env}, capture_output=True, text=True,
                               timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise TgtError(f"{' '.join(argv)}: no answer in {timeout_s:g}s (tgtd stopped?)") from None
        if p.returncode != 0:
            raise TgtError(f"{' '.join(argv)}: {(p.stderr or p.stdout).strip()} (exit {p.returncode})")
        return p.stdout

    # ------------------------------------------------------------------ start / stop

    def start(self) -> int:
        if self._proc is not None:
            raise TgtError("tgtd already started")
        if self.dir.exists():  # tgtd leaves socket.0 and its lock behind: always a fresh dir
            shutil.rmtree(self.dir)
        (self.dir / "luns").mkdir(parents=True)
        self.port = free_port()
        log_fh = open(self.dir / "tgtd.log", "ab")  # noqa: SIM115 - closed in stop()
        self._log_fh = log_fh
        self._proc = subprocess.Popen(
            ["tgtd", "-f", "--iscsi", f"portal=127.0.0.1:{self.port}"],
            env={**os.environ, **self.env}, stdin=subprocess.DEVNULL, stdout=log_fh, stderr=log_fh,
            start_new_session=True)  # a ^C at the terminal is for us; stop() ends tgtd
        atexit.register(self.stop)
        try:
            self._wait_ready(10.0)
            os.link(self.dir / "socket.0", self.dir / "lab.0")
            self._ensure_portal()
        except BaseException:
            self.stop()
            raise
        log.info("tgtd pid %d on 127.0.0.1:%d (%s)", self._proc.pid, self.port, self.dir)
        return self.port

    def _wait_ready(self, timeout_s: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout_s
        while True:
            p = subprocess.run(["tgtadm", "--op", "show", "--mode", "system"], env={**os.environ, **self.env},
                               capture_output=True, check=False, timeout=timeout_s)
            if p.returncode == 0:
                return
            if self._proc.poll() is not None:
                raise TgtError(f"tgtd exited with {self._proc.returncode}; see {self.dir / 'tgtd.log'}")
            if time.monotonic() > deadline:
                raise TgtError(f"tgtd not ready after {timeout_s:g}s; see {self.dir / 'tgtd.log'}")
            time.sleep(0.02)  # poll interval, bounded by the deadline above

    def _ensure_portal(self) -> None:
        # tgtd keeps running without its portal if the port was taken meanwhile: add another then.
        for _ in range(5):
            if f"127.0.0.1:{self.port}," in self.run("--op", "show", "--mode", "portal"):
                return
            self.port = free_port()
            try:
                self.run("--op", "new", "--mode", "portal", "--param", f"portal=127.0.0.1:{self.port}")
            except TgtError as exc:
                log.warning("portal 127.0.0.1:%d: %s", self.port, exc)
        raise TgtError("tgtd could not listen on any portal")

    def stop(self, grace_s: float = 2.0) -> None:
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is None:
            return
        atexit.unregister(self.stop)
        try:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                self._faults.discard("storage-hang")
                if grace_s > 0:
                    self._graceful(proc, grace_s)
        finally:
            if proc.poll() is None:
                proc.kill()  # tgtd ignores SIGTERM; SIGKILL works even on a stopped process
            proc.wait()
            fh = self._log_fh
            if fh is not None:
                fh.close()
                self._log_fh = None

    def _graceful(self, proc: subprocess.Popen[bytes], grace_s: float) -> None:
        deadline = time.monotonic() + grace_s
        try:
            for t in parse_targets(self.run("--op", "show", "--mode", "target", timeout_s=grace_s)).values():
                for c in parse_conns(self.run("--op", "show", "--mode", "conn", "--tid", str(t.tid))):
                    self.run("--op", "delete", "--mode", "conn", "--tid", str(t.tid), "--sid", str(c.sid),
                             "--cid", str(c.cid))
                self.run("--op", "delete", "--mode", "target", "--tid", str(t.tid), "--force")
            self.run("--op", "delete", "--mode", "system", timeout_s=max(0.1, deadline - time.monotonic()))
            proc.wait(timeout=max(0.01, deadline - time.monotonic()))
        except (TgtError, subprocess.TimeoutExpired) as exc:
            log.info("tgtd graceful stop incomplete (%s): killing it", exc)

    # ------------------------------------------------------------------ targets and LUNs

    def add_lun(self, spec: LunSpec) -> None:
        if not IQN_RE.match(spec.target) or not 0 < spec.lun < 256 or spec.size_mb < 1:
            raise TgtError(f"bad LUN spec {spec}")
        views = self.show_targets()
        if spec.target in views:
            tid = views[spec.target].tid
            if spec.lun in views[spec.target].luns:
                raise TgtError(f"{spec.target} already has LUN {spec.lun}")
        else:
            tid = max((v.tid for v in views.values()), default=0) + 1
            self.run("--op", "new", "--mode", "target", "--tid", str(tid), "--targetname", spec.target)
        path = self.dir / "luns" / f"{spec.target.replace(':', '_')}-{spec.lun}.img"
        with open(path, "wb") as fh:
            fh.truncate(spec.size_mb * 1024 * 1024)  # sparse
            if spec.label is not None:
                raw = spec.label.encode()
                if len(raw) >= 512:
                    raise TgtError(f"label for {spec.target} longer than one block")
                fh.write(raw.ljust(512, b"\0"))
        self.run("--op", "new", "--mode", "logicalunit", "--tid", str(tid), "--lun", str(spec.lun),
                 "--backing-store", str(path))

    def show_targets(self) -> dict[str, TargetView]:
        return parse_targets(self.run("--op", "show", "--mode", "target"))

    # ------------------------------------------------------------------ faults

    def set_fault(self, kind: str, on: bool) -> None:
        with self._lock:
            proc = self._proc
            if proc is None:
                raise TgtError("tgtd is not running")
            if kind == "storage-error":
                drivers, lab = self.dir / "socket.0", self.dir / "lab.0"
                if on and drivers.exists():
                    drivers.unlink()
                elif not on and not drivers.exists():
                    os.link(lab, drivers)
            elif kind == "storage-hang":
                os.kill(proc.pid, signal.SIGSTOP if on else signal.SIGCONT)
            else:
                raise TgtError(f"unknown storage fault {kind!r} (storage-error, storage-hang)")
            (self._faults.add if on else self._faults.discard)(kind)

    @property
    def faults(self) -> set[str]:
        return set(self._faults)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None
