"""Redfish NetworkAdapters / NetworkDeviceFunctions with an ``iSCSIBoot`` object, for the lab.

The stock sushy-tools emulator has no NetworkDeviceFunction resources, so the lab adds them as
extra Flask routes on the emulator app (no upstream code is changed).

Resource path, as Dell iDRAC lays it out (chassis id = system id, adapter "NIC.Integrated.1",
port "NIC.Integrated.1-1", partition/function "NIC.Integrated.1-1-1"):

    /redfish/v1/Chassis/<system-id>/NetworkAdapters/<adapter>/NetworkDeviceFunctions/<function>

iDRAC takes writes on ``<function>/Settings`` and applies them at the next reboot through a
configuration job; generic Redfish services PATCH the resource itself. The lab accepts both and
applies at once (the driver's vendor table picks the URI). Property names follow the DMTF
NetworkDeviceFunction schema. ``CHAPSecret`` is write-only: GET returns null, as real BMCs do;
the lab keeps the written value in process for its host simulators.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from typing import Any

import flask

ISCSI_FIELDS: dict[str, type | tuple[type, ...]] = {
    "IPAddressType": str,
    "InitiatorName": str,
    "InitiatorIPAddress": str,
    "InitiatorNetmask": str,
    "InitiatorDefaultGateway": str,
    "PrimaryTargetName": str,
    "PrimaryTargetIPAddress": str,
    "PrimaryTargetTCPPort": int,
    "PrimaryLUN": int,
    "PrimaryVLANEnable": bool,
    "PrimaryVLANId": int,
    "AuthenticationMethod": str,
    "CHAPUsername": str,
    "CHAPSecret": str,
    "TargetInfoViaDHCP": bool,
    "IPMaskDNSViaDHCP": bool,
}
_ENUMS = {"AuthenticationMethod": ("None", "CHAP", "MutualCHAP"), "IPAddressType": ("IPv4", "IPv6")}
WRITE_ONLY = ("CHAPSecret",)


def blank_iscsi() -> dict[str, Any]:
    """What an unconfigured function reads as: every identity field empty."""
    return {
        "IPAddressType": "IPv4",
        "InitiatorName": None,
        "InitiatorIPAddress": None,
        "InitiatorNetmask": None,
        "InitiatorDefaultGateway": None,
        "PrimaryTargetName": None,
        "PrimaryTargetIPAddress": None,
        "PrimaryTargetTCPPort": 3260,
        "PrimaryLUN": 0,
        "PrimaryVLANEnable": False,
        "PrimaryVLANId": None,
        "AuthenticationMethod": "None",
        "CHAPUsername": None,
        "CHAPSecret": None,
        "TargetInfoViaDHCP": False,
        "IPMaskDNSViaDHCP": False,
    }


def nic_names(boot_nic: str) -> tuple[str, str]:
    """Dell naming: port "NIC.Integrated.1-1" -> adapter "NIC.Integrated.1", function "...-1-1"."""
    adapter = boot_nic.rsplit("-", 1)[0] if "-" in boot_nic else boot_nic
    return adapter, f"{boot_nic}-1"


class IscsiStore:
    """The iSCSIBoot object of each system's boot NIC function, keyed by system uuid."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, dict[str, Any]] = {}
        self.functions: dict[str, tuple[str, str]] = {}  # uuid -> (adapter, function)
        # told (uuid, changes) after each PATCH a client applied (not the lab's own set-ups)
        self.watchers: list[Callable[[str, dict[str, Any]], None]] = []

    def add(self, uuid: str, boot_nic: str) -> None:
        self.functions[uuid] = nic_names(boot_nic)
        self._data[uuid] = blank_iscsi()

    def get(self, uuid: str) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._data[uuid])

    def clear(self, uuid: str) -> None:
        with self._lock:
            self._data[uuid] = blank_iscsi()

    def patch(self, uuid: str, changes: dict[str, Any]) -> str | None:
        """Apply a PATCH body's iSCSIBoot; return an error message (nothing applied) or None."""
        for key, value in changes.items():
            want = ISCSI_FIELDS.get(key)
            if want is None:
                return f"PropertyUnknown: iSCSIBoot/{key}"
            if value is not None and (not isinstance(value, want) or isinstance(value, bool) is not (want is bool)):
                return f"PropertyValueTypeError: iSCSIBoot/{key}"
            if key in _ENUMS and value not in _ENUMS[key]:
                return f"PropertyValueNotInList: iSCSIBoot/{key}={value}"
        with self._lock:
            self._data[uuid].update(changes)
        return None


