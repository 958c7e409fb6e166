"""The clustered journal backend: the same records and state as SQLite, as keys in etcd.

DESIGN.md rule 8: every write is one etcd transaction whose first compare is the writer's
fencing token — the create revision of the leader key it was elected with. A controller that lost
the leader key (expired lease, paused process, cut network) keeps its old token, and etcd itself
refuses the write: the compare fails in the same transaction that would have written. The
caller gets ``WriteRefused`` and, since every device action is preceded by its journaled intent,
makes no device call. Nothing in Python decides whether the write may go through.

The other compares make each read-modify-write atomic (the key is still at the revision read).
Keys under PREFIX (``/aimctl/<cluster>/``)::

    leader                      the leader key (leadership.py), its create revision is the token
    j/ops/<op>                  an operation (JSON)          j/open/<op>   index of unfinished ones
    j/rec/<op>/<seq:06d>        its intent and result records (append-only: created, never changed)
    j/assign/<persona>          the assignment               j/servers/<s> server marks
    j/leases/<name>             persona and server leases    j/chg/<CHG…>, j/chg-op/<op>  change records
    j/secret/<name>             AES-GCM sealed secrets (never plaintext in etcd)
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from aimctl.errors import OperatorError
from aimctl.journal import etcdkv as kv
from aimctl.journal.etcdkv import KV, Etcd, EtcdUnavailable
from aimctl.journal.secretbox import SecretBox
from aimctl.journal.base import (
    TERMINAL,
    UNFINISHED,
    ChangeFn,
    JournalStore,
    JournalUnavailable,
    Operation,
    Record,
    UnknownOperation,
    WriteRefused,
    after_commit,
    after_record,
    check_end,
    check_kind,
    check_state,
    check_status,
    dumps,
    lease_conflict,
    merge_mark,
    next_change_number,
    result_detail,
)
from aimctl.journal.findings import FindingLike, StoredFinding
from aimctl.journal.state import HeartbeatMark, Lease, LeaseHeld, PoolPause, ServerMark, ServerStatus
from aimctl.secrets import mask

log = logging.getLogger(__name__)

NO_TOKEN = -1  # never a create revision: a controller that was never elected cannot write
CONFLICT_TRIES = 8


class _Conflict(Exception):
    """A key changed between read and write (not a fencing refusal): read again and retry."""


def _j(data: bytes) -> Any:
    return json.loads(data.decode())


def _op(d: Mapping[str, Any]) -> Operation:
    return Operation(d["id"], d["kind"], d["persona"], d.get("from_server"), d.get("to_server"), d["state"],
                     d.get("result", ""), float(d["created"]), float(d["updated"]), dict(d.get("facts", {})))


class EtcdJournal(JournalStore):
    def __init__(self, etcd: Etcd, prefix: str, token: Callable[[], int], *,
                 secrets: SecretBox | None = None, clock: Callable[[], float] = time.time,
                 on_commit: Callable[[int], None] | None = None,
                 on_refused: Callable[[str], None] | None = None) -> None:
        if not prefix.startswith("/") or not prefix.endswith("/"):
            raise ValueError(f"etcd prefix must start and end with '/': {prefix!r}")
        self.etcd = etcd
        self.prefix = prefix
        self.leader_key = prefix + "leader"
        self._token = token
        self._box = secrets
        self._clock = clock
        self._on_commit = on_commit
        self._on_refused = on_refused
        # One writer thread at a time in this process: keeps read-then-write cycles from racing
        # each other (another process is kept out by the token, not by this lock).
        self._lock = threading.RLock()
        # Write-path caches of this process's own last writes (an operation at its mod revision, the
        # next record number). Every write still compares the revision it assumes: a stale cache is a
        # conflict, which clears it and reads again. Reads for callers always go to etcd.
        self._ops_cache: dict[str, tuple[KV, dict[str, Any]]] = {}
        self._next_seq: dict[str, int] = {}
        self._change_of: dict[str, str] = {}  # op id -> change number (never changes once written)

    @property
    def where(self) -> str:
        return f"etcd {self.etcd.where} {self.prefix}"

    def now(self) -> float:
        return self._clock()

    def close(self) -> None:
        self.etcd.close()

    # -- plumbing -------------------------------------------------------------------------------

    def _k(self, *parts: str) -> str:
        return self.prefix + "j/" + "/".join(parts)

    def _read(self, key: str) -> KV | None:
        try:
            return self.etcd.get(key)
        except EtcdUnavailable as exc:
            raise JournalUnavailable(f"journal unavailable: {exc}") from None

    def _scan(self, *parts: str, keys_only: bool = False, limit: int = 0, descending: bool = False) -> list[KV]:
        try:
            return self.etcd.range(self._k(*parts), prefix=True, keys_only=keys_only, limit=limit,
                                   descending=descending)
        except EtcdUnavailable as exc:
            raise JournalUnavailable(f"journal unavailable: {exc}") from None

    def _commit(self, reads: Mapping[str, KV | None], ops: list[dict[str, Any]],
                extra: Sequence[dict[str, Any]] = ()) -> int:
        """One transaction: the fencing token, then every key as it was read, then the writes."""
        token = self._token()
        compare = [kv.created_at(self.leader_key, token)]
        compare += [kv.unchanged(k, v) for k, v in reads.items()]
        compare += list(extra)
        try:
            res = self.etcd.txn(compare, ops, [kv.get(self.leader_key)])
        except EtcdUnavailable as exc:
            raise JournalUnavailable(f"journal unavailable: {exc}") from None
        if not res.succeeded:
            leader = res.ranges(0)
            now_rev = leader[0].create_revision if leader else 0
            if now_rev != token:
                why = (f"journal write refused by etcd: fencing token {token} is not the leader key's"
                       f" ({now_rev or 'no leader'}); this controller does not lead")
                log.error(why)
                if self._on_refused is not None:
                    self._on_refused(why)
                raise WriteRefused(why)
            raise _Conflict()
        after_commit(self._on_commit)
        return res.revision

    def _retry(self, fn: Callable[[], Any]) -> Any:
        with self._lock:
            for _ in range(CONFLICT_TRIES):
                try:
                    return fn()
                except _Conflict:
                    self._forget()
                    continue
                except BaseException:
                    self._forget()
                    raise
        raise JournalUnavailable(f"journal: {CONFLICT_TRIES} conflicting writes in a row (another writer?)")

    # -- operations -----------------------------------------------------------------------------

    def open_operation(self, kind: str, persona: str, facts: Mapping[str, Any] | None = None, *,
                       from_server: str | None = None, to_server: str | None = None,
                       leases: Sequence[str] = (), ttl_s: float = 3600.0) -> str:
        short = check_kind(kind)

        def attempt() -> str:
            now = self._clock()
            day = f"{short}-{time.strftime('%Y%m%d', time.gmtime(now))}-"
            last = self._scan("ops", day, keys_only=True, limit=1, descending=True)
            n = int(last[0].key.rsplit("-", 1)[1]) if last else 0
            op_id = f"{day}{n + 1:04d}"
            op = {"id": op_id, "kind": kind, "persona": persona, "from_server": from_server, "to_server": to_server,
                  "state": "running", "result": "", "created": now, "updated": now,
                  "facts": json.loads(dumps(facts))}
            reads: dict[str, KV | None] = {self._k("ops", op_id): None}
            writes = [kv.put(self._k("ops", op_id), json.dumps(op)), kv.put(self._k("open", op_id), "")]
            self._lease_writes(leases, op_id, ttl_s, now, reads, writes)
            self._wrote_op(self._k("ops", op_id), op, self._commit(reads, writes))
            self._next_seq[op_id] = 1
            return op_id

        return str(self._retry(attempt))

    def _forget(self) -> None:
        self._ops_cache.clear()
        self._next_seq.clear()

    def _op_for_write(self, op_id: str) -> tuple[KV, dict[str, Any]]:
        cached = self._ops_cache.get(op_id)
        if cached is not None:
            return cached[0], json.loads(json.dumps(cached[1]))  # a copy: the caller changes it
        return self._get_op(op_id)

    def _wrote_op(self, key: str, op: dict[str, Any], revision: int) -> None:
        self._ops_cache[op["id"]] = (KV(key, b"", 0, revision, 0), op)

    def _get_op(self, op_id: str) -> tuple[KV, dict[str, Any]]:
        got = self._read(self._k("ops", op_id))
        if got is None:
            raise UnknownOperation(f"no operation {op_id} in journal {self.where}")
        return got, dict(_j(got.value))

    def operation(self, op_id: str) -> Operation:
        return _op(self._get_op(op_id)[1])

    def operations(self, limit: int = 50, persona: str | None = None) -> list[Operation]:
        ops = [_op(_j(x.value)) for x in self._scan("ops", "")]
        if persona:
            ops = [o for o in ops if o.persona == persona]
        ops.sort(key=lambda o: (o.created, o.id), reverse=True)
        return ops[:limit]

    def operations_revision(self) -> tuple[float, int]:
        # Keys only: etcd's mod revision of each operation key grows with every write to it.
        keys = self._scan("ops", "", keys_only=True)
        return float(max((x.mod_revision for x in keys), default=0)), len(keys)

    def unfinished_operations(self) -> list[Operation]:
        ids = [x.key.rsplit("/", 1)[1] for x in self._scan("open", "", keys_only=True)]
        ops = []
        for op_id in ids:
            got = self._read(self._k("ops", op_id))
            if got is not None:
                o = _op(_j(got.value))
                if o.state in UNFINISHED:
                    ops.append(o)
        ops.sort(key=lambda o: (o.created, o.id))
        return ops

    def set_state(self, op_id: str, state: str, result: str = "") -> None:
        check_state(state)

        def attempt() -> None:
            got, op = self._op_for_write(op_id)
            op.update(state=state, result=mask(result), updated=self._clock())
            reads: dict[str, KV | None] = {got.key: got}
            writes = [kv.put(got.key, json.dumps(op))]
            if state in TERMINAL:
                self._end_writes(op_id, reads, writes)
            self._wrote_op(got.key, op, self._commit(reads, writes))

        self._retry(attempt)

    def _end_writes(self, op_id: str, reads: dict[str, KV | None], writes: list[dict[str, Any]]) -> None:
        """An operation ends: out of the unfinished index, and its leases released, in the same write."""
        writes.append(kv.delete(self._k("open", op_id)))
        for lease in self._scan("leases", ""):
            if _j(lease.value)["holder"] == op_id:
                reads[lease.key] = lease
                writes.append(kv.delete(lease.key))

    # -- records --------------------------------------------------------------------------------

    def _append(self, op_id: str, step: str, phase: str, status: str | None, detail: Mapping[str, Any] | None,
                facts: Mapping[str, Any] | None = None,
                more: Callable[[dict[str, KV | None], list[dict[str, Any]], float], None] | None = None,
                end: tuple[str, str] | None = None) -> None:
        def attempt() -> None:
            got, op = self._op_for_write(op_id)
            seq = self._next_seq.get(op_id, 0)
            if not seq:
                last = self._scan("rec", op_id + "/", keys_only=True, limit=1, descending=True)
                seq = int(last[0].key.rsplit("/", 1)[1]) + 1 if last else 1
            now = self._clock()
            rec = {"op_id": op_id, "seq": seq, "step": step, "phase": phase, "status": status,
                   "detail": json.loads(dumps(detail)), "time": now}
            op["updated"] = now
            if end is not None:
                op.update(state=end[0], result=mask(end[1]))
            if facts:
                merged = {**op["facts"], **json.loads(dumps(facts))}
                op.update(facts=merged, from_server=merged.get("from_server", op.get("from_server")),
                          to_server=merged.get("to_server", op.get("to_server")))
            key = self._k("rec", op_id, f"{seq:06d}")
            reads: dict[str, KV | None] = {got.key: got, key: None}
            writes = [kv.put(key, json.dumps(rec)), kv.put(got.key, json.dumps(op))]
            if more is not None:
                more(reads, writes, now)
            self._wrote_op(got.key, op, self._commit(reads, writes))
            self._next_seq[op_id] = seq + 1

        self._retry(attempt)

    def intent(self, op_id: str, step: str, detail: Mapping[str, Any] | None = None) -> None:
        self._append(op_id, step, "intent", None, detail)
        after_record()

    def result(self, op_id: str, step: str, status: str, detail: Mapping[str, Any] | None = None, *,
               facts: Mapping[str, Any] | None = None,
               assignment_change: Mapping[str, str | None] | None = None,
               server_marks: Mapping[str, ServerMark] | None = None,
               end: tuple[str, str] | None = None) -> None:
        check_status(status)
        check_end(end)
        full = result_detail(detail, assignment_change, server_marks)

        def more(reads: dict[str, KV | None], writes: list[dict[str, Any]], now: float) -> None:
            for persona, server in (assignment_change or {}).items():
                writes.append(self._assign_put(persona, server, op_id, now))
            for server, m in (server_marks or {}).items():
                self._mark_write(server, m, op_id, now, reads, writes)
            if end is not None:
                self._end_writes(op_id, reads, writes)

        self._append(op_id, step, "result", status, full, facts, more, end)
        after_record()

    def add_facts(self, op_id: str, facts: Mapping[str, Any]) -> None:
        def attempt() -> None:
            got, op = self._op_for_write(op_id)
            merged = {**op["facts"], **json.loads(dumps(facts))}
            op.update(facts=merged, from_server=merged.get("from_server", op.get("from_server")),
                      to_server=merged.get("to_server", op.get("to_server")), updated=self._clock())
            self._wrote_op(got.key, op, self._commit({got.key: got}, [kv.put(got.key, json.dumps(op))]))

        self._retry(attempt)

    def records(self, op_id: str) -> list[Record]:
        out = []
        for x in self._scan("rec", op_id + "/"):
            r = _j(x.value)
            out.append(Record(r["op_id"], int(r["seq"]), r["step"], r["phase"], r["status"], r["detail"],
                              float(r["time"])))
        return out

    # -- assignment and servers -----------------------------------------------------------------

    def _assign_put(self, persona: str, server: str | None, by: str, now: float) -> dict[str, Any]:
        return kv.put(self._k("assign", persona), json.dumps({"server": server, "by": by, "updated": now}))

    def assignment(self) -> dict[str, str | None]:
        out = {x.key.rsplit("/", 1)[1]: _j(x.value)["server"] for x in self._scan("assign", "")}
        return dict(sorted(out.items()))

    def seed_assignment(self, homes: Mapping[str, str | None]) -> None:
        def attempt() -> None:
            have = {x.key for x in self._scan("assign", "", keys_only=True)}
            now = self._clock()
            reads: dict[str, KV | None] = {}
            writes = []
            for persona, server in homes.items():
                key = self._k("assign", persona)
                if key not in have:
                    reads[key] = None
                    writes.append(self._assign_put(persona, server, "home", now))
            if writes:
                self._commit(reads, writes)

        self._retry(attempt)

    def set_assignment(self, persona: str, server: str | None, by: str) -> None:
        self._retry(lambda: self._commit({}, [self._assign_put(persona, server, by, self._clock())]))

    def _server(self, name: str) -> tuple[KV | None, ServerStatus | None]:
        got = self._read(self._k("servers", name))
        return got, (ServerStatus(**_j(got.value)) if got else None)

    def _mark_write(self, server: str, m: ServerMark, by: str, now: float, reads: dict[str, KV | None],
                    writes: list[dict[str, Any]]) -> None:
        got, old = self._server(server)
        new = merge_mark(old, m, by, now)
        reads[self._k("servers", server)] = got
        writes.append(kv.put(self._k("servers", server), json.dumps({**new.__dict__, "name": server})))

    def quarantine(self, server: str, reason: str, by: str = "operator", failed: bool = False) -> None:
        def attempt() -> None:
            reads: dict[str, KV | None] = {}
            writes: list[dict[str, Any]] = []
            self._mark_write(server, ServerMark(reason, quarantine=True, failed=failed), by, self._clock(),
                             reads, writes)
            self._commit(reads, writes)

        self._retry(attempt)

    def clear(self, server: str, by: str = "operator") -> None:
        def attempt() -> None:
            got, old = self._server(server)
            if old is None:
                return
            new = ServerStatus(server, False, "", by, self._clock(), False)
            self._commit({got.key: got} if got else {}, [kv.put(self._k("servers", server), json.dumps(new.__dict__))])

        self._retry(attempt)

    def servers(self) -> dict[str, ServerStatus]:
        out = {}
        for x in self._scan("servers", ""):
            s = ServerStatus(**_j(x.value))
            out[s.name] = s
        return dict(sorted(out.items()))

    # -- operator pauses of pools ----------------------------------------------------------------

    def pause_pool(self, pool: str, by: str, reason: str = "") -> bool:
        def attempt() -> bool:
            key = self._k("pauses", pool)
            got = self._read(key)
            if got is not None:
                return False
            pause = PoolPause(pool, by, mask(reason), self._clock())
            self._commit({key: None}, [kv.put(key, json.dumps(pause.__dict__))])
            return True

        return bool(self._retry(attempt))

    def resume_pool(self, pool: str) -> bool:
        def attempt() -> bool:
            key = self._k("pauses", pool)
            got = self._read(key)
            if got is None:
                return False
            self._commit({key: got}, [kv.delete(key)])
            return True

        return bool(self._retry(attempt))

    def pool_pauses(self) -> dict[str, PoolPause]:
        out = {}
        for x in self._scan("pauses", ""):
            pause = PoolPause(**_j(x.value))
            out[pause.pool] = pause
        return dict(sorted(out.items()))

    # -- leases ---------------------------------------------------------------------------------

    def _lease_writes(self, names: Sequence[str], holder: str, ttl_s: float, now: float,
                      reads: dict[str, KV | None], writes: list[dict[str, Any]]) -> None:
        for name in names:
            key = self._k("leases", name)
            got = self._read(key)
            cur = Lease(name, **_j(got.value)) if got else None
            held = lease_conflict(name, cur, holder, now)
            if held is not None:
                raise held
            acquired = cur.acquired if cur is not None and cur.holder == holder else now
            reads[key] = got
            writes.append(kv.put(key, json.dumps({"holder": holder, "acquired": acquired, "expires": now + ttl_s})))

    def acquire_leases(self, names: Sequence[str], holder: str, ttl_s: float) -> None:
        def attempt() -> None:
            reads: dict[str, KV | None] = {}
            writes: list[dict[str, Any]] = []
            self._lease_writes(names, holder, ttl_s, self._clock(), reads, writes)
            if writes:
                self._commit(reads, writes)

        self._retry(attempt)

    def renew(self, name: str, holder: str, ttl_s: float) -> bool:
        def attempt() -> bool:
            key = self._k("leases", name)
            got = self._read(key)
            if got is None or _j(got.value)["holder"] != holder:
                return False
            cur = _j(got.value)
            self._commit({key: got}, [kv.put(key, json.dumps({**cur, "expires": self._clock() + ttl_s}))])
            return True

        return bool(self._retry(attempt))

    def release_lease(self, name: str, holder: str) -> bool:
        def attempt() -> bool:
            key = self._k("leases", name)
            got = self._read(key)
            if got is None or _j(got.value)["holder"] != holder:
                return False
            self._commit({key: got}, [kv.delete(key)])
            return True

        return bool(self._retry(attempt))

    def release_leases(self, holder: str) -> int:
        def attempt() -> int:
            mine = [x for x in self._scan("leases", "") if _j(x.value)["holder"] == holder]
            if mine:
                self._commit({x.key: x for x in mine}, [kv.delete(x.key) for x in mine])
            return len(mine)

        return int(self._retry(attempt))

    def leases(self, include_expired: bool = False) -> list[Lease]:
        now = self._clock()
        out = [Lease(x.key[len(self._k("leases", "")):], **_j(x.value)) for x in self._scan("leases", "")]
        return sorted((x for x in out if include_expired or x.expires > now), key=lambda x: x.name)

    # -- change records -------------------------------------------------------------------------

    def change_open(self, op_id: str, record: dict[str, Any], number: str | None = None
                    ) -> tuple[dict[str, Any], bool]:
        def attempt() -> tuple[dict[str, Any], bool]:
            by_op = self._read(self._k("chg-op", op_id))
            if by_op is not None:
                existing = self.change_get(by_op.value.decode())
                if existing is not None:
                    return existing, False
            if number is not None:
                if self._read(self._k("chg", number)) is not None:
                    raise OperatorError(f"change {number} already records another operation")
                chosen = number
            else:
                last = self._scan("chg", "", keys_only=True, limit=1, descending=True)
                chosen = next_change_number(int(last[0].key.rsplit("/", 1)[1][3:]) if last else None)
            rec = {**record, "number": chosen}
            doc = {"record": rec, "op_id": op_id, "created": self._clock()}
            self._commit({self._k("chg-op", op_id): by_op, self._k("chg", chosen): None},
                         [kv.put(self._k("chg", chosen), json.dumps(doc)), kv.put(self._k("chg-op", op_id), chosen)])
            return rec, True

        result: tuple[dict[str, Any], bool] = self._retry(attempt)
        return result

    def change_get(self, number: str) -> dict[str, Any] | None:
        got = self._read(self._k("chg", number))
        return dict(_j(got.value)["record"]) if got else None

    def change_for_op(self, op_id: str) -> dict[str, Any] | None:
        number = self._change_of.get(op_id)
        if number is None:
            by_op = self._read(self._k("chg-op", op_id))
            if by_op is None:
                return None
            number = self._change_of[op_id] = by_op.value.decode()
        return self.change_get(number)

    def change_list(self, limit: int = 50) -> list[dict[str, Any]]:
        docs = [_j(x.value) for x in self._scan("chg", "")]
        docs.sort(key=lambda d: (d["created"], d["record"]["number"]), reverse=True)
        return [dict(d["record"]) for d in docs[:limit]]

    def change_update(self, number: str, change: ChangeFn) -> dict[str, Any] | None:
        def attempt() -> dict[str, Any] | None:
            got = self._read(self._k("chg", number))
            if got is None:
                return None
            doc = _j(got.value)
            rec: dict[str, Any] = doc["record"]
            change(rec)
            self._commit({got.key: got}, [kv.put(got.key, json.dumps({**doc, "record": rec}))])
            return rec

        result: dict[str, Any] | None = self._retry(attempt)
        return result

    # -- drift findings -----------------------------------------------------------------------
    # One key per check (j/find/<key, base64>), as the SQLite table: resolved ones stay, and a finding
    # that comes back is a new occurrence. Fenced like every write: only the leader's reconcile writes.

    def _finding_docs(self) -> dict[str, tuple[KV, dict[str, Any]]]:
        return {_j(x.value)["key"]: (x, _j(x.value)) for x in self._scan("find", "")}

    def _fkey(self, key: str) -> str:
        return self._k("find", kv.b64(key).replace("/", "_"))  # check keys hold ':' and '/'

    def sync_findings(self, found: Sequence[FindingLike], checked: Collection[str]
                      ) -> tuple[list[StoredFinding], list[StoredFinding]]:
        def attempt() -> tuple[list[StoredFinding], list[StoredFinding]]:
            now = self._clock()
            docs = self._finding_docs()
            reads: dict[str, KV | None] = {}
            writes: list[dict[str, Any]] = []
            new: list[dict[str, Any]] = []
            resolved: list[dict[str, Any]] = []
            keys = {f.key for f in found}
            for f in found:
                got = docs.get(f.key)
                values = {"key": f.key, "kind": f.kind, "persona": f.persona, "server": f.server, "device": f.device,
                          "what": mask(f.what), "expected": mask(f.expected), "observed": mask(f.observed)}
                if got is not None and got[1]["resolved"] is None:
                    doc = {**got[1], **values, "seen": now}
                else:
                    doc = {**values, "since": now, "seen": now, "alerted": False, "resolved": None, "repair_op": None}
                    new.append(doc)
                reads[self._fkey(f.key)] = got[0] if got else None
                writes.append(kv.put(self._fkey(f.key), json.dumps(doc)))
            for key in sorted(set(checked) - keys):
                old = docs.get(key)
                if old is not None and old[1]["resolved"] is None:
                    doc = {**old[1], "resolved": now}
                    resolved.append(doc)
                    reads[self._fkey(key)] = old[0]
                    writes.append(kv.put(self._fkey(key), json.dumps(doc)))
            if writes:
                self._commit(reads, writes)
            return [StoredFinding(**d) for d in new], [StoredFinding(**d) for d in resolved]

        result: tuple[list[StoredFinding], list[StoredFinding]] = self._retry(attempt)
        return result

    def _update_findings(self, keys: Collection[str], change: dict[str, Any]) -> None:
        def attempt() -> None:
            docs = self._finding_docs()
            hit = [docs[k] for k in keys if k in docs]
            if hit:
                self._commit({x.key: x for x, _ in hit}, [kv.put(x.key, json.dumps({**d, **change})) for x, d in hit])

        self._retry(attempt)

    def mark_alerted(self, keys: Collection[str]) -> None:
        self._update_findings(keys, {"alerted": True})

    def set_repair_op(self, key: str, op_id: str) -> None:
        self._update_findings([key], {"repair_op": op_id})

    def findings(self, include_resolved: bool = False, limit: int = 1000) -> list[StoredFinding]:
        docs = [d for _, d in self._finding_docs().values() if include_resolved or d["resolved"] is None]
        docs.sort(key=lambda d: (d["since"], d["key"]))
        return [StoredFinding(**d) for d in docs[:limit]]

    # -- the heartbeat receiver's replay memory -------------------------------------------------

    def heartbeat_marks(self) -> dict[str, HeartbeatMark]:
        out: dict[str, HeartbeatMark] = {}
        for x in self._scan("hb", ""):
            d = _j(x.value)
            out[x.key.rsplit("/", 1)[1]] = (int(d["boot"]), int(d["seq"]), tuple(int(b) for b in d["old"]))
        return out

    def save_heartbeat_marks(self, marks: Mapping[str, HeartbeatMark]) -> None:
        """Every member's receiver saves what it accepted, leader or not: these writes carry no
        fencing token (they change no device and no operation). Members see the same packets, so
        their marks agree; the last writer wins, and a mark lowered by a slower member only widens
        the replay guard's window by what that member had not seen yet."""
        if not marks:
            return
        now = self._clock()
        puts = [kv.put(self._k("hb", p), json.dumps({"boot": str(b), "seq": str(q), "old": [str(o) for o in old],
                                                     "updated": now})) for p, (b, q, old) in marks.items()]
        try:
            self.etcd.txn([], puts)
        except EtcdUnavailable as exc:
            raise JournalUnavailable(f"journal unavailable: {exc}") from None

    # -- secret state ---------------------------------------------------------------------------

    def _sealer(self) -> SecretBox:
        if self._box is None:
            raise JournalUnavailable("this etcd journal has no cluster key file: it cannot keep secrets")
        return self._box

    def secret_get(self, name: str) -> str | None:
        got = self._read(self._k("secret", name))
        return self._sealer().open(name, got.value) if got else None

    def secret_put(self, name: str, value: str) -> None:
        blob = self._sealer().seal(name, value)
        self._retry(lambda: self._commit({}, [kv.put(self._k("secret", name), blob)]))

    def secret_delete(self, name: str) -> None:
        self._retry(lambda: self._commit({}, [kv.delete(self._k("secret", name))]))


__all__ = ["NO_TOKEN", "EtcdJournal", "LeaseHeld"]
