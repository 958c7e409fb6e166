"""Bad definition trees, as found when the loader was tried with hostile input (issue 11, item 8).

Shared by the bound tests (tests/unit/test_definition_bounds.py) and the benchmark (bench/plan.py),
so the figures in docs/benchmarks.md are for the same trees the tests check.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from tests.conftest import DEFINITIONS


def reference(root: Path) -> None:
    shutil.copytree(DEFINITIONS, root, dirs_exist_ok=True)


def pool_text(p: int, personas: int, servers: int, bad_last: bool = False, storage: bool = False) -> str:
    """One pool file of the benchmark's shape (bench/plan.py): personas, their servers, switches."""
    lines = [f"pool: pool{p}", f"members: [{', '.join(f's{p}-{i}' for i in range(servers))}]",
             "quarantine_vlan: 999", "networks:",
             f"  scn: {{vlan: 4004, subnet: 10.{p // 50}.{p % 50 * 4}.0/22, primary: 1, secondary: 2}}",
             f"  mapi: {{vlan: 100, subnet: 10.{100 + p // 50}.{p % 50 * 4}.0/22, primary: 3, secondary: 4}}",
             "personas:"]
    for i in range(personas):
        n = p * personas + i
        timer = "0s" if bad_last and i == personas - 1 else "20m"
        lines += [f"  p{p}-{i}:", f"    home: s{p}-{i}", "    storage: array1",
                  f"    initiator: iqn.2026-01.bench.pool{p}:p{i}",
                  f"    boot: {{target: 'iqn.2026-01.bench.storage:p{n}-boot', lun: 1}}",
                  f"    data: [{{target: 'iqn.2026-01.bench.storage:p{n}-db', lun: 1}}]",
                  f"    addresses: {{scn: 10.{p // 50}.{p % 50 * 4 + i // 250}.{i % 250 + 2}, "
                  f"mapi: 10.{100 + p // 50}.{p % 50 * 4 + i // 250}.{i % 250 + 2}}}",
                  f"    boot_timer: {timer}", "    qualification: {min_cores: 8}",
                  f"    heartbeat_key: file:/etc/aimctl/keys/p{n}.key"]
    lines += ["servers:"]
    for i in range(servers):
        lines += [f"  s{p}-{i}:",
                  f"    bmc: {{kind: redfish, address: bmc-{p}-{i}.example.net, "
                  "credentials: {username: root, password: env:BMC_PW}}",
                  "    model: R720", "    cores: 16", "    memory_gb: 128", "    boot_nic: NIC.1",
                  "    channels:"]
        lines += [f"      {c}: {{switch: sw{p}{'ab'[c % 2]}{(i * 2 + (c - 1) // 2) // 48}, "
                  f"port: 1/g{(i * 2 + (c - 1) // 2) % 48 + 1}}}" for c in range(1, 5)]
    lines += ["switches:"]
    for sw in sorted({f"sw{p}{ab}{k}" for ab in "ab" for k in range((servers * 2) // 48 + 1)}):
        lines += [f"  {sw}: {{os: dell_powerconnect, address: {sw}.example.net, "
                  "credentials: {username: admin, password: env:SW_PW}}"]
    if storage:
        lines += ["storage:", "  array1: {kind: tgt, portal: 10.250.0.1}"]
    return "\n".join(lines) + "\n"


def pool_tree(root: Path, pools: int = 200, personas: int = 50, servers: int = 55, bad_last: bool = False) -> None:
    """The benchmark's tree: ``pools`` files; with ``bad_last`` the very last persona is wrong."""
    root.mkdir(parents=True, exist_ok=True)
    for p in range(pools):
        text = pool_text(p, personas, servers, bad_last=bad_last and p == pools - 1, storage=p == 0)
        (root / f"pool{p}.yaml").write_text(text)


def big_file_one_error(root: Path) -> None:
    """One pool file just under the 4 MiB per-file limit, valid but for its very last persona."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "big.yaml").write_text(pool_text(0, 4800, 4810, bad_last=True, storage=True))


def oversized_file(root: Path) -> None:
    """The issue's 10 MB file: refused by its size before it is parsed."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "big.yaml").write_text(pool_text(0, 12_000, 12_010, bad_last=True, storage=True))


def big_tree_one_error(root: Path) -> None:
    """A tree just under the tree limit (about 1.5 times the 10,000-persona benchmark), wrong only in
    its last persona: everything must be validated before the problem is found."""
    pool_tree(root, pools=290, bad_last=True)


def many_bad_entries(root: Path, count: int = 99_000) -> None:
    """Servers, each with an unknown field and six missing ones: 700,000 errors in one file."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "servers.yaml").write_text("servers:\n" + "".join(f"  s{i}: {{x: 1}}\n" for i in range(count)))


def too_many_entries(root: Path) -> None:
    """The issue's ~233,000 bad entries in one file: refused by the size of the table."""
    many_bad_entries(root, 233_000)


def missing_fields_at_the_end(root: Path) -> None:
    """25,000 valid servers, then 300 that miss fields: the problems sit at the end of a 3.9 MB file
    and are reported at their parents, the worst case for finding positions."""
    root.mkdir(parents=True, exist_ok=True)
    good = ("  ok{0}: {{bmc: {{kind: ipmi, address: 10.0.0.1, credentials: {{username: a, password: env:P}}}}, "
            "model: m, cores: 1, memory_gb: 1, boot_nic: n, channels: {{}}}}\n")
    (root / "servers.yaml").write_text("servers:\n" + "".join(good.format(i) for i in range(25_000))
                                       + "".join(f"  bad{i}: {{model: m}}\n" for i in range(300)))


def alias_bomb(root: Path) -> None:
    """A "billion laughs": nine levels of nine aliases each."""
    root.mkdir(parents=True, exist_ok=True)
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    prev = "a"
    for c in "bcdefghi":
        lines.append(f"{c}: &{c} [{', '.join(['*' + prev] * 9)}]")
        prev = c
    (root / "lol.yaml").write_text("servers: {}\n" + "\n".join(lines) + "\n")


def deep_nesting(root: Path, depth: int = 200_000) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "deep.yaml").write_text("servers: " + "[" * depth + "]" * depth + "\n")


def many_files(root: Path, count: int = 25_000) -> None:
    """More definition files than any tree has, each tiny and wrong."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (root / f"f{i}.yaml").write_text("x: 1\n")


TREES: dict[str, Callable[[Path], None]] = {
    "big_file_one_error": big_file_one_error,
    "oversized_file": oversized_file,
    "many_bad_entries": many_bad_entries,
    "too_many_entries": too_many_entries,
    "missing_fields_at_the_end": missing_fields_at_the_end,
    "alias_bomb": alias_bomb,
    "deep_nesting": deep_nesting,
    "many_files": many_files,
    "big_tree_one_error": big_tree_one_error,
}

# Run in a fresh interpreter: the figures are the loader's own (time from start, peak RSS).
MEASURE = """
import json, resource, sys, time
t = time.perf_counter()
from aimctl.errors import DefinitionError, OperatorError
from aimctl.loader import load
from bench.common import own_peak_rss_mb
shown = total = 0
first = ""
try:
    load(sys.argv[1])
    outcome = "loaded"
except DefinitionError as exc:
    outcome, shown, total, first = "refused", len(exc.problems), exc.total, exc.problems[0]
except OperatorError as exc:
    outcome, first = "error", str(exc)
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"s": time.perf_counter() - t, "cpu_s": ru.ru_utime + ru.ru_stime, "rss_mb": own_peak_rss_mb(),
                  "outcome": outcome, "shown": shown, "total": total, "first": first}))
"""
