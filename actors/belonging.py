"""Whether a piece of venue evidence is about this record, checked before it is used.

A client order id alone does not say whose an order is: one intent id sent for two symbols
derives the same id on both (issue 13, defect 4), and a venue answers a lookup by id with
whatever it holds under it. ETH's fill taken as SOL's made a phantom SOL position, filled at
ETH's price, with a stray stop. So every order and execution is matched against the record's
symbol, and its entry side, in this one place, by everything that reads evidence.
"""

from __future__ import annotations

from posguard.actors.records import PositionRecord
from posguard.streams.venue.events import Execution, Order, Position

__all__ = ["belongs_to"]


def belongs_to(record: PositionRecord, evidence: Order | Execution | Position) -> bool:
    """True if ``evidence`` may count for ``record``: the same symbol and, for an order or
    execution under the record's entry client order id, the entry's side. (A stop's or a
    close's side is the exit side, and a position of either side says something about the
    symbol: their readers judge the side themselves.)"""
    if evidence.symbol != record.symbol:
        return False
    if isinstance(evidence, Position):
        return True
    return evidence.client_order_id != record.client_order_id or evidence.side == record.side
