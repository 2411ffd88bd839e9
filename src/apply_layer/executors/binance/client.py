"""A small signed HTTP client for the Binance USD-M futures endpoints the executor uses.

Its main job is sorting every answer into one of these outcomes, because
exactly-once sending depends on it:

* a value (2xx);
* :class:`ExchangeRejected`: the exchange refused the request, so it did not
  execute (4xx with a ``code``; ``-2013`` and ``-1021`` have their own classes);
* :class:`RateLimited`: 429/418, rejected before processing; after one, the
  client sends nothing until the back-off or ban ends (``ban``: refused
  requests raise its ``BanActive``, a RateLimited that never left);
* :class:`NotProcessed`: definitely not processed (the connection never opened,
  503 "Service Unavailable." / "Internal error; unable to process your request"),
  so resending is safe;
* :class:`StatusUnknown`: the request may or may not have executed (read
  timeout, dropped connection, 503 "Unknown error", ``-1006``/``-1007``, other
  5xx). The caller must look the order up and never resend blindly.

Secrets never leave this module: the key and secret are ``SecretStr``, every
message the exchange sends back is scrubbed before it goes into an exception,
transport errors are reported by class name only (``from None``: no chained
httpx exception carries the signed URL), and a filter on httpx's loggers
redacts signatures from the URLs they log.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import ssl
import time
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlencode

import httpx
from pydantic import SecretStr

from apply_layer import metrics
from apply_layer.core.errors import (
    BinanceError,
    ExchangeRejected,
    NotProcessed,
    OrderNotFound,
    RateLimited,
    StatusUnknown,
    TimestampRejected,
)
from apply_layer.core.log_format import format_qty
from apply_layer.executors.binance.ban import ExchangeBan
from apply_layer.executors.binance.model import (
    INVALID_TIMESTAMP,
    NO_SUCH_ORDER,
    RETRYABLE_CODES,
    UNKNOWN_STATUS_CODES,
    ExchangeRules,
    OrderInfo,
    parse_exchange_info,
)

TIME_PATH = "/fapi/v1/time"
EXCHANGE_INFO_PATH = "/fapi/v1/exchangeInfo"
POSITION_RISK_PATH = "/fapi/v3/positionRisk"
POSITION_MODE_PATH = "/fapi/v1/positionSide/dual"
ORDER_PATH = "/fapi/v1/order"
RECV_WINDOW_MAX_MS = 60_000
# How long an idle connection is kept for reuse. Binance documents no idle timeout
# for its REST hosts; users report idle connections surviving 180 s and dropped
# at 300 s (docs/BINANCE.md, "Connections"). httpx's own default is 5 s, which
# made almost every close pay a new TCP and TLS handshake.
KEEPALIVE_SEC = 150.0

_NOT_PROCESSED_503 = ("Service Unavailable", "Internal error; unable to process your request")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_REDACTED = "<redacted>"


def sign(secret: str, total_params: str) -> str:
    """HMAC-SHA256 of ``totalParams`` (query string concatenated with body), hex."""
    return hmac.new(secret.encode(), total_params.encode(), hashlib.sha256).hexdigest()


class _RedactSignatures(logging.Filter):
    """httpx logs each request's URL at INFO; a signed GET carries its signature there."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if _HEX64.search(text):
            record.msg, record.args = _HEX64.sub(_REDACTED, text), ()
        return True


