"""The per-symbol actor: one mailbox, one position lifecycle at a time (I4).

Every intent for a symbol goes through its actor's mailbox and is handled to the end before
the next one starts, so two entries for one symbol are never in flight together (the seed's
hypothesis #4). Every step is written to the store before it is taken (I5): the entry's
client order id is in Redis before the order is sent, a stop's id before the stop is placed.

    submitting -> submitted -> verifying -> open -> protected -> closing -> closed
                                        \\-> rejected | closed_externally | unverified
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from posguard.actors import ids
from posguard.actors.context import ActorContext
from posguard.actors.failpoints import failpoint
from posguard.actors.findings import Finding
from posguard.actors.intents import CloseIntent, Intent, IntentRecord, OpenIntent
from posguard.actors.lifecycle.closing import close_position, settle_closed
from posguard.actors.lifecycle.repairs import assess, repair
from posguard.actors.orders import cancel_leftover_stops, send_once
from posguard.actors.protection import exits_since_entry, protect, read_position
from posguard.actors.records import IN_FLIGHT_STATES, PositionRecord, State, utc_now
from posguard.actors.verification import ClosedExternally, Filled, Rejected, Unverified, verify_entry
from posguard.streams.backoff import Deadline
from posguard.streams.venue.errors import OrderRejected, VenueUnavailable
from posguard.streams.venue.markets import QTY_TOLERANCE
from posguard.streams.venue.protocol import OrderRequest

log = logging.getLogger("posguard.actor")


class MailboxFull(RuntimeError):
    pass


class Ticket:
    """A caller's handle on a submitted intent: wait for `done`, then read `result`."""

    def __init__(self, intent: Intent) -> None:
        self.intent = intent
        self.owned = anyio.Event()
        """Set once the actor has written the intent ahead: from then on a crash is
        recovered from Redis, so a queue may forget the intent (acknowledge it)."""
        self.done = anyio.Event()
        self.result: IntentRecord | None = None

    def finish(self, result: IntentRecord) -> None:
        self.result = result
        self.owned.set()
        self.done.set()

    async def wait(self) -> IntentRecord:
        await self.done.wait()
        assert self.result is not None
        return self.result


class Nudge:
    """Mailbox item: the venue pushed something that may have closed this symbol's position."""


class Repair:
    """Mailbox item: an audit finding for this symbol, to be carried out by its owner."""

    def __init__(self, finding: Finding) -> None:
        self.finding = finding
        self.done = anyio.Event()
        self.outcome = ""


