"""A small etcd v3 client over etcd's JSON gateway (etcd3gw), with several endpoints.

etcd3gw gives the session, URLs and the gateway's error types; this module adds what the journal
and the leader election need: range with sort and limit, transactions built from small helpers,
leases, and moving to the next endpoint when one does not answer.

Moving on is safe only when the request surely did not reach etcd. A read is retried on the next
endpoint after any failure. A write (transaction, lease grant, keep-alive) is retried only when the
connection was never made; after a timeout or a reset it may have been applied, so the caller is
told ``EtcdUnavailable`` and decides (the journal stops like a crash and resumes from what etcd
says).
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import etcd3gw
import requests
from etcd3gw import exceptions as etcd_exc

log = logging.getLogger(__name__)


class EtcdUnavailable(Exception):
    """No endpoint answered (or a write's outcome is unknown)."""


def b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def unb64(data: str) -> bytes:
    return base64.b64decode(data)


def prefix_end(prefix: str) -> str:
    """The range end that covers every key starting with ``prefix`` (its last byte plus one)."""
    raw = prefix.encode()
    return (raw[:-1] + bytes([raw[-1] + 1])).decode()


@dataclass(frozen=True)
class KV:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int

    @classmethod
    def parse(cls, d: dict[str, Any]) -> KV:
        return cls(unb64(d["key"]).decode(), unb64(d.get("value", "")), int(d.get("create_revision", 0)),
                   int(d.get("mod_revision", 0)), int(d.get("lease", 0)))


# -- transaction parts ----------------------------------------------------------------------------

def put(key: str, value: str | bytes, lease: int | None = None) -> dict[str, Any]:
    req: dict[str, Any] = {"key": b64(key), "value": b64(value)}
    if lease:
        req["lease"] = str(lease)
    return {"request_put": req}


def delete(key: str) -> dict[str, Any]:
    return {"request_delete_range": {"key": b64(key)}}


def get(key: str) -> dict[str, Any]:
    return {"request_range": {"key": b64(key)}}


def created_at(key: str, revision: int) -> dict[str, Any]:
    """Compare: the key's create revision is ``revision`` (0: the key does not exist)."""
    return {"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": str(revision)}


def modified_at(key: str, revision: int) -> dict[str, Any]:
    return {"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(revision)}


def unchanged(key: str, kv: KV | None) -> dict[str, Any]:
    """Compare: ``key`` is still as it was read (absent stays absent)."""
    return modified_at(key, kv.mod_revision) if kv else created_at(key, 0)


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    responses: list[dict[str, Any]]
    revision: int

    def ranges(self, i: int) -> list[KV]:
        rr = self.responses[i].get("response_range", {})
        return [KV.parse(x) for x in rr.get("kvs", [])]


class Etcd:
    def __init__(self, endpoints: Sequence[tuple[str, int]], timeout_s: float = 1.5) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoints")
        self.endpoints = list(endpoints)
        self.timeout_s = timeout_s
        # The v3 gateway path is fixed for etcd >= 3.4: no discovery round trip (and no failure mode).
        self._local = threading.local()  # a requests session per thread: sessions are not thread-safe
        self._all: list[Any] = []
        self._current = 0
        self._lock = threading.Lock()

    @property
    def _clients(self) -> list[Any]:
        clients: list[Any] | None = getattr(self._local, "clients", None)
        if clients is None:
            clients = [etcd3gw.client(host=h, port=p, api_path="/v3/", timeout=self.timeout_s)
                       for h, p in self.endpoints]
            self._local.clients = clients
            with self._lock:
                self._all.extend(clients)
        return clients

    @property
    def where(self) -> str:
        return ",".join(f"{h}:{p}" for h, p in self.endpoints)

    # -- transport ------------------------------------------------------------------------------

    def _post(self, path: str, body: dict[str, Any], *, write: bool) -> Any:
        with self._lock:
            start = self._current
        errors = []
        clients = self._clients
        # One deadline for the whole call, however many endpoints it tries (patroni's retry_timeout):
        # a partitioned controller learns it within timeout_s, not once per endpoint.
        deadline = time.monotonic() + self.timeout_s
        for i in range(len(clients)):
            idx = (start + i) % len(clients)
            c = clients[idx]
            left = deadline - time.monotonic()
            if left <= 0.05:
                errors.append("deadline reached")
                break
            try:
                resp = c.session.post(c.get_url(path), json=body, timeout=left)
            except (requests.exceptions.ConnectTimeout, requests.exceptions.ConnectionError) as exc:
                never_sent = isinstance(exc, requests.exceptions.ConnectTimeout) or _refused(exc)
                errors.append(f"{c.host}:{c.port}: {_short(exc)}")
                if write and not never_sent:
                    raise EtcdUnavailable(f"etcd write outcome unknown ({errors[-1]})") from None
                continue
            except requests.exceptions.Timeout as exc:
                errors.append(f"{c.host}:{c.port}: timed out")
                if write:
                    raise EtcdUnavailable(f"etcd write outcome unknown ({errors[-1]})") from exc
                continue
            if resp.status_code == 200:
                if idx != start:
                    with self._lock:
                        self._current = idx
                    log.info("etcd: now talking to %s:%d", c.host, c.port)
                return resp.json()
            text = resp.text[:200]
            errors.append(f"{c.host}:{c.port}: HTTP {resp.status_code} {text}")
            if resp.status_code in (500, 503, 504) and not write:
                continue  # e.g. a member without quorum: another may have it
            if resp.status_code in (503,) and "no leader" in text:
                continue  # refused before it was proposed: never applied
            raise EtcdUnavailable(f"etcd answered {errors[-1]}")
        raise EtcdUnavailable("no etcd endpoint answered: " + "; ".join(errors))

    # -- key-value ------------------------------------------------------------------------------

    def range(self, key: str, *, prefix: bool = False, limit: int = 0, keys_only: bool = False,
              descending: bool = False) -> list[KV]:
        body: dict[str, Any] = {"key": b64(key)}
        if prefix:
            body["range_end"] = b64(prefix_end(key))
        if limit:
            body["limit"] = str(limit)
        if keys_only:
            body["keys_only"] = True
        if descending:
            body["sort_order"] = "DESCEND"
            body["sort_target"] = "KEY"
        out = self._post("/kv/range", body, write=False)
        return [KV.parse(x) for x in out.get("kvs", [])]

    def get(self, key: str) -> KV | None:
        kvs = self.range(key)
        return kvs[0] if kvs else None

    def txn(self, compare: list[dict[str, Any]], success: list[dict[str, Any]],
            failure: list[dict[str, Any]] | None = None) -> TxnResult:
        out = self._post("/kv/txn", {"compare": compare, "success": success, "failure": failure or []}, write=True)
        return TxnResult(bool(out.get("succeeded", False)), list(out.get("responses", [])),
                         int(out.get("header", {}).get("revision", 0)))

    # -- leases ---------------------------------------------------------------------------------

    def grant(self, ttl_s: int) -> int:
        out = self._post("/lease/grant", {"TTL": str(ttl_s)}, write=True)
        return int(out["ID"])

    def keepalive(self, lease: int) -> int:
        """The lease's new TTL, or -1 if it is gone (expired or revoked)."""
        out = self._post("/lease/keepalive", {"ID": str(lease)}, write=True)
        return int(out.get("result", {}).get("TTL", -1))

    def revoke(self, lease: int) -> None:
        try:
            self._post("/kv/lease/revoke", {"ID": str(lease)}, write=True)
        except EtcdUnavailable as exc:
            if "not found" not in str(exc):
                raise

    # -- cluster --------------------------------------------------------------------------------

    def members(self) -> list[dict[str, Any]]:
        out = self._post("/cluster/member/list", {}, write=False)
        return list(out.get("members", []))

    def endpoint_status(self, timeout_s: float | None = None) -> list[dict[str, Any]]:
        """Each endpoint's own answer (version, raft leader) or its error, asked all at once."""
        from concurrent.futures import ThreadPoolExecutor

        def one(hp: tuple[str, int]) -> dict[str, Any]:
            host, port = hp
            try:
                r = requests.post(f"http://{host}:{port}/v3/maintenance/status", json={},
                                  timeout=timeout_s or self.timeout_s)
                r.raise_for_status()
                d = r.json()
                return {"endpoint": f"{host}:{port}", "ok": True, "version": d.get("version"),
                        "leader": d.get("leader"), "member_id": d.get("header", {}).get("member_id")}
            except (requests.exceptions.RequestException, ValueError, etcd_exc.Etcd3Exception) as exc:
                return {"endpoint": f"{host}:{port}", "ok": False, "error": _short(exc)}

        with ThreadPoolExecutor(len(self.endpoints)) as pool:
            return list(pool.map(one, self.endpoints))

    def close(self) -> None:
        with self._lock:
            clients, self._all = self._all, []
        for c in clients:
            c.session.close()


def _refused(exc: BaseException) -> bool:
    """True when the TCP connection was never established (the request cannot have been applied)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        name = type(e).__name__
        if name in ("NewConnectionError", "ConnectionRefusedError") or "Connection refused" in str(e):
            return True
        e = e.__cause__ or e.__context__ or (e.args[0] if e.args and isinstance(e.args[0], BaseException) else None)
        reason = getattr(e, "reason", None)
        if isinstance(reason, BaseException):
            e = reason
    return False


def _short(exc: BaseException) -> str:
    text = str(exc)
    if "Connection refused" in text:
        return "connection refused"
    if "timed out" in text.lower():
        return "timed out"
    return text[:160]


__all__ = ["KV", "Etcd", "EtcdUnavailable", "TxnResult", "b64", "created_at", "delete", "get", "modified_at",
           "prefix_end", "put", "unb64", "unchanged"]
