"""The running system: the venue's stream, the ingestor, one supervised actor per symbol,
the audit, and the gate that decides whether new entries are accepted.

`Engine.run` owns one task group: the stream task, the ingestor, the audit loop, the Redis
watch and the actors (each under a one-for-one restart loop). Intents come in through
`Engine.submit`, which refuses bad input before anything is created (I7), refuses entries in
safe mode or while Redis is unreachable, and routes the rest to the symbol's actor, creating it
on first use (I4: one actor per symbol).
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Sequence

import anyio
import coredis.exceptions
import msgspec
from anyio.abc import ObjectSendStream, TaskGroup, TaskStatus

from posguard.actors.context import ActorContext, TransitionObserver
from posguard.actors.intents import (
    CloseIntent,
    Intent,
    IntentRecord,
    IntentRefused,
    OpenIntent,
    check_common,
    check_open,
)
from posguard.actors.lifecycle import MailboxFull, SymbolActor, Ticket
from posguard.actors.records import PositionRecord
from posguard.actors.settings import ActorSettings
from posguard.actors.store.positions import Store
from posguard.streams.ingestion.evidence import EvidenceBoard
from posguard.streams.ingestion.ingestor import EventCache, Ingestor
from posguard.streams.venue.errors import VenueUnavailable
from posguard.streams.venue.events import Execution, Position, StreamStatus, VenueEvent
from posguard.streams.venue.markets import MarketRules
from posguard.streams.venue.protocol import Venue
from posguard.supervisor.audit import Auditor, AuditReport
from posguard.supervisor.metrics import Metrics
from posguard.supervisor.risk import RiskLimits, check_open_positions, check_priced, check_static
from posguard.supervisor.supervision import AuditSettings, EntryGate, RestartTracker, SupervisorSettings

log = logging.getLogger("posguard.engine")

STREAM_BUFFER = 65_536


def _log_transition(record: PositionRecord, note: str) -> None:
    """One log line per transition: what an operator greps for."""
    log.info("transition", extra={"fields": {
        "symbol": record.symbol, "state": str(record.state), "client_order_id": record.client_order_id,
        "intent_id": record.intent_id, "note": note or record.reason,
    }})


def is_redis_failure(exc: BaseException) -> bool:
    """A failure of Redis itself (connection refused, reset, timed out), not of our logic."""
    return isinstance(exc, (coredis.exceptions.ConnectionError, TimeoutError, OSError))


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
    ) -> None:
        self.venue = venue
        self.store = store
        self.board = EvidenceBoard(stale_after=stale_after)
        self.ingestor = Ingestor(self.board, cache, listeners=[self._route])
        self.settings = settings
        self.supervision = supervisor or SupervisorSettings()
        self.audit_settings = audit or AuditSettings()
        self.risk = risk or RiskLimits()
        self.metrics = metrics or Metrics(venue.name)
        self.rules: dict[str, MarketRules] = {}
        self.ctx = ActorContext(
            venue=venue,
            store=store,
            board=self.board,
            rules=self.rules,
            settings=settings,
            rng=rng or random.Random(),
            observers=[self.metrics.on_transition, _log_transition, *observers],
        )
        self.actors: dict[str, SymbolActor] = {}
        self.gate = EntryGate()
        self.restarts = RestartTracker(self.supervision)
        self.auditor = Auditor(venue, store, self._actor, self._busy)
        self.last_audit: AuditReport | None = None
        self.stopping = False
        self._audit_wanted = anyio.Event()
        self._task_group: TaskGroup | None = None

    # -- running ----------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Load markets, start the streams, resume every live record, audit, serve intents."""
        self.rules.update(await self._load_markets())
        send, receive = anyio.create_memory_object_stream[VenueEvent](STREAM_BUFFER)
        async with anyio.create_task_group() as tg:
            self._task_group = tg
            tg.start_soon(self.ingestor.run, receive)
            tg.start_soon(self._stream, send)
            await self._publish_health()
            for record in await self.store.list_records():
                if record.state.is_live:
                    self._actor(record.symbol)
            tg.start_soon(self._audit_loop)
            tg.start_soon(self._watch_redis)
            task_status.started()

    async def stop(self) -> None:
        """Graceful shutdown: refuse new intents, let in-flight steps finish (up to the grace
        period), then stop. A step cut short is resumed from its record at the next start."""
        self.stopping = True
        log.warning("shutting down: no new intents; waiting up to %.0f s for in-flight steps",
                    self.supervision.shutdown_grace)
        with anyio.move_on_after(self.supervision.shutdown_grace):
            while any(actor.busy for actor in self.actors.values()):
                await anyio.sleep(0.05)
        busy = [s for s, a in self.actors.items() if a.busy]
        if busy:
            log.warning("stopping with steps in flight on %s; they resume from Redis at the next start", busy)
        if self._task_group is not None:
            self._task_group.cancel_scope.cancel()

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

    async def _stream(self, send: ObjectSendStream[VenueEvent]) -> None:
        async with send:
            await self.venue.stream(send)

    def _route(self, event: VenueEvent) -> None:
        """Tell an actor when the venue pushed something that may end its position; audit
        after a stream comes back (what happened while it was down was not pushed)."""
        actor = None
        match event:
            case Position(size=0.0) | Execution(client_order_id=""):
                actor = self.actors.get(event.symbol)
            case Execution() if not event.client_order_id.endswith("-e"):
                actor = self.actors.get(event.symbol)
            case StreamStatus(connected=True, reason="reconnected"):
                self.request_audit(f"stream {event.topic} reconnected")
        if actor is not None:
            actor.nudge()

    # -- actors and their supervision -------------------------------------------------------

    def _actor(self, symbol: str) -> SymbolActor:
        actor = self.actors.get(symbol)
        if actor is None:
            assert self._task_group is not None, "Engine.run() must be started first"
            actor = self.actors[symbol] = SymbolActor(self.ctx, symbol)
            self._task_group.start_soon(self._supervise, actor, name=f"actor {symbol}")
        return actor

    def _busy(self, symbol: str) -> bool:
        actor = self.actors.get(symbol)
        return actor is not None and actor.busy

    async def _supervise(self, actor: SymbolActor) -> None:
        """One-for-one restarts with backoff; escalate to safe mode past the intensity limit.

        The backoff starts over once an actor has run for a whole restart window: a crash
        weeks after the last one is a new incident, not the next step of an old one."""
        delays = self.supervision.restart_backoff.delays(self.ctx.rng)
        reconcile_first = False
        while True:
            started = anyio.current_time()
            try:
                await actor.run(reconcile_first=reconcile_first)
                return
            except Exception as exc:
                if anyio.current_time() - started >= self.supervision.restart_window:
                    delays = self.supervision.restart_backoff.delays(self.ctx.rng)
                actor.busy = False
                redis = is_redis_failure(exc)
                log.error("actor %s failed (%s: %s); restarting", actor.symbol, type(exc).__name__, exc,
                          exc_info=not redis)
                self.metrics.on_restart()
                if redis:
                    self.gate.paused["redis"] = "Redis unreachable: nothing can be written ahead"
                else:
                    if self.restarts.record():
                        await self._enter_safe_mode(
                            f"{self.supervision.max_restarts}+ actor restarts within "
                            f"{self.supervision.restart_window:.0f} s (last: {actor.symbol}: {exc})"
                        )
                    # The restarted actor checks its own symbol first; the whole account is
                    # audited too, in case the failure left traces beyond it. (After a Redis
                    # failure the audit runs when Redis answers again.)
                    self.request_audit(f"actor {actor.symbol} failed")
                reconcile_first = True
                await anyio.sleep(next(delays))

    # -- safe mode and the entry gate -----------------------------------------------------------

    async def _enter_safe_mode(self, reason: str) -> None:
        if self.gate.enter_safe_mode(reason):
            await self._publish_health()
            await self.ctx.alert("*", f"safe mode: {reason}")

    async def _publish_health(self) -> None:
        try:
            await self.store.set_health(self.gate.health_fields())
        except Exception as exc:  # noqa: BLE001 - Redis may be the reason we are here
            log.error("could not publish health to Redis: %s", exc)

    async def _watch_redis(self) -> None:
        """Pause entries while Redis does not answer; audit and resume when it does. Also
        picks up an operator's 'safe-mode off' written to the health hash."""
        while True:
            await anyio.sleep(self.supervision.redis_check_interval)
            self.metrics.refresh(self.board, self.gate.safe_mode)
            try:
                with anyio.fail_after(max(1.0, self.supervision.redis_check_interval)):
                    health = await self.store.get_health()
            except Exception as exc:  # noqa: BLE001
                if "redis" not in self.gate.paused:
                    log.error("Redis unreachable (%s): new entries paused; stops on the venue stay", exc)
                self.gate.paused["redis"] = "Redis unreachable: nothing can be written ahead"
                continue
            if "redis" in self.gate.paused:
                log.warning("Redis answers again: auditing before entries resume")
                report = await self.audit_now()
                if report is not None:
                    del self.gate.paused["redis"]
                    await self._publish_health()
            if self.gate.safe_mode and health.get("safe_mode") == "no":
                self.gate.leave_safe_mode("operator")
                await self._publish_health()
            if health.get("audit_requested", "") > health.get("audit_started", ""):
                # `posguard audit` asked the running process (the owner of the actors) to audit.
                await self.store.set_health({"audit_started": health["audit_requested"]})
                report = await self.audit_now()
                if report is not None:
                    await self.store.set_health({"audit_done": health["audit_requested"]})
            await self.store.set_health({"heartbeat_ms": str(int(time.time() * 1000)), "pid": str(os.getpid())})

    # -- audit ------------------------------------------------------------------------------

    def request_audit(self, why: str) -> None:
        log.info("audit requested: %s", why)
        self._audit_wanted.set()

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
            self.last_audit = report
            self.metrics.on_findings(report.findings)
        return report

    async def _audit_loop(self) -> None:
        self._audit_wanted.set()  # at start-up
        while True:
            with anyio.move_on_after(self.audit_settings.interval):
                await self._audit_wanted.wait()
            self._audit_wanted = anyio.Event()
            if await self.audit_now() is None:
                await anyio.sleep(1.0)
                self._audit_wanted.set()

    # -- intents ----------------------------------------------------------------------------

    async def submit(self, intent: Intent) -> Ticket:
        """Validate, then queue on the symbol's actor. A refused intent is answered at once."""
        try:
            if self.stopping:
                raise IntentRefused("posguard is shutting down; send the intent again after restart")
            if isinstance(intent, OpenIntent):
                intent = await self._check_entry(intent)
            elif isinstance(intent, CloseIntent):
                check_common(intent.intent_id, intent.symbol, self.rules)
            return self._actor(intent.symbol).submit(intent)
        except (IntentRefused, MailboxFull) as exc:
            return await self._refuse(intent, str(exc))

    async def _check_entry(self, intent: OpenIntent) -> OpenIntent:
        """Everything an entry must pass before it reaches an actor (I7, risk limits)."""
        intent = check_open(intent, self.rules)
        check_static(intent, self.risk)
        refusal = self.gate.refusal()
        if refusal:
            raise IntentRefused(refusal)
        if intent.stop_distance or self.risk.needs_price:
            try:
                price = await self.venue.fetch_price(intent.symbol)
            except VenueUnavailable as exc:
                raise IntentRefused(f"could not read the last price of {intent.symbol} ({exc}); send it again") from None
            if intent.stop_distance:
                sign = -1 if intent.side == "buy" else 1
                stop = self.rules[intent.symbol].round_price(price * (1 + sign * intent.stop_distance))
                intent = msgspec.structs.replace(intent, stop_price=stop)
            check_priced(intent, price, self.risk)
        if self.risk.max_open_positions:
            live = sum(1 for r in await self.store.list_records() if r.state.is_live)
            check_open_positions(live, self.risk)
        return intent

    async def _refuse(self, intent: Intent, reason: str) -> Ticket:
        log.warning("intent %s refused: %s", intent.intent_id, reason)
        reply = IntentRecord(
            intent_id=intent.intent_id,
            action="open" if isinstance(intent, OpenIntent) else "close",
            symbol=intent.symbol,
            status="rejected",
            reason=reason,
        )
        try:
            await self.store.save_intent(reply)
        except Exception as exc:  # noqa: BLE001 - the refusal still reaches the caller
            log.error("could not record the refusal of %s in Redis: %s", intent.intent_id, exc)
        ticket = Ticket(intent)
        ticket.finish(reply)
        return ticket
