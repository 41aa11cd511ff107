"""Everything that can go wrong on the simulated venue, as one set of knobs.

A fake that is easier than the real thing hides bugs, so every fault real exchanges have is a
knob here: lag, dropped pushes, disconnects, failed and rate-limited requests, lost responses,
outages, rejects, partial fills, missing attached stops, stop-outs. Tests turn them per venue
(and some mid-test: the venue reads them at the moment each decision is made).
"""

from __future__ import annotations

import msgspec

from posguard.streams.simulated.lag import Lag

__all__ = ["FaultKnobs"]


class FaultKnobs(msgspec.Struct, kw_only=True):
    """Everything that can go wrong, per venue. All default to a well-behaved exchange.

    Probabilities are per request (REST) or per event (push). Lags are sampled per event.
    """

    rest_latency: float = 0.02
    """Round trip of every REST call; the order takes effect halfway through."""
    rest_latency_by_method: dict[str, float] = msgspec.field(default_factory=dict)
    """Per REST method (``fetch_price``, ``create_order`` ...), a round trip that replaces
    `rest_latency` for that method alone: one slow endpoint (a ticker at 4 s) among fast ones."""
    position_lag: Lag = Lag()
    """Fill (or close) to the change showing in `fetch_positions`."""
    order_lag: Lag = Lag()
    """Order placed to `fetch_order` finding it by client order id."""
    execution_lag: Lag = Lag()
    """Fill to the execution showing in `fetch_executions`."""
    push_delay: dict[str, Lag] = msgspec.field(default_factory=dict)
    """Per topic (positions, orders, executions): fill to the pushed event."""
    push_drop: dict[str, float] = msgspec.field(default_factory=dict)
    """Per topic: probability that a pushed event is silently lost."""
    rest_error_rate: float = 0.0
    """Probability that a REST call fails with a 5xx before taking effect."""
    rate_limit_rate: float = 0.0
    """Probability that a REST call is refused by the rate limiter before taking effect."""
    rest_outage_every: Lag | None = None
    """When set, REST goes down entirely (every call a 503) after this long up ..."""
    rest_outage_for: Lag = Lag.fixed(30.0)
    """... for this long (exchange maintenance, a broken load balancer)."""
    lost_create_response_rate: float = 0.0
    """Probability that create_order takes effect but its response is lost (a timeout)."""
    outage_after_lost_response: float = 0.0
    """Probability that a lost create response is the start of a REST outage lasting
    `rest_outage_for`: the order is on the venue and nobody can ask about it."""
    reject_rate: float = 0.0
    """Probability that an entry order is rejected (insufficient margin)."""
    partial_fill_rate: float = 0.0
    """Probability that a market entry fills only partly; the rest is cancelled."""
    split_fill_rate: float = 0.0
    """Probability that a market entry fills in `split_fill_parts` parts spread evenly over
    `split_fill_over` seconds (a thin book): the order stays ``partially_filled``, and the
    position grows, part by part (every view lagging as usual)."""
    split_fill_parts: int = 2
    split_fill_over: Lag = Lag.fixed(5.0)
    attached_stop_missing_rate: float = 0.0
    """Probability that a stop-loss attached to an entry is silently not set."""
    stop_reject_rate: float = 0.0
    """Probability that place_stop is rejected."""
    stop_out_rate: float = 0.0
    """Probability that the price jumps through the stop (or liquidates) right after a fill."""
    stop_out_delay: Lag = Lag.fixed(0.1)
    stop_fill_fail_rate: float = 0.0
    """Probability that a stop whose trigger price the market crosses does not fill (the
    triggered order is refused, or the venue triggers on another price): the stop stays armed
    and the position stays open. Drawn once per stop, so it keeps failing (freqtrade#12984)."""
    reject_duplicate_client_ids: bool = True
    """Bybit refuses any reused client order id. False models Binance, which accepts a reused
    id once the first order is no longer open: a blind resend could then open twice."""
    whole_position_stops: bool = False
    """Binance's whole-position stops (``closePosition=true``): a `StopRequest.whole_position`
    stop is an order that `closes_position`, one per side (a second: `StopSlotTaken`, -4130),
    refused while there is nothing to close on its side (`NothingToClose`, -4509: real
    Binance, many field reports of "Time in Force (TIF) GTE can only be used with open
    positions or open orders"), and cancelled once the position is closed. False: every
    stop is sized to its ``qty`` and accepted whatever the position (Bybit's conditional orders)."""
    heartbeat_interval: float = 5.0
    """Seconds between stream heartbeats while connected."""
    disconnect_every: Lag | None = None
    """When set, the stream drops after this long connected ..."""
    disconnect_for: Lag = Lag.fixed(3.0)
    """... and comes back after this long."""
    price_step_interval: float = 0.0
    """When > 0, prices take a random-walk step this often (seconds)."""
    price_volatility: float = 0.0
    """Standard deviation of one random-walk step, as a fraction of the price."""
