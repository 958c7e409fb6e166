"""Prometheus metrics of the controller, on a private registry.

A private registry (not prometheus_client's global one) so two controllers in one test process,
or a test and the library's own process collectors, never collide on a metric name.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from aimctl.failover.runner import StepEvent

# Steps range from a journal write (ms) to a boot-and-heartbeat wait bounded by the boot timer (minutes).
STEP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.failovers = Counter(
            "aimctl_failovers", "Failover operations finished, by result (done, failed, aborted, needs-operator)",
            ["result"], registry=self.registry,
        )
        self.step_duration = Histogram(
            "aimctl_step_duration_seconds", "Duration of workflow steps, from intent to result",
            ["step"], buckets=STEP_BUCKETS, registry=self.registry,
        )
        self.heartbeat_age = Gauge(
            "aimctl_heartbeat_age_seconds", "Seconds since the last valid heartbeat of each persona",
            ["persona"], registry=self.registry,
        )
        self.spare_capacity = Gauge(
            "aimctl_pool_spare_capacity", "N+k: standbys of the pool that can take every persona of the pool",
            ["pool"], registry=self.registry,
        )
        self.qualified_standbys = Gauge(
            "aimctl_persona_qualified_standbys", "Usable standbys (not quarantined, failed, drifted, unqualified, "
            "suspect) that can take each persona", ["persona"], registry=self.registry,
        )
        self.drift_findings = Gauge(
            "aimctl_drift_findings", "Open drift findings, by kind", ["kind"], registry=self.registry,
        )
        self.drift_pass = Gauge(
            "aimctl_drift_pass_seconds", "Wall time of the last drift pass", registry=self.registry,
        )
        self.drift_unchecked = Gauge(
            "aimctl_drift_unchecked_devices", "Devices the last drift pass could not read", registry=self.registry,
        )
        self.suspect = Gauge(
            "aimctl_body_suspect", "1 while a body shows signs of failing (health, event log, link flaps)",
            ["server"], registry=self.registry,
        )

        self.cluster_leader = Gauge(
            "aimctl_cluster_leader", "1 while this controller leads the cluster and acts (embedded: always 1)",
            registry=self.registry,
        )
        self.leadership_changes = Counter(
            "aimctl_cluster_leadership_changes", "Times this controller was elected or demoted", ["event"],
            registry=self.registry,
        )
        self.refused_writes = Counter(
            "aimctl_cluster_refused_writes", "Journal writes etcd refused (stale fencing token)",
            registry=self.registry,
        )
        self.journal_available = Gauge(
            "aimctl_journal_available", "1 while the journal's store answers (0: no operation can start)",
            registry=self.registry,
        )
        self.journal_available.set(1)

    def set_leader(self, leading: bool) -> None:
        self.cluster_leader.set(1 if leading else 0)

    def leadership_event(self, event: str) -> None:
        self.leadership_changes.labels(event=event).inc()

    def refused_write(self) -> None:
        self.refused_writes.inc()

    def set_journal_available(self, ok: bool) -> None:
        self.journal_available.set(1 if ok else 0)

    def observe_step(self, event: StepEvent) -> None:
        """A ``run_steps`` listener: every step result with a duration lands in the histogram."""
        if event.phase == "result" and event.duration_s is not None:
            self.step_duration.labels(step=event.step).observe(event.duration_s)

    def failover_finished(self, result: str) -> None:
        self.failovers.labels(result=result).inc()

    def set_heartbeat_age(self, persona: str, age_s: float) -> None:
        self.heartbeat_age.labels(persona=persona).set(age_s)

    def set_spare_capacity(self, pool: str, spares: int) -> None:
        self.spare_capacity.labels(pool=pool).set(spares)

    def set_drift(self, by_kind: dict[str, int], pass_s: float, unchecked: int) -> None:
        for kind in set(by_kind) | {lbl["kind"] for lbl in self._labels(self.drift_findings)}:
            self.drift_findings.labels(kind=kind).set(by_kind.get(kind, 0))
        self.drift_pass.set(pass_s)
        self.drift_unchecked.set(unchecked)

    @staticmethod
    def _labels(gauge: Gauge) -> list[dict[str, str]]:
        return [dict(s.labels) for m in gauge.collect() for s in m.samples]

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
