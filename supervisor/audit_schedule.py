"""When the account is audited: at start-up, every ``AuditSettings.interval`` seconds, and soon
after anything that may have left Redis and the venue apart (an actor crash, a stream coming
back, an operator's request). An audit that cannot read the venue or Redis is retried (I6).

An audit the venue refuses for the API credentials (a key revoked or expired while posguard
runs) is different: retrying once a second would never help and gets a client banned. So new
entries are refused with that reason (`EntryGate` cause ``credentials``), an alert is written,
and the audit is retried with exponential backoff bounded by `CREDENTIALS_BACKOFF`; the first
audit the venue accepts again lifts the refusal by itself.
"""

from __future__ import annotations

import logging
import random

import anyio

from posguard.actors.store.client import is_redis_failure
from posguard.actors.store.positions import Store
from posguard.streams.backoff import Backoff
from posguard.streams.venue.errors import VenueAuthFailed, VenueUnavailable
from posguard.supervisor.audit import Auditor, AuditReport
from posguard.supervisor.metrics import Metrics
from posguard.supervisor.supervision import AuditSettings, EntryGate
from posguard.supervisor.watchdog import publish_health

__all__ = ["CREDENTIALS_BACKOFF", "CREDENTIALS_CAUSE", "RETRY_DELAY", "AuditSchedule"]

log = logging.getLogger("posguard.engine")

RETRY_DELAY = 1.0
"""Seconds before an audit that could not read the venue or Redis is tried again."""
CREDENTIALS_BACKOFF = Backoff(initial=5.0, maximum=300.0)
"""Retries of an audit the venue refused for the credentials: 5 s, 10 s, ... at most 5 min."""
CREDENTIALS_CAUSE = "credentials"
"""The `EntryGate.paused` cause while the venue refuses the API credentials."""


class AuditSchedule:
    """Runs the `Auditor` on request and on a timer, one audit at a time from its loop."""

    def __init__(
        self,
        *,
        auditor: Auditor,
        settings: AuditSettings,
        metrics: Metrics,
        gate: EntryGate | None = None,
        store: Store | None = None,
        credentials_hint: str = "check the API key and secret",
        rng: random.Random | None = None,
    ) -> None:
        self.auditor = auditor
        self.settings = settings
        self.metrics = metrics
        self.gate = gate or EntryGate()
        self.store = store
        self.credentials_hint = credentials_hint
        self.rng = rng or random.Random()
        self.last: AuditReport | None = None
        """The last audit that repaired (not a dry run); None until one has run."""
        self._wanted = anyio.Event()
        self._credential_delays = CREDENTIALS_BACKOFF.delays(self.rng)

    def request(self, why: str) -> None:
        log.info("audit requested: %s", why)
        self._wanted.set()

    @property
    def credentials_refused(self) -> bool:
        return CREDENTIALS_CAUSE in self.gate.paused

    async def audit_now(self, *, dry_run: bool = False) -> AuditReport | None:
        """One audit now. None if the venue or Redis could not be read (it is retried)."""
        try:
            report = await self.auditor.run(dry_run=dry_run)
        except VenueAuthFailed as exc:
            await self._on_credentials_refused(exc)
            return None
        except (VenueUnavailable, OSError) as exc:
            log.warning("audit could not read the venue or Redis (%s); will retry", exc)
            return None
        except Exception as exc:  # noqa: BLE001 - a Redis client error: same, retried
            if not is_redis_failure(exc):
                raise
            log.warning("audit could not reach Redis (%s); will retry", exc)
            return None
        if self.credentials_refused:
            del self.gate.paused[CREDENTIALS_CAUSE]
            self._credential_delays = CREDENTIALS_BACKOFF.delays(self.rng)
            log.warning("the venue accepts the API credentials again: new entries resume")
            if self.store is not None:
                await publish_health(self.store, self.gate)
        if not dry_run:
            self.last = report
            self.metrics.on_findings(report.findings)
        return report

    async def _on_credentials_refused(self, exc: VenueAuthFailed) -> None:
        first = not self.credentials_refused
        reason = f"API credentials refused ({exc}); {self.credentials_hint}"
        self.gate.paused[CREDENTIALS_CAUSE] = reason
        if not first:
            log.warning("audit: the venue still refuses the API credentials")
            return
        log.critical("%s. New entries are refused; stops on the venue stay; audits back off", reason)
        if self.store is not None:
            await publish_health(self.store, self.gate)
            try:
                await self.store.append_alert("", reason)
            except Exception as alert_error:  # noqa: BLE001 - Redis may be down too; the log has it
                log.error("could not write the credentials alert to Redis: %s", alert_error)

    def retry_delay(self) -> float:
        """How long to wait before an audit that failed is tried again."""
        return next(self._credential_delays) if self.credentials_refused else RETRY_DELAY

    async def run(self) -> None:
        self._wanted.set()  # at start-up
        while True:
            with anyio.move_on_after(self.settings.interval):
                await self._wanted.wait()
            self._wanted = anyio.Event()
            if await self.audit_now() is None:
                await anyio.sleep(self.retry_delay())
                self._wanted.set()
