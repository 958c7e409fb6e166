"""The controller's HTTP API over real sockets (uvicorn): tokens and pool-scoped roles, routing, the
one gate (validation, audit, write guard), bad input as one-line 400s, OpenAPI from the models, TLS."""

from __future__ import annotations

import datetime
import hashlib
import http.client
import json
import os
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aimctl.api import models as m
from aimctl.api.app import Api, ApiError, Call, Reply, json_depth
from aimctl.api.client import ApiCallError, ApiClient, ControllerNotRunning
from aimctl.api.server import TlsFiles
from aimctl.errors import OperatorError
from aimctl.failover.runner import StepEvent
from aimctl.journal import LeaseHeld
from aimctl.records.audit import Audit
from aimctl.records.metrics import Metrics

VIEWER = "viewer-token-0123456789abcdef"
OPERATOR = "operator-token-0123456789abcdef"
WEBOPS = "webops-token-0123456789abcdef"


@dataclass
class Lab:
    api: Api
    state: Path
    audit: Audit
    metrics: Metrics
    admin: str
    port: int
    tls: ssl.SSLContext | None = None

    def call(self, method: str, path: str, token: str | None = None, body: Any = None,
             raw: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """http.client sends the path exactly as given (no normalisation), like a hostile client would."""
        if self.tls:
            conn: http.client.HTTPConnection = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=10,
                                                                           context=self.tls)
        else:
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


class Persona(m.In):
    persona: str
    note: Any = ""


Page = m.ListQuery


POOLS = {"ex1": "exchange", "web1": "web"}


def failover_handler(call: Call) -> Any:
    return Reply(202, {"id": "fo-20261123-0001", "persona": call.body.persona, "by": call.actor})


def build(state: Path, audit: Audit, metrics: Metrics, tls: TlsFiles | None = None) -> Api:
    api = Api(state, audit=audit, metrics=metrics, tls=tls)
    api.route("GET", "/v1/status", lambda c: {"who": c.identity.name if c.identity else None},
              summary="Assignment and health")
    api.route("POST", "/v1/failovers", failover_handler, role="operator", summary="Start a failover", body=Persona,
              scope=lambda c: POOLS.get(c.body.persona))
    api.route("GET", "/v1/failovers", lambda c: [{"limit": c.query.limit}], summary="Recent", query=Page)
    api.route("GET", "/v1/failovers/{id}", lambda c: {"id": c.params["id"]}, summary="One failover's timeline",
              response=m.Started)
    api.route("POST", "/v1/servers/{name}/clear", lambda c: {"cleared": c.params["name"]}, role="admin",
              summary="Clear a quarantine", response=m.Cleared)
    api.route("POST", "/v1/leased", lambda c: (_ for _ in ()).throw(LeaseHeld("server:s1", "fo-1", 1e12, 0)),
              role="operator")
    api.route("GET", "/v1/broken", lambda c: 1 / 0)
    api.route("GET", "/v1/badshape", lambda c: {"unexpected": 1}, response=m.Started)
    api.route("GET", "/v1/refused", lambda c: (_ for _ in ()).throw(OperatorError("no standby for ex1")))
    api.route("GET", "/v1/teapot", lambda c: (_ for _ in ()).throw(ApiError(418, "short and stout")))
    return api


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lab]:
    state = tmp_path / "ctrl"
    state.mkdir()
    monkeypatch.setenv("AIMCTL_TEST_OPERATOR_TOKEN", OPERATOR)
    (state / "tokens.yaml").write_text(
        "tokens:\n"
        f"  - {{name: grafana, role: viewer, sha256: {hashlib.sha256(VIEWER.encode()).hexdigest()}}}\n"
        "  - {name: alice, role: operator, token: env:AIMCTL_TEST_OPERATOR_TOKEN}\n"
        f"  - {{name: webops, role: viewer, pools: {{web: operator}}, sha256: {hashlib.sha256(WEBOPS.encode()).hexdigest()}}}\n"
    )
    audit = Audit(state / "audit.log")
    metrics = Metrics()
    api = build(state, audit, metrics)
    api.start()
    admin = (state / "api-token").read_text().strip()
    yield Lab(api, state, audit, metrics, admin, int(api.url.rsplit(":", 1)[1]))
    api.stop()


