"""The running system: the venue's stream, the ingestor, and one actor per symbol.

`Engine.run` owns a task group with the stream task, the ingestor and the actors. Intents
come in through `Engine.submit`, which refuses bad input before anything is created (I7) and
routes the rest to the symbol's actor, creating it on first use (I4: one actor per symbol).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence

import anyio
from anyio.abc import TaskGroup, TaskStatus

from actors.context import ActorContext, TransitionObserver
from actors.intents import CloseIntent, Intent, IntentRecord, IntentRefused, OpenIntent, check_common, check_open
from actors.lifecycle import MailboxFull, SymbolActor, Ticket
from actors.settings import ActorSettings
from actors.store import Store
from streams.events import Execution, Position, VenueEvent
from streams.errors import VenueUnavailable
from streams.evidence import EvidenceBoard
from streams.ingestor import EventCache, Ingestor
from streams.venue import MarketRules, Venue

log = logging.getLogger("posguard.engine")

STREAM_BUFFER = 65_536


class Engine:
    def __init__(
        self,
        *,
        venue: Venue,
        store: Store,
        cache: EventCache | None,
        settings: ActorSettings,
        stale_after: float = 15.0,
        rng: random.Random | None = None,
        observers: Sequence[TransitionObserver] = (),
    ) -> None:
        self.venue = venue
        self.store = store
        self.board = EvidenceBoard(stale_after=stale_after)
        self.ingestor = Ingestor(self.board, cache, listeners=[self._route])
        self.settings = settings
        self.rules: dict[str, MarketRules] = {}
        self.ctx = ActorContext(
            venue=venue,
            store=store,
            board=self.board,
            rules=self.rules,
            settings=settings,
            rng=rng or random.Random(),
            observers=list(observers),
        )
        self.actors: dict[str, SymbolActor] = {}
        self._task_group: TaskGroup | None = None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Load markets, start the streams, resume every live record, then serve intents."""
        self.rules.update(await self._load_markets())
        send, receive = anyio.create_memory_object_stream[VenueEvent](STREAM_BUFFER)
        async with anyio.create_task_group() as tg:
            self._task_group = tg
            tg.start_soon(self.ingestor.run, receive)
            tg.start_soon(self._stream, send)
            for record in await self.store.list_records():
                if record.state.is_live:
                    self._actor(record.symbol)
            task_status.started()

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

    async def _stream(self, send: anyio.abc.ObjectSendStream[VenueEvent]) -> None:
        async with send:
            await self.venue.stream(send)

    def _route(self, event: VenueEvent) -> None:
        """Tell an existing actor when the venue pushed something that may end its position."""
        match event:
            case Position(size=0.0) | Execution(client_order_id=""):
                actor = self.actors.get(event.symbol)
            case Execution() if not event.client_order_id.endswith("-e"):
                actor = self.actors.get(event.symbol)
            case _:
                actor = None
        if actor is not None:
            actor.nudge()

    def _actor(self, symbol: str) -> SymbolActor:
        actor = self.actors.get(symbol)
        if actor is None:
            assert self._task_group is not None, "Engine.run() must be started first"
            actor = self.actors[symbol] = SymbolActor(self.ctx, symbol)
            self._task_group.start_soon(actor.run, name=f"actor {symbol}")
        return actor

    async def submit(self, intent: Intent) -> Ticket:
        """Validate, then queue on the symbol's actor. A refused intent is answered at once."""
        try:
            if isinstance(intent, OpenIntent):
                intent = check_open(intent, self.rules)
            elif isinstance(intent, CloseIntent):
                check_common(intent.intent_id, intent.symbol, self.rules)
            return self._actor(intent.symbol).submit(intent)
        except (IntentRefused, MailboxFull) as exc:
            return await self._refuse(intent, str(exc))

    async def _refuse(self, intent: Intent, reason: str) -> Ticket:
        log.warning("intent %s refused: %s", intent.intent_id, reason)
        reply = IntentRecord(
            intent_id=intent.intent_id,
            action="open" if isinstance(intent, OpenIntent) else "close",
            symbol=intent.symbol,
            status="rejected",
            reason=reason,
        )
        await self.store.save_intent(reply)
        ticket = Ticket(intent)
        ticket.finish(reply)
        return ticket
