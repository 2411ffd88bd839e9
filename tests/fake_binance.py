"""A fake Binance USD-M futures REST server: real HTTP on 127.0.0.1, in a thread.

It checks what the real one checks for our endpoints (API key, HMAC signature
over query string + body, the ``timestamp``/``recvWindow`` rule), keeps signed
positions and orders, enforces reduce-only and the lot filters, and counts
orders per client order id so tests can assert "at most once". Like Binance,
it accepts a second order with the client order id of a *filled* one (the id
is only unique among open orders): a blind resend really does double-fill.
Also like Binance, every order it placed, filled or expired, stays findable
by ``origClientOrderId`` (Binance: 90 days, 3 for an unfilled cancel or
expiry), which is what lets the executor adopt an order Redis forgot.

Faults are queued per endpoint for the next requests (:meth:`FakeBinance.inject`):
slow answers, dropped connections and error answers, each with or without the
order actually reaching the matching engine; a late placement honours the
matching engine's own recvWindow check (``-5028``), as Binance documents.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import socket
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

API_KEY = "tEsTkEyQwErTyUiOpAsDfGhJkLzXcVbNm" + "K" * 30
API_SECRET = "sEcReTzXcVbNmAsDfGhJkLqWeRtYuIoP" + "S" * 32
ORDER = "/fapi/v1/order"
ERR_1007 = {
    "code": -1007,
    "msg": "Timeout waiting for response from backend server. Send status unknown; "
    "execution status unknown.",
}
UNKNOWN_503 = {"code": -1000, "msg": "Unknown error, please check your request or try again later."}


@dataclass
class Fault:
    """What goes wrong with one request; see the factory functions below."""

    place: bool = False  # the order reaches the matching engine despite the fault
    delay: float = 0.0  # hold the answer this long (past the client's read timeout)
    drop: bool = False  # close the connection without answering
    status: int = 0  # answer with this status and body (0: the normal answer)
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    early: bool = False  # answered before any check (rate limits)
    place_after: float | None = None  # place this long after receipt (ME recvWindow applies)
    # Place it when a lookup first asks for it, just after answering "no such order":
    # an order that reaches the engine late, whatever the test's timing.
    place_on_lookup: bool = False
    fill: Decimal = Decimal(1)  # fraction filled; below 1 the MARKET order ends EXPIRED
    echo: bool = False  # answer with an error that quotes the raw request


def slow(delay: float, *, place: bool) -> Fault:
    return Fault(
        place=place, delay=delay, status=0 if place else 408, body=None if place else ERR_1007
    )


def dropped(*, place: bool) -> Fault:
    return Fault(place=place, drop=True)


def unknown_503(*, place: bool) -> Fault:
    return Fault(place=place, status=503, body=UNKNOWN_503)


def timeout_1007(*, place: bool) -> Fault:
    return Fault(place=place, status=408, body=ERR_1007)


def rate_limited(retry_after: int, status: int = 429) -> Fault:
    body = {"code": -1003, "msg": "Too many requests; current limit is 2400 requests per minute."}
    return Fault(early=True, status=status, body=body, headers={"Retry-After": str(retry_after)})


def rejected(code: int, msg: str, status: int = 400) -> Fault:
    return Fault(status=status, body={"code": code, "msg": msg})


def late(place_after: float, delay: float) -> Fault:
    return Fault(place_after=place_after, delay=delay, status=408, body=ERR_1007)


def late_until_looked_up(delay: float) -> Fault:
    return Fault(place_on_lookup=True, delay=delay, status=408, body=ERR_1007)


@dataclass(frozen=True)
class Lot:
    step: str
    min: str
    max: str


@dataclass
class Seen:
    """One request as received, for assertions."""

    at_ms: int
    method: str
    path: str
    params: dict[str, str]
    raw: str
    at: float = 0.0  # time.time() when the request had been read (for measurements)


class FakeBinance:
    """The exchange; ``url`` is its base URL. Use as a context manager."""

    def __init__(
        self,
        *,
        api_key: str = API_KEY,
        api_secret: str = API_SECRET,
        keep_alive: bool = False,
        tls: tuple[str, str] | None = None,
        hold_sec: float = 0.0,
    ) -> None:
        """``keep_alive``: HTTP/1.1 persistent connections, as Binance keeps them (for
        measurements; the tests' default, HTTP/1.0, opens a connection per request).
        ``tls``: (certificate, key) files to speak HTTPS with; ``hold_sec``: every
        answer is held this long, as a distant exchange would be (the benchmark's)."""
        self.api_key, self.api_secret = api_key, api_secret
        self.keep_alive = keep_alive
        self.hold_sec = hold_sec
        self.accepted: list[float] = []  # time.time() of each connection accepted
        self.skew_ms = 0  # the server's clock minus the real one
        self.dual_side = False
        self.positions: dict[str, Decimal] = {}
        self.prices = {"BTCUSDT": Decimal("65000.10"), "ETHUSDT": Decimal("3200.5")}
        self.filters: dict[str, tuple[Lot, Lot]] = {
            "BTCUSDT": (Lot("0.001", "0.001", "1000"), Lot("0.001", "0.001", "120")),
            "ETHUSDT": (Lot("0.001", "0.001", "10000"), Lot("0.01", "0.01", "2000")),
        }
        self.orders: list[dict[str, Any]] = []
        self.late_answers: list[tuple[int, Any]] = []  # what each late placement got
        self.on_lookup: dict[str, tuple[dict[str, str], Fault]] = {}  # cid -> order to place
        self.seen: list[Seen] = []
        self.faults: dict[tuple[str, str], deque[Fault]] = {}
        self.banned_until_ms = 0  # ban(): every request before it is answered 418/429
        self.ban_status = 418
        self._ban_retry_after = True
        self.lock = threading.RLock()
        self._ids = itertools.count(8_000_001)
        self._httpd = _Server(("127.0.0.1", 0), _handler_for(self), self, tls)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def __enter__(self) -> FakeBinance:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def url(self) -> str:
        scheme = "https" if self._httpd.tls else "http"
        return f"{scheme}://127.0.0.1:{self._httpd.server_address[1]}"

    def now_ms(self) -> int:
        return int(time.time() * 1000) + self.skew_ms

    def inject(self, method: str, path: str, *faults: Fault) -> None:
        """Apply ``faults`` to the next requests to ``method path``, one each."""
        with self.lock:
            self.faults.setdefault((method, path), deque()).extend(faults)

    def ban(self, seconds: float, status: int = 418, *, retry_after: bool = True) -> int:
        """Ban the client's IP as Binance does: every request (any path) is answered
        ``status`` until the end, with ``Retry-After`` (unless ``retry_after`` is
        False) and the end in the message ("IP banned until <ms>"). Returns the
        end (server epoch ms)."""
        with self.lock:
            self.banned_until_ms = self.now_ms() + int(seconds * 1000)
            self.ban_status = status
            self._ban_retry_after = retry_after
            return self.banned_until_ms

    def requests_between(self, start_ms: int, end_ms: int) -> list[Seen]:
        """Requests received in ``[start_ms, end_ms)`` (server time)."""
        with self.lock:
            return [s for s in self.seen if start_ms <= s.at_ms < end_ms]

    def order_count(self, client_order_id: str) -> int:
        with self.lock:
            return sum(1 for o in self.orders if o["clientOrderId"] == client_order_id)

    def requests(self, method: str, path: str) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.method == method and s.path == path]

    def calls(self, path: str) -> int:
        with self.lock:
            return sum(1 for s in self.seen if s.path == path)

    def add_order(self, symbol: str, side: str, qty: str, client_order_id: str) -> dict[str, Any]:
        """An order that exists on the exchange already (a previous run placed it)."""
        params = {
            "symbol": symbol,
            "side": side,
            "type": "MARKET",
            "quantity": qty,
            "reduceOnly": "true",
            "newClientOrderId": client_order_id,
        }
        status, body = self.place(params, Fault())
        assert status == 200, body
        return body  # type: ignore[no-any-return]

    # -- the matching engine ------------------------------------------------

    def place(
        self, p: dict[str, str], fault: Fault, me_stamp: int | None = None
    ) -> tuple[int, Any]:
        with self.lock:
            symbol = p.get("symbol", "")
            if symbol not in self.filters:
                return 400, {"code": -1121, "msg": "Invalid symbol."}
            if p.get("type") != "MARKET":
                return 400, {"code": -1116, "msg": "Invalid orderType."}
            if self.dual_side and "reduceOnly" in p:
                return 400, {"code": -1106, "msg": "Parameter 'reduceOnly' sent when not required."}
            if me_stamp is not None and self.now_ms() - me_stamp > int(p.get("recvWindow", 5000)):
                return 400, {
                    "code": -5028,
                    "msg": "Timestamp for this request is outside of the ME recvWindow.",
                }
            error = self._lot_error(symbol, p.get("quantity", ""))
            if error:
                return 400, error
            qty = Decimal(p["quantity"])
            delta = qty if p.get("side") == "BUY" else -qty
            pos = self.positions.get(symbol, Decimal(0))
            if p.get("reduceOnly") == "true" and (
                pos == 0 or (pos > 0) == (delta > 0) or qty > abs(pos)
            ):
                return 400, {"code": -2022, "msg": "ReduceOnly Order is rejected."}
            executed = (qty * fault.fill).quantize(Decimal(self.filters[symbol][1].step))
            self.positions[symbol] = pos + (executed if delta > 0 else -executed)
            order = {
                "orderId": next(self._ids),
                "clientOrderId": p.get("newClientOrderId") or f"auto{len(self.orders)}",
                "symbol": symbol,
                "side": p["side"],
                "positionSide": "BOTH",
                "type": "MARKET",
                "origType": "MARKET",
                "status": "FILLED" if executed == qty else "EXPIRED",
                "origQty": p["quantity"],
                "executedQty": str(executed),
                "cumQty": str(executed),
                "avgPrice": str(self.prices[symbol]) if executed else "0.00",
                "price": "0",
                "reduceOnly": p.get("reduceOnly") == "true",
                "updateTime": self.now_ms(),
            }
            self.orders.append(order)
            return 200, dict(order)

    def _lot_error(self, symbol: str, raw: str) -> dict[str, Any] | None:
        lot, market = self.filters[symbol]
        try:
            qty = Decimal(raw)
        except InvalidOperation:
            return {
                "code": -1102,
                "msg": "Mandatory parameter 'quantity' was not sent, was empty/null, or malformed.",
            }
        for f in (lot, market):
            step, low, high = Decimal(f.step), Decimal(f.min), Decimal(f.max)
            if qty.normalize().as_tuple().exponent < step.normalize().as_tuple().exponent:  # type: ignore[operator]
                return {
                    "code": -1111,
                    "msg": "Precision is over the maximum defined for this asset.",
                }
            if qty <= 0:
                return {"code": -4003, "msg": "Quantity less than or equal to zero."}
            if qty < low:
                return {"code": -4004, "msg": "Quantity less than min quantity."}
            if qty > high:
                return {"code": -4005, "msg": "Quantity greater than max quantity."}
            if (qty - low) % step:
                return {"code": -4023, "msg": "Qty not increased by step size."}
        return None

    # -- request handling ----------------------------------------------------

    def handle(self, req: BaseHTTPRequestHandler, method: str) -> None:
        split = urlsplit(req.path)
        length = int(req.headers.get("Content-Length") or 0)
        body = req.rfile.read(length).decode() if length else ""
        params = dict(parse_qsl(body)) | dict(parse_qsl(split.query))  # query string wins
        raw = split.query + body
        at = time.time()
        with self.lock:
            self.seen.append(Seen(self.now_ms(), method, split.path, params, raw, at))
            queue = self.faults.get((method, split.path))
            fault = queue.popleft() if queue else None
            left_ms = self.banned_until_ms - self.now_ms()
            banned = left_ms > 0
            headers = {"Retry-After": str(-(-left_ms // 1000))} if self._ban_retry_after else {}
        if banned:
            msg = f"Way too many requests; IP(127.0.0.1) banned until {self.banned_until_ms}."
            if self.ban_status == 429:
                msg = "Too many requests; current limit is 2400 requests per minute."
            return _send(req, self.ban_status, {"code": -1003, "msg": msg}, headers)
        if self.hold_sec:  # outside the lock: requests on other connections are held at once
            time.sleep(self.hold_sec)
        if fault is not None and fault.early:
            return _send(req, fault.status, fault.body, fault.headers)
        if split.path == "/fapi/v1/time" and method == "GET":
            return _send(req, 200, {"serverTime": self.now_ms()})
        if split.path == "/fapi/v1/exchangeInfo" and method == "GET":
            return _send(req, 200, self.exchange_info())
        routes = {
            ("GET", "/fapi/v3/positionRisk"),
            ("GET", "/fapi/v1/positionSide/dual"),
            ("GET", ORDER),
            ("POST", ORDER),
        }
        if (method, split.path) not in routes:
            return _send(req, 404, {"code": -1099, "msg": "Not found."})
        denied = self._check_auth(req, split.query, body, params)
        if denied:
            return _send(req, *denied)
        if fault is not None and fault.echo:
            quoted = f"{req.headers.get('X-MBX-APIKEY')} {raw}"
            return _send(req, 400, {"code": -1102, "msg": f"Malformed request: {quoted}"})
        if method == "POST":
            return self._post_order(req, params, fault)
        if fault is not None and _faulted(req, fault):
            return None
        if split.path == "/fapi/v1/positionSide/dual":
            return _send(req, 200, {"dualSidePosition": self.dual_side})
        if split.path == ORDER:
            answer = self._query(params)
            with self.lock:
                waiting = self.on_lookup.pop(params.get("origClientOrderId", ""), None)
            _send(req, *answer)
            if waiting is not None and answer[0] != 200:
                self._place_late(waiting[0], waiting[1], int(waiting[0]["timestamp"]))
            return None
        return _send(req, 200, self._position_rows(params.get("symbol")))

    def _post_order(
        self, req: BaseHTTPRequestHandler, p: dict[str, str], fault: Fault | None
    ) -> None:
        if fault is None:
            return _send(req, *self.place(p, Fault()))
        answer: tuple[int, Any] | None = self.place(p, fault) if fault.place else None
        if fault.place_after is not None:
            stamp = int(p["timestamp"])
            timer = threading.Timer(fault.place_after, self._place_late, (p, fault, stamp))
            timer.daemon = True
            timer.start()
        if fault.place_on_lookup:
            with self.lock:
                self.on_lookup[p.get("newClientOrderId", "")] = (p, fault)
        if _faulted(req, fault):
            return None
        return _send(req, *(answer or self.place(p, fault)))

    def _place_late(self, p: dict[str, str], fault: Fault, stamp: int) -> None:
        answer = self.place(p, fault, stamp)
        with self.lock:
            self.late_answers.append(answer)

    def _check_auth(
        self, req: BaseHTTPRequestHandler, query: str, body: str, p: dict[str, str]
    ) -> tuple[int, Any] | None:
        if req.headers.get("X-MBX-APIKEY") != self.api_key:
            return 401, {"code": -2015, "msg": "Invalid API-key, IP, or permissions for action."}
        signature = p.get("signature", "")
        total = (query + body).replace(f"&signature={signature}", "")
        expected = hmac.new(self.api_secret.encode(), total.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature.lower()):
            return 400, {"code": -1022, "msg": "Signature for this request is not valid."}
        try:
            stamp, window = int(p["timestamp"]), int(p.get("recvWindow", 5000))
        except (KeyError, ValueError):
            return 400, {"code": -1102, "msg": "Mandatory parameter 'timestamp' was not sent."}
        now = self.now_ms()
        if not (stamp < now + 1000 and now - stamp <= window):  # Binance's documented rule
            return 400, {
                "code": -1021,
                "msg": "Timestamp for this request is outside of the recvWindow.",
            }
        return None

    def _query(self, p: dict[str, str]) -> tuple[int, Any]:
        with self.lock:
            cid = p.get("origClientOrderId")
            for order in reversed(self.orders):
                if order["clientOrderId"] == cid and order["symbol"] == p.get("symbol"):
                    return 200, dict(order)
        return 400, {"code": -2013, "msg": "Order does not exist."}

    def _position_rows(self, symbol: str | None) -> list[dict[str, Any]]:
        rows = []
        with self.lock:
            for sym, amt in self.positions.items():
                if symbol and sym != symbol:
                    continue
                if self.dual_side:
                    rows.append(
                        {
                            "symbol": sym,
                            "positionSide": "LONG",
                            "positionAmt": str(max(amt, Decimal(0))),
                        }
                    )
                    rows.append(
                        {
                            "symbol": sym,
                            "positionSide": "SHORT",
                            "positionAmt": str(min(amt, Decimal(0))),
                        }
                    )
                elif amt:
                    rows.append({"symbol": sym, "positionSide": "BOTH", "positionAmt": str(amt)})
        return rows

    def exchange_info(self) -> dict[str, Any]:
        symbols = []
        for sym, (lot, market) in self.filters.items():
            filters = [
                {"filterType": kind, "stepSize": f.step, "minQty": f.min, "maxQty": f.max}
                for kind, f in (("LOT_SIZE", lot), ("MARKET_LOT_SIZE", market))
            ]
            filters.append({"filterType": "MIN_NOTIONAL", "notional": "5.0"})
            symbols.append({"symbol": sym, "status": "TRADING", "filters": filters})
        return {"timezone": "UTC", "serverTime": self.now_ms(), "symbols": symbols}


def _faulted(req: BaseHTTPRequestHandler, fault: Fault) -> bool:
    """Hold the answer, drop the connection or answer with the fault's error;
    True when the fault has answered (or withheld) the request."""
    if fault.delay:
        time.sleep(fault.delay)
    if fault.drop:
        req.close_connection = True
        return True
    if fault.status:
        _send(req, fault.status, fault.body, fault.headers)
        return True
    return False


def _send(
    req: BaseHTTPRequestHandler, status: int, body: Any, headers: dict[str, str] | None = None
) -> None:
    data = (body if isinstance(body, str) else json.dumps(body)).encode()
    try:
        req.send_response(status)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            req.send_header(name, value)
        req.end_headers()
        req.wfile.write(data)
    except OSError:
        pass  # the client gave up waiting: exactly what a slow answer is for


class _Server(ThreadingHTTPServer):
    """Counts the connections it accepts; with ``tls``, each handshake is made in the
    connection's own thread (a slow one never holds up the others)."""

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        fake: FakeBinance,
        tls: tuple[str, str] | None,
    ) -> None:
        super().__init__(address, handler)
        self.fake, self.tls = fake, tls
        self._context: ssl.SSLContext | None = None
        if tls is not None:
            self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._context.load_cert_chain(*tls)

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, address = super().get_request()
        with self.fake.lock:
            self.fake.accepted.append(time.time())
        if self._context is not None:
            conn = self._context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        return conn, address


def _handler_for(fake: FakeBinance) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1" if fake.keep_alive else "HTTP/1.0"
        disable_nagle_algorithm = fake.keep_alive  # headers and body go out as two writes

        def do_GET(self) -> None:
            fake.handle(self, "GET")

        def do_POST(self) -> None:
            fake.handle(self, "POST")

        def log_message(self, format: str, *args: Any) -> None:
            return None

    return Handler
