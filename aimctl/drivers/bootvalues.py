"""Checks and templates shared by the boot-config drivers (Redfish iSCSIBoot, iPXE).

Every value of an ``IscsiBoot`` ends up in firmware settings or in a script the firmware runs, so
all of them are checked against strict patterns before anything is rendered or sent (DESIGN.md
rule 6): a bad value is refused whole, before any request.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import jinja2

from aimctl.drivers.protocols import IscsiBoot
from aimctl.errors import Rejected
from aimctl.validation import CHAP_SECRET_RE, CHAP_USER_RE, HOSTNAME_RE, IQN_RE

# bootcfg/ sits at the top of the source tree, next to aimctl/
DEFAULT_BOOTCFG_DIR = Path(__file__).resolve().parents[2] / "bootcfg"


def is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def check_iscsi_boot(device: str, boot: IscsiBoot, *, portal_must_be_ip: bool) -> None:
    """Raise Rejected naming the first bad field; secrets are never echoed."""
    problems: list[str] = []
    if not IQN_RE.match(boot.initiator):
        problems.append(f"initiator {boot.initiator!r} is not a valid IQN")
    if not IQN_RE.match(boot.target):
        problems.append(f"target {boot.target!r} is not a valid IQN")
    if portal_must_be_ip:
        if not is_ip(boot.portal_host):
            problems.append(f"portal host {boot.portal_host!r} is not an IP address (Redfish needs one)")
    elif not (is_ip(boot.portal_host) or HOSTNAME_RE.match(boot.portal_host)):
        problems.append(f"portal host {boot.portal_host!r} is not a hostname or IP address")
    if (
        isinstance(boot.portal_port, bool)
        or not isinstance(boot.portal_port, int)
        or not 1 <= boot.portal_port <= 65535
    ):
        problems.append(f"portal port {boot.portal_port!r} is not 1-65535")
    if isinstance(boot.lun, bool) or not isinstance(boot.lun, int) or not 0 <= boot.lun <= 16383:
        problems.append(f"LUN {boot.lun!r} is not 0-16383")
    if boot.chap_user or boot.chap_secret:
        if not CHAP_USER_RE.match(boot.chap_user):
            problems.append(f"CHAP user {boot.chap_user!r} has characters outside [A-Za-z0-9._:@-]")
        if not CHAP_SECRET_RE.match(boot.chap_secret):
            problems.append("CHAP secret is empty or has characters outside [A-Za-z0-9._~+/=:@-]")
    if problems:
        raise Rejected(device, "boot config refused before any request: " + "; ".join(problems))


def template_env(directory: Path | None) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(directory or DEFAULT_BOOTCFG_DIR)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
    )
