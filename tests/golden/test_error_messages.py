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
