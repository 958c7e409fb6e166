"""iSCSI boot for IPMI servers: an iPXE ``sanboot`` script plus "next boot: network" over IPMI.

The controller serves ``boot_dir`` at ``/boot/<server>.ipxe``; the server's iPXE fetches it when it
network-boots. The script is rendered from ``bootcfg/ipxe.j2`` after every value was checked, written
atomically (0600), then read back (parsed) and compared, as is the next-boot device.

``clear`` removes the script only: it does not touch the BMC, so it works while the BMC is down
(a server that network-boots without a script boots nothing).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any, Protocol

from aimctl import secrets
from aimctl.drivers.bootvalues import check_iscsi_boot, template_env
from aimctl.drivers.protocols import IscsiBoot
from aimctl.errors import DriverError, Rejected, StateMismatch
from aimctl.validation import HOSTNAME_RE

_SET = re.compile(r"^set (initiator-iqn|username|password) (\S+)$", re.MULTILINE)
_SANBOOT = re.compile(r"^sanboot iscsi:(\[[^\]]+\]|[^:]+):[^:]*:(\d+):([0-9a-fA-F]+):(\S+)$", re.MULTILINE)


class BootDevice(Protocol):
    """What the iPXE config needs from the BMC driver (``IpmiPower`` has it)."""

    def set_bootdev(self, device: str) -> None: ...

    def get_bootdev(self) -> str: ...


class IpxeBootConfig:
    """``BootConfig`` for servers without Redfish iSCSIBoot: a per-server iPXE script."""

    def __init__(self, server: str, boot_dir: Path, power: BootDevice, bootcfg_dir: Path | None = None) -> None:
        if not HOSTNAME_RE.match(server):
            raise Rejected(server, "server name is not usable as a file name")
        self.device = server
        self.server = server
        self.boot_dir = Path(boot_dir)
        self.path = self.boot_dir / f"{server}.ipxe"
        self.power = power
        self._template = template_env(bootcfg_dir).get_template("ipxe.j2")

    def render(self, boot: IscsiBoot) -> str:
        return _render(self._template, self.server, boot)

    def write(self, boot: IscsiBoot) -> None:
        secrets.register(boot.chap_secret)
        script = self.render(boot)  # validates first: nothing is written or sent for a bad value
        self._write_atomic(script)
        got = self.read()
        if got != boot:
            raise StateMismatch(self.device, f"iPXE script {self.path} reads back differently: {_diff(boot, got)}")
        self.power.set_bootdev("network")
        dev = self.power.get_bootdev()
        if dev != "network":
            raise StateMismatch(self.device, f"next boot device reads {dev!r}, wanted 'network'")

    def read(self) -> IscsiBoot | None:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise DriverError(self.device, f"cannot read {self.path}: {exc.strerror}") from None
        sets = dict(_SET.findall(text))
        m = _SANBOOT.search(text)
        if m is None or "initiator-iqn" not in sets:
            raise StateMismatch(self.device, f"{self.path} is not a script this driver wrote")
        host, port, lun_hex, target = m.groups()
        return IscsiBoot(
            initiator=sets["initiator-iqn"],
            target=target,
            lun=int(lun_hex, 16),
            portal_host=host.strip("[]"),
            portal_port=int(port),
            chap_user=sets.get("username", ""),
            chap_secret=sets.get("password", ""),
        )

    def clear(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise DriverError(self.device, f"cannot remove {self.path}: {exc.strerror}") from None
        if self.path.exists():
            raise StateMismatch(self.device, f"{self.path} still exists after removal")

    def _write_atomic(self, text: str) -> None:
        try:
            self.boot_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.boot_dir, prefix=f".{self.server}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "w") as f:  # mkstemp creates it 0600
                    f.write(text)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise DriverError(self.device, f"cannot write {self.path}: {exc.strerror}") from None


def render_ipxe(boot: IscsiBoot, server: str = "lab", bootcfg_dir: Path | None = None) -> str:
    """The script ``IpxeBootConfig.write`` would write for ``boot`` (values checked first)."""
    return _render(template_env(bootcfg_dir).get_template("ipxe.j2"), server, boot)


def _render(template: Any, server: str, boot: IscsiBoot) -> str:
    check_iscsi_boot(server, boot, portal_must_be_ip=False)
    host = f"[{boot.portal_host}]" if ":" in boot.portal_host else boot.portal_host
    # iPXE reads the LUN field of the URI as hex (scsi_parse_lun: up to four hex words)
    return str(template.render(server=server, boot=boot, host=host, lun_hex=f"{boot.lun:x}"))


def _diff(want: IscsiBoot, got: IscsiBoot | None) -> str:
    if got is None:
        return "no script"
    fields = ("initiator", "target", "lun", "portal_host", "portal_port", "chap_user", "chap_secret")
    bad = [f for f in fields if getattr(want, f) != getattr(got, f)]
    return ", ".join(bad)
