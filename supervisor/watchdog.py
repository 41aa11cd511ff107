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

from posguard.actors.store.client import is_redis_failure
from posguard.actors.store.health import HealthStatus, StreamHealth
from posguard.actors.store.positions import Store
from posguard.streams.ingestion.evidence import EvidenceBoard
from posguard.supervisor.audit import AuditReport
from posguard.supervisor.loop_lag import call_within_loop_time
from posguard.supervisor.metrics import Metrics
from posguard.supervisor.supervision import EntryGate, SupervisorSettings

__all__ = ["DATA_LOST", "UNAVAILABLE_REASON", "UNREACHABLE", "pause_for_redis", "RedisWatchdog", "WatchdogStatistics", "publish_health"]

log = logging.getLogger("posguard.engine")

UNREACHABLE = "redis"
"""The entry gate's pause while Redis is unavailable (unreachable, timed out, refusing writes)."""
UNAVAILABLE_REASON = "Redis unreachable or refusing writes: nothing can be written ahead"
DATA_LOST = "redis_data_lost"
"""The entry gate's pause from a Redis data loss until the full audit has run."""


async def publish_health(store: Store, gate: EntryGate) -> None:
    """Show the entry gate in the health hash; a Redis that does not answer is only logged,
    since Redis may be the very reason the gate changed."""
    try:
        await store.publish_status(gate.status())
    except Exception as exc:  # noqa: BLE001 - Redis may be the reason we are here
        log.error("could not publish health to Redis: %s", exc)


def pause_for_redis(gate: EntryGate) -> bool:
    """Pause new entries because Redis is unavailable; True if they were not paused for it yet.
    The watchdog lifts it (after an audit) once Redis reads and writes again."""
    new = UNREACHABLE not in gate.paused
    gate.paused[UNREACHABLE] = UNAVAILABLE_REASON
    return new


class WatchdogStatistics(msgspec.Struct, frozen=True):
    ticks: int
    """Checks completed (Redis answered and the requests were handled)."""
    unanswered: int
    """Checks Redis did not answer."""


class RedisWatchdog:
    """Checks Redis through the health hash every ``redis_check_interval`` seconds: a read
    (the operator's requests) and a write (the heartbeat), each timed by `call_within_loop_time`
    so a busy loop is not taken for a slow Redis.

    Every Redis call here is caught: a Redis-side error (`is_redis_failure`: unreachable,
    timed out, or refusing writes: OOM, READONLY, MISCONF, LOADING, BUSY) pauses entries until
    a tick gets both answers and an audit has run; nothing here can end the engine's task group.
    Redis that lost its data (`data_lost`) pauses entries too, and is answered with an alert
    and a full audit, which adopts and protects what the venue holds."""

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
        self._heartbeat_written = False
        self._data_lost = ""
        self._data_recovered = anyio.Event()
        self._data_recovered.set()

    def statistics(self) -> WatchdogStatistics:
        return WatchdogStatistics(ticks=self._ticks, unanswered=self._unanswered)

    @property
    def timeout(self) -> float:
        """Seconds of loop time one Redis call may take before Redis counts as unreachable."""
        return max(1.0, self.settings.redis_check_interval)

    def data_lost(self, evidence: str) -> None:
        """Redis no longer holds what posguard wrote (restarted empty, ``FLUSHALL``, a replica
        promoted with another data set): pause entries until the alert is written and a full
        audit has adopted what the venue holds (README, "When things go wrong")."""
        if not self._data_lost:
            self._data_recovered = anyio.Event()
            log.critical("Redis lost its data (%s): new entries paused until a full audit has adopted "
                         "and protected what the venue holds", evidence)
        self._data_lost = self._data_lost or evidence
        self.gate.paused[DATA_LOST] = "Redis lost its data: auditing the venue before entries resume"

    async def data_recovered(self) -> None:
        """Return once no data loss is waiting for its audit."""
        await self._data_recovered.wait()

    async def run(self) -> None:
        """Pause entries while Redis does not answer or refuses writes; audit and resume when
        it does. Also picks up an operator's 'safe-mode off' and 'audit' from the health hash.
        The heartbeat has a task of its own: an audit run from a tick (an operator's request,
        a recovery) may take long, and must not make the process look dead meanwhile."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._beat)
            await self._watch()

    async def _beat(self) -> None:
        """Write the heartbeat every ``redis_check_interval`` seconds, whatever else is busy."""
        while True:
            heartbeat = HealthStatus(heartbeat_ms=int(time.time() * 1000), pid=os.getpid(),
                                     venue=self.venue_label or None)
            try:
                await call_within_loop_time(self.timeout, lambda: self.store.publish_status(heartbeat))
                self._heartbeat_written = True
            except Exception as exc:  # noqa: BLE001 - the tick loop judges Redis; this only beats
                log.debug("heartbeat not written (%s)", exc)
            await anyio.sleep(self.settings.redis_check_interval)

    async def _watch(self) -> None:
        while True:
            await anyio.sleep(self.settings.redis_check_interval)
            self.metrics.refresh(self.board, self.gate.safe_mode)
            try:
                await self._tick()
            except Exception as exc:  # noqa: BLE001 - nothing here may end the task group
                if not is_redis_failure(exc):
                    log.exception("the Redis watchdog's check failed; it goes on")
                    continue
                if pause_for_redis(self.gate):
                    log.error("Redis unavailable (%s: %s): new entries paused; stops on the venue stay",
                              type(exc).__name__, exc)
                self._unanswered += 1

    async def _tick(self) -> None:
        health = await call_within_loop_time(self.timeout, self.store.read_health)
        if self._heartbeat_written and health.status.heartbeat_ms is None:
            self.data_lost("the health hash, with this process's heartbeat, is gone")
        # A write too, timed like the read: Redis refusing writes (OOM, READONLY) pauses entries.
        await call_within_loop_time(self.timeout, lambda: self.store.publish_status(
            HealthStatus(pid=os.getpid(), venue=self.venue_label or None)))
        if UNREACHABLE in self.gate.paused or DATA_LOST in self.gate.paused:
            await self._recover()
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
        self._ticks += 1

    async def _recover(self) -> None:
        """Redis reads and writes again: alert a data loss, audit, then let entries in."""
        if self._data_lost:
            log.warning("Redis answers again after losing its data: alerting, then a full audit")
            await self.store.append_alert("*", f"Redis lost its data ({self._data_lost}); the audit adopts and "
                                               "protects what the venue holds; intents handled before the loss "
                                               "can no longer be recognised as duplicates")
        else:
            log.warning("Redis answers again: auditing before entries resume")
        report = await self.audit_now()
        if report is None:
            return
        if self._data_lost:
            # The stream fields went with the data; the ingestor writes them only on a change.
            await self.store.publish_streams({
                topic: StreamHealth(connected=connected, reason="shown again after Redis lost its data")
                for topic, (connected, _since) in self.board.health().items()
            })
        self._data_lost = ""
        self._data_recovered.set()
        self.gate.paused.pop(UNREACHABLE, None)
        self.gate.paused.pop(DATA_LOST, None)
        await publish_health(self.store, self.gate)
