"""The exact text an operator reads for a broken tree: every problem, one line each, file:line:col."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent / "errors"


def test_validate_output_is_golden(tmp_path: Path) -> None:
    env = {**os.environ, "AIMCTL_CACHE": str(tmp_path), "COLUMNS": "80"}
    r = subprocess.run([sys.executable, "-m", "aimctl.cli", "validate", "bad"], cwd=HERE, capture_output=True,
                       text=True, env=env)
    assert r.returncode == 2
    expected = (HERE / "bad.expected").read_text()
    if os.environ.get("AIMCTL_UPDATE_GOLDEN") == "1":
        (HERE / "bad.expected").write_text(r.stderr)
    assert r.stderr == expected


def test_capped_output_is_golden(tmp_path: Path) -> None:
    """600 problems: the first 200 lines, then how many more there are, then the count; exit 2."""
    env = {**os.environ, "AIMCTL_CACHE": str(tmp_path), "COLUMNS": "80"}
    r = subprocess.run([sys.executable, "-m", "aimctl.cli", "validate", "many"], cwd=HERE, capture_output=True,
                       text=True, env=env)
    assert r.returncode == 2
    if os.environ.get("AIMCTL_UPDATE_GOLDEN") == "1":
        (HERE / "many.expected").write_text(r.stderr)
    assert r.stderr == (HERE / "many.expected").read_text()
    lines = r.stderr.splitlines()
    assert len(lines) == 202 and lines[-2:] == ["... and 400 more not shown (the first 200 are above)",
                                                "600 problem(s) found; nothing was changed."]
