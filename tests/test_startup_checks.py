"""Start-up checks that need the venue or the process (issue 12, item 9): configured symbols
that are no market of the venue stop the start with the key and the symbol; a metrics endpoint
reachable from other machines is allowed, and said."""

from __future__ import annotations

import logging
import re

import anyio
import pytest

from posguard.streams.simulated import FakeVenue
from posguard.supervisor.config import ConfigError, parse_config
from posguard.supervisor.metrics import Metrics
from posguard.supervisor.redis_server import free_port
from posguard.supervisor.risk import RiskLimits
from posguard.supervisor.service import run_service
from posguard.supervisor.startup import explain_start_failure
from tests.clock import IOAwareMockClock
from tests.support import open_intent, running_engine


def _config_errors(group: BaseException) -> list[ConfigError]:
    if isinstance(group, ConfigError):
        return [group]
    if isinstance(group, BaseExceptionGroup):
        return [error for inner in group.exceptions for error in _config_errors(inner)]
    return []


async def test_allowed_symbols_that_are_no_market_stop_the_start_naming_key_and_symbol(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    limits = RiskLimits(allowed_symbols=["BTC/USDT:USDT", "BTC/USDT"])  # the spot spelling: no such market
    with pytest.raises(BaseException) as caught:  # noqa: B017 - the engine's task group may wrap it
        async with FakeVenue(seed=1) as venue, running_engine(redis_url, venue, clock, risk=limits):
            pass
    errors = _config_errors(caught.value)
    assert errors, f"expected a ConfigError, got {caught.value!r}"
    message = str(errors[0])
    assert message.startswith("risk.allowed_symbols: BTC/USDT ") and "\n" not in message
    assert venue.truth.position("BTC/USDT:USDT") is None  # nothing was sent


async def test_allowed_symbols_that_are_markets_start_normally(clock: IOAwareMockClock, redis_url: str) -> None:
    limits = RiskLimits(allowed_symbols=["BTC/USDT:USDT", "ETH/USDT:USDT"])
    async with FakeVenue(seed=2) as venue, running_engine(redis_url, venue, clock, risk=limits) as engine:
        ticket = await engine.submit(open_intent("allowed-1"))
        with anyio.fail_after(120):
            await ticket.wait()
        assert venue.truth.is_protected("BTC/USDT:USDT")


@pytest.mark.asyncio_backend
async def test_posguard_run_with_an_unknown_allowed_symbol_raises_one_config_error(redis_url: str) -> None:
    """The one error the command line reports (exit 2), out of the task groups' wrapping."""
    config = parse_config('[risk]\nallowed_symbols = ["NOPE/USDT:USDT"]\n')
    with pytest.raises(BaseException) as raised, anyio.fail_after(60):
        await run_service(config, None, redis_url)
    explained = explain_start_failure(raised.value, config)
    assert isinstance(explained, ConfigError)
    assert re.match(r"^risk\.allowed_symbols: NOPE/USDT:USDT", str(explained))


def test_a_metrics_bind_beyond_loopback_is_accepted_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics("fake")
    with caplog.at_level(logging.WARNING):
        server = metrics.serve(free_port(), "0.0.0.0")
    try:
        assert "metrics.bind" in caplog.text and "0.0.0.0" in caplog.text
    finally:
        if server is not None:
            server.shutdown()


def test_a_loopback_metrics_bind_says_nothing(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics("fake")
    with caplog.at_level(logging.WARNING):
        server = metrics.serve(free_port(), "127.0.0.1")
    try:
        assert "metrics.bind" not in caplog.text
    finally:
        if server is not None:
            server.shutdown()
