"""Reading the emulator's ground truth (``EmulatorServer.truth()``): which positions are
bare. One rule for the demo, the crash test and the soak, so they judge alike."""

from __future__ import annotations

from typing import Any

from posguard.streams.venue.markets import QTY_TOLERANCE

__all__ = ["is_protected", "unprotected"]


def is_protected(truth: dict[str, Any], venue_symbol: str) -> bool:
    """No position, a stop held by the position, an untriggered close-position stop on the
    closing side, triggered by a move against the position (never a take-profit), (Binance ``closePosition=true``: it closes the whole position, whatever its
    size), or untriggered reduce-only stop orders on the closing side covering its whole size.

    Works on both emulators' truth (venue symbols such as ``BTCUSDT``, sides ``Buy``/``Sell``).
    """
    position = truth["positions"].get(venue_symbol)
    if position is None or position["stop_loss"]:
        return True
    closing = "Sell" if position["side"] == "Buy" else "Buy"
    # A stop waits for the price to move against the position (falling, 2, for a long); an
    # order waiting for it to move in its favour is a take-profit, which guards nothing.
    against = 2 if closing == "Sell" else 1
    stops = [
        o for o in truth["orders"]
        if o["symbol"] == venue_symbol and o["side"] == closing and o["status"] == "Untriggered"
        and o["trigger_direction"] == against
    ]
    if any(o.get("close_position") for o in stops):
        return True
    covered = sum(o["qty"] for o in stops if o["reduce_only"])
    return covered >= position["size"] - QTY_TOLERANCE


def unprotected(truth: dict[str, Any]) -> list[str]:
    """The venue symbols whose position has no stop covering it."""
    return [symbol for symbol in truth["positions"] if not is_protected(truth, symbol)]
