"""What the console's pages show, read from the Controller and cut to what the caller may see.

Plain functions from the controller's state to dictionaries the templates render; the decisions
"which actions does this person get here" are small pure functions (``persona_actions``, ...)
with table tests, as OpenShift's bare-metal views hide what the role or the state does not allow.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from aimctl.api.auth import Identity
from aimctl.failover.planner import standbys

if TYPE_CHECKING:
    from aimctl.daemon import Controller

# How many persona rows the dashboard lists; the rest are counted, and listed on their pool's page.
DASHBOARD_ROWS = 60
POOL_PAGE_ROWS = 200
TROUBLE = ("dead", "presumed-dead", "unhealthy", "unreachable", "suspect")


def exits(op: Any) -> list[str]:
    """The operator's ways out of a waiting operation, as the commands to type (rule 7)."""
    if op.state == "waiting-approval":
        return [f"aimctl approve {op.id}", f"aimctl abandon {op.id}"]
    return [f"aimctl retry {op.id}", f"aimctl mark-fenced {op.id} SERVER", f"aimctl abandon {op.id}"]


def state_word(p: dict[str, Any]) -> str:
    """One word for a persona's state, as the colour on the dashboard shows it."""
    if p.get("operation"):
        return "moving"
    if p["detector"] != "alive":
        return str(p["detector"])
    if p["heartbeat_age_s"] is None:
        return "no-heartbeat"
    return "alive"


def persona_actions(identity: Identity, pool: str, busy: bool, on_home: bool, home_quarantined: bool,
                    has_standby: bool) -> list[str]:
    """The actions a persona's page offers: only what the role in its pool and its state allow."""
    if not identity.allows("operator", pool) or busy:
        return []
    out = []
    if has_standby:
        out += ["failover", "move"]
    if not on_home and not home_quarantined:
        out.append("failback")
    return out


def operation_actions(identity: Identity, pool: str | None, state: str) -> list[str]:
    return ["approve"] if state == "waiting-approval" and identity.allows("operator", pool) else []


def server_actions(identity: Identity, pool: str | None, quarantined: bool) -> list[str]:
    return ["clear"] if quarantined and identity.allows("admin", pool) else []


def pool_actions(identity: Identity, pool: str, operator_paused: bool) -> list[str]:
    if not identity.allows("operator", pool):
        return []
    return ["resume"] if operator_paused else ["pause"]


def word_of(detector: str, operation: str | None, seen: bool) -> str:
    """``state_word`` from the cheap per-persona facts of ``Controller.persona_states``."""
    if operation:
        return "moving"
    if detector != "alive":
        return detector
    return "alive" if seen else "no-heartbeat"


def dashboard(c: Controller, who: Identity) -> dict[str, Any]:
    """Pools with N+k and their personas counted by state; persona rows for the troubled ones first,
    at most DASHBOARD_ROWS (the full status is read only for the rows shown)."""
    facts = c.persona_states()
    cap = c.pool_capacity()
    by_pool: dict[str, list[tuple[str, str]]] = {}
    for p, (pool, _server, det, op, seen) in facts.items():
        by_pool.setdefault(pool, []).append((word_of(det, op, seen), p))
    pauses = c.pool_pauses()
    pools = []
    shown: list[tuple[str, str]] = []
    counts: Counter[str] = Counter()
    for name in sorted(c.defs.pools):
        if not who.sees(name):
            continue
        members = by_pool.get(name, [])
        tally = Counter(w for w, _ in members)
        counts.update(tally)
        k, spare = cap.get(name, (0, []))
        paused = pauses.get(name)
        pools.append({
            "name": name, "personas": len(members), "servers": len(c.defs.pools[name].members),
            "nk": k, "standbys": spare, "states": dict(sorted(tally.items())),
            "storm": c.paused.get(name), "paused": paused.__dict__ if paused else None,
            "actions": pool_actions(who, name, paused is not None),
        })
        for w, p in members:
            if w != "alive":
                shown.append((w, p))
    troubled = len(shown)
    for name in sorted(c.defs.pools):
        if who.sees(name) and len(shown) < DASHBOARD_ROWS:
            shown.extend((w, p) for w, p in sorted(by_pool.get(name, [])) if w == "alive")
    shown = sorted(shown[:troubled], key=lambda x: x[1]) + shown[troubled:]
    more = max(0, sum(counts.values()) - DASHBOARD_ROWS)
    rows_for = [p for _, p in shown[:DASHBOARD_ROWS]]
    st = c.status(only=set(rows_for), assignment={p: facts[p][1] for p in rows_for})
    rows = [{"name": p, "state": state_word(st["personas"][p]), **st["personas"][p]} for p in rows_for
            if p in st["personas"]]
    ops = [o for o in c.journal.unfinished_operations() if who.sees(c.pool_of_persona(o.persona))]
    recent = [o for o in c.journal.operations(10) if who.sees(c.pool_of_persona(o.persona))]
    return {
        "pools": pools, "personas": rows, "more": more, "counts": dict(sorted(counts.items())),
        "running": [o for o in ops if o.state != "needs-operator"],
        "waiting": [(o, exits(o)) for o in ops if o.state == "needs-operator"],
        "recent": recent,
        "quarantined": {s: v for s, v in st["quarantined"].items() if who.sees(c.pool_of_server(s))},
        "queued": [p for p in st["queued"] if who.sees(c.pool_of_persona(p))],
    }