def test_admin_token_and_address_file(lab: Lab) -> None:
    assert len(lab.admin) >= 32
    assert oct((lab.state / "api-token").stat().st_mode & 0o777) == oct(0o600)
    assert oct((lab.state / "api.json").stat().st_mode & 0o777) == oct(0o600)
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
    assert status == 202 and json.loads(body) == {"id": "fo-20261123-0001", "persona": "ex1", "by": "alice(operator)"}
    assert lab.call("POST", "/v1/servers/r720-1/clear", token=OPERATOR)[0] == 403
    status, _, body = lab.call("POST", "/v1/servers/r720-1/clear", token=lab.admin)
    assert status == 200 and json.loads(body) == {"cleared": "r720-1"}


def test_roles_scoped_to_pools(lab: Lab) -> None:
    """webops is operator in pool web and viewer elsewhere: it acts on web1, not on ex1."""
    status, _, body = lab.call("POST", "/v1/failovers", token=WEBOPS, body={"persona": "web1"})
    assert status == 202 and json.loads(body)["by"] == "webops(operator)"
    status, _, body = lab.call("POST", "/v1/failovers", token=WEBOPS, body={"persona": "ex1"})
    assert status == 403
    assert json.loads(body)["error"] == ("POST /v1/failovers needs role operator in pool exchange;"
                                         " token webops has role viewer in pool exchange")
    assert lab.call("GET", "/v1/status", token=WEBOPS)[0] == 200
    assert lab.call("POST", "/v1/servers/r620-1/clear", token=WEBOPS)[0] == 403  # admin nowhere
    entries = lab.audit.entries()
    assert [(e["detail"]["role"], e["detail"]["pool"], e["detail"]["status"]) for e in entries[:2]] == [
        ("operator", "web", 202), ("viewer", "exchange", 403)]


def test_routing_params_and_errors(lab: Lab) -> None:
    status, _, body = lab.call("GET", "/v1/failovers/fo-20261123-0001", token=VIEWER)
    assert (status, json.loads(body)) == (200, {"id": "fo-20261123-0001"})
    status, _, body = lab.call("GET", "/v1/nothing", token=VIEWER)
    assert status == 404 and json.loads(body) == {"error": "no route for /v1/nothing"}
    status, headers, body = lab.call("DELETE", "/v1/status", token=lab.admin)
    assert status == 405 and headers["allow"] == "GET, HEAD" and "not allowed" in json.loads(body)["error"]
    status, _, body = lab.call("POST", "/v1/failovers", token=OPERATOR, raw=b"{not json")
    assert status == 400 and "not valid JSON" in json.loads(body)["error"]
    status, _, body = lab.call("POST", "/v1/failovers", token=OPERATOR, body={"x": 1})
    assert (status, json.loads(body)["error"]) == (400, "body persona: Field required (and 1 more)")
    status, _, body = lab.call("POST", "/v1/leased", token=OPERATOR)
    assert status == 409 and "held by fo-1" in json.loads(body)["error"]
    status, _, body = lab.call("GET", "/v1/refused", token=VIEWER)
    assert (status, json.loads(body)) == (400, {"error": "no standby for ex1"})
    assert lab.call("GET", "/v1/teapot", token=VIEWER)[0] == 418
    for path in ("/v1/broken", "/v1/badshape"):  # a handler's bug, or a result that breaks the promise
        status, _, body = lab.call("GET", path, token=VIEWER)
        assert status == 500 and json.loads(body) == {"error": "internal error (see the controller log)"}
    status, _, _ = lab.call("GET", "/v1/failovers/..%2f..%2fapi-token", token=VIEWER)
    assert status == 404


@pytest.mark.parametrize("raw,problem", [
    (b"[" * 100_000 + b"]" * 100_000, "nested deeper than 32 levels"),  # RecursionError in json.loads
    (json.dumps({"persona": "ex1", "note": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["x"]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}).encode(),
     "nested deeper than 32 levels"),
    (b"\xff\xfe", "not valid JSON"),
    (b'{"persona": 5}', "body persona: Input should be a valid string"),
])
def test_bad_bodies_are_one_line_400s(lab: Lab, raw: bytes, problem: str) -> None:
    status, _, body = lab.call("POST", "/v1/failovers", token=OPERATOR, raw=raw,
                               headers={"Content-Type": "application/json"})
    assert status == 400 and problem in json.loads(body)["error"] and "\n" not in json.loads(body)["error"]


