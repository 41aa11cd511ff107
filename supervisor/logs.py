"""Structured logs: ``key=value`` text or one JSON object per line, secrets redacted.

Fields passed as ``extra={"fields": {...}}`` become keys of their own (every transition line
carries symbol, state, client_order_id, intent_id). The redaction filter replaces the API key
and secret, and any Redis password, wherever they would appear, including in messages of
libraries we do not control.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from posguard.actors.records import PositionRecord

__all__ = ["JsonFormatter", "KeyValueFormatter", "LogFormat", "RedactSecrets", "configure_logging", "log_transition"]

LogFormat = Literal["text", "json"]
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def _quote(value: object) -> str:
    text = str(value)
    return json.dumps(text) if (not text or any(c in text for c in ' ="')) else text


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        parts = [f"ts={stamp}", f"level={record.levelname.lower()}", f"logger={record.name}",
                 f"msg={_quote(record.getMessage())}"]
        parts += [f"{k}={_quote(v)}" for k, v in getattr(record, "fields", {}).items()]
        if record.exc_info:
            parts.append(f"exc={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": record.created, "level": record.levelname.lower(), "logger": record.name,
            "msg": record.getMessage(), **getattr(record, "fields", {}),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class RedactSecrets(logging.Filter):
    """Replaces every known secret in a record's message, arguments and fields with ***."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s and len(s) >= 4]

    def _clean(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            record.msg = self._clean(record.getMessage())
            record.args = ()
            fields = getattr(record, "fields", None)
            if fields:
                record.fields = {k: self._clean(str(v)) for k, v in fields.items()}
        return True


_transitions = logging.getLogger("posguard.engine")  # the logger name operators filter on


def log_transition(record: PositionRecord, note: str) -> None:
    """One log line per transition: what an operator greps for."""
    _transitions.info("transition", extra={"fields": {
        "symbol": record.symbol, "state": str(record.state), "client_order_id": record.client_order_id,
        "intent_id": record.intent_id, "note": note or record.reason,
    }})


def configure_logging(level: int, fmt: LogFormat, secrets: Iterable[str] = ()) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    handler.addFilter(RedactSecrets(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
