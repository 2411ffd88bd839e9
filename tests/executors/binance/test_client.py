"""The signed Binance client against the fake exchange (real HTTP on 127.0.0.1)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal

import httpx
import pytest
from pydantic import SecretStr

from apply_layer.core.errors import (
    BinanceError,
    ExchangeRejected,
    NotProcessed,
    OrderNotFound,
    RateLimited,
    StatusUnknown,
    TimestampRejected,
)
from apply_layer.core.sizing import LotFilter
from apply_layer.executors.binance.client import BinanceClient, sign
from apply_layer.executors.binance.model import stricter
from tests.fake_binance import (
    API_KEY,
    API_SECRET,
    ORDER,
    FakeBinance,
    Fault,
    dropped,
    rate_limited,
    rejected,
    slow,
    timeout_1007,
    unknown_503,
)

# The USD-M futures docs' own example ("SIGNED Endpoint Examples for POST
# /fapi/v1/order - HMAC Keys", developers.binance.com/docs/derivatives/
# usds-margined-futures/general-info). Public example values, not credentials.
DOC_KEY = "dbefbc809e3e83c283a984c3a1459732ea7db1360ca80c5c2c8867408d28cc83"
DOC_SECRET = "2b5eb11e18796d12d88f13dc27dbbd02c2cc51ff7059765ed9821957d82bb4d9"
DOC_QUERY = (
    "symbol=BTCUSDT&side=BUY&type=LIMIT&quantity=1&price=9000&timeInForce=GTC"
    "&recvWindow=5000&timestamp=1591702613943"
)
DOC_SIGNATURE = "3c661234138461fcc7a7d8746c6558c9842d4e10870d2ecbedf7777cad694af9"


@pytest.fixture
def fake() -> Iterator[FakeBinance]:
    with FakeBinance() as server:
        yield server


@pytest.fixture
async def client(fake: FakeBinance) -> AsyncIterator[BinanceClient]:
    c = BinanceClient(
        base_url=fake.url,
        api_key=SecretStr(API_KEY),
        api_secret=SecretStr(API_SECRET),
        recv_window_ms=500,
        timeout=httpx.Timeout(1.0, read=0.3),
    )
    await c.open()
    await c.sync_time()
    try:
        yield c
    finally:
        await c.aclose()


async def place(client: BinanceClient, qty: str, side: str = "SELL", cid: str = "c1") -> object:
    return await client.place_market_close(
        symbol="BTCUSDT",
        side=side,
        quantity=Decimal(qty),
        client_order_id=cid,
        sent_at_ms=client.local_ms(),
    )


def test_signature_reproduces_the_binance_docs_example() -> None:
    # Examples 1 (query string) and 2 (request body) sign the same totalParams.
    assert sign(DOC_SECRET, DOC_QUERY) == DOC_SIGNATURE
    # Example 3: totalParams is query string + body concatenated with no "&"
    # (the docs' echo line, space after "timestamp=" included, gives their value).
    mixed = (
        "symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTC"
        + "quantity=1&price=9000&recvWindow=5000&timestamp= 1591702613943"
    )
    assert sign(DOC_SECRET, mixed) == (
        "f9d0ae5e813ef6ccf15c2b5a434047a0181cb5a342b903b367ca6d27a66e36f2"
    )


async def test_signed_get_and_post_verify_on_the_fake(
    client: BinanceClient, fake: FakeBinance
) -> None:
    fake.positions["BTCUSDT"] = Decimal("0.010")
    # A client order id with every special character Binance allows (":" "/" "." "_" "-").
    with pytest.raises(OrderNotFound):
        await client.query_order("BTCUSDT", "a:b/c.d_e-f")
    info = await place(client, "0.004", cid="x:y/z")
    assert info == await client.query_order("BTCUSDT", "x:y/z")
    post = fake.requests("POST", ORDER)[0]
    assert post.params["recvWindow"] == "500" and "timestamp" in post.params
    assert post.raw.endswith(f"&signature={post.params['signature']}")


async def test_wrong_key_or_secret_is_refused_without_echoing_them(fake: FakeBinance) -> None:
    for key, secret, code in ((API_KEY, "x" * 64, -1022), ("k" * 64, API_SECRET, -2015)):
        c = BinanceClient(base_url=fake.url, api_key=SecretStr(key), api_secret=SecretStr(secret))
        await c.open()
        with pytest.raises(ExchangeRejected) as info:
            await c.dual_side_position()
        await c.aclose()
        assert info.value.code == code
        assert secret not in str(info.value) and key not in str(info.value)


@pytest.mark.parametrize("skew_ms", [3000, -3000])
async def test_clock_offset_is_measured_and_used(fake: FakeBinance, skew_ms: int) -> None:
    fake.skew_ms = skew_ms
    fake.positions["BTCUSDT"] = Decimal("-0.5")
    c = BinanceClient(
        base_url=fake.url,
        api_key=SecretStr(API_KEY),
        api_secret=SecretStr(API_SECRET),
        recv_window_ms=300,
    )
    await c.open()
    try:
        offset = await c.sync_time()
        assert abs(offset - skew_ms) <= 100
        assert await c.position_rows("BTCUSDT") == [("BOTH", Decimal("-0.5"))]
    finally:
        await c.aclose()


async def test_minus_1021_on_a_read_resyncs_once_and_retries(
    client: BinanceClient, fake: FakeBinance
) -> None:
    fake.skew_ms = 3000  # the server's clock jumps after our sync
    assert client.time_syncs == 1
    assert await client.position_rows("BTCUSDT") == []
    assert client.time_syncs == 2 and abs(client.offset_ms - 3000) <= 100


async def test_minus_1021_on_an_order_is_raised_not_retried(
    client: BinanceClient, fake: FakeBinance
) -> None:
    """The executor resends it, journalling a new attempt: the client never does."""
    fake.positions["BTCUSDT"] = Decimal("0.010")
    fake.skew_ms = 3000
    with pytest.raises(TimestampRejected):
        await place(client, "0.001")
    assert client.time_syncs == 1 and fake.order_count("c1") == 0


async def test_exchange_info_filters_take_the_stricter_market_rule(
    client: BinanceClient,
) -> None:
    rules = await client.exchange_rules()
    btc, eth = rules["BTCUSDT"], rules["ETHUSDT"]
    assert btc.lot == LotFilter(Decimal("0.001"), Decimal("0.001"), Decimal(120))
    assert btc.lot_size == LotFilter(Decimal("0.001"), Decimal("0.001"), Decimal(1000))
    assert eth.lot == LotFilter(Decimal("0.01"), Decimal("0.01"), Decimal(2000))
    assert eth.lot.round_down(Decimal("0.5379")) == Decimal("0.53")
    assert "step=0.01 min=0.01 max=2000" in eth.describe()


def test_stricter_refuses_steps_that_do_not_nest() -> None:
    a = LotFilter(Decimal("0.002"), Decimal("0.002"))
    b = LotFilter(Decimal("0.005"), Decimal("0.005"))
    with pytest.raises(BinanceError, match="do not nest"):
        stricter("X", a, b)
    assert stricter("X", a, None) == a


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (slow(0.6, place=True), StatusUnknown),  # read timeout
        (dropped(place=False), StatusUnknown),
        (unknown_503(place=False), StatusUnknown),
        (timeout_1007(place=True), StatusUnknown),
        (Fault(status=500, body={"code": -1006, "msg": "Unexpected response"}), StatusUnknown),
        (Fault(status=502, body="<html>Bad Gateway</html>"), StatusUnknown),
        (Fault(status=503, body={"code": -1008, "msg": "Service Unavailable."}), NotProcessed),
        (rate_limited(2), RateLimited),
        (rate_limited(2, status=418), RateLimited),
        # The code alone decides, whatever the HTTP status says.
        (Fault(status=400, body={"code": -1006, "msg": "Unexpected response"}), StatusUnknown),
        (Fault(status=400, body={"code": -1007, "msg": "Timeout waiting"}), StatusUnknown),
        (Fault(status=400, body={"code": -1001, "msg": "Internal error"}), NotProcessed),
        (Fault(status=400, body={"code": -1008, "msg": "Overloaded"}), NotProcessed),
        (Fault(status=408, body={"code": -1000, "msg": "?"}), StatusUnknown),
        (rejected(-2022, "ReduceOnly Order is rejected."), ExchangeRejected),
        (Fault(status=403, body="WAF"), ExchangeRejected),
    ],
)
async def test_each_answer_is_classified(
    client: BinanceClient, fake: FakeBinance, fault: Fault, expected: type[Exception]
) -> None:
    fake.positions["BTCUSDT"] = Decimal("0.010")
    fake.inject("POST", ORDER, fault)
    with pytest.raises(expected) as info:
        await place(client, "0.001")
    assert type(info.value) is expected
    if isinstance(info.value, RateLimited):
        assert info.value.retry_after_sec == 2.0 and info.value.http_status in (418, 429)
    if isinstance(info.value, ExchangeRejected) and info.value.http_status == 403:
        assert info.value.tag == "http_403"


async def test_a_closed_port_is_not_processed() -> None:
    c = BinanceClient(base_url="http://127.0.0.1:9", api_key=SecretStr(API_KEY), api_secret=None)
    await c.open()
    with pytest.raises(NotProcessed):
        await c.sync_time()
    await c.aclose()


@pytest.mark.parametrize(
    ("qty", "side", "code"),
    [
        ("0.011", "SELL", -2022),  # would flip the long to a short
        ("0.001", "BUY", -2022),  # would increase the long
        ("0.0015", "SELL", -1111),  # finer than the step
        ("0", "SELL", -4003),
        ("121", "SELL", -4005),  # above MARKET_LOT_SIZE maxQty
    ],
)
async def test_fake_enforces_reduce_only_and_lot_rules(
    client: BinanceClient, fake: FakeBinance, qty: str, side: str, code: int
) -> None:
    fake.positions["BTCUSDT"] = Decimal("0.010")
    with pytest.raises(ExchangeRejected) as info:
        await place(client, qty, side=side)
    assert info.value.code == code and fake.orders == []


async def test_fake_accepts_a_second_order_with_a_filled_orders_id(
    client: BinanceClient, fake: FakeBinance
) -> None:
    """As Binance does (unique among *open* orders only): blind resends double-fill."""
    fake.positions["BTCUSDT"] = Decimal("0.010")
    await place(client, "0.004")
    await place(client, "0.004")
    assert fake.order_count("c1") == 2 and fake.positions["BTCUSDT"] == Decimal("0.002")


async def test_signatures_never_reach_httpx_logs(client: BinanceClient, fake: FakeBinance) -> None:
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = Keep(logging.DEBUG)
    loggers = [logging.getLogger(n) for n in ("httpx", "httpcore.http11", "httpcore.connection")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    try:
        await client.position_rows("BTCUSDT")
        with pytest.raises(OrderNotFound):
            await client.query_order("BTCUSDT", "c1")
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)
    signatures = [s.params["signature"] for s in fake.seen if "signature" in s.params]
    text = "\n".join(records)
    assert "/fapi/v1/order" in text and signatures
    assert not any(sig in text for sig in signatures)
    assert API_KEY not in text and API_SECRET not in text
