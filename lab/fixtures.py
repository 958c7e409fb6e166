"""pytest fixtures for the lab: one lab per test session, reset between scenarios."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from lab import cli, control

REPO = Path(__file__).resolve().parent.parent


@dataclass
class LabHandle:
    state: Path
    definitions: Path

    @property
    def endpoints(self) -> Path:
        return self.state / "endpoints.yaml"

    def overlay(self) -> dict[str, Any]:
        return dict(yaml.safe_load(self.endpoints.read_text()))

    def call(self, action: str, body: dict[str, Any] | None = None) -> Any:
        return control.call(self.state, action, body)

    def status(self) -> Any:
        return self.call("status")

    def fault(self, kind: str, target: str, clear: bool = False, **params: Any) -> Any:
        """``params``: the kind's options by their lab.faults names (after, delay_s, percent, ...)."""
        return self.call("fault", {"kind": kind, "target": target, "clear": clear, **params})

    def reset(self) -> Any:
        return self.call("reset")

    def mail(self) -> list[dict[str, Any]]:
        """Alert mails the lab's SMTP server received since the last reset."""
        return list(self.call("mail"))

    def alert_traps(self) -> list[dict[str, str]]:
        """Alert traps the lab's trap receiver got since the last reset (OID -> value)."""
        return list(self.call("alert-traps"))

    def adopt(self, persona: str, initiator: str, key_file: Path, data: Sequence[tuple[str, int]] = ()) -> Any:
        """Hosts may boot ``persona`` (made after the lab started) with this agent key."""
        return self.call("adopt", {"persona": persona, "initiator": initiator, "key_file": str(key_file),
                                   "data": [list(x) for x in data]})


def start_lab(definitions: Path | None = None, **kw: Any) -> LabHandle:
    state = Path(tempfile.mkdtemp(prefix="aimctl-lab-"))
    defs = definitions or REPO / "personas"
    cli.start(state, defs, **kw)
    return LabHandle(state, defs)


@pytest.fixture(scope="session")
def lab() -> Iterator[LabHandle]:
    handle = start_lab(power_delay=0.5, boot=1.0, heartbeat=0.5, resync=1.0)
    try:
        yield handle
    finally:
        cli.stop(handle.state)


@pytest.fixture(scope="session")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One real etcd member for the session (tests use their own key prefixes)."""
    from lab.cluster.etcd import EtcdCluster

    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd"), 1).start()
    try:
        yield cluster
    finally:
        cluster.stop(remove=True)
