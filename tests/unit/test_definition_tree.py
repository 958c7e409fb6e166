"""Bad definition trees are answered with one clear line per problem, fast, in bounded memory.

Each odd entry a tree can hold is a table case naming the line the operator must see; the caps are
hypothesis properties; the bounds are measured in a fresh interpreter (peak RSS) on the same hostile
trees the benchmark times (tests/badtrees.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aimctl.definition_files import Limits
from aimctl.errors import DefinitionError, OperatorError
from aimctl.loader import load
from tests import badtrees
from tests.conftest import DEFINITIONS, REPO
from tests.unit.test_loader import LINE

BOUND_RSS_MB = 300
BOUND_S = 60  # a generous ceiling for a loaded CI machine; the exact figures are in bench/plan.py


def refused(root: Path, limits: Limits | None = None) -> DefinitionError:
    with pytest.raises(DefinitionError) as exc:
        load(root, limits=limits) if limits else load(root)
    for p in exc.value.problems:
        assert LINE.match(p), p
        assert "\n" not in p
    return exc.value


def _reference(root: Path) -> Path:
    shutil.copytree(DEFINITIONS, root)
    return root


# ---------------------------------------------------------------------------- odd entries, table


def _empty(r: Path) -> Path:
    (r / "empty.yaml").write_bytes(b"")
    return r / "empty.yaml"


def _blank(r: Path) -> Path:
    (r / "blank.yaml").write_text("\n   \n\t\n")
    return r / "blank.yaml"


def _comments(r: Path) -> Path:
    (r / "comments.yaml").write_text("# nothing here yet\n---\n")
    return r / "comments.yaml"


def _empty_mapping(r: Path) -> Path:
    (r / "braces.yaml").write_text("{}\n")
    return r / "braces.yaml"


def _directory(r: Path) -> Path:
    (r / "x.yaml").mkdir()
    (r / "x.yaml" / "inner.yaml").write_text("pool: [never read\n")
    return r / "x.yaml"


def _fifo(r: Path) -> Path:
    os.mkfifo(r / "pipe.yaml")
    return r / "pipe.yaml"


def _broken_link(r: Path) -> Path:
    (r / "gone.yaml").symlink_to(r / "nowhere.yaml")
    return r / "gone.yaml"


def _file_loop(r: Path) -> Path:
    (r / "loop.yaml").symlink_to(r / "loop.yaml")
    return r / "loop.yaml"


def _dir_loop(r: Path) -> Path:
    (r / "inventory" / "up").symlink_to(r)
    return r / "inventory" / "up"


def _two_documents(r: Path) -> Path:
    (r / "two.yaml").write_text("servers: {}\n---\nswitches: {}\n")
    return r / "two.yaml"


def _a_list(r: Path) -> Path:
    (r / "list.yaml").write_text("- pool: x\n")
    return r / "list.yaml"


def _not_utf8(r: Path) -> Path:
    (r / "latin.yaml").write_bytes(b"servers:\n  caf\xe9: {}\n")
    return r / "latin.yaml"


def _duplicate_key(r: Path) -> Path:
    (r / "dup.yaml").write_text("switches:\n  swx: {os: cisco_ios}\n  swy: {}\n  swx: {os: arista_eos}\n")
    return r / "dup.yaml"


def _syntax(r: Path) -> Path:
    (r / "bad.yaml").write_text("servers:\n  a: 1\n b: 2\n")
    return r / "bad.yaml"


def _alias_bomb(r: Path) -> Path:
    badtrees.alias_bomb(r)
    return r / "lol.yaml"


def _deep(r: Path) -> Path:
    badtrees.deep_nesting(r, 5000)
    return r / "deep.yaml"


# (name, make it in a copy of the reference tree -> the path it made, what the line says, line:col or None)
ODD: list[tuple[str, Callable[[Path], Path], str, str | None]] = [
    ("empty file", _empty, "empty definition file", None),
    ("blank file", _blank, "empty definition file", None),
    ("comments only", _comments, "empty definition file", None),
    ("empty mapping", _empty_mapping, "empty definition file", None),
    ("directory named x.yaml", _directory, "a directory named like a definition file", None),
    ("fifo named x.yaml", _fifo, "not a regular file", None),
    ("broken symlink", _broken_link, "broken symlink", None),
    ("symlink loop", _file_loop, "symlink loop", None),
    ("directory symlink loop", _dir_loop, "directory reached twice", None),
    ("two YAML documents", _two_documents, "must be one mapping", None),
    ("a list", _a_list, "must be one mapping", None),
    ("not UTF-8", _not_utf8, "not UTF-8 at byte 14", "2:6"),
    ("duplicate key", _duplicate_key, "duplicate key", "4:3"),
    ("bad indentation", _syntax, "not valid YAML", "3:2"),
    ("alias bomb", _alias_bomb, "aliases expand to more than", "3:8"),
    ("deep nesting", _deep, "not valid YAML", None),
]


@pytest.mark.parametrize("name,make,says,where", ODD, ids=[c[0] for c in ODD])
def test_odd_entry_is_named(tmp_path: Path, name: str, make: Callable[[Path], Path], says: str,
                            where: str | None) -> None:
    root = _reference(tmp_path / "defs")
    path = make(root)
    found = refused(root).problems
    hits = [p for p in found if says in p]
    assert hits, f"{name}: want {says!r} in {found}"
    m = LINE.match(hits[0])
    assert m and m["file"] == str(path), (hits[0], path)
    if where:
        assert f"{m['line']}:{m['col']}" == where, hits[0]


def _reachable_by_others(path: Path) -> bool:
    """Every directory from / down to ``path`` may be entered by any user (o+x)."""
    return all(p.stat().st_mode & 0o001 for p in [path, *path.parents])


def _problems_as_nobody(root: Path) -> list[str]:
    """The loader's lines for ``root``, run in a forked child that dropped root (root reads everything)."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        code = 0
        try:
            os.close(rfd)
            os.setgid(65534)
            os.setuid(65534)
            try:
                load(root)
                out = "loaded"
            except DefinitionError as exc:
                out = "\n".join(exc.problems)
            except BaseException as exc:  # noqa: BLE001 - reported to the parent as text
                out = f"CRASH {type(exc).__name__}: {exc}"
            os.write(wfd, out.encode())
        except BaseException:  # noqa: BLE001
            code = 1
        finally:
            os._exit(code)
    os.close(wfd)
    import select
    import signal

    chunks: list[bytes] = []
    with os.fdopen(rfd, "rb", buffering=0) as fh:
        while True:  # with a deadline: a child stuck on a lock inherited through fork must not hang the run
            ready, _, _ = select.select([fh], [], [], 60)
            chunk = fh.read(65536) if ready else b""
            if not ready:
                os.kill(pid, signal.SIGKILL)
            if not chunk:
                break
            chunks.append(chunk)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode().splitlines()


