"""The running system: the venue's stream, the ingestor, one supervised actor per symbol,
the audit, and the gate that decides whether new entries are accepted.

`Engine.run` owns one task group: the stream task, the ingestor, the audit loop, the Redis
watch and the actors (each under a one-for-one restart loop). Intents come in through
`Engine.submit`, which refuses bad input before anything is created (I7), refuses entries in
safe mode or while Redis is unreachable, and routes the rest to the symbol's actor, creating it
on first use (I4: one actor per symbol).

Each of those jobs has its own module; this one builds them and runs them:
`actor_registry` (actors and their supervision), `admission` (validation and risk),
`audit_schedule`, `watchdog` (Redis, heartbeat, operator commands), `loop_lag` (the event
loop measured apart from Redis), `routing` and `stop_fill_watch` (stops that trigger and do
not fill).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence

import anyio
from anyio.abc import ObjectSendStream, TaskGroup, TaskStatus

from posguard.actors.context import ActorContext, TransitionObserver
from posguard.actors.intents import Intent
from posguard.actors.lifecycle import Ticket
from posguard.actors.lifecycle.recovery import AsRead
from posguard.actors.settings import ActorSettings
from posguard.actors.store.positions import Store
from posguard.streams.ingestion.evidence import EvidenceBoard
from posguard.streams.ingestion.ingestor import EventCache, Ingestor
from posguard.streams.venue.errors import VenueUnavailable
from posguard.streams.venue.events import VenueEvent
from posguard.streams.venue.markets import MarketRules
from posguard.streams.venue.protocol import Venue
from posguard.supervisor.actor_registry import ActorRegistry
from posguard.supervisor.admission import Admission, PricedChecks
from posguard.supervisor.audit import Auditor, AuditReport
from posguard.supervisor.audit_schedule import AuditSchedule
from posguard.supervisor.config import ConfigError
from posguard.supervisor.logs import log_transition
from posguard.supervisor.loop_lag import LoopLagProbe
from posguard.supervisor.metrics import Metrics
from posguard.supervisor.open_slots import OpenSlots
from posguard.supervisor.prices import PriceReader
from posguard.supervisor.risk import RiskLimits, not_markets
from posguard.supervisor.routing import EventRouter
from posguard.supervisor.stop_fill_watch import StopFillWatch
from posguard.supervisor.supervision import AuditSettings, EntryGate, SupervisorSettings
from posguard.supervisor.watchdog import RedisWatchdog, publish_health

__all__ = ["STREAM_BUFFER", "Engine", "venue_label"]

log = logging.getLogger("posguard.engine")

STREAM_BUFFER = 65_536


def venue_label(venue_name: str) -> str:
    """What the health hash's ``venue`` field shows: the exchange, or ``simulated`` for the
    built-in simulated venue (`FakeVenue`, named ``fake``), so nobody mistakes it for one."""
    return "simulated" if venue_name == "fake" else venue_name


class Engine:
    def __init__(
        self,
        *,
        venue: Venue,
        store: Store,
        cache: EventCache | None,
        settings: ActorSettings,
        supervisor: SupervisorSettings | None = None,
        audit: AuditSettings | None = None,
        risk: RiskLimits | None = None,
        metrics: Metrics | None = None,
        stale_after: float = 15.0,
        rng: random.Random | None = None,
        observers: Sequence[TransitionObserver] = (),
        credentials_hint: str = "check the API key and secret",
    ) -> None:
        self.venue = venue
        self.store = store
        self.board = EvidenceBoard(stale_after=stale_after)
        self.settings = settings
        self.supervision = supervisor or SupervisorSettings()
        self.audit_settings = audit or AuditSettings()
        self.risk = risk or RiskLimits()
        self.metrics = metrics or Metrics(venue.name)
        self.rules: dict[str, MarketRules] = {}
        rng = rng or random.Random()
        self.slots = OpenSlots(self.risk.max_open_positions)
        self.prices = PriceReader(venue, self.board, max_age=self.risk.price_max_age,
                                  deadline=self.risk.price_deadline, default_leverage=self.risk.default_leverage,
                                  backoff=settings.verification.backoff, rng=rng)
        self.gate = EntryGate()
        self.ctx = ActorContext(
            venue=venue,
            store=store,
            board=self.board,
            rules=self.rules,
            settings=settings,
            entry_check=(checks := PricedChecks(prices=self.prices, rules=self.rules, risk=self.risk,
                                                alert=lambda symbol, message: self.ctx.alert(symbol, message),
                                                gate=self.gate)),
            amend_check=checks.amend,
            rng=rng,
            observers=[self.metrics.on_transition, log_transition, self.slots.on_transition, *observers],
        )
        self.actors = ActorRegistry(ctx=self.ctx, settings=self.supervision, gate=self.gate, metrics=self.metrics,
                                    request_audit=self.request_audit)
        self.auditor = Auditor(venue, store, self.actors.get_or_start, self.actors.is_busy,
                               on_scan=self.slots.count_unusable)
        self.audits = AuditSchedule(auditor=self.auditor, settings=self.audit_settings, metrics=self.metrics,
                                    gate=self.gate, store=store, credentials_hint=credentials_hint, rng=self.ctx.rng)
        self.admission = Admission(store=store, rules=self.rules, risk=self.risk, gate=self.gate,
                                   actors=self.actors, slots=self.slots)
        self.watchdog = RedisWatchdog(store=store, gate=self.gate, settings=self.supervision, metrics=self.metrics,
                                      board=self.board, audit_now=self.audit_now,
                                      venue_label=venue_label(venue.name))
        self.loop_lag = LoopLagProbe(self.metrics)
        self.router = EventRouter(self.actors, self.request_audit)
        self.stop_fill_watch = StopFillWatch(ctx=self.ctx, actors=self.actors, prices=self.prices)
        self.ctx.observers.append(self.stop_fill_watch.follow)
        self.ingestor = Ingestor(self.board, cache, listeners=[self.router.route])
        self.stopping = False
        self._task_group: TaskGroup | None = None

    # -- running ----------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Load markets, start the streams, resume every live record, audit, serve intents."""
        self.rules.update(await self._load_markets())
        self._check_configured_symbols()
        send, receive = anyio.create_memory_object_stream[VenueEvent](STREAM_BUFFER)
        async with anyio.create_task_group() as tg:
            self._task_group = tg
            self.actors.attach(tg)
            tg.start_soon(self.ingestor.run, receive)
            tg.start_soon(self.stream_events, send)
            await publish_health(self.store, self.gate)
            await self._resume_records()
            tg.start_soon(self.audits.run)
            tg.start_soon(self.watchdog.run)
            tg.start_soon(self.loop_lag.run)
            tg.start_soon(self.stop_fill_watch.run)
            task_status.started()

    async def _resume_records(self) -> None:
        """Count the open slots, and start the actor of every symbol whose record is live (its
        step resumes) or whose intents a crash left unanswered (answered from the settled record)."""
        scan = await self.store.read_records()
        self.slots.count_existing(scan)
        records = scan.usable
        unanswered = await self.store.still_accepted(
            [i for r in records for i in (r.intent_id, r.close_intent_id, r.amend_intent_id) if i]
        )
        for record in records:
            self.stop_fill_watch.follow(record)
            accepted = frozenset({record.intent_id, record.close_intent_id, record.amend_intent_id} & unanswered)
            if record.state.is_live or accepted:
                self.actors.get_or_start(record.symbol, AsRead(record=record, accepted=accepted))

    async def stop(self) -> None:
        """Graceful shutdown: refuse new intents, let in-flight steps finish (up to the grace
        period), then stop. A step cut short is resumed from its record at the next start."""
        self.stopping = True
        log.warning("shutting down: no new intents; waiting up to %.0f s for in-flight steps",
                    self.supervision.shutdown_grace)
        with anyio.move_on_after(self.supervision.shutdown_grace):
            while self.actors.busy_symbols():
                await anyio.sleep(0.05)
        busy = self.actors.busy_symbols()
        if busy:
            log.warning("stopping with steps in flight on %s; they resume from Redis at the next start", busy)
        if self._task_group is not None:
            self._task_group.cancel_scope.cancel()

    def _check_configured_symbols(self) -> None:
        """Symbols named in ``[risk]`` must be markets of this venue; a start-up refusal, not
        a silent "every intent for it is refused" later."""
        unknown = not_markets(self.risk, self.rules)
        if unknown:
            key = "risk.allowed_symbols" if unknown[0] in self.risk.allowed_symbols else "risk.max_qty"
            raise ConfigError(
                f"{key}: {', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not a market of"
                f" {self.venue.name} (use the ccxt unified form of a linear perpetual, e.g. BTC/USDT:USDT)"
            )

    async def _load_markets(self) -> dict[str, MarketRules]:
        """Markets are needed before any intent can be checked; keep asking until they come."""
        delays = self.settings.verification.backoff.delays(self.ctx.rng)
        while True:
            try:
                return await self.venue.load_markets()
            except VenueUnavailable as exc:
                delay = next(delays)
                log.warning("loading markets failed (%s); retrying in %.1f s", exc, delay)
                await anyio.sleep(delay)

    async def streams_ready(self, timeout: float = 10.0) -> bool:
        """Wait until every private topic is connected; False if that takes over ``timeout``.

        Entries work either way (they fall back to REST); waiting first just spares the REST.
        """
        with anyio.move_on_after(timeout):
            while not self.board.is_healthy():
                await self.board.wait_for_health_change()
        return self.board.is_healthy()

    async def stream_events(self, send: ObjectSendStream[VenueEvent]) -> None:
        """The venue's private streams into ``send`` (closed when they end), for the ingestor."""
        async with send:
            await self.venue.stream(send)

    # -- intents and audits -----------------------------------------------------------------

    async def submit(self, intent: Intent) -> Ticket:
        """Validate, then queue on the symbol's actor. A refused intent is answered at once."""
        if self.stopping:
            return await self.admission.refuse(intent, "posguard is shutting down; send the intent again after restart")
        return await self.admission.admit(intent)

    async def redis_lost_data(self, evidence: str) -> None:
        """Redis no longer holds what was written (its intents group is gone, say): entries
        pause, and the watchdog alerts and audits the whole account before they resume.
        Returns once that audit has run, so a caller holding intents can hold them till then."""
        self.watchdog.data_lost(evidence)
        await self.watchdog.data_recovered()

    def request_audit(self, why: str) -> None:
        self.audits.request(why)

    async def audit_now(self, *, dry_run: bool = False) -> AuditReport | None:
        """One audit now. None if the venue or Redis could not be read (it is retried)."""
        return await self.audits.audit_now(dry_run=dry_run)

    @property
    def last_audit(self) -> AuditReport | None:
        return self.audits.last
