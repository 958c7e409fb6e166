"""The API of a real controller on the lab: schemathesis over its /openapi.json (no 5xx, every
response as documented), the boot script refused outside its window, pool pauses, scoped tokens."""

from __future__ import annotations

import hashlib
import http.client
import json
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from aimctl.api.client import ApiCallError, ApiClient
from lab.controller_proc import ControllerProcess
from lab.fixtures import LabHandle, lab  # noqa: F401 - the session lab fixture

pytestmark = pytest.mark.lab
WEBOPS = "webops-token-lab-0123456789abcdef"


@pytest.fixture(scope="module")
def controller(lab: LabHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControllerProcess]:  # noqa: F811
    lab.reset()
    tmp = tmp_path_factory.mktemp("api-lab")
    doc = lab.overlay()
    doc["controller"].update({"power_deadline": 4.0, "boot_timer_override": 8.0})
    (tmp / "endpoints.yaml").write_text(yaml.safe_dump(doc))
    state = tmp / "ctrl"  # not created here: the controller makes it, 0700
    ctrl = ControllerProcess(lab.definitions, tmp / "endpoints.yaml", state)
    state.mkdir(mode=0o755)
    (state / "tokens.yaml").write_text(
        f"tokens:\n  - {{name: webops, pools: {{web: operator}}, sha256: {hashlib.sha256(WEBOPS.encode()).hexdigest()}}}\n")
    ctrl.start()
    try:
        ctrl.wait(ctrl.all_alive, 20, "every persona heartbeating")
        yield ctrl
    finally:
        ctrl.stop()
        assert lab.status()["observer"]["double_access"] == 0


def admin(ctrl: ControllerProcess) -> str:
    return (ctrl.state / "api-token").read_text().strip()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_fuzzed_requests_get_no_5xx_and_documented_responses(controller: ControllerProcess,
                                                             mode: GenerationMode) -> None:
    """Every operation of the live /openapi.json, valid and invalid inputs: never a 5xx, and every
    answer (status, content type, body) as the document says. Bounded: a few examples per operation."""
    schema = schemathesis.openapi.from_url(controller.api.url + "/openapi.json")
    auth = {"Authorization": f"Bearer {admin(controller)}"}
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) >= 14
    for operation in operations:
        @settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        @given(case=operation.as_strategy(generation_mode=mode))
        def fuzz(case: Any) -> None:
            case.call_and_validate(headers=auth, checks=checks)

        fuzz()
    # Nothing the fuzzer sent started an operation (its names never match the lab's).
    assert controller.api.get("/v1/failovers") == []


def test_state_dir_is_0700_even_when_it_existed_open(controller: ControllerProcess) -> None:
    assert stat.S_IMODE(controller.state.stat().st_mode) == 0o700
    assert stat.S_IMODE((controller.state / "boot").stat().st_mode) == 0o700


def test_boot_script_is_refused_outside_its_window_and_every_refusal_is_audited(controller: ControllerProcess) -> None:
    base = controller.api.url.split("//", 1)[1]
    for server, status in (("r620-1", 403), ("r720-1", 404), ("nosuch", 404)):
        conn = http.client.HTTPConnection(base, timeout=5)
        conn.request("GET", f"/boot/{server}.ipxe")
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        assert resp.status == status, (server, body)
        assert b"sanboot" not in body and b"password" not in body
    audit = controller.api.get("/v1/audit?limit=20")
    refused = [e for e in audit if e["action"] == "boot.refused" and e["target"] == "r620-1"]
    assert refused and refused[-1]["detail"]["why"] == "no operation is powering r620-1 on"