def test_unreadable_file_and_directory_are_named(tmp_path: Path) -> None:
    """EACCES on a file and on a directory: named with their paths, never a traceback. Run as an
    unprivileged user when the tests run as root (root reads everything)."""
    base = Path(os.environ.get("TMPDIR", "/tmp")) / f"aimctl-eacces-{os.getpid()}"
    root = base / "defs"
    try:
        shutil.copytree(DEFINITIONS, root)
        (root / "secret.yaml").write_text("servers: {}\n")
        (root / "secret.yaml").chmod(0o000)
        (root / "closed").mkdir()
        (root / "closed" / "x.yaml").write_text("servers: {}\n")
        (root / "closed").chmod(0o000)
        for d in (base, root, root / "inventory"):
            d.chmod(0o755)
        for f in root.rglob("*.yaml"):
            if f.name != "secret.yaml" and f.parent.name != "closed":
                f.chmod(0o644)
        if os.geteuid() == 0 and not _reachable_by_others(DEFINITIONS.parent):
            pytest.skip(f"{DEFINITIONS.parent} sits under a directory only its owner may enter (a 0700 "
                        "checkout): an unprivileged child cannot read the project's own data tables there")
        lines = _problems_as_nobody(root) if os.geteuid() == 0 else [p for p in refused(root).problems]
        assert f"{root / 'secret.yaml'}:1:1: <file>: cannot read: Permission denied" in lines, lines
        assert f"{root / 'closed'}:1:1: <file>: cannot read this directory: Permission denied" in lines, lines
    finally:
        for p in (root / "closed", root / "secret.yaml"):
            if p.exists():
                p.chmod(0o700)
        shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------------------- limits, table (small limits: fast)

