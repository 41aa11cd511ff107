"""One push connection's outgoing messages, written by one task in the order they were made.

A push may be sent from a timer (`Faults.push_delay`) or from a request handler; queueing
them and writing from a single task keeps the socket's order the engine's order, on both
venues' hubs.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

__all__ = ["Outbox"]


class Outbox:
    def __init__(self, ws: web.WebSocketResponse) -> None:
        self._ws = ws
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()

    def put(self, message: dict[str, Any]) -> None:
        self._queue.put_nowait(json.dumps(message))

    def close(self) -> None:
        """End `run` after what is queued so far."""
        self._queue.put_nowait(None)

    async def run(self) -> None:
        while (text := await self._queue.get()) is not None:
            if self._ws.closed:
                return
            try:
                await self._ws.send_str(text)
            except (ConnectionError, RuntimeError):
                return
