"""The controller's HTTP API over real sockets: tokens and roles, routing, audit, OpenAPI, iPXE, metrics."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from aimctl.api.app import Api, ApiError, Request, Response
from aimctl.api.client import ApiCallError, ApiClient, ControllerNotRunning
from aimctl.errors import OperatorError
from aimctl.failover.runner import StepEvent
from aimctl.journal import LeaseHeld
from aimctl.records.audit import Audit
from aimctl.records.metrics import Metrics

VIEWER = "viewer-token-0123456789abcdef"
OPERATOR = "operator-token-0123456789abcdef"


@dataclass
class Lab:
    api: Api
    state: Path
    audit: Audit
    metrics: Metrics
    admin: str
    port: int

    def call(self, method: str, path: str, token: str | None = None, body: Any = None,
             raw: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """http.client sends the path exactly as given (no normalisation), like a hostile client would."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        h = dict(headers or {})
        if token:
            h["Authorization"] = f"Bearer {token}"
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        conn.request(method, path, body=data, headers=h)
        resp = conn.getresponse()
        out = (resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        conn.close()
        return out


def status_handler(req: Request) -> Any:
    return {"personas": {"ex1": "r720-1"}, "who": req.identity.name if req.identity else None}


def failover_handler(req: Request) -> Any:
    if not isinstance(req.body, dict) or "persona" not in req.body:
        raise ApiError(400, "want {persona}")
    return Response(202, {"id": "fo-20261123-0001", "persona": req.body["persona"]})


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lab]:
    state = tmp_path / "ctrl"
    state.mkdir()
    monkeypatch.setenv("AIMCTL_TEST_OPERATOR_TOKEN", OPERATOR)
    (state / "tokens.yaml").write_text(
        "tokens:\n"
        f"  - {{name: grafana, role: viewer, sha256: {hashlib.sha256(VIEWER.encode()).hexdigest()}}}\n"
        "  - {name: alice, role: operator, token: env:AIMCTL_TEST_OPERATOR_TOKEN}\n"
    )
    audit = Audit(state / "audit.log")
    metrics = Metrics()
    api = Api(state, audit=audit, metrics=metrics)
    api.route("GET", "/v1/status", status_handler, role="viewer", summary="Assignment and health")
    api.route("POST", "/v1/failovers", failover_handler, role="operator", summary="Start a failover")
    api.route("GET", "/v1/failovers/{id}", lambda r: {"id": r.params["id"]}, summary="One failover's timeline")
    api.route("POST", "/v1/servers/{name}/clear", lambda r: {"cleared": r.params["name"]}, role="admin",
              summary="Clear a quarantine")
    api.route("POST", "/v1/leased", lambda r: (_ for _ in ()).throw(LeaseHeld("server:s1", "fo-1", 1e12, 0)),
              role="operator")
    api.route("GET", "/v1/broken", lambda r: 1 / 0)
    api.route("GET", "/v1/refused", lambda r: (_ for _ in ()).throw(OperatorError("no standby for ex1")))
    api.start()
    admin = (state / "api-token").read_text().strip()
    yield Lab(api, state, audit, metrics, admin, int(api.url.rsplit(":", 1)[1]))
    api.stop()


def test_admin_token_and_address_file(lab: Lab) -> None:
    assert len(lab.admin) >= 32
    assert oct((lab.state / "api-token").stat().st_mode & 0o777) == oct(0o600)
    info = json.loads((lab.state / "api.json").read_text())
    assert info["url"] == lab.api.url and info["pid"] == os.getpid()
    assert lab.api.url.startswith("http://127.0.0.1:")
    # A second Api on the same state dir reads the same admin token instead of replacing it.
    assert Api(lab.state).tokens.admin_token == lab.admin


def test_tokens_and_roles(lab: Lab) -> None:
    status, headers, body = lab.call("GET", "/v1/status")
    assert status == 401 and "bearer" in headers["www-authenticate"].lower()
    assert json.loads(body) == {"error": "missing bearer token (Authorization: Bearer <token>)"}
    assert lab.call("GET", "/v1/status", token="not-a-token")[0] == 401
    assert lab.call("GET", "/v1/status", headers={"Authorization": f"Basic {VIEWER}"})[0] == 401
    status, _, body = lab.call("GET", "/v1/status", token=VIEWER)
    assert status == 200 and json.loads(body)["who"] == "grafana"
    status, _, body = lab.call("POST", "/v1/failovers", token=VIEWER, body={"persona": "ex1"})
    assert status == 403 and "needs role operator" in json.loads(body)["error"]
    status, _, body = lab.call("POST", "/v1/failovers", token=OPERATOR, body={"persona": "ex1"})
    assert status == 202 and json.loads(body)["persona"] == "ex1"
    assert lab.call("POST", "/v1/servers/r720-1/clear", token=OPERATOR)[0] == 403
    status, _, body = lab.call("POST", "/v1/servers/r720-1/clear", token=lab.admin)
    assert status == 200 and json.loads(body) == {"cleared": "r720-1"}


