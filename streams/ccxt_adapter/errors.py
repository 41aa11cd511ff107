"""ccxt's exceptions, translated into posguard's few error classes (`posguard.streams.venue.errors`).

The translation is by the venue's own error code where ccxt's class is too coarse to act on
(ccxt calls Bybit's "server error" and "OrderLinkedID is duplicate" both a plain
``ExchangeError``/``InvalidOrder``), and by ccxt's class otherwise. When in doubt the answer
is `VenueUnavailable`: the actor then looks the order up by its client order id before
doing anything else, which is always safe; calling an unknown failure a rejection is not.

Every message that leaves this module is redacted: the API key, the secret and any request
signature are replaced by ``***``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable

import ccxt.async_support as ccxt

from posguard.streams.venue.errors import (
    DuplicateClientOrderId,
    NothingToReduce,
    OrderRejected,
    RateLimited,
    StopWouldTrigger,
    VenueAuthFailed,
    VenueError,
    VenueUnavailable,
)

__all__ = [
    "MIN_SECRET_LENGTH",
    "RedactingLogger",
    "clock_rejected",
    "is_not_found",
    "redact",
    "translate",
    "venue_reply",
]

_SIGNATURE = re.compile(r"(signature|sign|listenKey)(['\"]?\s*[:=]\s*['\"]?)[0-9A-Za-z%+/=_-]+", re.IGNORECASE)

# Venue codes whose meaning decides what the actor does next. Anything not listed here
# falls back to ccxt's class.
_BYBIT_CODES: dict[str, type[VenueError]] = {
    "110072": DuplicateClientOrderId,  # OrderLinkedID is duplicate
    "110017": NothingToReduce,  # reduce-only: current position is zero / would not reduce
    "110092": StopWouldTrigger,  # expect Rising, but trigger_price <= current
    "110093": StopWouldTrigger,  # expect Falling, but trigger_price >= current
    "10002": VenueUnavailable,  # timestamp outside recv_window: our clock, not the order
    "10000": VenueUnavailable,  # server timeout
    "10016": VenueUnavailable,  # server error / service restarting
    "10006": RateLimited,  # too many visits
    "10018": RateLimited,  # IP rate limit
    "10429": RateLimited,  # system level frequency protection
    # Refused credentials (https://bybit-exchange.github.io/docs/v5/error): nothing was done.
    "10003": VenueAuthFailed,  # API key is invalid
    "10004": VenueAuthFailed,  # error sign: the secret does not match the key
    "10005": VenueAuthFailed,  # permission denied for this API key
    "10010": VenueAuthFailed,  # request IP not among the key's bound IPs
    "33004": VenueAuthFailed,  # API key has expired
}
_BINANCE_CODES: dict[str, type[VenueError]] = {
    "-4116": DuplicateClientOrderId,  # ClientOrderId is duplicated
    "-20132": DuplicateClientOrderId,  # the client algo id is duplicated
    "-2022": NothingToReduce,  # ReduceOnly Order is rejected
    "-2021": StopWouldTrigger,  # Order would immediately trigger
    "-1000": VenueUnavailable,  # unknown error while processing
    "-1001": VenueUnavailable,  # internal error
    "-1007": VenueUnavailable,  # timeout waiting for the backend: execution status unknown
    "-1008": RateLimited,  # server busy
    "-1003": RateLimited,  # too many requests
    "-1021": VenueUnavailable,  # timestamp outside recvWindow: our clock, not the order
    # Refusals. ccxt knows most of them, but only when the URL is Binance's own host (it picks
    # its error table by hostname), so behind a proxy or the replay server they would fall
    # through to "unknown": listed here so the answer never depends on the URL.
    "-2019": OrderRejected,  # margin is insufficient
    "-2010": OrderRejected,  # new order rejected
    "-4164": OrderRejected,  # notional below the minimum
    "-1013": OrderRejected,  # invalid quantity
    "-1111": OrderRejected,  # precision over the maximum
    "-4003": OrderRejected,  # quantity less than or equal to zero
    "-4005": OrderRejected,  # quantity greater than max quantity
    "-4015": OrderRejected,  # client order id is not valid
    "-2027": OrderRejected,  # exceeded the maximum allowable position at current leverage
    # Refused credentials (https://developers.binance.com/docs/derivatives/usds-margined-futures/error-code).
    "-2014": VenueAuthFailed,  # API-key format invalid
    "-2015": VenueAuthFailed,  # invalid API-key, IP, or permissions for action
    "-1022": VenueAuthFailed,  # signature for this request is not valid: the secret does not match
}
_CLOCK_CODES = {"bybit": {"10002"}, "binanceusdm": {"-1021"}}
_CODE_TABLES = {"bybit": _BYBIT_CODES, "binanceusdm": _BINANCE_CODES}
_DUPLICATE_WORDS = re.compile(r"duplicat", re.IGNORECASE)
_CLIENT_ID_WORDS = re.compile(r"orderlinkid|clientorderid|client order id|clientalgoid", re.IGNORECASE)


MIN_SECRET_LENGTH = 6
"""Shorter "secrets" cannot be told from ordinary words (and no venue issues them); replacing
them would garble every message instead of protecting anything."""


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if len(secret) >= MIN_SECRET_LENGTH:
            text = text.replace(secret, "***")
    return _SIGNATURE.sub(r"\1\2***", text)


class RedactingLogger:
    """What ccxt gets as its ``logger``: its debug lines dump request headers (the API key,
    the signature) and URLs (Binance's signature and listen key); these pass through
    `redact` before they reach any handler."""

    def __init__(self, logger: logging.Logger, secrets: Iterable[str]) -> None:
        self._logger = logger
        self._secrets = tuple(secrets)

    def _log(self, level: int, message: object, *args: object) -> None:
        if self._logger.isEnabledFor(level):
            text = str(message) % args if args else str(message)
            self._logger.log(level, "%s", redact(text, self._secrets))

    def debug(self, message: object, *args: object, **_: object) -> None:
        self._log(logging.DEBUG, message, *args)

    def info(self, message: object, *args: object, **_: object) -> None:
        self._log(logging.INFO, message, *args)

    def warning(self, message: object, *args: object, **_: object) -> None:
        self._log(logging.WARNING, message, *args)

    def error(self, message: object, *args: object, **_: object) -> None:
        self._log(logging.ERROR, message, *args)


def venue_reply(exc: BaseException) -> tuple[str, str]:
    """The venue's own (code, message) from a ccxt exception, or ("", "") if it has none.

    ccxt puts the response body after the exchange id: ``"bybit {"retCode":110072,...}"``.
    """
    text = str(exc)
    start = text.find("{")
    if start < 0:
        return "", ""
    try:
        body = json.loads(text[start:])
    except ValueError:
        return "", ""
    if not isinstance(body, dict):
        return "", ""
    code = body.get("retCode", body.get("ret_code", body.get("code")))
    message = body.get("retMsg", body.get("ret_msg", body.get("msg", "")))
    return ("" if code is None else str(code)), str(message)


def translate(
    exc: BaseException,
    *,
    exchange: str,
    action: str,
    client_order_id: str = "",
    secrets: Iterable[str] = (),
) -> VenueError:
    """The posguard error for a ccxt exception raised while doing ``action``."""
    code, venue_message = venue_reply(exc)
    detail = redact(f"{exchange} {action}: {venue_message or exc}", secrets)
    if code:
        detail += f" (code {code})"
    kind = _CODE_TABLES.get(exchange, {}).get(code)
    if code and _DUPLICATE_WORDS.search(venue_message) and _CLIENT_ID_WORDS.search(venue_message):
        kind = DuplicateClientOrderId  # e.g. Bybit 10001 or Binance -2010 saying so in words
    if kind is DuplicateClientOrderId:
        return DuplicateClientOrderId(client_order_id)
    if kind is not None and issubclass(kind, OrderRejected):
        return kind(detail, code=code)
    if kind is VenueAuthFailed:
        return _credentials_refused(detail)
    if kind is not None:
        return kind(detail)
    return _by_ccxt_class(exc, detail, code)


def _by_ccxt_class(exc: BaseException, detail: str, code: str) -> VenueError:
    if isinstance(exc, ccxt.DuplicateOrderId):
        return VenueUnavailable(detail)  # no client order id to report: treat as unknown outcome
    if isinstance(exc, (ccxt.RateLimitExceeded, ccxt.DDoSProtection)):
        return RateLimited(detail)
    if isinstance(exc, ccxt.NetworkError):  # timeouts, 5xx, connection errors, invalid nonce
        return VenueUnavailable(detail)
    if isinstance(exc, ccxt.AuthenticationError):  # PermissionDenied, AccountSuspended too
        return _credentials_refused(detail)
    if isinstance(exc, (ccxt.InvalidOrder, ccxt.InsufficientFunds, ccxt.BadRequest, ccxt.OperationRejected,
                        ccxt.ArgumentsRequired, ccxt.NotSupported)):
        return OrderRejected(detail, code=code)
    return VenueUnavailable(detail)


def _credentials_refused(detail: str) -> VenueAuthFailed:
    """The one wording of a credentials refusal; the supervisor adds which environment
    variables hold the key (the adapter does not know them)."""
    return VenueAuthFailed(f"{detail}: the venue refused the API credentials")


def clock_rejected(exc: BaseException, exchange: str) -> bool:
    """The venue refused our timestamp: the clock offset must be measured again."""
    return isinstance(exc, ccxt.InvalidNonce) or venue_reply(exc)[0] in _CLOCK_CODES.get(exchange, set())


def is_not_found(exc: BaseException, exchange: str) -> bool:
    """The venue says there is no such order (a lookup answer, not an error)."""
    code, _ = venue_reply(exc)
    if exchange == "bybit" and code in ("110001", "110008", "110010", "170213"):
        return True  # does not exist / already finished / already cancelled
    if exchange == "binanceusdm" and code in ("-2011", "-2013", "-20124"):
        return True  # unknown order / does not exist / algo order completed or unknown
    return isinstance(exc, ccxt.OrderNotFound)
