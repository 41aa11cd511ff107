"""The evidence board's memory stays bounded in a long-running process."""

from __future__ import annotations

from posguard.streams.ingestion.evidence import EvidenceBoard
from posguard.streams.venue.events import Execution


def fill(number: int, client_order_id: str) -> Execution:
    return Execution(
        symbol="BTC/USDT:USDT", exec_id=f"x{number}", order_id=f"o{number}",
        client_order_id=client_order_id, side="buy", qty=0.01, price=60_000.0, ts_ms=number,
    )


async def test_fills_of_old_client_order_ids_are_evicted_like_orders() -> None:
    board = EvidenceBoard(max_orders=3)
    for number, coid in enumerate(["other-1", "other-2", "ours", "ours", "other-3", "other-4"]):
        board.apply(fill(number, coid))
    assert board.fills("other-1") == [] and board.fills("other-2") == [], "the oldest ids are let go"
    assert [e.exec_id for e in board.fills("ours")] == ["x2", "x3"], "a kept id keeps all its fills"
    assert len(board.fills("other-4")) == 1
