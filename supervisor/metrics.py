"""Prometheus metrics: what an operator's alerting needs to know, and nothing secret.

The first three carry the seed report's names (section 9), so its alert rules translate
directly; what they count is posguard's:

* ``atomic_operation_failures_total{exchange,symbol,reason}``: entries or protections that
  did not end as planned (``rejected``, ``unverified``, ``emergency_close``,
  ``closed_before_protection``).
* ``position_verification_lag_seconds{exchange,source}``: order sent to fill evidence in
  hand, by what gave the evidence (``push`` or ``rest``).
* ``rollback_attempts_total{exchange}``: entries recorded as never filled. posguard records
  this only on positive evidence (the venue said filled = 0); it has no "not found, so roll
  back" path at all.

plus ``positions_unprotected`` (records open without a confirmed stop), ``stream_connected
{topic}``, ``actor_restarts_total``, ``audit_findings_total{kind}``, ``safe_mode`` and
``event_loop_lag_seconds`` (how late the last short sleep woke: a busy process, not Redis).
The endpoint binds to 127.0.0.1 unless configured otherwise (config.toml, [metrics]).
"""

from __future__ import annotations

import ipaddress
import logging
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server

from posguard.actors.findings import Finding
from posguard.actors.records import PositionRecord, State, is_protected
from posguard.streams.ingestion.evidence import EvidenceBoard

__all__ = ["LAG_BUCKETS", "MAY_BE_BARE_STATES", "Metrics", "is_loopback"]

log = logging.getLogger("posguard.metrics")

LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120)
MAY_BE_BARE_STATES = frozenset({State.OPEN, State.UNVERIFIED, State.EMERGENCY_CLOSING})
"""States in which a position may be on the venue without the stop the record relies on."""


class Metrics:
    def __init__(self, exchange: str, registry: CollectorRegistry | None = None) -> None:
        self.exchange = exchange
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.failures = Counter("atomic_operation_failures", "Entries or protections that did not end as planned",
                                ["exchange", "symbol", "reason"], registry=r)
        self.verification_lag = Histogram("position_verification_lag_seconds",
                                          "Entry order sent to fill evidence in hand", ["exchange", "source"],
                                          buckets=LAG_BUCKETS, registry=r)
        self.rollbacks = Counter("rollback_attempts", "Entries recorded as never filled (on positive evidence)",
                                 ["exchange"], registry=r)
        self.unprotected = Gauge("positions_unprotected", "Live records without a confirmed stop", registry=r)
        self.stream_connected = Gauge("stream_connected", "1 while the private stream topic is healthy",
                                      ["topic"], registry=r)
        self.restarts = Counter("actor_restarts", "Symbol actors restarted after a failure", registry=r)
        self.findings = Counter("audit_findings", "Audit findings, by kind", ["kind"], registry=r)
        self.safe_mode = Gauge("safe_mode", "1 while posguard is in safe mode (no new entries)", registry=r)
        self.event_loop_lag = Gauge("event_loop_lag_seconds",
                                    "How late the event loop woke the last probe sleep (a busy process, not Redis)",
                                    registry=r)
        self._unprotected: set[str] = set()

    def on_transition(self, record: PositionRecord, note: str) -> None:
        symbol = record.symbol
        state = record.state
        if state is State.OPEN and record.sent_to_verified_ms is not None and record.evidence:
            self.verification_lag.labels(self.exchange, record.evidence).observe(record.sent_to_verified_ms / 1000)
        if state is State.REJECTED:
            self.rollbacks.labels(self.exchange).inc()
            self.failures.labels(self.exchange, symbol, "rejected").inc()
        elif state is State.EMERGENCY_CLOSING:
            self.failures.labels(self.exchange, symbol, "emergency_close").inc()
        elif state is State.CLOSED_EXTERNALLY and not record.protected_at:
            self.failures.labels(self.exchange, symbol, "closed_before_protection").inc()
        elif state is State.UNVERIFIED and "unverified" not in note:
            self.failures.labels(self.exchange, symbol, "unverified").inc()
        bare = state in MAY_BE_BARE_STATES and not is_protected(record)
        (self._unprotected.add if bare else self._unprotected.discard)(symbol)
        self.unprotected.set(len(self._unprotected))

    def on_restart(self) -> None:
        self.restarts.inc()

    def on_findings(self, findings: list[Finding]) -> None:
        for finding in findings:
            self.findings.labels(finding.kind).inc()

    def refresh(self, board: EvidenceBoard, safe_mode: bool) -> None:
        healthy = board.is_healthy()
        for topic, (connected, _age) in board.health().items():
            self.stream_connected.labels(topic).set(1 if connected and healthy else 0)
        self.safe_mode.set(1 if safe_mode else 0)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def serve(self, port: int, bind: str) -> WSGIServer:
        """Start the HTTP endpoint (a daemon thread) on ``bind:port``; returns the server (its
        ``shutdown`` stops it). A bind other machines can reach is allowed (a Prometheus on
        another host) but said at start, since the metrics name symbols and positions."""
        server, _thread = start_http_server(port, addr=bind, registry=self.registry)
        log.warning("metrics on http://%s:%d/metrics", bind, port)
        if not is_loopback(bind):
            log.warning("metrics.bind = %s: the metrics endpoint is reachable from other machines, without"
                        " authentication; bind 127.0.0.1 unless a firewall limits who can reach port %d", bind, port)
        return server


def is_loopback(bind: str) -> bool:
    """Whether ``bind`` (an address or a host name) only listens on this machine."""
    if bind == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind).is_loopback
    except ValueError:
        return False
