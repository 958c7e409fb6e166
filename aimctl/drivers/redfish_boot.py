"""Redfish iSCSI boot: the boot NIC function's ``iSCSIBoot`` plus the system's boot override.

Payloads come from ``bootcfg/redfish_iscsiboot.json.j2``; BMC-family differences (which URI takes
the write, what "blank" looks like) are rows of ``bootcfg/redfish_vendors.json``, not code. The row
is the inventory's ``bmc.vendor``, or else the one the BMC's ComputerSystem Manufacturer/Model
selects (``aimctl.redfish_vendors.choose``), read once on first use.

The NIC function URI follows Dell iDRAC's layout unless given:
``/redfish/v1/Chassis/<system-id>/NetworkAdapters/<adapter>/NetworkDeviceFunctions/<port>-1``
for a boot NIC port named like ``NIC.Integrated.1-1``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from aimctl import redfish_vendors, secrets
from aimctl.drivers.bootvalues import DEFAULT_BOOTCFG_DIR, check_iscsi_boot, template_env
from aimctl.drivers.protocols import IscsiBoot
from aimctl.drivers.redfish import RedfishClient
from aimctl.errors import Rejected, StateMismatch

log = logging.getLogger(__name__)

# CHAPSecret is write-only in the DMTF schema (GET returns null), so read-back compares every
# other field we wrote; the storage fence proves the secret itself with a real login.
WRITE_ONLY = frozenset({"CHAPSecret"})


def nic_function_path(system_path: str, boot_nic: str) -> str:
    system_id = system_path.rstrip("/").rsplit("/", 1)[-1]
    adapter = boot_nic.rsplit("-", 1)[0] if "-" in boot_nic else boot_nic
    return f"/redfish/v1/Chassis/{system_id}/NetworkAdapters/{adapter}/NetworkDeviceFunctions/{boot_nic}-1"


class RedfishBootConfig:
    """``BootConfig`` over Redfish (iSCSIBoot on the boot NIC + BootSourceOverrideTarget)."""

    def __init__(
        self,
        address: str,
        system_id_or_path: str,
        username: str,
        password: str,
        *,
        boot_nic: str = "NIC.Integrated.1-1",
        nic_function_path: str | None = None,
        vendor: str | None = None,
        verify_tls: bool | str = True,
        timeout_s: float = 5.0,
        name: str | None = None,
        bootcfg_dir: Path | None = None,
    ) -> None:
        self.client = RedfishClient(address, system_id_or_path, username, password, verify_tls, timeout_s, name)
        self.device = self.client.device
        self.nic_path = nic_function_path or _default_nic_path(self.client.system_path, boot_nic)
        self._vendors = redfish_vendors.table(bootcfg_dir or DEFAULT_BOOTCFG_DIR)
        if vendor is not None and vendor not in self._vendors.rows:
            raise Rejected(self.device, f"unknown Redfish vendor {vendor!r} (known: {', '.join(self._vendors.rows)})")
        self._vendor_name = vendor  # None: chosen from the BMC's Manufacturer/Model on first use
        self._template = template_env(bootcfg_dir).get_template("redfish_iscsiboot.json.j2")

    @property
    def vendor_name(self) -> str:
        """The vendor row in use: the inventory's, else the one the BMC's own identity selects."""
        if self._vendor_name is None:
            system = self.client.call("read Manufacturer/Model", lambda: self.client.system(False))
            manufacturer, model = getattr(system, "manufacturer", None), getattr(system, "model", None)
            self._vendor_name = redfish_vendors.choose(self._vendors, None, manufacturer, model)
            log.info("%s: Redfish vendor row %s (Manufacturer %r, Model %r)", self.device, self._vendor_name,
                     manufacturer, model)
        return self._vendor_name

    @property
    def vendor(self) -> dict[str, Any]:
        return self._vendors.rows[self.vendor_name]

    def render(self, boot: IscsiBoot | None) -> dict[str, Any]:
        """The exact payloads ``write``/``clear`` send (secrets included: do not log unmasked)."""
        if boot is not None:
            check_iscsi_boot(self.device, boot, portal_must_be_ip=True)
        doc: dict[str, Any] = json.loads(self._template.render(boot=boot, vendor=self.vendor))
        return doc

    def write(self, boot: IscsiBoot) -> None:
        secrets.register(boot.chap_secret)
        payload = self.render(boot)  # validates first: nothing is sent for a bad value
        self._apply(payload, "write iSCSI boot")

    def clear(self) -> None:
        self._apply(self.render(None), "clear iSCSI boot")

    def read(self) -> IscsiBoot | None:
        iscsi = self._read_iscsi(self.vendor["nic_read_suffix"])
        if not iscsi.get("InitiatorName"):
            return None
        return IscsiBoot(
            initiator=str(iscsi.get("InitiatorName") or ""),
            target=str(iscsi.get("PrimaryTargetName") or ""),
            lun=int(iscsi.get("PrimaryLUN") or 0),
            portal_host=str(iscsi.get("PrimaryTargetIPAddress") or ""),
            portal_port=int(iscsi.get("PrimaryTargetTCPPort") or 3260),
            chap_user=str(iscsi.get("CHAPUsername") or ""),
            chap_secret="",  # write-only on every BMC: it cannot be read back
        )

    def boot_target(self) -> str:
        body = self.client.call("read boot override", lambda: self.client.get_json(self.client.system_path))
        return str((body.get("Boot") or {}).get("BootSourceOverrideTarget") or "")

    def _apply(self, payload: dict[str, Any], what: str) -> None:
        nic_body, system_body = payload["nic"], payload["system"]
        write_path = self.nic_path + self.vendor["nic_write_suffix"]
        self.client.call(f"{what}: PATCH NIC function", lambda: self.client.patch(write_path, nic_body))
        self.client.call(
            f"{what}: PATCH boot override", lambda: self.client.patch(self.client.system_path, system_body)
        )
        got = self._read_iscsi(self.vendor["nic_read_suffix"])
        wrong = [
            f"{key}: wrote {_show(key, want)}, reads {_show(key, got.get(key))}"
            for key, want in nic_body["iSCSIBoot"].items()
            if key not in WRITE_ONLY and not _same(want, got.get(key))
        ]
        want_target = system_body["Boot"]["BootSourceOverrideTarget"]
        have_target = self.boot_target()
        if have_target != want_target:
            wrong.append(f"BootSourceOverrideTarget: wrote {want_target}, reads {have_target or 'nothing'}")
        if wrong:
            raise StateMismatch(self.device, secrets.mask(f"{what}: read-back differs: " + "; ".join(wrong)))

    def _read_iscsi(self, suffix: str) -> dict[str, Any]:
        path = self.nic_path + suffix
        body = self.client.call("read iSCSI boot", lambda: self.client.get_json(path))
        iscsi = body.get("iSCSIBoot")
        return iscsi if isinstance(iscsi, dict) else {}


def _default_nic_path(system_path: str, boot_nic: str) -> str:
    return nic_function_path(system_path, boot_nic)


def _same(want: Any, have: Any) -> bool:
    # a cleared string may read back as "" or null, depending on the BMC
    if want in ("", None) and have in ("", None):
        return True
    return bool(want == have)


def _show(key: str, value: Any) -> str:
    return "***" if key in WRITE_ONLY else json.dumps(value)