def test_body_size_is_limited_whatever_content_length_says(lab: Lab) -> None:
    assert lab.call("POST", "/v1/failovers", token=OPERATOR, headers={"Content-Length": str(1 << 21)}, raw=b"")[0] == 413
    big = json.dumps({"persona": "ex1", "note": "x" * (1 << 20)}).encode()
    assert lab.call("POST", "/v1/failovers", token=OPERATOR, raw=big)[0] == 413
    assert lab.call("POST", "/v1/failovers", token=OPERATOR, headers={"Content-Length": "-1"}, raw=b"")[0] == 400


@pytest.mark.parametrize("query,status", [
    ("limit=7", 200), ("limit=abc", 400), ("limit=99999999999999999999999", 400), ("limit=", 400),
    ("limit=1e3", 400), ("other=1", 400),
])
def test_query_parameters_are_typed(lab: Lab, query: str, status: int) -> None:
    got, _, body = lab.call("GET", f"/v1/failovers?{query}", token=VIEWER)
    assert got == status, body
    if status == 400:
        assert json.loads(body)["error"].startswith(("query limit: ", "query other: Extra inputs"))


def test_json_depth_is_counted_without_recursion() -> None:
    deep: Any = []
    for _ in range(50_000):
        deep = [deep]
    assert json_depth(deep) == 50_001
    assert json_depth({"a": [1, {"b": 2}]}) == 3 and json_depth("x") == 0


def test_changes_are_audited_reads_are_not_and_secrets_are_masked(lab: Lab) -> None:
    lab.call("GET", "/v1/status", token=VIEWER)
    lab.call("POST", "/v1/failovers", token=OPERATOR, body={"persona": "ex1", "note": "pw"})
    lab.call("POST", "/v1/failovers", token=VIEWER, body={"persona": "ex1"})
    lab.call("POST", "/v1/failovers", body={"persona": "ex1"})
    # A token pasted into a field that does not look secret is still masked: it is a known token.
    lab.call("POST", "/v1/failovers", token=OPERATOR, body={"persona": "ex1", "note": VIEWER})
    lab.call("POST", "/v1/failovers", token=OPERATOR, raw=json.dumps({"persona": "ex1", "password": "hunter2",
                                                                       "api_key": "k"}).encode())
    entries = lab.audit.entries()
    assert [(e["actor"], e["detail"]["role"], e["detail"]["status"]) for e in entries] == [
        ("alice", "operator", 202), ("grafana", "viewer", 403), ("anonymous", None, 401),
        ("alice", "operator", 202), ("alice", "operator", 400)]
    assert entries[0]["action"] == "POST /v1/failovers" and entries[0]["source"].startswith("api 127.0.0.1:")
    assert entries[3]["detail"]["body"] == {"persona": "ex1", "note": "***"}
    assert entries[4]["detail"]["body"] == {"persona": "ex1", "password": "***", "api_key": "***"}
    text = (lab.state / "audit.log").read_text()
    assert VIEWER not in text and OPERATOR not in text and "hunter2" not in text
    assert lab.audit.verify().ok


def test_write_guard_refuses_changes_in_one_place(lab: Lab) -> None:
    lab.api.write_guard = lambda call: "not the leader: http://127.0.0.1:1"
    status, _, body = lab.call("POST", "/v1/failovers", token=OPERATOR, body={"persona": "ex1"})
    assert (status, json.loads(body)) == (503, {"error": "not the leader: http://127.0.0.1:1"})
    assert lab.call("GET", "/v1/status", token=VIEWER)[0] == 200
    assert lab.audit.entries()[-1]["detail"]["status"] == 503


def test_openapi_is_generated_from_the_models(lab: Lab) -> None:
    status, _, body = lab.call("GET", "/openapi.json")  # public: describes the API, not the data
    assert status == 200
    doc = json.loads(body)
    assert doc["openapi"].startswith("3.1")
    listed = {(meth.upper(), p) for p, ops in doc["paths"].items() for meth in ops}
    assert listed == {(r.method, r.path) for r in lab.api.routes}
    op = doc["paths"]["/v1/failovers/{id}"]["get"]
    assert op["summary"] == "One failover's timeline" and op["x-aimctl-role"] == "viewer"
    assert op["parameters"][0]["name"] == "id" and op["parameters"][0]["in"] == "path"
    assert op["responses"]["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Started"}
    assert doc["components"]["schemas"]["Started"] == m.Started.model_json_schema()
    post = doc["paths"]["/v1/failovers"]["post"]
    assert post["x-aimctl-role"] == "operator" and post["x-aimctl-scope"] == "pool"
    assert post["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Persona"}
    assert {"400", "401", "403", "409", "413"} <= set(post["responses"])
    q = doc["paths"]["/v1/failovers"]["get"]["parameters"]
    assert q == [{"name": "limit", "in": "query", "required": False,
                  "schema": {"default": 50, "maximum": 1000, "minimum": 1, "title": "Limit", "type": "integer"}}]
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


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
    ("tokens:\n  - {name: eve, pools: {web: root}, sha256: " + "0" * 64 + "}\n", "pools must map"),
    ("tokens:\n  - {name: eve, pools: [web], sha256: " + "0" * 64 + "}\n", "pools must map"),
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
        lab.api.route("GET", "/v1/status", lambda c: None)
    with pytest.raises(ValueError):
        lab.api.route("GET", "/v1/x", lambda c: None, role="root")
    with pytest.raises(ValueError):
        lab.api.route("TRACE", "/v1/x", lambda c: None)


