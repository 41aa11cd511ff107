"""The harness itself: the mock clock holds still during real I/O, and Redis is private."""

from __future__ import annotations

import anyio
import coredis

from tests.clock import IOAwareMockClock


async def test_mock_clock_costs_no_wall_time(clock: IOAwareMockClock) -> None:
    import time

    start_wall = time.monotonic()
    await anyio.sleep(3600)
    assert anyio.current_time() >= 3600
    assert time.monotonic() - start_wall < 5


async def test_clock_holds_during_real_redis_io(clock: IOAwareMockClock, redis_url: str) -> None:
    client = coredis.Redis.from_url(redis_url, decode_responses=True)
    async with client, anyio.create_task_group() as tg:
        # A timer that would fire "during" the Redis calls if the clock jumped.
        tripped = anyio.Event()

        async def timer() -> None:
            await anyio.sleep(10)
            tripped.set()

        tg.start_soon(timer)
        before = anyio.current_time()
        for i in range(2000):
            with clock.hold():
                await client.set(f"k{i}", "v")
        assert not tripped.is_set()
        assert anyio.current_time() == before
        await tripped.wait()
        assert anyio.current_time() >= before + 10


def test_redis_server_is_private(redis_url: str) -> None:
    assert not redis_url.endswith(":6379/0")
    assert redis_url.startswith("redis://127.0.0.1:")
