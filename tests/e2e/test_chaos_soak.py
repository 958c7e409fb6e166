"""The chaos soak, two minutes of it, seeded (``make soak`` runs thirty): random faults from the
catalogue on random bodies, the real controller acting, an operator answering through the real
command line, and the invariants checked after every round. A violation fails the test with the
seed, the round, its plan and the evidence, so it can be replayed with the same seed."""

from __future__ import annotations

import os

import pytest

from lab.chaos import soak
from lab.fixtures import LabHandle, lab  # noqa: F401 - the session lab

pytestmark = pytest.mark.lab


@pytest.mark.timeout(900)
def test_two_minute_chaos_soak(lab: LabHandle) -> None:  # noqa: F811
    seed = int(os.environ.get("AIMCTL_SOAK_SEED", "5"))
    minutes = float(os.environ.get("AIMCTL_SOAK_MINUTES", "2"))
    lines: list[str] = []
    r = soak.run(lab.state, lab.definitions, minutes, seed, fail_fast=True, say=lines.append)
    print("\n".join(lines))
    assert not r.violations and r.double_access == 0
    assert r.rounds >= 3, f"only {r.rounds} rounds in {minutes} minutes (seed {seed})"
