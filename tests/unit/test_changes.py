"""Change records (JSONL and a signed webhook served by a real local HTTP server) and the audit chain."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from aimctl.errors import OperatorError, SecretError
from aimctl.failover.runner import StepEvent
from aimctl.journal import Journal
from aimctl.records.audit import GENESIS, Audit, line_hash
from aimctl.records.changes import ChangeRecords, JsonlSink, WebhookSink
from aimctl.secrets import register

REPO = Path(__file__).resolve().parents[2]
HOOK_SECRET = "hook-secret-for-tests-0123456789"


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path / "journal.db")
    yield j
    j.close()


class Receiver:
    """A change-management endpoint: records requests; answers with the queued statuses, then 200."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(outer.statuses.pop(0) if outer.statuses else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def hook_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AIMCTL_TEST_HOOK_SECRET", HOOK_SECRET)
    return "env:AIMCTL_TEST_HOOK_SECRET"


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


# -- change records --------------------------------------------------------------------------------


def test_failover_change_lifecycle_in_jsonl(journal: Journal, tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path / "changes.jsonl")
    changes = ChangeRecords(journal, [sink])
    op_id = journal.open_operation("failover", "ex1", from_server="r720-1", to_server="r720-3")
    op = journal.operation(op_id)
    rec = changes.open(op)
    assert rec["number"] == "CHG1000001"
    assert (rec["type"], rec["approval"], rec["state"]) == ("emergency", "not-required", "new")
    assert rec["cmdb_ci"] == ["ex1", "r720-1", "r720-3"]
    assert rec["short_description"] == "Failover of persona ex1 from r720-1 to r720-3"
    assert changes.open(op)["number"] == "CHG1000001"  # resume opens nothing new
    changes.note(op_id, "fence", "storage fence proven; r720-1 reads Off")
    changes.on_step(StepEvent(op_id, "switch", "intent", None, {}, None))  # intents make no note
    changes.on_step(StepEvent(op_id, "switch", "result", "ok", {"summary": "4 ports"}, 2.04))
    journal.set_state(op_id, "done", "ex1 runs on r720-3")
    closed = changes.close(op, "ex1 runs on r720-3")
    assert closed is not None
    assert (closed["state"], closed["close_code"], closed["close_notes"]) == ("closed", "successful", "ex1 runs on r720-3")
    assert closed["end_date"] and closed["start_date"]
    lines = [json.loads(x) for x in (tmp_path / "changes.jsonl").read_text().splitlines()]
    assert [x["event"] for x in lines] == ["open", "note", "note", "close"]
    assert lines[2]["record"]["work_notes"][1]["text"] == "switch ok in 2.0s: 4 ports"
    assert lines[1]["record"]["state"] == "implement"
    assert lines[1]["record"]["work_notes"][0]["step"] == "fence"
    assert lines[3]["record"] == changes.get("CHG1000001")


def test_planned_move_needs_approval_and_review_when_stuck(journal: Journal) -> None:
    changes = ChangeRecords(journal)
    op_id = journal.open_operation("move", "ex2", from_server="r720-2", to_server="r720-3")
    rec = changes.open(journal.operation(op_id))
    assert (rec["type"], rec["approval"]) == ("normal", "requested")
    assert not changes.is_approved(rec["number"])
    changes.approve(rec["number"], "alice")
    assert changes.is_approved(rec["number"])
    assert changes.get(rec["number"])["approved_by"] == ["alice"]
    journal.set_state(op_id, "needs-operator", "switch sw1 timed out")
    assert changes.close(op_id, "switch sw1 timed out")["state"] == "review"  # type: ignore[index]
    journal.set_state(op_id, "aborted", "operator aborted")
    closed = changes.close(op_id, "operator aborted")
    assert closed is not None and (closed["state"], closed["close_code"]) == ("closed", "unsuccessful")
    with pytest.raises(OperatorError, match="closed"):
        changes.approve(rec["number"], "bob")
    with pytest.raises(OperatorError, match="no change record"):
        changes.is_approved("CHG0000000")


def test_webhook_posts_signed_records(journal: Journal, receiver: Receiver, hook_env: str) -> None:
    hook = WebhookSink(receiver.url, hook_env, timeout_s=2, backoff_s=0.01)
    changes = ChangeRecords(journal, [hook])
    op = journal.operation(journal.open_operation("failover", "ex1"))
    changes.open(op)
    changes.note(op, "confirm", "BMC reads Off")
    assert hook.flush(5)
    assert hook.delivered == 2 and len(receiver.requests) == 2
    for headers, body in receiver.requests:
        expected = "sha256=" + hmac.new(HOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["x-aimctl-signature"], expected)
        wrong = "sha256=" + hmac.new(b"other", body, hashlib.sha256).hexdigest()
        assert headers["x-aimctl-signature"] != wrong
    events = [json.loads(b) for _, b in receiver.requests]
    assert [e["event"] for e in events] == ["open", "note"]
    assert events[1]["record"]["work_notes"][0]["text"] == "BMC reads Off"
    assert events[0]["delivery"] != events[1]["delivery"]
    hook.close()