SMALL = Limits(max_file_bytes=4000, max_tree_bytes=12_000, max_files=6, max_entries=40, max_depth=2,
               max_problems=5)


def _big_file(r: Path) -> None:
    (r / "big.yaml").write_text("servers:\n" + "".join(f"  s{i}: {{}}\n" for i in range(500)))


def _big_tree(r: Path) -> None:
    for i in range(4):
        (r / f"t{i}.yaml").write_text("# padding\n" * 380 + f"switches: {{sw{i}: {{}}}}\n")


def _many_files(r: Path) -> None:
    for i in range(8):
        (r / f"f{i}.yaml").write_text("servers: {}\n")


def _many_entries(r: Path) -> None:
    for i in range(50):
        (r / f"note{i}.txt").write_text("x")


def _deep_dirs(r: Path) -> None:
    d = r
    for i in range(4):
        d = d / f"d{i}"
    d.mkdir(parents=True)
    (d / "x.yaml").write_text("servers: {}\n")


LIMITED: list[tuple[str, Callable[[Path], None], str]] = [
    ("file size", _big_file, "a definition file may be at most"),
    ("tree size", _big_tree, "the definitions add up to more than"),
    ("file count", _many_files, "more than 6 definition files"),
    ("entry count", _many_entries, "more than 40 entries"),
    ("depth", _deep_dirs, "deeper than 2 directories"),
]


@pytest.mark.parametrize("name,make,says", LIMITED, ids=[c[0] for c in LIMITED])
def test_limits_are_named(tmp_path: Path, name: str, make: Callable[[Path], None], says: str) -> None:
    root = tmp_path / "defs"
    root.mkdir()
    make(root)
    found = refused(root, SMALL).problems
    assert any(says in p for p in found), found


# ---------------------------------------------------------------------------- properties


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bad=st.integers(0, 60), cap=st.integers(1, 20))
def test_problems_are_capped_and_counted(tmp_path_factory: pytest.TempPathFactory, bad: int, cap: int) -> None:
    """``bad`` switches with two problems each: the first ``cap`` lines are shown, all are counted."""
    root = tmp_path_factory.mktemp("cap")
    good = "  ok: {os: cisco_ios, address: 10.0.0.1, credentials: {username: a, password: env:P}}\n"
    (root / "sw.yaml").write_text("switches:\n" + good + "".join(f"  s{i}: {{os: nx, port: 0}}\n" for i in range(bad)))
    limits = Limits(max_problems=cap)
    if bad == 0:
        load(root, limits=limits)
        return
    err = refused(root, limits)
    # each: unknown OS, port below 1, address and credentials missing
    assert err.total == 4 * bad
    assert len(err.problems) == min(cap, 4 * bad)
    assert err.problems[0].startswith(f"{root / 'sw.yaml'}:3:")


