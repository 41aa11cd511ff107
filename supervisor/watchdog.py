"""The Redis watchdog: entries wait while Redis does not answer, and the health hash is how the
process and its operator talk.

Nothing can be written ahead (I5) while Redis is down, so new entries are paused until it
answers again and an audit has run; stops already on the venue protect what is open meanwhile.
Each tick also writes the heartbeat and picks up what an operator wrote into the health hash
(``posguard safe-mode off``, ``posguard audit``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable

import anyio
import msgspec

from posguard.actors.store.health import HealthStatus
from posguard.actors.store.positions import Store
from posguard.streams.ingestion.evidence import EvidenceBoard
from posguard.supervisor.audit import AuditReport
from posguard.supervisor.metrics import Metrics
from posguard.supervisor.supervision import EntryGate, SupervisorSettings

__all__ = ["RedisWatchdog", "WatchdogStatistics", "publish_health"]

log = logging.getLogger("posguard.engine")


async def publish_health(store: Store, gate: EntryGate) -> None:
    """Show the entry gate in the health hash; a Redis that does not answer is only logged,
    since Redis may be the very reason the gate changed."""
    try:
        await store.publish_status(gate.status())
    except Exception as exc:  # noqa: BLE001 - Redis may be the reason we are here
        log.error("could not publish health to Redis: %s", exc)


class WatchdogStatistics(msgspec.Struct, frozen=True):
    ticks: int
    """Checks completed (Redis answered and the requests were handled)."""
    unanswered: int
    """Checks Redis did not answer."""


class RedisWatchdog:
    """Pings Redis through the health hash every ``redis_check_interval`` seconds."""

    def __init__(
        self,
        *,
        store: Store,
        gate: EntryGate,
        settings: SupervisorSettings,
        metrics: Metrics,
        board: EvidenceBoard,
        audit_now: Callable[[], Awaitable[AuditReport | None]],
        venue_label: str = "",
    ) -> None:
        self.store = store
        self.gate = gate
        self.settings = settings
        self.metrics = metrics
        self.board = board
        self.audit_now = audit_now
        self.venue_label = venue_label
        """Shown with every heartbeat (the health hash's ``venue``)."""
        self._ticks = 0
        self._unanswered = 0

    def statistics(self) -> WatchdogStatistics:
        return WatchdogStatistics(ticks=self._ticks, unanswered=self._unanswered)

    async def run(self) -> None:
        """Pause entries while Redis does not answer; audit and resume when it does. Also
        picks up an operator's 'safe-mode off' written to the health hash."""
        while True:
            await anyio.sleep(self.settings.redis_check_interval)
            self.metrics.refresh(self.board, self.gate.safe_mode)
            try:
                with anyio.fail_after(max(1.0, self.settings.redis_check_interval)):
                    health = await self.store.read_health()
            except Exception as exc:  # noqa: BLE001
                if "redis" not in self.gate.paused:
                    log.error("Redis unreachable (%s): new entries paused; stops on the venue stay", exc)
                self.gate.paused["redis"] = "Redis unreachable: nothing can be written ahead"
                self._unanswered += 1
                continue
            if "redis" in self.gate.paused:
                log.warning("Redis answers again: auditing before entries resume")
                report = await self.audit_now()
                if report is not None:
                    del self.gate.paused["redis"]
                    await publish_health(self.store, self.gate)
            if self.gate.lifted_by(health.requests):
                self.gate.leave_safe_mode("operator")
                await publish_health(self.store, self.gate)
            requested = health.requests.audit_requested
            if requested is not None and requested > (health.status.audit_started or 0):
                # `posguard audit` asked the running process (the owner of the actors) to audit.
                await self.store.publish_status(HealthStatus(audit_started=requested))
                report = await self.audit_now()
                if report is not None:
                    await self.store.publish_status(HealthStatus(audit_done=requested))
            await self.store.publish_status(HealthStatus(heartbeat_ms=int(time.time() * 1000), pid=os.getpid(),
                                                          venue=self.venue_label or None))
            self._ticks += 1