def test_webhook_retries_server_errors(journal: Journal, receiver: Receiver, hook_env: str) -> None:
    receiver.statuses = [503, 500]
    hook = WebhookSink(receiver.url, hook_env, timeout_s=2, attempts=3, backoff_s=0.01)
    ChangeRecords(journal, [hook]).open(journal.operation(journal.open_operation("failover", "ex1")))
    assert hook.flush(5)
    assert (hook.delivered, hook.failed, len(receiver.requests)) == (1, 0, 3)
    hook.close()


def test_webhook_down_or_hung_does_not_fail_the_operation(
    journal: Journal, tmp_path: Path, hook_env: str, caplog: pytest.LogCaptureFixture
) -> None:
    down = WebhookSink(f"http://127.0.0.1:{closed_port()}/hook", hook_env, attempts=2, backoff_s=0.01)
    hung_sock = socket.socket()  # listens, never accepts: connect succeeds, no answer ever comes
    hung_sock.bind(("127.0.0.1", 0))
    hung_sock.listen(8)
    hung = WebhookSink(f"http://127.0.0.1:{hung_sock.getsockname()[1]}/hook", hook_env,
                       timeout_s=0.5, attempts=2, backoff_s=0.01)
    changes = ChangeRecords(journal, [down, hung, JsonlSink(tmp_path / "c.jsonl")])
    op_id = journal.open_operation("failover", "ex1")
    caplog.set_level(logging.WARNING)
    t0 = time.monotonic()
    changes.open(journal.operation(op_id))
    changes.note(op_id, "fence", "done")
    journal.set_state(op_id, "done")
    changes.close(op_id, "ok")
    assert time.monotonic() - t0 < 0.8  # delivery never holds a step (held, the first event alone takes 2 x 0.5 s)
    assert down.flush(10) and hung.flush(10)
    assert (down.failed, hung.failed) == (3, 3)
    assert len((tmp_path / "c.jsonl").read_text().splitlines()) == 3
    assert "not delivered" in caplog.text
    assert time.monotonic() - t0 < 6  # bounded: 3 events x 2 attempts x 0.5 s
    changes.shutdown()
    hung_sock.close()


def test_webhook_secret_must_resolve() -> None:
    with pytest.raises(SecretError):
        WebhookSink("http://127.0.0.1:1/x", "env:AIMCTL_TEST_NO_SUCH_VAR")
    with pytest.raises(ValueError):
        WebhookSink("file:///etc/passwd", "env:AIMCTL_TEST_NO_SUCH_VAR")


# -- audit -----------------------------------------------------------------------------------------


def test_audit_chain_and_masking(tmp_path: Path) -> None:
    audit = Audit(tmp_path / "audit.log")
    register("hunter2-bmc-password")
    audit.record("alice", "quarantine", "r720-1", {"reason": "fan", "password": "x", "note": "pw hunter2-bmc-password"})
    audit.record("controller", "failover", "ex1", {"op": "fo-20261123-0001"}, source="controller")
    audit.record("bob", "POST /v1/moves", "/v1/moves", {"body": {"token": "abc"}})
    text = (tmp_path / "audit.log").read_text()
    assert "hunter2-bmc-password" not in text
    lines = [json.loads(x) for x in text.splitlines()]
    assert lines[0]["prev"] == GENESIS and lines[0]["detail"]["password"] == "***"
    assert lines[0]["detail"]["note"] == "pw ***" and lines[2]["detail"]["body"]["token"] == "***"
    assert lines[1]["prev"] == line_hash(text.splitlines()[0].encode())
    assert {"time", "actor", "action", "target", "source", "detail"} <= set(lines[0])
    assert audit.verify().ok and audit.verify().lines == 3
    assert audit.head() == line_hash(text.splitlines()[2].encode())
    assert oct((tmp_path / "audit.log").stat().st_mode & 0o777) == oct(0o600)


@pytest.mark.parametrize("tamper", ["edit", "delete", "insert", "reorder", "truncate_first"])
def test_audit_verify_detects_tampering(tmp_path: Path, tamper: str) -> None:
    path = tmp_path / "audit.log"
    audit = Audit(path)
    for i in range(5):
        audit.record("alice", "approve", f"CHG{i}", {"i": i})
    lines = path.read_text().splitlines()
    if tamper == "edit":
        lines[2] = lines[2].replace('"alice"', '"mallory"')
    elif tamper == "delete":
        del lines[2]
    elif tamper == "insert":
        lines.insert(2, lines[1])
    elif tamper == "reorder":
        lines[1], lines[2] = lines[2], lines[1]
    else:
        del lines[0]
    path.write_text("\n".join(lines) + "\n")
    result = audit.verify()
    assert not result.ok
    assert result.bad_line in (1, 2, 3, 4)
    assert "line" in result.problem


def test_audit_chain_holds_with_concurrent_writers(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    script = (
        "import sys; from aimctl.records.audit import Audit\n"
        "a = Audit(sys.argv[1])\n"
        "for i in range(40): a.record('proc', 'x', str(i))\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(path)], cwd=REPO) for _ in range(2)]
    audit = Audit(path)
    threads = [threading.Thread(target=lambda: [audit.record("thread", "y", str(i)) for i in range(40)])
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in procs:
        assert p.wait(30) == 0
    result = audit.verify()
    assert result.ok and result.lines == 160, result.problem
