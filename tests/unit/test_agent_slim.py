"""The persona agent runs with exactly what ``pip install 'aimctl[agent]'`` installs.

The environment is assembled, not assumed: the distributions the ``agent`` extra resolves to (its
requirements and theirs, read from the installed metadata) are linked into a temporary directory,
and the agent runs in a fresh interpreter started with ``-S -E`` whose only paths are the standard
library, that directory and this source tree. The controller's dependencies (pydantic, paramiko,
netmiko, sushy, ...) are simply not there. Why this and not an import hook refusing a list of
names: a list misses the next controller dependency (starlette, etcd3gw...), while here anything
that is not the agent's is absent; a requirement missing from the extra fails too. It needs no pip
and no network: a few symlinks, about a second.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from aimctl.agent import wire

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
KEY = "0123456789abcdef0123456789abcdef"
CONTROLLER_ONLY = ("pydantic", "typer", "rich", "paramiko", "netmiko", "sushy", "pyghmi", "pysnmp", "jinja2", "tenacity",
                   "prometheus-client", "textfsm", "yaml-rs")


def _wanted(req: Requirement, extras: set[str]) -> bool:
    return req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras | {""})


def agent_closure() -> dict[str, metadata.Distribution]:
    """Every distribution ``aimctl[agent]`` brings, by canonical name."""
    todo = [(Requirement(r), set[str]()) for r in PYPROJECT["dependencies"] + PYPROJECT["optional-dependencies"]["agent"]]
    found: dict[str, metadata.Distribution] = {}
    while todo:
        req, _ = todo.pop()
        name = canonicalize_name(req.name)
        if name in found:
            continue
        dist = found[name] = metadata.distribution(req.name)
        for raw in dist.requires or []:
            sub = Requirement(raw)
            if _wanted(sub, set(req.extras)):
                todo.append((sub, set()))
    return found


@pytest.fixture(scope="module")
def agent_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A site directory holding the agent extra's distributions and nothing else."""
    site = tmp_path_factory.mktemp("agent-site")
    for dist in agent_closure().values():
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops - {"__pycache__"}:
            src = Path(str(dist.locate_file(top)))
            if src.exists() and not top.endswith(".pth") and not (site / top).exists():
                (site / top).symlink_to(src)
    return site


def bare_python(*paths: Path, code: str, **kw: object) -> subprocess.Popen[bytes]:
    """A fresh interpreter: no site-packages (-S), no PYTHON* variables (-E); ``paths`` first on sys.path."""
    boot = f"import sys; sys.path[:0] = {[str(p) for p in paths]!r}\n"
    return subprocess.Popen([sys.executable, "-S", "-E", "-c", boot + code], **kw)  # type: ignore[call-overload]


def test_the_agent_extra_brings_nothing_of_the_controller() -> None:
    closure = agent_closure()
    assert "pyyaml" in closure
    assert not set(closure) & {canonicalize_name(n) for n in CONTROLLER_ONLY}, \
        "a controller dependency is in the agent's install: put it in the controller extra"


def test_the_environment_really_lacks_the_controller(agent_site: Path, tmp_path: Path) -> None:
    code = ("import importlib.util as u\n"
            f"print(sorted(m for m in {CONTROLLER_ONLY!r} if u.find_spec(m.replace('-', '_')) is not None))\n"
            "import aimctl.agent.cli\n")
    p = bare_python(agent_site, REPO, code=code, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err.decode()
    assert out.decode().strip() == "[]"


def test_the_core_needs_only_the_standard_library(tmp_path: Path) -> None:
    code = ("import sys\n"
            "import aimctl.core.durations, aimctl.core.errors, aimctl.core.names, aimctl.core.secrets\n"
            "tops = {m.split('.')[0] for m in sys.modules}\n"
            "print(sorted(tops - set(sys.stdlib_module_names) - set(sys.builtin_module_names) - {'aimctl', '__main__'}))\n")
    p = bare_python(REPO, code=code, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err.decode()
    assert out.decode().strip() == "[]"


@pytest.fixture
def udp() -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(10)
    yield s
    s.close()


def test_the_agent_runs_with_only_its_extra(agent_site: Path, tmp_path: Path, udp: socket.socket) -> None:
    key = tmp_path / "hb.key"
    key.write_text(KEY)
    key.chmod(0o600)
    checks = tmp_path / "checks.yaml"
    checks.write_text("services: [{name: shell, command: /bin/true}]\nrestarts: 1\n")
    argv = ["aimctl-agent", "run", "--persona", "web1", "--controller", f"127.0.0.1:{udp.getsockname()[1]}",
            "--key-file", str(key), "--interval", "50ms", "--checks", str(checks)]
    code = f"import runpy; sys.argv = {argv!r}; runpy.run_module('aimctl.agent', run_name='__main__')\n"
    p = bare_python(agent_site, REPO, code=code, cwd=tmp_path, stderr=subprocess.PIPE)
    try:
        first = wire.decode_verified(KEY.encode(), udp.recv(wire.MAX_LEN))
        assert (first.persona, first.health) == ("web1", wire.Health.OK)
        p.send_signal(signal.SIGTERM)
        while (hb := wire.decode_verified(KEY.encode(), udp.recv(wire.MAX_LEN))).health is not wire.Health.STOPPED:
            pass
        assert hb.reason == "agent stopped" and hb.boot_id == first.boot_id
        assert p.wait(timeout=10) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        assert p.stderr is not None
        err = p.stderr.read().decode()
    assert "Traceback" not in err, err


def test_the_systemd_unit_starts_the_agents_own_command() -> None:
    unit = (REPO / "aimctl" / "agent" / "aimctl-agent.service").read_text()
    [exec_start] = [ln for ln in unit.splitlines() if ln.startswith("ExecStart=")]
    program = os.path.basename(exec_start.removeprefix("ExecStart=").split()[0])
    assert PYPROJECT["scripts"][program] == "aimctl.agent.cli:main"
