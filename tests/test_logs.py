"""Structured logs: one line per transition with its fields; secrets never appear."""

from __future__ import annotations

import io
import json
import logging

from posguard.actors.records import PositionRecord, State
from posguard.actors.store.client import redact_url
from posguard.supervisor.logs import JsonFormatter, KeyValueFormatter, RedactSecrets, log_transition

SECRET = "s3cr3t-api-secret-value"


def capture(formatter: logging.Formatter, secrets: list[str]) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(RedactSecrets(secrets))
    logger = logging.getLogger("posguard.engine")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger, stream


def record() -> PositionRecord:
    return PositionRecord(symbol="BTC/USDT:USDT", intent_id="i-9", state=State.PROTECTED, side="buy", qty=0.01,
                          stop_price=58_800.0, client_order_id="pgabc-e")


def test_a_transition_is_one_key_value_line_with_its_fields() -> None:
    logger, stream = capture(KeyValueFormatter(), [])
    try:
        log_transition(record(), "stop live (attached)")
    finally:
        logger.handlers.clear()
        logger.propagate = True
    [line] = stream.getvalue().splitlines()
    for part in ("msg=transition", "symbol=BTC/USDT:USDT", "state=protected", "client_order_id=pgabc-e",
                 "intent_id=i-9", 'note="stop live (attached)"'):
        assert part in line


def test_json_lines_parse_and_secrets_are_redacted_everywhere() -> None:
    logger, stream = capture(JsonFormatter(), [SECRET])
    try:
        logger.warning("request failed with key %s", SECRET)
        logger.info("transition", extra={"fields": {"note": f"sig={SECRET}"}})
    finally:
        logger.handlers.clear()
        logger.propagate = True
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0]["msg"] == "request failed with key ***"
    assert lines[1]["note"] == "sig=***"
    assert SECRET not in stream.getvalue()


def test_redis_passwords_never_reach_a_message() -> None:
    assert redact_url("rediss://posguard:hunter2-pw@redis.internal:6380/0") == "rediss://posguard:***@redis.internal:6380/0"
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