def test_routing_params_and_errors(lab: Lab) -> None:
    status, _, body = lab.call("GET", "/v1/failovers/fo-20261123-0001", token=VIEWER)
    assert (status, json.loads(body)) == (200, {"id": "fo-20261123-0001"})
    assert lab.call("GET", "/v1/nothing", token=VIEWER)[0] == 404
    status, headers, _ = lab.call("DELETE", "/v1/status", token=lab.admin)
    assert status == 405 and headers["allow"] == "GET"
    status, _, body = lab.call("POST", "/v1/failovers", token=OPERATOR, raw=b"{not json")
    assert status == 400 and "not valid JSON" in json.loads(body)["error"]
    assert lab.call("POST", "/v1/failovers", token=OPERATOR, body={"x": 1})[0] == 400
    status, _, body = lab.call("POST", "/v1/leased", token=OPERATOR)
    assert status == 409 and "held by fo-1" in json.loads(body)["error"]
    status, _, body = lab.call("GET", "/v1/refused", token=VIEWER)
    assert (status, json.loads(body)) == (400, {"error": "no standby for ex1"})
    status, _, body = lab.call("GET", "/v1/broken", token=VIEWER)
    assert status == 500 and "ZeroDivision" not in body.decode()
    status, _, _ = lab.call("POST", "/v1/failovers", token=OPERATOR, headers={"Content-Length": str(1 << 21)},
                            raw=b"")
    assert status == 413


def test_changes_are_audited_reads_are_not(lab: Lab) -> None:
    lab.call("GET", "/v1/status", token=VIEWER)
    lab.call("POST", "/v1/failovers", token=OPERATOR, body={"persona": "ex1", "password": "pw"})
    lab.call("POST", "/v1/failovers", token=VIEWER, body={"persona": "ex1"})
    lab.call("POST", "/v1/failovers", body={"persona": "ex1"})
    entries = lab.audit.entries()
    assert [(e["actor"], e["detail"]["role"], e["detail"]["status"]) for e in entries] == [
        ("alice", "operator", 202), ("grafana", "viewer", 403), ("anonymous", None, 401)]
    assert entries[0]["action"] == "POST /v1/failovers" and entries[0]["source"].startswith("api 127.0.0.1:")
    assert entries[0]["detail"]["body"] == {"persona": "ex1", "password": "***"}
    assert lab.audit.verify().ok


def test_openapi_lists_every_route(lab: Lab) -> None:
    status, _, body = lab.call("GET", "/openapi.json")  # public: describes the API, not the data
    assert status == 200
    doc = json.loads(body)
    assert doc["openapi"].startswith("3.1")
    listed = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert listed == {(r.method, r.pattern) for r in lab.api.routes}
    op = doc["paths"]["/v1/failovers/{id}"]["get"]
    assert op["summary"] == "One failover's timeline" and op["x-aimctl-role"] == "viewer"
    assert op["parameters"] == [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]
    assert doc["paths"]["/v1/failovers"]["post"]["x-aimctl-role"] == "operator"
    boot = doc["paths"]["/boot/{server}.ipxe"]["get"]
    assert boot["security"] == [] and "text/plain" in boot["responses"]["200"]["content"]
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


def test_ipxe_scripts_are_public_and_traversal_is_refused(lab: Lab, tmp_path: Path) -> None:
    boot = lab.state / "boot"
    boot.mkdir()
    (boot / "r720-2.ipxe").write_text("#!ipxe\nsanboot iscsi:127.0.0.1::3260:1:iqn.2026-01.lab:ex1-boot\n")
    (tmp_path / "outside.ipxe").write_text("secret")
    (lab.state / "leak.ipxe").write_text("secret")  # in the state dir, outside boot/
    (boot / "linked.ipxe").symlink_to(tmp_path / "outside.ipxe")
    status, headers, body = lab.call("GET", "/boot/r720-2.ipxe")
    assert status == 200 and body.startswith(b"#!ipxe") and headers["content-type"].startswith("text/plain")
    assert lab.call("GET", "/boot/r720-9.ipxe")[0] == 404
    for path in ["/boot/..%2fapi-token.ipxe", "/boot/..%2fleak.ipxe", "/boot/..%2Fleak.ipxe", "/boot/..%2F..%2Fctrl%2Fapi-token.ipxe", "/boot/%2e%2e.ipxe",
                 "/boot/a.b.ipxe", "/boot/../api-token.ipxe", "/boot/linked.ipxe", "/boot/%00.ipxe",
                 "/boot/r720-2.ipxe%00", "/boot/.ipxe"]:
        status, _, body = lab.call("GET", path)
        assert status in (400, 404), path
        assert lab.admin.encode() not in body and b"secret" not in body, path