class SymbolActor:
    def __init__(self, ctx: ActorContext, symbol: str) -> None:
        self.ctx = ctx
        self.symbol = symbol
        send, receive = anyio.create_memory_object_stream[Ticket | Nudge | Repair](ctx.settings.mailbox_size)
        self._send: MemoryObjectSendStream[Ticket | Nudge | Repair] = send
        self._receive: MemoryObjectReceiveStream[Ticket | Nudge | Repair] = receive
        self._nudge_pending = False
        self._ticket: Ticket | None = None
        self.busy = False

    def submit(self, intent: Intent) -> Ticket:
        ticket = Ticket(intent)
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
            if item.finding.kind == "in_flight":
                await self.resume()
                item.outcome = "resumed: the entry was looked up and driven on"
            else:
                item.outcome = await repair(self.ctx, item.finding)
            item.finding.action = item.outcome
            await self.ctx.store.append_audit(item.finding)
        finally:
            item.done.set()

    async def reconcile_self(self) -> list[Finding]:
        """This symbol's own audit: one look at the venue, then the repairs it calls for."""
        ctx = self.ctx
        positions = await ctx.venue.fetch_positions()
        stops = [o for o in await ctx.venue.fetch_open_orders(self.symbol) if o.kind == "stop"]
        record = await ctx.store.load_record(self.symbol)
        position = next((p for p in positions if p.symbol == self.symbol), None)
        findings = assess(self.symbol, record, position, stops, actor_busy=False)
        for finding in findings:
            if finding.kind == "in_flight":
                await self.resume()
                finding.action = "resumed"
            else:
                finding.action = await repair(ctx, finding)
            await ctx.store.append_audit(finding)
        return findings

    async def _serve(self, ticket: Ticket) -> None:
        self._ticket = ticket
        try:
            ticket.finish(await self.handle(ticket.intent))
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

    async def follow_venue(self) -> None:
        """A live record whose position the venue pushed as flat: find the proof, record it.

        Only executions prove a stop-out or liquidation (I1); a flat push without them
        changes nothing here, and the audit looks again later.
        """
        record = await self.ctx.store.load_record(self.symbol)
        if record is None or record.state not in (State.OPEN, State.PROTECTED, State.UNVERIFIED):
            return
        if read_position(self.ctx.board.position(self.symbol), record) != "flat":
            return
        held = record.filled_qty or record.qty
        exits = await exits_since_entry(self.ctx, record, ask_rest=True)
        if exits >= held - QTY_TOLERANCE:
            await self._closed_externally(record, f"closed by the venue (stop or liquidation): exits {exits}")
        else:
            log.warning("%s: venue pushed flat but executions show only %s of %s closed; leaving it to the audit",
                        self.symbol, exits, held)

    async def handle(self, intent: Intent) -> IntentRecord:
        match intent:
            case OpenIntent():
                return await self._intent_step(intent, "open", self._open)
            case CloseIntent():
                return await self._intent_step(intent, "close", self._close)

    async def _intent_step(
        self, intent: Intent, action: str, step: Callable[[Intent], Awaitable[PositionRecord]]
    ) -> IntentRecord:
        store = self.ctx.store
        previous = await store.load_intent(intent.intent_id)
        if previous is not None and previous.status != "accepted":
            log.info("%s: intent %s already handled (%s); not repeating it", self.symbol, intent.intent_id, previous.status)
            return previous
        reply = IntentRecord(intent_id=intent.intent_id, action=action, symbol=self.symbol, status="accepted")
        await store.save_intent(reply)
        try:
            record = await step(intent)
        except IntentConflict as exc:
            reply.status, reply.reason = "rejected", str(exc)
        else:
            settle_reply(reply, record)
        await store.save_intent(reply)
        return reply

    # -- open -----------------------------------------------------------------------------

    async def _open(self, intent: Intent) -> PositionRecord:
        assert isinstance(intent, OpenIntent)
        ctx = self.ctx
        current = await ctx.store.load_record(self.symbol)
        if current is not None and current.state.is_live and current.intent_id != intent.intent_id:
            raise IntentConflict(
                f"{self.symbol} already has a live position record (state {current.state},"
                f" intent {current.intent_id}); close it before opening another"
            )
        if current is not None and current.intent_id == intent.intent_id:
            record = current  # a redelivered intent: carry on from where it stood
        else:
            record = PositionRecord(
                symbol=self.symbol,
                intent_id=intent.intent_id,
                state=State.SUBMITTING,
                side=intent.side,
                qty=intent.qty,
                stop_price=intent.stop_price,
                client_order_id=ids.entry_id(ctx.account, intent.intent_id),
                stop_source="attached" if ctx.venue.supports_attached_stop else "",
            )
        if record.state.is_terminal:
            return record
        return await self._drive_entry(record, resumed=record is current)

    async def _drive_entry(self, record: PositionRecord, *, resumed: bool) -> PositionRecord:
        """From any in-flight state to a settled one. Also the crash-recovery path.

        ``resumed``: the record was found in the store in this state, so the entry may have
        been sent already; it is looked up by client order id before it is ever sent.
        """
        ctx = self.ctx
        sent_at = anyio.current_time()
        if record.state is State.SUBMITTING:
            record.sent_ms = record.sent_ms or ctx.venue.now_ms() - 1
            await ctx.save(record, "entry order about to be sent")  # write-ahead (I5)
            self._owned()
            request = OrderRequest(
                symbol=record.symbol,
                side=record.side,
                qty=record.qty,
                client_order_id=record.client_order_id,
                stop_loss=record.stop_price if record.stop_source == "attached" else None,
            )
            try:
                order = await send_once(
                    ctx, record, record.client_order_id, lambda: ctx.venue.create_order(request),
                    Deadline(ctx.settings.verification.hard_deadline), maybe_sent=resumed,
                )
            except OrderRejected as exc:
                record.state = State.REJECTED
                record.reason = f"venue rejected the entry: {exc.reason}"
                record.closed_at = utc_now()
                await ctx.save(record)
                return record
            failpoint("entry_sent")
            if order is not None:
                record.order_id = order.order_id
                record.state = State.SUBMITTED
                await ctx.save(record, f"venue acknowledged: {order.status}, filled {order.filled}")
        if record.state in IN_FLIGHT_STATES:
            record.state = State.VERIFYING
            await ctx.save(record)
            verdict = await verify_entry(ctx, record, sent_at)
            await self._settle_entry(record, verdict, sent_at)
        elif record.state is State.OPEN or (record.state is State.UNVERIFIED and not record.stop_client_order_id):
            await protect(ctx, record, record.filled_qty or record.qty, None, sent_at)
        return record

    async def _settle_entry(
        self, record: PositionRecord, verdict: Filled | ClosedExternally | Rejected | Unverified, sent_at: float
    ) -> None:
        ctx = self.ctx
        elapsed_ms = round((anyio.current_time() - sent_at) * 1000, 1)
        match verdict:
            case Rejected(reason=reason, source=source):
                record.state = State.REJECTED
                record.reason = reason
                record.evidence = source
                record.closed_at = utc_now()
                await ctx.save(record)
                ctx.board.forget(record.client_order_id)
            case ClosedExternally(filled_qty=filled, exit_qty=exit_qty, avg_price=avg, source=source):
                record.filled_qty, record.entry_price, record.evidence = filled, avg, source
                record.sent_to_verified_ms = elapsed_ms
                record.filled_at = utc_now()
                await self._closed_externally(
                    record, f"filled {filled}, then closed by the venue (exits {exit_qty}) before protection"
                )
            case Filled():
                record.filled_qty = verdict.open_qty
                record.entry_price = verdict.avg_price
                record.evidence = verdict.source
                record.sent_to_verified_ms = elapsed_ms
                record.filled_at = utc_now()
                record.state = State.OPEN
                partial = "" if verdict.complete else " (still filling at the deadline: size is a lower bound)"
                await ctx.save(record, f"filled {verdict.filled_qty} at {verdict.avg_price} ({verdict.source}){partial}")
                if await protect(ctx, record, verdict.open_qty, verdict.position_seen, sent_at) == "closed_externally":
                    await self._closed_externally(record, "filled, then closed by the venue while being protected")
            case Unverified(reason=reason):
                record.state = State.UNVERIFIED
                record.reason = reason
                await ctx.save(record)
                await ctx.alert(record.symbol, f"entry {record.client_order_id} unverified: {reason}; protecting it anyway")
                await protect(ctx, record, record.qty, None, sent_at)

    async def _closed_externally(self, record: PositionRecord, reason: str) -> None:
        """Proven filled and closed by the venue: record it and cancel any stop left armed."""
        record.state = State.CLOSED_EXTERNALLY
        record.reason = reason
        record.closed_at = utc_now()
        await self.ctx.save(record)
        await cancel_leftover_stops(self.ctx, record, Deadline(self.ctx.settings.protection.stop_deadline))
        self.ctx.board.forget(record.client_order_id, record.stop_client_order_id)

    # -- close ----------------------------------------------------------------------------

    async def _close(self, intent: Intent) -> PositionRecord:
        assert isinstance(intent, CloseIntent)
        ctx = self.ctx
        record = await ctx.store.load_record(self.symbol)
        if record is None or not record.state.is_live:
            state = record.state if record is not None else "none"
            raise IntentConflict(f"{self.symbol} has no live position to close (record state: {state})")
        if record.state in IN_FLIGHT_STATES:
            raise IntentConflict(f"{self.symbol}: the entry is still being verified; close it once it settles")
        record.state = State.CLOSING
        record.close_intent_id = intent.intent_id
        await ctx.save(record, "close requested")
        self._owned()
        return await self._drive_close(record)

    async def _drive_close(self, record: PositionRecord) -> PositionRecord:
        ctx = self.ctx
        qty = record.filled_qty if record.filled_qty > 0 else record.qty
        outcome = await close_position(ctx, record, id_key=record.close_intent_id, qty=qty)
        await cancel_leftover_stops(ctx, record, Deadline(ctx.settings.protection.stop_deadline))
        await settle_closed(ctx, record, outcome, "closed on request")
        return record

    # -- recovery -------------------------------------------------------------------------

    async def resume(self) -> None:
        """After a crash or restart: finish the step the record says was under way.

        An entry that may have been sent is looked up by its client order id before anything
        new happens; a close in flight is driven on (its orders are reduce-only).
        """
        record = await self.ctx.store.load_record(self.symbol)
        if record is None or record.state.is_terminal:
            return
        log.info("%s: resuming record in state %s (intent %s)", self.symbol, record.state, record.intent_id)
        if record.state is State.CLOSING:
            intent_id = record.close_intent_id
            await self._drive_close(record)
        elif record.state is State.EMERGENCY_CLOSING:
            intent_id = record.intent_id  # the entry whose protection failed
            record.state = State.CLOSING
            record.close_intent_id = record.close_intent_id or record.intent_id + ":emergency"
            await self._drive_close(record)
        else:
            intent_id = record.intent_id
            await self._drive_entry(record, resumed=True)
        await self._answer_interrupted(intent_id, record)

    async def _answer_interrupted(self, intent_id: str, record: PositionRecord) -> None:
        """The intent whose step a crash cut short still says ``accepted``: answer it now, so
        whoever follows it (``posguard open/close``, a bot reading the reply list) learns the
        outcome. The intake acknowledged it when it was written ahead; nothing redelivers it."""
        reply = await self.ctx.store.load_intent(intent_id)
        if reply is not None and reply.status == "accepted":
            settle_reply(reply, record)
            reply.reason = f"finished after a restart: {reply.reason}" if reply.reason else "finished after a restart"
            await self.ctx.store.save_intent(reply)


def settle_reply(reply: IntentRecord, record: PositionRecord) -> None:
    """Fill in an intent's final answer from the record its step left."""
    open_ = reply.action == "open"
    reply.status = "rejected" if record.state is State.REJECTED and open_ else "done"
    reply.outcome = str(record.state)
    reply.reason = record.reason
    reply.client_order_id = record.client_order_id if open_ else record.close_client_order_id


class IntentConflict(RuntimeError):
    """The intent cannot run in the symbol's current state; nothing was sent."""
