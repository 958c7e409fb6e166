"""Redfish inventory, health and SEL for the lab systems (extra routes on the emulator app).

The stock emulator renders no ``Model``, ``CoreCount`` or ``LogServices`` and a fixed "OK"
health. The lab fills them from ``lab.bmc.hardware`` state: the system resource is amended after
the emulator rendered it, and ``/redfish/v1/Systems/<id>/LogServices/Sel`` (DMTF layout) serves
the event log with every entry inlined, as iDRAC does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import flask

from lab.bmc.hardware import HardwareState

_SYSTEM = "/redfish/v1/Systems/"


def register_routes(app: flask.Flask, state: HardwareState, name_for: Callable[[str], str | None]) -> None:
    def body_or_404(identity: str) -> str:
        name = name_for(identity)
        if name is None or not state.has(name):
            flask.abort(404)
        return name

    @app.after_request
    def lab_amend_system(resp: flask.Response) -> flask.Response:
        path = flask.request.path.rstrip("/")
        if flask.request.method != "GET" or resp.status_code != 200 or not path.startswith(_SYSTEM):
            return resp
        identity = path[len(_SYSTEM):]
        name = name_for(identity) if "/" not in identity else None
        if name is None or not state.has(name):
            return resp
        b = state.get(name)
        doc: dict[str, Any] = json.loads(resp.get_data())
        doc["Model"] = b.model
        doc.setdefault("ProcessorSummary", {})["CoreCount"] = b.cores
        doc.setdefault("MemorySummary", {})["TotalSystemMemoryGiB"] = b.memory_gb
        doc["Status"] = {"State": "Enabled", "Health": b.health, "HealthRollup": b.health}
        doc["LogServices"] = {"@odata.id": f"{path}/LogServices"}
        resp.set_data(json.dumps(doc))
        return resp

    @app.route("/redfish/v1/Systems/<identity>/LogServices", methods=["GET"])
    def lab_log_services(identity: str) -> flask.Response:
        body_or_404(identity)
        base = f"/redfish/v1/Systems/{identity}/LogServices"
        return flask.jsonify({"@odata.id": base, "@odata.type": "#LogServiceCollection.LogServiceCollection",
                              "Name": "Log Service Collection", "Members": [{"@odata.id": f"{base}/Sel"}],
                              "Members@odata.count": 1})

    @app.route("/redfish/v1/Systems/<identity>/LogServices/Sel", methods=["GET"])
    def lab_log_service(identity: str) -> flask.Response:
        body_or_404(identity)
        base = f"/redfish/v1/Systems/{identity}/LogServices/Sel"
        return flask.jsonify({"@odata.id": base, "@odata.type": "#LogService.v1_1_0.LogService", "Id": "Sel",
                              "Name": "System Event Log", "LogEntryType": "SEL",
                              "Entries": {"@odata.id": f"{base}/Entries"}})

    @app.route("/redfish/v1/Systems/<identity>/LogServices/Sel/Entries", methods=["GET"])
    def lab_log_entries(identity: str) -> flask.Response:
        name = body_or_404(identity)
        base = f"/redfish/v1/Systems/{identity}/LogServices/Sel/Entries"
        members = [{"@odata.id": f"{base}/{e['Id']}", "@odata.type": "#LogEntry.v1_4_0.LogEntry",
                    **{k: v for k, v in e.items() if k not in ("event", "stamp")}}
                   for e in state.get(name).entries]
        return flask.jsonify({"@odata.id": base, "@odata.type": "#LogEntryCollection.LogEntryCollection",
                              "Name": "Log Entries", "Members": members, "Members@odata.count": len(members)})
