"""The per-symbol actor: one mailbox, one position lifecycle at a time (I4).

Every intent for a symbol goes through its actor's mailbox and is handled to the end before
the next one starts, so two entries for one symbol are never in flight together (the seed's
hypothesis #4). Every step is written to the store before it is taken (I5): the entry's
client order id is in Redis before the order is sent, a stop's id before the stop is placed.

    submitting -> submitted -> verifying -> open -> protected -> closing -> closed
                                        \\-> rejected | closed_externally | unverified

The steps themselves live in their own rooms (`entry`, `closing`, `recovery`, `repairs`);
the actor only queues work and hands each item to its step, one at a time.
"""

from __future__ import annotations

import logging

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from posguard.actors.context import ActorContext
from posguard.actors.findings import Finding
from posguard.actors.intents import AmendIntent, CloseIntent, Intent, IntentRecord, OpenIntent
from posguard.actors.lifecycle import recovery, repairs
from posguard.actors.lifecycle.amend import amend_on_request
from posguard.actors.lifecycle.partial_close import close_on_request
from posguard.actors.lifecycle.entry import open_position
from posguard.actors.lifecycle.mailbox import MailboxFull, MailboxItem, Nudge, Repair, Ticket
from posguard.actors.lifecycle.replies import answer_intent
from posguard.actors.lifecycle.statistics import ActorStatistics
from posguard.actors.records import RecordDefect
from posguard.streams.venue.errors import VenueUnavailable

__all__ = ["SymbolActor"]

log = logging.getLogger("posguard.actor")


class SymbolActor:
    """The one owner of a symbol's position record: its mailbox, served in order."""

    def __init__(self, ctx: ActorContext, symbol: str) -> None:
        self.ctx = ctx
        self.symbol = symbol
        send, receive = anyio.create_memory_object_stream[MailboxItem](ctx.settings.mailbox_size)
        self._send: MemoryObjectSendStream[MailboxItem] = send
        self._receive: MemoryObjectReceiveStream[MailboxItem] = receive
        self._nudge_pending = False
        self._ticket: Ticket | None = None
        self.busy = False
        self.alerted_defect: RecordDefect | None = None
        """The bad record this actor last raised an alert for: one alert per defect."""
        self.as_read: recovery.AsRead | None = None
        """Its record as the engine's start-up read it, for the first resume only."""

    def statistics(self) -> ActorStatistics:
        """Where the actor stands now: what is queued, and whether it is working or waiting."""
        mailbox = self._receive.statistics()
        return ActorStatistics(
            symbol=self.symbol,
            queued=mailbox.current_buffer_used,
            senders_waiting=mailbox.tasks_waiting_send,
            waiting_for_work=mailbox.tasks_waiting_receive > 0,
            nudge_pending=self._nudge_pending,
            busy=self.busy,
            serving=self._ticket.intent.intent_id if self._ticket is not None else "",
        )

    def submit(self, intent: Intent, body: str) -> Ticket:
        """Queue an intent; ``body`` is what it asked as it arrived (`Ticket.body`)."""
        ticket = Ticket(intent, body)
        try:
            self._send.send_nowait(ticket)
        except anyio.WouldBlock:
            raise MailboxFull(f"{self.symbol}: {self.ctx.settings.mailbox_size} intents already queued") from None
        return ticket

    def nudge(self) -> None:
        """Ask the actor to look at what the venue pushed, after whatever it is doing now.

        Dropped when the mailbox is full: the queued work and the audit will see it anyway.
        """
        if self._nudge_pending:
            return
        try:
            self._send.send_nowait(Nudge())
            self._nudge_pending = True
        except anyio.WouldBlock:
            pass

    async def repair(self, finding: Finding) -> Repair:
        """Queue an audit finding; await ``.done`` on the result, then read ``.outcome``."""
        item = Repair(finding)
        await self._send.send(item)
        return item

    async def run(self, *, reconcile_first: bool = False) -> None:
        """Resume whatever was in flight, then serve the mailbox until cancelled.

        ``reconcile_first`` (after a crash): check the symbol against the venue before
        taking new work.
        """
        self.busy = True
        self.ctx.held_notes.pop(self.symbol, None)  # a failed run's unwritten notes: not this run's
        try:
            await self.resume()
            if reconcile_first:
                try:
                    await self.reconcile_self()
                except VenueUnavailable as exc:
                    # Not a reason to fail again: the supervisor's next audit covers this symbol.
                    log.warning("%s: could not reconcile after the restart (%s); the next audit will", self.symbol, exc)
        finally:
            self.busy = False
        async for item in self._receive:
            self.busy = True
            try:
                if isinstance(item, Nudge):
                    self._nudge_pending = False
                    await self.follow_venue()
                elif isinstance(item, Repair):
                    await self._repair(item)
                else:
                    await self._serve(item)
            finally:
                self.busy = False

    async def _repair(self, item: Repair) -> None:
        try:
            item.outcome = await repairs.carry_out(self.ctx, item.finding, self.resume, alerted=self.alerted_defect)
            if item.finding.kind == "bad_record":
                self.alerted_defect = item.finding.defect
            item.finding.action = item.outcome
            await self.ctx.store.append_audit(item.finding)
        finally:
            item.done.set()

    async def reconcile_self(self) -> list[Finding]:
        """This symbol's own audit: one look at the venue, then the repairs it calls for."""
        return await repairs.reconcile_symbol(self.ctx, self.symbol, self.resume)

    async def follow_venue(self) -> None:
        """A live record whose position the venue pushed as flat: find the proof, record it."""
        await repairs.follow_venue(self.ctx, self.symbol)

    async def resume(self) -> None:
        """After a crash or restart: finish the step the record says was under way."""
        as_read, self.as_read = self.as_read, None
        await recovery.resume(self.ctx, self.symbol, as_read)

    async def _serve(self, ticket: Ticket) -> None:
        self._ticket = ticket
        try:
            ticket.finish(await self.handle(ticket.intent, ticket.body))
        except BaseException:
            # The supervisor restarts the actor; the intent's record says what was done.
            ticket.finish(IntentRecord(
                intent_id=ticket.intent.intent_id, action=type(ticket.intent).__name__,
                symbol=self.symbol, status="failed",
                reason="interrupted (actor stopped or crashed); the position record shows how far it got",
            ))
            raise
        finally:
            self._ticket = None

    def _owned(self) -> None:
        """The current intent's first record write is in Redis (see `Ticket.owned`)."""
        if self._ticket is not None:
            self._ticket.owned.set()

    async def handle(self, intent: Intent, body: str) -> IntentRecord:
        ctx, symbol = self.ctx, self.symbol
        match intent:
            case OpenIntent():
                return await answer_intent(
                    ctx, symbol, intent, lambda: open_position(ctx, symbol, intent, self._owned), body=body
                )
            case CloseIntent():
                return await answer_intent(
                    ctx, symbol, intent, lambda: close_on_request(ctx, symbol, intent, self._owned), body=body
                )
            case AmendIntent():
                return await answer_intent(
                    ctx, symbol, intent,
                    lambda: amend_on_request(ctx, symbol, intent, self._owned, ctx.amend_check), body=body,
                )
