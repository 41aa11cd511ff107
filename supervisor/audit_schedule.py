"""When the account is audited: at start-up, every ``AuditSettings.interval`` seconds, and soon
after anything that may have left Redis and the venue apart (an actor crash, a stream coming
back, an operator's request). An audit that cannot read the venue or Redis is retried (I6).
"""

from __future__ import annotations

import logging

import anyio

from posguard.actors.store.client import is_redis_failure
from posguard.streams.venue.errors import VenueUnavailable
from posguard.supervisor.audit import Auditor, AuditReport
from posguard.supervisor.metrics import Metrics
from posguard.supervisor.supervision import AuditSettings

__all__ = ["AuditSchedule"]

log = logging.getLogger("posguard.engine")


class AuditSchedule:
    """Runs the `Auditor` on request and on a timer, one audit at a time from its loop."""

    def __init__(self, *, auditor: Auditor, settings: AuditSettings, metrics: Metrics) -> None:
        self.auditor = auditor
        self.settings = settings
        self.metrics = metrics
        self.last: AuditReport | None = None
        """The last audit that repaired (not a dry run); None until one has run."""
        self._wanted = anyio.Event()

    def request(self, why: str) -> None:
        log.info("audit requested: %s", why)
        self._wanted.set()

    async def audit_now(self, *, dry_run: bool = False) -> AuditReport | None:
        """One audit now. None if the venue or Redis could not be read (it is retried)."""
        try:
            report = await self.auditor.run(dry_run=dry_run)
        except (VenueUnavailable, OSError) as exc:
            log.warning("audit could not read the venue or Redis (%s); will retry", exc)
            return None
        except Exception as exc:  # noqa: BLE001 - a Redis client error: same, retried
            if not is_redis_failure(exc):
                raise
            log.warning("audit could not reach Redis (%s); will retry", exc)
            return None
        if not dry_run:
            self.last = report
            self.metrics.on_findings(report.findings)
        return report

    async def run(self) -> None:
        self._wanted.set()  # at start-up
        while True:
            with anyio.move_on_after(self.settings.interval):
                await self._wanted.wait()
            self._wanted = anyio.Event()
            if await self.audit_now() is None:
                await anyio.sleep(1.0)
                self._wanted.set()
