"""The time window of a venue's history listing, read the way both venues document it.

Bybit's execution list and Binance's order and trade histories agree: no times means the last
seven days, one time anchors seven days from it, and two times may be at most seven days apart.
Only the refusal differs (each front passes its own), so the rule has one home.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from posguard.streams.emulators.engine.matching import now_ms

__all__ = ["SEVEN_DAYS_MS", "history_window"]

SEVEN_DAYS_MS = 7 * 86_400_000


def history_window(params: Mapping[str, str], too_big: Callable[[], Exception]) -> tuple[int, int]:
    """(start, end) in ms from ``startTime``/``endTime``; raises ``too_big()`` past seven days."""
    start = int(params["startTime"]) if params.get("startTime") else None
    end = int(params["endTime"]) if params.get("endTime") else None
    if start is None and end is None:
        end = now_ms()
        start = end - SEVEN_DAYS_MS
    elif end is None:
        assert start is not None
        end = start + SEVEN_DAYS_MS
    elif start is None:
        start = end - SEVEN_DAYS_MS
    if end - start > SEVEN_DAYS_MS:
        raise too_big()
    return start, end