def test_port_in_use_is_one_clear_line(lab: Lab, tmp_path: Path) -> None:
    other = Api(tmp_path / "other", host="127.0.0.1", port=lab.port)
    with pytest.raises(OperatorError) as err:
        other.start()
    assert str(err.value) == (f"cannot listen for the API on TCP 127.0.0.1:{lab.port}: address already in use"
                              " (another controller, or a lab, already listens there)")
    assert "\n" not in str(err.value)


def _self_signed(where: Path) -> TlsFiles:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aimctl test")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress

    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    files = TlsFiles(where / "api.crt", where / "api.key")
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    return files


def test_tls_serves_https_and_the_cli_trusts_the_controller_certificate(tmp_path: Path) -> None:
    state = tmp_path / "ctrl"
    state.mkdir()
    tls = _self_signed(tmp_path)
    api = build(state, Audit(state / "audit.log"), Metrics(), tls)
    url = api.start()
    try:
        assert url.startswith("https://127.0.0.1:")
        assert json.loads((state / "api.json").read_text())["tls_cert"] == str(tls.cert.resolve())
        assert ApiClient(state).get("/v1/status") == {"who": "admin"}
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:  # plain HTTP to a TLS port
            s.sendall(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
            assert not s.recv(100).startswith(b"HTTP/1.1 200")
    finally:
        api.stop()
    bad = TlsFiles(tmp_path / "api.crt", tmp_path / "missing.key")
    with pytest.raises(OperatorError, match="API TLS: cannot use certificate"):
        build(tmp_path / "s2", Audit(tmp_path / "a2.log"), Metrics(), bad).start()


def test_console_sign_in_sets_a_strict_secure_session_under_tls(tmp_path: Path) -> None:
    """Sign-in needs only the token store and the audit log, so it is tested here without a controller."""
    import re
    from typing import cast

    import httpx

    from aimctl.api.console import mount_console
    from aimctl.daemon import Controller

    state = tmp_path / "ctrl"
    state.mkdir()
    tls = _self_signed(tmp_path)
    audit = Audit(state / "audit.log")
    api = build(state, audit, Metrics(), tls)
    mount_console(api, cast(Controller, None))
    url = api.start()
    admin = (state / "api-token").read_text().strip()
    try:
        with httpx.Client(base_url=url, verify=ssl.create_default_context(cafile=str(tls.cert))) as http:
            form = http.get("/signin")
            assert "script-src 'self'" in form.headers["content-security-policy"]
            assert "unsafe-inline" not in form.headers["content-security-policy"]
            pre = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
            wrong = http.post("/signin", data={"csrf": pre, "token": "x" * 20, "next": "/"})
            assert wrong.status_code == 401 and "not known" in wrong.text
            no_csrf = http.post("/signin", data={"token": admin, "next": "/"})
            assert no_csrf.status_code == 403
            ok = http.post("/signin", data={"csrf": pre, "token": admin, "next": "//evil.example/"})
            assert ok.status_code == 303 and ok.headers["location"] == "/"  # never off-site after sign-in
            cookie = next(v for k, v in ok.headers.multi_items() if k == "set-cookie" and "aimctl_session=" in v)
            assert {"HttpOnly", "Secure", "SameSite=strict"} <= {p.strip() for p in cookie.split(";")}
    finally:
        api.stop()
    signins = [(e["actor"], e["detail"]["status"]) for e in audit.entries() if e["action"] == "console.signin"]
    assert signins == [("anonymous", 401), ("admin", 303)]
    assert admin not in (state / "audit.log").read_text()
