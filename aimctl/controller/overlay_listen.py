"""Parsing of the controller's listen addresses (``HOST:PORT``)."""

from __future__ import annotations

from aimctl.errors import OperatorError


def api_hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise OperatorError(f"listen address {value!r}: want HOST:PORT")
    return host, int(port)