def test_each_file_is_searched_once_for_all_its_positions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Problems at paths that do not exist (missing fields) are placed at their parents, and looking
    for them again must not rescan the file once per problem."""
    from aimctl import yaml_source

    passes: list[int] = []
    real = yaml_source.locate

    def counting(text: str, wanted: set[tuple[object, ...]]) -> dict[tuple[object, ...], tuple[int, int]]:
        passes.append(len(wanted))
        return real(text, wanted)

    monkeypatch.setattr(yaml_source, "locate", counting)
    (tmp_path / "s.yaml").write_text("servers:\n" + "".join(f"  s{i}: {{model: m}}\n" for i in range(50)))
    err = refused(tmp_path)
    assert err.total == 250 and len(err.problems) == 200  # bmc, cores, memory_gb, boot_nic, channels each
    assert len(passes) == 1, passes
    assert err.problems[0] == f"{tmp_path / 's.yaml'}:2:3: servers.s0.bmc: required field is missing"


YAML_BITS = st.sampled_from(["pool:", "servers:", "switches:", " ", "  ", "\n", "- ", "[", "]", "{", "}", ":",
                             ",", "&a ", "*a", "!!str ", "? ", "|", ">", "'", '"', "#", "---", "...", "\t", "1",
                             "true", "null", "~", "x", "é", "\\", "%YAML 1.2", "<<: "])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bits=st.lists(YAML_BITS, max_size=40))
def test_any_text_is_refused_cleanly(tmp_path_factory: pytest.TempPathFactory, bits: list[str]) -> None:
    """Whatever a file holds, the answer is the definitions or clear positioned lines: no traceback."""
    root = tmp_path_factory.mktemp("junk")
    (root / "junk.yaml").write_text("".join(bits))
    try:
        load(root)
    except DefinitionError as exc:
        assert exc.problems and all(LINE.match(p) and str(root) in p for p in exc.problems), exc.problems
    except OperatorError:
        pass


# ---------------------------------------------------------------------------- bounds, measured

MEASURE_ALL = """
import json, sys, time
from aimctl.errors import DefinitionError
from aimctl.loader import load
from bench.common import own_peak_rss_mb
out = {}
for root in sys.argv[1:]:
    t = time.perf_counter()
    try:
        load(root)
        out[root] = {"outcome": "loaded"}
    except DefinitionError as exc:
        out[root] = {"outcome": "refused", "shown": len(exc.problems), "total": exc.total, "first": exc.problems[0]}
    out[root]["s"] = time.perf_counter() - t
print(json.dumps({"trees": out, "rss_mb": own_peak_rss_mb()}))
"""

BOUNDED = ["big_tree_one_error", "many_bad_entries", "too_many_entries", "oversized_file",
           "alias_bomb", "deep_nesting"]


def test_hostile_trees_are_answered_in_bounded_memory(tmp_path: Path) -> None:
    """The issue's trees (10 MB file, 233k bad entries, alias bomb...) and the worst a tree within the
    limits can be: each refused with its first problem named, peak RSS under 300 MB."""
    roots = []
    for name in BOUNDED:
        badtrees.TREES[name](tmp_path / name)
        roots.append(str(tmp_path / name))
    # Each tree in a fresh process, as an operator's `aimctl validate` meets it: one process's peak
    # over all six would also count what the allocator kept from the earlier ones.
    got: dict[str, dict[str, dict[str, object]]] = {"trees": {}}
    for root in roots:
        r = subprocess.run([sys.executable, "-c", MEASURE_ALL, root], capture_output=True, text=True, cwd=REPO,
                           timeout=300)
        assert r.returncode == 0, r.stderr
        one = json.loads(r.stdout)
        assert one["rss_mb"] <= BOUND_RSS_MB, (root, one)
        got["trees"].update(one["trees"])
    for root in roots:
        tree = got["trees"][root]
        assert tree["outcome"] == "refused", tree
        assert LINE.match(tree["first"]) and tree["first"].startswith(root), tree
        assert tree["shown"] <= 200 and tree["s"] <= BOUND_S, tree
    many = got["trees"][str(tmp_path / "many_bad_entries")]
    assert (many["shown"], many["total"]) == (200, 7 * 99_000)
    assert "aliases expand" in got["trees"][str(tmp_path / "alias_bomb")]["first"]
    assert "at most 4.0 MiB" in got["trees"][str(tmp_path / "oversized_file")]["first"]
    assert "boot_timer: duration '0s' must be more than 0" in got["trees"][str(tmp_path / "big_tree_one_error")]["first"]