def _install_log_redaction() -> None:
    for name in ("httpx", "httpcore", "httpcore.connection", "httpcore.http11"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactSignatures) for f in logger.filters):
            logger.addFilter(_RedactSignatures())


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class BinanceClient:
    """One ``httpx.AsyncClient`` for its life; requests are stamped with server time."""

    def __init__(
        self,
        *,
        base_url: str,
        api_key: SecretStr | None,
        api_secret: SecretStr | None,
        recv_window_ms: int = 5000,
        timeout: httpx.Timeout | None = None,
        clock: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
        keepalive_sec: float = KEEPALIVE_SEC,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        if not 1 <= recv_window_ms <= RECV_WINDOW_MAX_MS:
            raise ValueError(f"recvWindow must be 1..{RECV_WINDOW_MAX_MS} ms")
        self.base_url = base_url.rstrip("/")
        self.recv_window_ms = recv_window_ms
        self._key, self._secret = api_key, api_secret
        self._timeout = timeout or httpx.Timeout(connect=5.0, read=10.0, write=10.0, pool=5.0)
        self._clock, self._transport = clock, transport
        self._limits = httpx.Limits(keepalive_expiry=keepalive_sec)
        self._verify = verify
        self._http: httpx.AsyncClient | None = None
        self.offset_ms = 0  # server time minus local time
        self.rtt_ms = 0  # round trip of the last time sync: bounds the offset's error
        self.time_syncs = 0
        self.ban = ExchangeBan()  # one per client: the daemon's every request and symbol
        _install_log_redaction()

    @property
    def has_credentials(self) -> bool:
        return bool(self._key and self._key.get_secret_value()) and bool(
            self._secret and self._secret.get_secret_value()
        )

    async def open(self) -> None:
        if self._http is None:
            self._http = httpx.AsyncClient(
                base_url=self.base_url,
                timeout=self._timeout,
                transport=self._transport,
                limits=self._limits,
                verify=self._verify,
            )

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def local_ms(self) -> int:
        return int(self._clock() * 1000)

    async def sync_time(self) -> int:
        """Measure ``serverTime - local time`` (midpoint of the round trip)."""
        before = self.local_ms()
        data = await self._request("GET", TIME_PATH)
        after = self.local_ms()
        try:
            server = int(data["serverTime"])
        except (KeyError, TypeError, ValueError):
            raise BinanceError("GET /fapi/v1/time: no serverTime in the answer") from None
        self.offset_ms, self.rtt_ms = server - (before + after) // 2, after - before
        self.time_syncs += 1
        metrics.EXCHANGE_CLOCK_OFFSET.set(self.offset_ms / 1000)
        return self.offset_ms

    async def exchange_rules(self) -> ExchangeRules:
        return parse_exchange_info(await self._request("GET", EXCHANGE_INFO_PATH))

    async def position_rows(self, symbol: str) -> list[tuple[str, Decimal]]:
        """``(positionSide, signed positionAmt)`` rows; v3 lists only open positions."""
        data = await self._signed("GET", POSITION_RISK_PATH, [("symbol", symbol)])
        try:
            return [
                (str(row.get("positionSide", "BOTH")), Decimal(str(row["positionAmt"])))
                for row in data
                if row.get("symbol") == symbol
            ]
        except (KeyError, TypeError, AttributeError, InvalidOperation):
            raise BinanceError("positionRisk answer without positionAmt") from None

    async def dual_side_position(self) -> bool:
        data = await self._signed("GET", POSITION_MODE_PATH, [])
        value = data.get("dualSidePosition") if isinstance(data, dict) else None
        if not isinstance(value, bool):
            raise BinanceError("positionSide/dual answer without dualSidePosition")
        return value

    async def place_market_close(
        self, *, symbol: str, side: str, quantity: Decimal, client_order_id: str, sent_at_ms: int
    ) -> OrderInfo:
        """One reduce-only MARKET order, stamped ``sent_at_ms`` (never retried here)."""
        return await self._market_order(symbol, side, quantity, client_order_id, sent_at_ms, True)

    async def place_market_open(
        self, *, symbol: str, side: str, quantity: Decimal, client_order_id: str
    ) -> OrderInfo:
        """A MARKET order that may open a position. Only ``apply-layer smoke --open`` sends
        one, on the testnet; the daemon closes only (``place_market_close``)."""
        return await self._market_order(
            symbol, side, quantity, client_order_id, self.local_ms(), False
        )

    async def _market_order(
        self,
        symbol: str,
        side: str,
        quantity: Decimal,
        client_order_id: str,
        sent_at_ms: int,
        reduce_only: bool,
    ) -> OrderInfo:
        params = [
            ("symbol", symbol),
            ("side", side),
            ("type", "MARKET"),
            ("quantity", format_qty(quantity)),
            *([("reduceOnly", "true")] if reduce_only else []),
            ("newClientOrderId", client_order_id),
            ("newOrderRespType", "RESULT"),
        ]
        data = await self._signed("POST", ORDER_PATH, params, sent_at_ms=sent_at_ms, resync=False)
        return OrderInfo.from_json(data)

    async def query_order(self, symbol: str, client_order_id: str) -> OrderInfo:
        params = [("symbol", symbol), ("origClientOrderId", client_order_id)]
        return OrderInfo.from_json(await self._signed("GET", ORDER_PATH, params))

    async def _signed(
        self,
        method: str,
        path: str,
        params: list[tuple[str, str]],
        *,
        sent_at_ms: int | None = None,
        resync: bool = True,
    ) -> Any:
        """A SIGNED request; on ``-1021`` resync the clock once and retry (reads only)."""
        if not (self._key and self._secret and self.has_credentials):
            raise BinanceError("no API key/secret configured")
        headers = {"X-MBX-APIKEY": self._key.get_secret_value()}
        for attempt in range(2):
            stamp = (sent_at_ms if sent_at_ms is not None else self.local_ms()) + self.offset_ms
            payload = urlencode(
                [*params, ("recvWindow", self.recv_window_ms), ("timestamp", stamp)]
            )
            signed = f"{payload}&signature={sign(self._secret.get_secret_value(), payload)}"
            try:
                if method == "GET":
                    return await self._request(method, path, query=signed, headers=headers)
                return await self._request(method, path, body=signed, headers=headers)
            except TimestampRejected:
                if not resync or attempt:
                    raise
                await self.sync_time()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _request(
        self,
        method: str,
        path: str,
        *,
        query: str = "",
        body: str = "",
        headers: dict[str, str] | None = None,
    ) -> Any:
        if self._http is None:
            raise BinanceError("client not open")
        self.ban.refuse()  # a 429 back-off or a 418 ban not over yet: nothing leaves
        headers = dict(headers or {})
        if body:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        url = f"{path}?{query}" if query else path
        where = f"{method} {path}"
        # A kept-alive connection the server closed as we wrote to it fails at once
        # with nothing read. A read is asked again once, on a fresh connection; an
        # order never is (its fate is then unknown and it is looked up).
        tries = 2 if method == "GET" else 1
        for attempt in range(tries):
            try:
                response = await self._http.request(
                    method, url, content=body.encode() if body else None, headers=headers
                )
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                raise NotProcessed(f"{where}: {type(exc).__name__}, request not sent") from None
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
                if attempt + 1 < tries:
                    continue
                raise StatusUnknown(f"{where}: {type(exc).__name__}, no answer") from None
            except httpx.RequestError as exc:  # timeouts, dropped connections, bad answers
                raise StatusUnknown(f"{where}: {type(exc).__name__}, no answer") from None
            return self._decode(where, response)
        raise AssertionError("unreachable")  # pragma: no cover

    def _scrub(self, text: str) -> str:
        """Exchange words without our key, secret or any signature-shaped hex, trimmed."""
        for secret in (self._key, self._secret):
            value = secret.get_secret_value() if secret else ""
            if len(value) >= 6:
                text = text.replace(value, _REDACTED)
        return _HEX64.sub(_REDACTED, text)[:300]

    def _decode(self, where: str, response: httpx.Response) -> Any:
        status = response.status_code
        try:
            data = json.loads(response.text)
        except ValueError:
            data = None
        if 200 <= status < 300:
            if data is None:
                raise StatusUnknown(f"{where}: HTTP {status} with an unreadable body")
            return data
        code: int | None = None
        if isinstance(data, dict):
            msg = self._scrub(str(data.get("msg", "")))
            try:
                code = int(data["code"])
            except (KeyError, TypeError, ValueError):
                code = None
        else:
            msg = self._scrub(response.text.strip())
        if status in (418, 429):
            metrics.EXCHANGE_RATE_LIMITED.labels(str(status)).inc()
            told = _retry_after(response.headers.get("Retry-After"))
            raise RateLimited(status, self.ban.record(status, told, msg, self.offset_ms), msg)
        if code in UNKNOWN_STATUS_CODES:
            raise StatusUnknown(f"{where}: HTTP {status} code {code}: {msg}")
        if code in RETRYABLE_CODES or (
            status == 503 and any(text in msg for text in _NOT_PROCESSED_503)
        ):
            raise NotProcessed(f"{where}: HTTP {status} code {code}: {msg}")
        if status >= 500 or status == 408:
            raise StatusUnknown(f"{where}: HTTP {status} code {code}: {msg}")
        if code == NO_SUCH_ORDER:
            raise OrderNotFound(code, msg, status)
        if code == INVALID_TIMESTAMP:
            raise TimestampRejected(code, msg, status)
        raise ExchangeRejected(code, msg, status)