def test_operator_pause_holds_a_pool_and_scoped_tokens_act_only_in_their_pool(controller: ControllerProcess) -> None:
    web = ApiClient(controller.state, token=WEBOPS)
    with pytest.raises(ApiCallError) as err:
        web.post("/v1/pools/exchange/pause", {"reason": "no"})
    assert err.value.status == 403 and "in pool exchange" in str(err.value)
    paused = web.post("/v1/pools/web/pause", {"reason": "switch maintenance, password=hunter2"})
    assert paused["paused"] and paused["by"] == "webops(operator)"
    st = web.get("/v1/status")
    assert set(st["personas"]) == {"web1", "web2"}  # sees only its pool
    assert st["operator_paused"]["web"]["reason"].startswith("switch maintenance")
    resumed = web.post("/v1/pools/web/resume")
    assert (resumed["pool"], resumed["paused"]) == ("web", False)
    assert controller.api.get("/v1/status")["operator_paused"] == {}
    entries = [e for e in controller.api.get("/v1/audit?limit=20") if e["action"].startswith("pool.")]
    assert [e["action"] for e in entries[-2:]] == ["pool.pause", "pool.resume"]
    # The same from the CLI, which the audit log names as the console's equivalent.
    for cmd in (["pause", "exchange", "--reason", "maintenance"], ["resume", "exchange"]):
        r = subprocess.run([sys.executable, "-m", "aimctl.cli", *cmd, "--state", str(controller.state)],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        if cmd[0] == "pause":
            assert controller.api.get("/v1/status")["operator_paused"]["exchange"]["by"] == "admin(admin)"
    assert controller.api.get("/v1/status")["operator_paused"] == {}
    log = (controller.state / "controller.log").read_text()
    assert WEBOPS not in log and WEBOPS not in (controller.state / "audit.log").read_text()


def test_typed_queries_and_deep_bodies_on_the_real_routes(controller: ControllerProcess) -> None:
    c = controller.api
    for q in ("limit=abc", "limit=99999999999999999999999", "limit=0"):
        with pytest.raises(ApiCallError) as err:
            c.get(f"/v1/failovers?{q}")
        assert err.value.status == 400 and "query limit" in str(err.value)
    with pytest.raises(ApiCallError) as err:
        c.post("/v1/failover", json.loads("[" * 40 + "]" * 40))
    assert err.value.status == 400 and "nested deeper" in str(err.value)
    with pytest.raises(ApiCallError) as err:
        c.post("/v1/failover", {"persona": "exchange1", "to": "no-such-server"})
    assert err.value.status in (400, 404)
    assert [o for o in c.get("/v1/failovers") if o["persona"] == "exchange1"] == []


def test_the_openapi_document_lists_the_real_routes(controller: ControllerProcess) -> None:
    doc = controller.api.get("/openapi.json")
    assert {"/v1/status", "/v1/failovers", "/v1/failovers/{id}", "/v1/failovers/{id}/approve",
            "/v1/failovers/{id}/retry", "/v1/failovers/{id}/mark-fenced", "/v1/failovers/{id}/abandon", "/v1/failover",
            "/v1/move", "/v1/failback", "/v1/servers/{server}/clear", "/v1/pools/{pool}/pause",
            "/v1/pools/{pool}/resume", "/v1/plan", "/v1/audit", "/v1/drift", "/v1/drift/check",
            "/v1/personas", "/v1/personas/{name}/start", "/v1/archives", "/v1/archives/{persona}",
            "/v1/restore", "/v1/rehearse", "/v1/rehearsals", "/v1/cluster",
            "/boot/{server}.ipxe", "/metrics",
            "/openapi.json"} == set(doc["paths"])
    assert Path(controller.state / "api.json").exists()


def test_an_operator_pause_holds_a_real_death_until_resumed(controller: ControllerProcess, lab: LabHandle) -> None:  # noqa: F811
    """Last in this module: it fails exchange1 over."""
    c = controller.api
    c.post("/v1/pools/exchange/pause", {"reason": "held for the test"})
    lab.fault("power-button", "r720-1")
    controller.wait(lambda: "exchange1" in c.get("/v1/status")["queued"], 30, "exchange1's death queued")
    assert [o for o in c.get("/v1/failovers") if o["persona"] == "exchange1"] == []  # held, not acted on
    c.post("/v1/pools/exchange/resume")

    def done() -> Any:
        ops = [o for o in c.get("/v1/failovers") if o["persona"] == "exchange1"]
        return ops[0] if ops and ops[0]["state"] in ("done", "failed", "needs-operator") else None

    op = controller.wait(done, 60, "the held failover to finish")
    assert op["state"] == "done", op
    assert c.get("/v1/status")["personas"]["exchange1"]["server"] == "r720-3"