def test_metrics_need_a_viewer_token(lab: Lab) -> None:
    lab.metrics.failover_finished("done")
    lab.metrics.observe_step(StepEvent("fo-1", "fence", "result", "ok", {}, 1.7))
    lab.metrics.observe_step(StepEvent("fo-1", "fence", "intent", None, {}, None))
    lab.metrics.set_heartbeat_age("ex1", 2.5)
    lab.metrics.set_spare_capacity("exchange", 1)
    assert lab.call("GET", "/metrics")[0] == 401
    status, headers, body = lab.call("GET", "/metrics", token=VIEWER)
    text = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert 'aimctl_failovers_total{result="done"} 1.0' in text
    assert 'aimctl_step_duration_seconds_count{step="fence"} 1.0' in text
    assert 'aimctl_step_duration_seconds_bucket{le="2.5",step="fence"} 1.0' in text
    assert 'aimctl_heartbeat_age_seconds{persona="ex1"} 2.5' in text
    assert 'aimctl_pool_spare_capacity{pool="exchange"} 1.0' in text
    assert "process_cpu" not in text  # private registry: only our metrics


def test_tokens_file_reloads_and_a_broken_edit_keeps_the_old_tokens(lab: Lab) -> None:
    path = lab.state / "tokens.yaml"
    new = "late-token-0123456789abcdef"
    path.write_text(path.read_text() + f"  - {{name: bob, role: admin, sha256: {hashlib.sha256(new.encode()).hexdigest()}}}\n")
    assert lab.call("POST", "/v1/servers/r720-1/clear", token=new)[0] == 200
    path.write_text("tokens:\n  - {name: eve, role: superuser, sha256: " + "0" * 64 + "}\n")
    assert lab.call("GET", "/v1/status", token=VIEWER)[0] == 200
    assert lab.call("GET", "/v1/status", token=new)[0] == 200


@pytest.mark.parametrize("content,problem", [
    ("tokens:\n  - {name: eve, role: superuser, sha256: " + "0" * 64 + "}\n", "role must be one of"),
    ("tokens:\n  - {name: eve, role: viewer, token: plain-token-value}\n", "want sha256"),
    ("tokens:\n  - {name: admin, role: viewer, sha256: " + "0" * 64 + "}\n", "reserved"),
    ("tokens: [\n", "cannot read"),
])
def test_bad_tokens_file_is_refused_at_start(tmp_path: Path, content: str, problem: str) -> None:
    (tmp_path / "tokens.yaml").write_text(content)
    with pytest.raises(OperatorError, match=problem):
        Api(tmp_path)


def test_client_finds_the_controller_and_explains_when_it_cannot(lab: Lab, tmp_path: Path) -> None:
    client = ApiClient(lab.state)
    assert client.get("/v1/status")["who"] == "admin"
    assert client.post("/v1/failovers", {"persona": "ex2"})["persona"] == "ex2"
    with pytest.raises(ApiCallError) as err:
        ApiClient(lab.state, token=VIEWER).post("/v1/failovers", {"persona": "ex2"})
    assert err.value.status == 403 and "needs role operator" in str(err.value)
    with pytest.raises(ControllerNotRunning, match="not running"):
        ApiClient(tmp_path / "elsewhere")
    url = lab.api.url
    lab.api.stop()
    assert not (lab.state / "api.json").exists()
    (lab.state / "api.json").write_text(json.dumps({"url": url}))  # stale, as after a crash
    with pytest.raises(ControllerNotRunning, match="does not answer"):
        ApiClient(lab.state, timeout_s=2).get("/v1/status")


def test_route_registration_is_checked(lab: Lab) -> None:
    with pytest.raises(ValueError):
        lab.api.route("GET", "/v1/status", status_handler)
    with pytest.raises(ValueError):
        lab.api.route("GET", "/v1/x", status_handler, role="root")
    with pytest.raises(ValueError):
        lab.api.route("TRACE", "/v1/x", status_handler)
