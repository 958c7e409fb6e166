"""Durations as operators write them: ``90s``, ``20m``, ``1h``, ``500ms``."""

from __future__ import annotations

import re

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> float:
    """``"20m"`` → 1200.0. Bare numbers are refused: a unit-less timer is a classic 3 a.m. mistake."""
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return float(m.group(1)) * _UNIT_S[m.group(2)]
    raise ValueError(f"not a duration: {value!r} (write e.g. 90s, 20m, 1h)")
