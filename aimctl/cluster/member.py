"""One controller as a member of a cluster: its etcd clients, its leadership, its etcd journal.

The daemon (``aimctl.daemon.Controller``) composes this when started with ``--cluster``; nothing
here decides policy. Leadership gets its own etcd client so a renewal never queues behind
journal traffic.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aimctl.cluster.config import ClusterConfig
from aimctl.journal.etcdkv import Etcd
from aimctl.cluster.leadership import Leadership
from aimctl.journal.secretbox import SecretBox
from aimctl.errors import OperatorError
from aimctl.journal import JournalStore, etcd_journal


class ClusterMember:
    def __init__(self, cfg: ClusterConfig, api_url: str, *, on_elected: Callable[[int], None],
                 on_demoted: Callable[[str], None], may_campaign: Callable[[], bool],
                 on_refused: Callable[[str], None]) -> None:
        if cfg.key_file is None:
            raise OperatorError("a clustered controller needs cluster.key_file (the AES key that seals CHAP"
                                " secrets in etcd; make one with `aimctl cluster keygen FILE`, copy it to every member)")
        self.cfg = cfg
        timing = cfg.timing
        box = SecretBox.from_file(cfg.key_file)
        self.member = cfg.member_name()
        self.leadership = Leadership(Etcd(cfg.endpoints, timeout_s=timing.retry_s), cfg.prefix, self.member,
                                     api_url=api_url, timing=timing, on_elected=on_elected,
                                     on_demoted=on_demoted, may_campaign=may_campaign)
        self._on_refused = on_refused
        self.journal: JournalStore = etcd_journal(Etcd(cfg.endpoints, timeout_s=timing.retry_s), cfg.prefix,
                                                  lambda: self.leadership.token, secrets=box,
                                                  on_refused=self._refused)

    def _refused(self, why: str) -> None:
        self.leadership.note_refused(why)
        self._on_refused(why)

    def status(self, probe: bool = True) -> dict[str, Any]:
        """Leadership as this member sees it; with ``probe``, also the members' keys and each etcd
        endpoint's answer (bounded: a cut member still answers its API within about a second)."""
        st = self.leadership.status()
        st["prefix"] = self.cfg.prefix
        st["members"] = self.leadership.members_seen
        st["etcd"] = self.leadership.etcd.endpoint_status(timeout_s=0.5) if probe else []
        return st