def pool_page(c: Controller, who: Identity, pool: str, page: int) -> dict[str, Any]:
    st = c.status()
    members = sorted((p, v) for p, v in st["personas"].items() if v["pool"] == pool)
    start = max(0, page) * POOL_PAGE_ROWS
    rows = [{"name": p, "state": state_word(v), **v} for p, v in members[start:start + POOL_PAGE_ROWS]]
    return {"pool": pool, "personas": rows, "page": page, "total": len(members),
            "pages": (len(members) + POOL_PAGE_ROWS - 1) // POOL_PAGE_ROWS}


def persona_page(c: Controller, who: Identity, name: str) -> dict[str, Any]:
    pd = c.defs.personas[name]
    spec = pd.spec
    pool = c.defs.pools[pd.pool]
    st = c.status()["personas"].get(name, {})
    server = st.get("server")
    assignment = {p: s for p, s in c.journal.assignment().items() if s}
    q = set(c.journal.quarantined())
    networks = []
    for net_name, net in sorted(pool.networks.items()):
        chans = [ch for ch in (net.primary, net.secondary) if ch is not None]
        cables = []
        if server and server in c.defs.servers:
            srv = c.defs.servers[server]
            cables = [f"{ch} → {srv.channels[ch].switch} {srv.channels[ch].port}" for ch in chans if ch in srv.channels]
        networks.append({"name": net_name, "vlan": net.vlan, "mode": net.mode, "channels": chans, "cables": cables,
                         "address": str(spec.addresses.get(net_name, "")) or None})
    ops = c.journal.operations(10, persona=name)
    last_recovery = None
    for o in ops:
        if o.state == "done":
            rec = next((s for s in reversed(c.journal.steps(o.id)) if s["step"] == "recovery"), None)
            if rec and rec["detail"]:
                hooks = rec["detail"].get("hooks") or []
                data = next((h.get("data") for h in hooks if isinstance(h, dict) and h.get("data")), None)
                last_recovery = {"op": o.id, "result": rec["detail"].get("recovery"), "data": data}
                break
    busy = bool(st.get("operation"))
    home = spec.home
    return {
        "name": name, "pool": pd.pool, "spec": spec, "status": st, "state": state_word(st) if st else "unknown",
        "networks": networks, "operations": ops, "last_recovery": last_recovery,
        "targets": [spec.boot] + list(spec.data),
        "actions": persona_actions(who, pd.pool, busy, server == home, home in q,
                                   bool(standbys(c.defs, pd.pool, assignment, q))),
        "standbys": standbys(c.defs, pd.pool, assignment, q),
    }


def server_page(c: Controller, who: Identity, name: str) -> dict[str, Any]:
    srv = c.defs.servers[name]
    pool_name = c.pool_of_server(name)
    assignment = {p: s for p, s in c.journal.assignment().items() if s}
    persona = next((p for p, s in assignment.items() if s == name), None)
    mark = c.journal.servers().get(name)
    quarantined = bool(mark and mark.quarantined)
    intended: dict[int, str] = {}
    if pool_name:
        pool = c.defs.pools[pool_name]
        if quarantined:
            intended = {ch: f"access {pool.quarantine_vlan} (quarantine)" for ch in srv.channels}
        elif persona:
            for net in pool.networks.values():
                for ch in (net.primary, net.secondary):
                    if ch is not None:
                        prev = intended.get(ch, "")
                        intended[ch] = (prev + ", " if prev else f"{net.mode} ") + str(net.vlan)
    ports = [{"channel": ch, "switch": cab.switch, "port": cab.port, "carries": intended.get(ch, "-")}
             for ch, cab in sorted(srv.channels.items())]
    answer, _ = c.poller.answer(name)
    ops = [o for o in c.journal.operations(50)
           if name in (o.from_server, o.to_server) or name in o.facts.get("failed_standbys", [])][:10]
    return {"name": name, "pool": pool_name, "srv": srv, "persona": persona, "mark": mark, "bmc": answer,
            "ports": ports, "operations": ops, "actions": server_actions(who, pool_name, quarantined)}


CLI = {
    "POST /v1/failover": lambda d: f"aimctl failover {d.get('persona', '?')}" + (f" --to {d['to']}" if d.get("to") else ""),
    "POST /v1/move": lambda d: f"aimctl move {d.get('persona', '?')} --to {d.get('to', '?')}"
                               + (f" --change {d['change']}" if d.get("change") else ""),
    "POST /v1/failback": lambda d: f"aimctl failback {d.get('persona', '?')}",
    "POST /v1/failovers/{id}/approve": lambda d: f"aimctl approve {d.get('id', '?')}",
    "POST /v1/servers/{server}/clear": lambda d: f"aimctl clear {d.get('server', '?')}",
    "POST /v1/pools/{pool}/pause": lambda d: f"aimctl pause {d.get('pool', '?')}",
    "POST /v1/pools/{pool}/resume": lambda d: f"aimctl resume {d.get('pool', '?')}",
}


def cli_equivalent(entry: dict[str, Any]) -> str:
    """The command an operator would type for what this audit entry records ('' when there is none)."""
    detail = entry.get("detail") or {}
    fields = {**(detail.get("params") or {}), **(detail.get("body") or {} if isinstance(detail.get("body"), dict) else {})}
    make = CLI.get(str(entry.get("action", "")))
    return make(fields) if make else ""


def audit_entries(c: Controller, who: Identity, limit: int) -> list[dict[str, Any]]:
    """Newest first; entries about a pool the caller cannot see are left out, and entries about no pool
    are shown only to a token with a role outside pools."""
    out = []
    for e in reversed(c.audit.entries(limit)):
        detail = e.get("detail") if isinstance(e.get("detail"), dict) else {}
        pool = detail.get("pool") or c.pool_of_persona(str(e.get("target", ""))) or c.pool_of_server(str(e.get("target", "")))
        if who.sees(pool):
            out.append({**e, "cli": cli_equivalent(e)})
    return out