def register_routes(app: flask.Flask, store: IscsiStore, resolve: Any) -> None:
    """Add the NIC routes to an emulator app; ``resolve(identity)`` gives a system uuid or None."""
    base = "/redfish/v1/Chassis/<identity>/NetworkAdapters"

    def _fn_or_404(identity: str, adapter: str | None = None, function: str | None = None) -> str:
        uuid = resolve(identity)
        if uuid is None or uuid not in store.functions:
            flask.abort(404)
        have_adapter, have_function = store.functions[uuid]
        if (adapter is not None and adapter != have_adapter) or (function is not None and function != have_function):
            flask.abort(404)
        return str(uuid)

    def _odata(path: str, kind: str, **body: Any) -> flask.Response:
        return flask.jsonify({"@odata.id": path, "@odata.type": kind, **body})

    @app.route(base, methods=["GET"])
    def lab_network_adapters(identity: str) -> flask.Response:
        uuid = _fn_or_404(identity)
        adapter, _ = store.functions[uuid]
        return _odata(
            flask.request.path.rstrip("/"),
            "#NetworkAdapterCollection.NetworkAdapterCollection",
            Name="Network Adapter Collection",
            Members=[{"@odata.id": f"/redfish/v1/Chassis/{identity}/NetworkAdapters/{adapter}"}],
            **{"Members@odata.count": 1},
        )

    @app.route(f"{base}/<adapter>", methods=["GET"])
    def lab_network_adapter(identity: str, adapter: str) -> flask.Response:
        _fn_or_404(identity, adapter)
        path = f"/redfish/v1/Chassis/{identity}/NetworkAdapters/{adapter}"
        return _odata(
            path,
            "#NetworkAdapter.v1_9_0.NetworkAdapter",
            Id=adapter,
            Name=adapter,
            Manufacturer="Lab",
            NetworkDeviceFunctions={"@odata.id": f"{path}/NetworkDeviceFunctions"},
        )

    @app.route(f"{base}/<adapter>/NetworkDeviceFunctions", methods=["GET"])
    def lab_network_device_functions(identity: str, adapter: str) -> flask.Response:
        uuid = _fn_or_404(identity, adapter)
        _, function = store.functions[uuid]
        path = f"/redfish/v1/Chassis/{identity}/NetworkAdapters/{adapter}/NetworkDeviceFunctions"
        return _odata(
            path,
            "#NetworkDeviceFunctionCollection.NetworkDeviceFunctionCollection",
            Name="Network Device Function Collection",
            Members=[{"@odata.id": f"{path}/{function}"}],
            **{"Members@odata.count": 1},
        )

    @app.route(f"{base}/<adapter>/NetworkDeviceFunctions/<function>", methods=["GET", "PATCH"])
    @app.route(f"{base}/<adapter>/NetworkDeviceFunctions/<function>/Settings", methods=["GET", "PATCH"])
    def lab_network_device_function(identity: str, adapter: str, function: str) -> Any:
        uuid = _fn_or_404(identity, adapter, function)
        path = f"/redfish/v1/Chassis/{identity}/NetworkAdapters/{adapter}/NetworkDeviceFunctions/{function}"
        if flask.request.method == "PATCH":
            body = flask.request.get_json(silent=True)
            if not isinstance(body, dict) or not isinstance(body.get("iSCSIBoot"), dict):
                return _error(400, "PATCH needs a JSON body with an iSCSIBoot object")
            extra = sorted(set(body) - {"iSCSIBoot", "@Redfish.SettingsApplyTime"})
            if extra:
                return _error(400, f"PropertyNotWritable: {', '.join(extra)}")
            problem = store.patch(uuid, body["iSCSIBoot"])
            if problem:
                return _error(400, problem)
            for watch in list(store.watchers):
                watch(uuid, dict(body["iSCSIBoot"]))
            return "", 204
        iscsi = store.get(uuid)
        for key in WRITE_ONLY:
            iscsi[key] = None
        return _odata(
            path,
            "#NetworkDeviceFunction.v1_9_0.NetworkDeviceFunction",
            Id=function,
            Name=function,
            NetDevFuncType="iSCSI",
            NetDevFuncCapabilities=["Ethernet", "iSCSI"],
            iSCSIBoot=iscsi,
            Status={"State": "Enabled", "Health": "OK"},
            **{"@Redfish.Settings": {"SettingsObject": {"@odata.id": f"{path}/Settings"}}},
        )


def _error(code: int, message: str) -> tuple[flask.Response, int]:
    body = {
        "error": {
            "code": "Base.1.0.GeneralError",
            "message": message,
            "@Message.ExtendedInfo": [{"Message": message}],
        }
    }
    return flask.jsonify(body), code
