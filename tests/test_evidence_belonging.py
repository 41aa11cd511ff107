"""Issue 13, defect 4 (part 2): evidence is checked against the record's symbol and side.

One intent id sent for ETH and for SOL derives one client order id for both. SOL's actor found
ETH's filled order on the board under that id and recorded a SOL position filled at ETH's
price, with a stray stop on SOL. An order or execution of another symbol (or, for the entry,
another side) under the same client order id is never this record's evidence.
"""

from __future__ import annotations

import anyio

from posguard.actors.orders import ABSENT, look_up, send_once
from posguard.actors.verification import EntryEvidence, Filled, Unverified
from posguard.streams.backoff import Deadline
from posguard.streams.simulated import FakeVenue
from posguard.streams.venue.protocol import OrderRequest
from tests.clock import IOAwareMockClock
from tests.evidence_scaffolding import COID, ETH, SOL, actor_context, entry_record, execution, order, snapshot


async def test_an_eth_fill_on_the_board_under_sols_client_order_id_is_not_sols_fill(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    async with FakeVenue(seed=1) as venue, actor_context(redis_url, clock, venue) as ctx:
        ctx.board.apply(order(ETH, price=3_000.0))
        ctx.board.apply(execution("x-eth", ETH, price=3_000.0))
        ctx.board.apply(execution("x-eth-exit", ETH, side="sell", price=2_990.0, client_order_id=""))
        evidence = EntryEvidence(entry_record(SOL))
        evidence.take_board(ctx)

        assert evidence.order is None and not evidence.fills and not evidence.exits
        assert evidence.filled_qty() == 0.0
        assert evidence.decide(final=False) is None
        assert isinstance(evidence.decide(final=True), Unverified)


async def test_a_rest_answer_of_another_symbol_or_the_other_side_is_not_taken() -> None:
    evidence = EntryEvidence(entry_record(SOL, side="buy"))
    evidence.take_order(order(ETH, price=3_000.0), "rest")
    evidence.take_order(order(SOL, side="sell"), "rest")
    evidence.take_executions([execution("x-eth", ETH), execution("x-sell", SOL, side="sell")], "rest")
    evidence.take_position(snapshot(1.0, seq=3, symbol=ETH), "rest")
    assert evidence.order is None and not evidence.fills and not evidence.exits and evidence.position is None

    evidence.take_order(order(SOL), "rest")
    evidence.take_executions([execution("x-sol", SOL)], "rest")
    verdict = evidence.decide(final=False)
    assert isinstance(verdict, Filled) and verdict.avg_price == 150.0, "SOL's own evidence still counts"


async def test_sending_and_looking_up_never_return_another_symbols_order(clock: IOAwareMockClock, redis_url: str) -> None:
    async with FakeVenue(seed=1) as venue, actor_context(redis_url, clock, venue) as ctx:
        ctx.board.apply(order(ETH, price=3_000.0))
        record = entry_record(SOL, qty=1.0)

        found = await look_up(ctx, record, COID, Deadline(5.0), absent_after=anyio.current_time())
        assert found is ABSENT, "ETH's order is not SOL's; the venue knows no SOL order by that id"

        request = OrderRequest(symbol=SOL, side="buy", qty=1.0, client_order_id=COID)
        sent = await send_once(ctx, record, COID, lambda: venue.create_order(request), Deadline(5.0))
        assert sent is not None and sent.symbol == SOL and sent.avg_price == venue.prices[SOL]
        assert venue.calls["create_order"] == 1
