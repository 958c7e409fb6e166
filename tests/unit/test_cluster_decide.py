"""Leadership decisions and cluster settings: pure functions, table tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aimctl.cluster.config import ClusterConfig, parse_cluster_url
from aimctl.cluster.leadership import Timing, View, decide
from aimctl.journal.secretbox import SecretBox, load_key, make_key_file
from aimctl.errors import OperatorError

T = Timing(ttl_s=6, renew_s=2, retry_s=1.5)


@pytest.mark.parametrize(("view", "want"), [
    # leading: renew when due, hold otherwise, demote at the renew deadline or when the key is not ours
    (View(10.0, True, 9.0, "me", "me", True), "hold"),
    (View(11.0, True, 9.0, "me", "me", True), "renew"),
    (View(13.9, True, 9.0, "me", "me", False), "renew"),  # etcd unreadable: still within the deadline
    (View(14.0, True, 9.0, "me", "me", False), "demote"),  # renew 2 + 2 x retry 1.5 = 5 s after renewal
    (View(10.0, True, 9.0, "other", "me", True), "demote"),
    (View(10.0, True, 9.0, None, "me", True), "demote"),
    (View(10.0, True, None, "me", "me", True), "demote"),
    # not leading
    (View(10.0, False, None, None, "me", True), "campaign"),
    (View(10.0, False, None, "other", "me", True), "follow"),
    (View(10.0, False, None, "me", "me", True), "reclaim"),  # an earlier run of this member left its key
    (View(10.0, False, None, None, "me", False), "wait"),
])
def test_decide(view: View, want: str) -> None:
    assert decide(view, T) == want


@given(st.floats(0, 100), st.floats(0, 20), st.booleans())
def test_a_leader_never_acts_past_its_renew_deadline(since: float, renewed_ago: float, read_ok: bool) -> None:
    v = View(since + renewed_ago, True, since, "me", "me", read_ok)
    action = decide(v, T)
    if renewed_ago >= T.renew_deadline_s:
        assert action == "demote"
    assert T.renew_deadline_s <= T.ttl_s  # and so it stops before etcd lets the lease go


@pytest.mark.parametrize(("ttl", "renew", "retry", "ok"), [
    (6, 2, 1.5, True), (6, 2, 2, True), (6, 2, 2.5, False), (3, 0.5, 1, True), (3, 1, 1.5, False),
    (2.5, 0.5, 0.5, False), (0, 1, 1, False),
])
def test_timing_rule_renew_plus_two_retries_within_ttl(ttl: float, renew: float, retry: float, ok: bool) -> None:
    if ok:
        assert Timing(ttl, renew, retry).renew_deadline_s <= ttl
    else:
        with pytest.raises(ValueError):
            Timing(ttl, renew, retry)


@pytest.mark.parametrize("url", ["etcd://", "http://a:1", "etcd://a", "etcd://a:0", "etcd://a:1,b", "etcd://a b:1",
                                 "etcd://a:99999", "etcd://;rm -rf:1"])
def test_bad_cluster_urls_are_refused_in_one_line(url: str) -> None:
    with pytest.raises(OperatorError) as e:
        parse_cluster_url(url)
    assert "\n" not in str(e.value)


def test_cluster_config() -> None:
    assert parse_cluster_url("etcd://10.0.0.1:2379,ctl-b.lab:2379") == [("10.0.0.1", 2379), ("ctl-b.lab", 2379)]
    cfg = ClusterConfig.model_validate({"etcd": "etcd://a:1", "name": "prod", "ttl": "6s", "renew": "2s",
                                        "retry": "1500ms"})
    assert cfg.prefix == "/aimctl/prod/" and cfg.timing.renew_deadline_s == 5.0
    with pytest.raises(ValueError):
        ClusterConfig.model_validate({"etcd": "etcd://a:1", "member": "Bad Name"})
    with pytest.raises(OperatorError):
        ClusterConfig.model_validate({"etcd": "etcd://a:1", "ttl": "2s", "renew": "2s"}).timing


def test_secret_box_key_file(tmp_path: Path) -> None:
    key = tmp_path / "k"
    make_key_file(key)
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(FileExistsError):
        make_key_file(key)
    box = SecretBox(load_key(key))
    blob = box.seal("chap/ex1.current", "s3cret-value")
    assert b"s3cret" not in blob and box.open("chap/ex1.current", blob) == "s3cret-value"
    with pytest.raises(OperatorError, match="cannot decrypt"):
        box.open("chap/ex2.current", blob)  # sealed for another name
    key.chmod(0o644)
    with pytest.raises(OperatorError, match="chmod 600"):
        load_key(key)


@pytest.mark.parametrize(("args", "says"), [
    (["--cluster", "http://a:1"], "want etcd://HOST:PORT"),
    (["--cluster", "etcd://127.0.0.1:9"], "needs cluster.key_file"),
    (["--member", "c1"], "need --cluster"),
])
def test_controller_run_refuses_bad_cluster_options_in_one_line(tmp_path: Path, args: list[str], says: str) -> None:
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, "-m", "aimctl.cli", "controller", "run", "-d", str(repo / "personas"),
                        "--state", str(tmp_path / "s"), *args], capture_output=True, text=True, timeout=60, cwd=repo)
    assert r.returncode == 2, r.stderr
    assert says in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_guarded_driver_asks_before_every_call() -> None:
    from aimctl.drivers.registry import Guarded
    from aimctl.journal import LostLeadership

    calls: list[str] = []
    leading = {"now": True}

    class Power:
        name = "r720-1"

        def off(self, deadline_s: float) -> None:
            calls.append("off")

    def guard() -> None:
        if not leading["now"]:
            raise LostLeadership("not leading")

    p = Guarded(Power(), guard)
    p.off(1.0)
    leading["now"] = False
    assert p.name == "r720-1"  # reading an attribute is no device call
    with pytest.raises(LostLeadership):
        p.off(1.0)
    assert calls == ["off"]


def test_a_refused_device_call_is_never_an_operations_failure(tmp_path: Path) -> None:
    """A step that turns a lost leadership into NeedsOperator (as the fence does with a failed job)
    stops the run like a crash: no failed result, no needs-operator, the intent left to resume."""
    from aimctl.failover.runner import NeedsOperator, Step, StepCall, StepOutcome, run_steps
    from aimctl.journal import Journal, LostLeadership

    j = Journal(tmp_path / "journal.db")
    op = j.open_operation("failover", "ex1")

    def fence(ctx: None, call: StepCall) -> StepOutcome:
        try:
            raise LostLeadership("c1 does not lead the cluster now; no device call")
        except LostLeadership as exc:
            raise NeedsOperator(f"storage fence not proven: {exc}")  # noqa: B904 - its context is the point

    with pytest.raises(LostLeadership):
        run_steps(j, op, [Step("fence", fence)], None)
    assert j.operation(op).state == "running"
    assert [(r.step, r.phase) for r in j.records(op)] == [("fence", "intent")]
    j.close()
