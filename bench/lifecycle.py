"""The persona lifecycle, timed.

storage: a 1 GiB LUN, sparse (a 512-byte label, the rest a hole) and filled (1 GiB of data), on a
private tgtd: ``TgtSnapshots.snapshot`` (freeze, drain, copy, fsync, rename, read back, thaw) and
``clone`` (copy, fsync, byte-compare read-back, new target) against a plain ``cp`` of the same file;
``frozen_s`` is how long the target refused I/O. Medians of 3 after a warm-up (page cache warm for
both sides). On this machine's ext4 there is no reflink: the copy is a real one.

rehearsal: a full spare rehearsal of exchange1 in the lab (BMC power delay 1 s, boot 5 s, 1 s
heartbeats, 3 healthy heartbeats wanted) against the persona's boot in it: power-on read back to
its first (rehearsal) heartbeat. Medians of 3.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from aimctl.drivers import snapnames
from aimctl.drivers.runner import LocalRunner
from aimctl.drivers.tgt import TgtStorage
from aimctl.drivers.tgt_snap import TgtSnapshots
from bench.common import ROOT, write_result
from lab import cli
from lab.controller_proc import ControllerProcess
from lab.fixtures import LabHandle
from lab.storage.tgt import LunSpec, TgtLab

GIB = 1 << 30
RUNS = 3
POWER, BOOT, HB = 1.0, 5.0, 1.0


def timed(fn: Callable[[], Any], undo: Callable[[Any], None], runs: int = RUNS) -> tuple[float, list[Any]]:
    fn_out = fn()  # warm-up (page cache, tgtd)
    undo(fn_out)
    times, outs = [], []
    for _ in range(runs):
        t = time.monotonic()
        out = fn()
        times.append(time.monotonic() - t)
        outs.append(out)
        undo(out)
    return round(statistics.median(times), 3), outs


def fill(path: Path) -> None:
    block = os.urandom(1 << 20)
    with open(path, "r+b") as fh:
        for _ in range(GIB // len(block)):
            fh.write(block)
        fh.flush()
        os.fsync(fh.fileno())


def one_lun(tgt: TgtLab, snaps: TgtSnapshots, tmp: Path, kind: str) -> dict[str, Any]:
    target = f"iqn.2026-01.lab.storage:bench-{kind}"
    tgt.add_lun(LunSpec(target, 1, 1024, "bench"))
    src = Path(tgt.show_targets()[target].backing[1])
    if kind == "filled":
        fill(src)
    dst = tmp / "cp.img"

    def cp(sync: bool = False) -> None:
        subprocess.run(["cp", "--", str(src), str(dst)], check=True)
        if sync:
            subprocess.run(["sync", "--", str(dst)], check=True)

    cp_s, _ = timed(cp, lambda _: dst.unlink())
    cp_sync_s, _ = timed(lambda: cp(True), lambda _: dst.unlink())
    snap_s, made = timed(lambda: snaps.snapshot(snapnames.set_id("bench"), [(target, 1)])[0],
                         lambda s: snaps.delete(s.id))
    keep = snaps.snapshot(snapnames.set_id("bench"), [(target, 1)])[0]
    clones = iter(range(100))

    def clone() -> str:
        name = f"{target}-clone{next(clones)}"
        snaps.clone(keep.id, name, 1)
        return name

    clone_s, _ = timed(clone, snaps.delete_clone)
    snaps.delete(keep.id)
    subprocess.run(["rm", "-f", "--", str(src)], check=True)
    return {"cp_s": cp_s, "cp_sync_s": cp_sync_s, "snapshot_s": snap_s, "clone_s": clone_s,
            "frozen_s": round(statistics.median(s.frozen_s for s in made), 3), "method": made[0].method,
            "snapshot_over_cp": round(snap_s / cp_s, 2), "clone_over_cp": round(clone_s / cp_s, 2)}


def storage(tmp: Path) -> dict[str, Any]:
    tgt = TgtLab(tmp / "tgt")
    tgt.start()
    out: dict[str, Any] = {}
    try:
        snaps = TgtSnapshots(TgtStorage("127.0.0.1", tgt.port, LocalRunner(env=tgt.env)), str(tmp / "tgt" / "snaps"))
        for kind in ("sparse", "filled"):
            out[kind] = one_lun(tgt, snaps, tmp, kind)
            print(kind, out[kind], flush=True)
    finally:
        tgt.stop()
    return out


def one_rehearsal(ctrl: ControllerProcess) -> dict[str, Any]:
    rid = ctrl.api.post("/v1/rehearse", {"persona": "exchange1"})["id"]
    ctrl.wait(lambda: ctrl.api.get(f"/v1/failovers/{rid}")["state"] != "running", 120, "rehearsal", poll_s=0.2)
    op = ctrl.api.get(f"/v1/failovers/{rid}")
    assert op["state"] == "done", op
    t = {s["step"]: s for s in op["timeline"]}
    return {"total_s": t["verdict"]["ended"] - t["clone"]["started"],
            "boot_s": t["heartbeat"]["ended"] - t["power_on"]["started"],
            "steps": {k: round(v["duration_s"], 3) for k, v in t.items()}}


def rehearsal(tmp: Path) -> dict[str, Any]:
    lab = LabHandle(tmp / "lab", ROOT / "personas")
    cli.start(lab.state, lab.definitions, power_delay=POWER, boot=BOOT, heartbeat=HB, resync=1.0)
    doc = lab.overlay()
    doc["controller"].update({"power_deadline": 10.0})
    (tmp / "ov.yaml").write_text(yaml.safe_dump(doc))
    ctrl = ControllerProcess(lab.definitions, tmp / "ov.yaml", tmp / "ctrl")
    runs: list[dict[str, Any]] = []
    try:
        ctrl.start()
        ctrl.wait(ctrl.all_alive, 30, "all alive")
        arch = ctrl.api.post("/v1/archives", {"persona": "exchange1"})["id"]
        ctrl.wait(lambda: ctrl.api.get(f"/v1/failovers/{arch}")["state"] == "done", 60, "archive")
        runs = [one_rehearsal(ctrl) for _ in range(RUNS)]
    finally:
        ctrl.stop()
        cli.stop(lab.state)
    total = statistics.median(r["total_s"] for r in runs)
    boot = statistics.median(r["boot_s"] for r in runs)
    steps = {k: round(statistics.median(r["steps"][k] for r in runs), 3) for k in runs[0]["steps"]}
    return {"rehearsal_s": round(total, 2), "boot_s": round(boot, 2), "rehearsal_over_boot": round(total / boot, 2),
            "steps": steps, "lab": {"power_delay_s": POWER, "boot_s": BOOT, "heartbeat_s": HB, "healthy_beats": 3}}


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="aimctl-bench-lifecycle-", dir="/var/tmp") as d:
        tmp = Path(d)
        st = storage(tmp)
        rh = rehearsal(tmp)
    res = {"storage": st, "snapshot_over_cp": st["filled"]["snapshot_over_cp"],
           "snapshot_over_cp_sparse": st["sparse"]["snapshot_over_cp"],
           "clone_over_cp": st["filled"]["clone_over_cp"], "frozen_filled_s": st["filled"]["frozen_s"],
           "rehearsal": rh, "rehearsal_s": rh["rehearsal_s"], "rehearsal_over_boot": rh["rehearsal_over_boot"],
           "setup": "1 GiB LUN on ext4 (no reflink); lab: power delay 1 s, boot 5 s, heartbeat 1 s"}
    print({k: v for k, v in res.items() if k not in ("storage", "rehearsal")})
    write_result("lifecycle", res)


if __name__ == "__main__":
    main()
