"""The second hostile review (issue 21), findings 1, 5, 7, 9 and 10: each as it was
reproduced from the outside, through the real daemon where the finding is the
daemon's, and through the pure rule where a property says it better.

1. a plan's content (step, pct) is signed: an entry injected first under a real
   plan id cannot decide the close, and a second entry for the same plan id
   with other content is a loud security event;
5. sizing never rounds up (Decimal's 28-digit default context did);
7. a key file never echoes key material, and one that others may write, or that
   another user owns, is refused;
9. testnet mode refuses a non-testnet exchange host when its settings load;
10. a plan resumed in ``submitting`` has its permits' signatures checked too.

Tests by name: daemon/signature_policy.py and daemon/signing_keys.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import time
from collections.abc import Callable, Iterator
from decimal import Context, Decimal, Inexact, localcontext
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from apply_layer.core import keys as K
from apply_layer.core.errors import KeyFileError, SendRefused, SettingsError
from apply_layer.core.outcomes import StepResult
from apply_layer.core.signing import sign_permit
from apply_layer.core.sizing import LotFilter, size_close
from apply_layer.core.statuses import StepStatus
from apply_layer.daemon import signing_keys
from apply_layer.daemon.processing import Processor
from apply_layer.daemon.signature_policy import LookupOnly
from apply_layer.daemon.signing_keys import parse_keys, read_keys
from apply_layer.executors.binance.executor import BinanceExecutor
from apply_layer.executors.binance.model import parse_exchange_info
from apply_layer.executors.paper import PaperExecutor
from apply_layer.ops.embedded_redis import EmbeddedRedis, free_port
from apply_layer.settings import load_settings
from apply_layer.store.gate import GateConfig, PermitGate
from apply_layer.store.journal import Journal
from tests.executors.binance.executor_helpers import POLICY, RECV_WINDOW, posts, request
from tests.fake_binance import API_KEY, API_SECRET, ORDER, FakeBinance
from tests.harness import (
    Daemon,
    MemoryLog,
    pending_count,
    publish_plan,
    results,
    settings_for,
    wait_result,
)

SECRET = "5a" * 32  # a 64-hex key: it must never appear in any output
OTHER_SECRET = "6b" * 32


EXACT = Context(prec=500, traps=[Inexact])


def _lines(text: str) -> list[str]:
    return [line for line in text.strip().splitlines() if line]


@pytest.fixture
def daemons(redis_server: EmbeddedRedis, tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    made: list[Daemon] = []

    def make(name: str, **settings: Any) -> Daemon:
        made.append(Daemon(redis_server.url, tmp_path, name, **settings))
        return made[-1]

    yield make
    for daemon in made:
        daemon.stop()


# ---- 9: no mainnet in testnet mode -------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://fapi.binance.com",
        "https://testnet.binancefuture.com@fapi.binance.com",  # the host is after the @
        "https://fapi.binance.com/?testnet.binancefuture.com",
        "https://testnet.binancefuture.com.evil.example",
    ],
)
def test_testnet_mode_refuses_a_mainnet_host_at_settings_load(url: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(mode="testnet", binance_base_url=url)
    message = str(caught.value)
    assert len(_lines(message)) == 1 and message.startswith("APPLY_BINANCE_BASE_URL: ")
    assert "is not the testnet" in message


@pytest.mark.parametrize(
    "url",
    ["https://testnet.binancefuture.com", "https://demo-fapi.binance.com", "http://127.0.0.1:9"],
)
def test_testnet_mode_keeps_the_testnet_hosts(url: str) -> None:
    assert load_settings(mode="testnet", binance_base_url=url).binance_base_url == url


def test_the_daemon_in_testnet_mode_exits_2_on_a_mainnet_url(
    daemons: Callable[..., Daemon],
) -> None:
    daemon = daemons(
        "mainnet",
        mode="testnet",
        binance_base_url="https://fapi.binance.com",
        binance_api_key="k" * 64,
        binance_api_secret="s" * 64,
    ).start()
    assert daemon.wait(30) == 2
    lines = _lines(daemon.log())
    assert len(lines) == 1 and "APPLY_BINANCE_BASE_URL" in lines[0], lines
    assert "'fapi.binance.com' is not the testnet" in lines[0]


# ---- 7: key files ------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        f"{SECRET} p33 p33-2025a",  # the secret first: it was echoed as an unknown issuer
        f"p33-2025a {SECRET} p33",
        f"p33 {SECRET} {OTHER_SECRET}",  # a secret where the key id goes
        f"p33 {SECRET} p33-2025a",
        f"governor {SECRET}",
        f"{SECRET} {SECRET} {SECRET} {SECRET}",
    ],
)
def test_a_key_file_error_never_echoes_key_material(line: str) -> None:
    with pytest.raises(KeyFileError) as caught:
        parse_keys(f"# keys\n{line}\n")
    message = str(caught.value)
    assert message.startswith("line 2: ")
    for secret in (SECRET, OTHER_SECRET):
        assert secret not in message and secret[:16] not in message, message


def _key_file(tmp_path: Path, mode: int = 0o600, line: str = f"p33 p33-2025a {SECRET}") -> Path:
    path = tmp_path / "permit-keys"
    path.write_text(line + "\n")
    path.chmod(mode)
    return path


@pytest.mark.parametrize(
    ("mode", "says"), [(0o620, "group-writable"), (0o602, "world-writable"), (0o660, "group")]
)
def test_a_key_file_others_may_write_is_refused(tmp_path: Path, mode: int, says: str) -> None:
    path = _key_file(tmp_path, mode)
    with pytest.raises(KeyFileError) as caught:
        read_keys(path)
    assert str(path) in str(caught.value) and says in str(caught.value)
    assert SECRET not in str(caught.value)


def test_a_private_key_file_is_read(tmp_path: Path) -> None:
    assert read_keys(_key_file(tmp_path, 0o600)).kids("p33") == ["p33-2025a"]
    assert read_keys(_key_file(tmp_path, 0o640)).kids("p33") == ["p33-2025a"]


def test_a_key_file_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    path = _key_file(tmp_path)
    real = path.stat()
    stranger = max(os.geteuid(), 0) + 4242
    fields = list(real)
    fields[stat.ST_UID] = stranger
    problem = signing_keys.file_problem(path, os.stat_result(fields))
    assert problem is not None and f"owned by uid {stranger}" in problem and str(path) in problem
    if os.geteuid() == 0:  # the real thing, where the test may chown
        os.chown(path, 65534, 65534)
        with pytest.raises(KeyFileError, match="owned by uid 65534"):
            read_keys(path)


def test_the_daemon_never_logs_a_misplaced_secret(
    daemons: Callable[..., Daemon], tmp_path: Path
) -> None:
    path = _key_file(tmp_path, 0o600, f"{SECRET} p33 p33-2025a")
    daemon = daemons("keys", permit_signing="warn", permit_keys_file=str(path)).start()
    assert daemon.wait(30) == 2
    assert "line 1" in daemon.log() and SECRET not in daemon.log()


def test_the_daemon_refuses_a_group_writable_key_file(
    daemons: Callable[..., Daemon], tmp_path: Path
) -> None:
    path = _key_file(tmp_path, 0o620)
    daemon = daemons("gw", permit_signing="require", permit_keys_file=str(path)).start()
    assert daemon.wait(30) == 2
    lines = _lines(daemon.log())
    assert len(lines) == 1 and "group-writable" in lines[0] and str(path) in lines[0]


# ---- 5: sizing never rounds up -----------------------------------------------------


def test_a_34_digit_safe_qty_is_not_rounded_up_to_the_next_lot() -> None:
    safe = Decimal("0.0049999999999999999999999999999999")
    sizing = size_close(
        safe_qty=safe,
        pct=Decimal(100),
        reported_amt=Decimal("0.012"),
        live_amt=Decimal("0.012"),
        lot=LotFilter(Decimal("0.001"), Decimal("0.001")),
    )
    assert sizing.ok and sizing.qty == Decimal("0.004")


def test_a_long_position_is_not_rounded_up_either() -> None:
    position = Decimal("0.0099999999999999999999999999999999")
    sizing = size_close(
        safe_qty=Decimal(1),
        pct=Decimal(50),
        reported_amt=position,
        live_amt=position,
        lot=LotFilter(Decimal("0.001"), Decimal("0.001")),
    )
    assert sizing.ok and sizing.qty == Decimal("0.004")


def test_exchange_filters_that_need_more_digits_are_refused_not_rounded() -> None:
    entry = {
        "symbol": "BTCUSDT",
        "filters": [
            {
                "filterType": "LOT_SIZE",
                "stepSize": "0.001",
                "minQty": "0.001",
                "maxQty": "119.999999999999999999999999999999999999999999999999999999999999",
            }
        ],
    }
    rules = parse_exchange_info({"symbols": [entry]})
    assert "BTCUSDT" not in rules and "BTCUSDT" in rules.invalid
    entry["filters"][0]["maxQty"] = "119.99999999999999999999999999999"  # type: ignore[index]
    kept = parse_exchange_info({"symbols": [entry]})["BTCUSDT"].lot
    assert kept is not None and kept.max_qty == Decimal("119.99999999999999999999999999999")


def _long_decimal(max_digits: int = 60) -> st.SearchStrategy[Decimal]:
    """Positive decimals of up to ``max_digits`` significant digits, near lot boundaries."""
    digits = st.integers(min_value=1, max_value=max_digits)
    return st.builds(
        lambda n, exp, nines: Decimal(nines) if nines else Decimal(n) * Decimal(10) ** exp,
        st.integers(min_value=1, max_value=10**max_digits - 1),
        st.integers(min_value=-max_digits - 3, max_value=0),
        st.one_of(
            st.just(""),
            digits.flatmap(
                lambda k: st.sampled_from(["0.00", "0.0", "0.", "1.", "12.", "0.000"]).map(
                    lambda head: head + "4" + "9" * k
                )
            ),
        ),
    ).filter(lambda d: Decimal(0) < d < Decimal("1e6"))


@settings(max_examples=400, deadline=None)
@given(
    safe=_long_decimal(),
    position=_long_decimal(),
    short=st.booleans(),
    pct=st.sampled_from([Decimal(25), Decimal(50), Decimal(75), Decimal(100), Decimal("33.3")]),
    step=st.sampled_from(
        [Decimal("0.001"), Decimal("0.1"), Decimal(1), Decimal("0.005"), Decimal("1E-8")]
    ),
)
def test_sizing_never_exceeds_safe_qty_or_the_share_and_loses_no_lot(
    safe: Decimal, position: Decimal, short: bool, pct: Decimal, step: Decimal
) -> None:
    signed = position.copy_negate() if short else position  # exact: unary minus rounds
    lot = LotFilter(step, step)
    sizing = size_close(safe_qty=safe, pct=pct, reported_amt=signed, live_amt=signed, lot=lot)
    with localcontext(EXACT):  # the test's own arithmetic never rounds (Inexact raises)
        share_x100 = position * pct  # the step's share, times 100, exactly
        qty = sizing.qty
        assert qty <= safe, (qty, safe)
        assert qty * 100 <= share_x100, (qty, position, pct)
        if not sizing.ok:
            assert sizing.error == "qty_below_min"
            return
        assert qty % step == 0
        # the largest lot multiple within both bounds: one more step exceeds one of them
        nxt = qty + step
        assert nxt > safe or nxt * 100 > share_x100, (qty, safe, position, pct, step)
    assert sizing.side == ("BUY" if short else "SELL")


# ---- 1: the plan's content is signed; a conflicting entry is a security event ------

KEYS = {
    ("p33", "p33-k1"): bytes.fromhex("11" * 32),
    ("governor", "gov-k1"): bytes.fromhex("33" * 32),
}
P33 = {"allow": True, "symbol": "BTCUSDT", "safe_qty": 0.01, "exchange_position_amt": 0.012}
GOVERNOR = {"granted": True, "symbol": "BTCUSDT", "decision": "EXECUTE"}


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "permit-keys"
    path.write_text("".join(f"{i} {kid} {key.hex()}\n" for (i, kid), key in KEYS.items()))
    path.chmod(0o600)
    return path


def _entry(plan_id: str, step: str, pct: float) -> dict[str, str]:
    close = {"step": step, "type": "market_reduce_only", "side": "close", "pct": pct}
    return {
        "plan_id": plan_id,
        "symbol": "BTCUSDT",
        "decision": "EXECUTE",
        "steps": json.dumps([close]),
        "timestamp": f"{time.time():.3f}",
    }


async def _permits(redis: Redis, plan_id: str, step: str) -> None:
    """Genuine permits, signed by their issuers for the close the real plan asks for."""
    for (issuer, kid), key in KEYS.items():
        permit = P33 if issuer == "p33" else GOVERNOR
        signed = sign_permit(permit, issuer=issuer, plan_id=plan_id, kid=kid, key=key, step=step)
        await redis.set(K.ISSUERS[issuer].key(plan_id), json.dumps(signed), ex=60)


async def _records(daemon: Daemon, message: str, timeout: float = 15.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [r for r in daemon.records() if r.get("message") == message]
        if found:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {message} in:\n{daemon.log()}")


async def _settled(read: Callable[[], Any], want: float, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    seen = await read()
    while seen < want and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        seen = await read()


async def _metric(port: int, name: str) -> float:
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    values = [line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")]
    assert len(values) == 1, text
    return float(values[0])


async def test_an_injected_close_cannot_use_the_real_plans_signed_permits(
    redis: Redis, daemons: Callable[..., Daemon], keys_file: Path
) -> None:
    """Issue 21's reproduction: with signing required and genuine permits, a CLOSE_FULL
    published first under the real plan id executed 100 % where the plan asked 25 %,
    and the real entry was logged as a quiet duplicate."""
    port = free_port()
    daemon = daemons(
        "inject", permit_signing="require", permit_keys_file=str(keys_file), metrics_port=port
    )
    await daemon.start().ready(redis)
    await _permits(redis, "real-plan", "CLOSE_PARTIAL_25")
    await redis.xadd(K.PLAN_STREAM, _entry("real-plan", "CLOSE_FULL", 100.0))  # type: ignore[arg-type]
    result = await wait_result(redis, "real-plan")
    await redis.xadd(K.PLAN_STREAM, _entry("real-plan", "CLOSE_PARTIAL_25", 25.0))  # type: ignore[arg-type]

    assert result["executed"] == "False" and result["error"].startswith("bad_signature:"), result
    conflict = (await _records(daemon, "plan_content_conflict"))[0]
    assert conflict["level"] == "ERROR" and conflict["plan_id"] == "real-plan"
    assert conflict["first_content"] == "BTCUSDT EXECUTE CLOSE_FULL 100"
    assert conflict["content"] == "BTCUSDT EXECUTE CLOSE_PARTIAL_25 25"
    assert await _metric(port, "apply_plan_conflicts_total") == 1
    assert len(await results(redis)) == 1  # one result: the injected entry's block


async def test_signed_permits_for_the_plans_own_close_execute(
    redis: Redis, daemons: Callable[..., Daemon], keys_file: Path
) -> None:
    daemon = daemons("own", permit_signing="require", permit_keys_file=str(keys_file))
    await daemon.start().ready(redis)
    await _permits(redis, "own-plan", "CLOSE_PARTIAL_25")
    await redis.xadd(K.PLAN_STREAM, _entry("own-plan", "CLOSE_PARTIAL_25", 25.0))  # type: ignore[arg-type]
    result = await wait_result(redis, "own-plan")
    assert result["executed"] == "True", result
    assert json.loads(result["steps_results"])[-1]["executed_qty"] == "0.003"  # 25 % of 0.012


async def test_a_conflicting_entry_is_loud_without_signing_and_a_resend_is_not(
    redis: Redis, daemons: Callable[..., Daemon]
) -> None:
    """Unsigned (the default) cannot tell which entry is genuine, but it says when two
    disagree; an identical resend stays a quiet duplicate, and so does an invalid one
    sent twice. An invalid entry first, then a valid one, is a conflict too."""
    port = free_port()
    daemon = daemons("loud", metrics_port=port)
    await daemon.start().ready(redis)
    for plan_id in ("resend", "conflict", "invalid-first"):
        for issuer in ("p33", "governor"):
            permit = P33 if issuer == "p33" else GOVERNOR
            await redis.set(K.ISSUERS[issuer].key(plan_id), json.dumps(permit), ex=60)
    same = _entry("resend", "CLOSE_PARTIAL_25", 25.0)
    broken = {**_entry("invalid-first", "CLOSE_FULL", 100.0), "steps": "[{"}
    for first, *later in (
        (same, same),
        (
            _entry("conflict", "CLOSE_PARTIAL_25", 25.0),
            _entry("conflict", "CLOSE_PARTIAL_50", 50.0),
        ),
        (broken, broken, _entry("invalid-first", "CLOSE_FULL", 100.0)),
    ):
        await redis.xadd(K.PLAN_STREAM, first)  # type: ignore[arg-type]
        await wait_result(redis, first["plan_id"])  # the first entry decided: then the others
        for fields in later:
            await redis.xadd(K.PLAN_STREAM, fields)  # type: ignore[arg-type]
    await _records(daemon, "plan_content_conflict")
    await _settled(lambda: _metric(port, "apply_plan_conflicts_total"), 2)
    conflicts = [r for r in daemon.records() if r.get("message") == "plan_content_conflict"]
    assert sorted((r["plan_id"], r["first_content"], r["content"]) for r in conflicts) == [
        ("conflict", "BTCUSDT EXECUTE CLOSE_PARTIAL_25 25", "BTCUSDT EXECUTE CLOSE_PARTIAL_50 50"),
        ("invalid-first", "invalid", "BTCUSDT EXECUTE CLOSE_FULL 100"),
    ]
    duplicates = [r for r in daemon.records() if str(r.get("message", "")).startswith("duplicate ")]
    assert sorted(r["plan_id"] for r in duplicates) == ["invalid-first", "resend"]
    assert await _metric(port, "apply_plan_conflicts_total") == 2


# ---- 10: a plan resumed in "submitting" has its signatures checked too -------------


def _processor(redis: Redis, redis_server: EmbeddedRedis, keys: Path) -> Processor:
    settings = settings_for(redis_server, permit_signing="require", permit_keys_file=str(keys))
    journal = Journal(redis, dedupe_ttl_sec=300, journal_ttl_sec=3600)
    gate = PermitGate(redis, GateConfig(wait_ms=200, step_ms=20))
    return Processor(settings, redis, gate, journal, PaperExecutor())


async def _resumable(
    redis: Redis, processor: Processor, plan_id: str, **journal: str
) -> tuple[str, dict[str, str]]:
    """A plan whose journal says ``submitting`` with permits that are not signed for it:
    its permits consumed by the gate, then the state set as a crash mid-send (or a
    forger) would leave it."""
    with contextlib.suppress(ResponseError):  # BUSYGROUP: made for an earlier plan
        await redis.xgroup_create(K.PLAN_STREAM, "apply_layer", id="$", mkstream=True)
    await publish_plan(redis, plan_id)  # CLOSE_PARTIAL_75
    reply: Any = await redis.xreadgroup("apply_layer", "c", {K.PLAN_STREAM: ">"}, count=1)
    entry_id, fields = str(reply[0][1][0][0]), dict(reply[0][1][0][1])
    for issuer in ("p33", "governor"):
        permit = P33 if issuer == "p33" else GOVERNOR
        await redis.set(K.ISSUERS[issuer].key(plan_id), json.dumps(permit), ex=60)
    claim = await processor.journal.claim(plan_id, "BTCUSDT", entry_id)
    assert claim.owned_by(entry_id)
    assert (await processor.gate.wait_and_consume(plan_id, "BTCUSDT")).allowed
    await redis.hset(K.journal(plan_id), "state", "submitting")
    for name, value in journal.items():  # an earlier send, as the attempt script records it
        await redis.hset(K.journal(plan_id), name, value)
    return entry_id, fields


async def test_a_plan_resumed_in_submitting_with_unsigned_permits_sends_nothing(
    redis: Redis, redis_server: EmbeddedRedis, keys_file: Path
) -> None:
    processor = _processor(redis, redis_server, keys_file)
    entry_id, fields = await _resumable(redis, processor, "resumed-unsigned")
    handled = await processor.handle(entry_id, fields)
    assert handled.outcome is not None
    (result,) = await results(redis)
    assert (result["status"], result["error"]) == ("BLOCKED", "bad_signature:governor"), result
    assert processor.executor.orders == {}  # type: ignore[attr-defined]
    assert await pending_count(redis) == 0


async def test_a_resumed_plan_whose_order_is_out_reports_it_and_sends_no_other(
    redis: Redis, redis_server: EmbeddedRedis, keys_file: Path
) -> None:
    """The fate of an order that may be out is still found (the exchange's truth), and
    an earlier send that never happened is not made now."""
    processor = _processor(redis, redis_server, keys_file)
    paper: PaperExecutor = processor.executor  # type: ignore[assignment]
    earlier = {"order.attempts": "1700000000000", "order.client_order_id": "al75-resumed-out"}
    entry_id, fields = await _resumable(redis, processor, "resumed-out", **earlier)
    filled = StepResult("CLOSE_PARTIAL_75", StepStatus.EXECUTED, quantity=Decimal("0.009"))
    paper.orders["al75-resumed-out"] = filled  # the exchange has it, from the earlier run
    await processor.handle(entry_id, fields)
    (result,) = await results(redis)
    assert result["status"] == "EXECUTED", result
    assert list(paper.orders) == ["al75-resumed-out"] and paper.positions == {}

    earlier["order.client_order_id"] = "al75-resumed-gone"  # sent once, never arrived
    entry_id, fields = await _resumable(redis, processor, "resumed-gone", **earlier)
    await processor.handle(entry_id, fields)
    gone = [r for r in await results(redis) if r["plan_id"] == "resumed-gone"]
    assert [(r["status"], r["error"]) for r in gone] == [("BLOCKED", "bad_signature:governor")]
    assert list(paper.orders) == ["al75-resumed-out"] and paper.positions == {}


@pytest.mark.parametrize("attempts", [[], [1_700_000_000_000]])
async def test_the_testnet_executor_looks_up_but_never_sends_through_lookup_only(
    fake: FakeBinance, attempts: list[int]
) -> None:
    """Over real HTTP: the order an earlier run may have sent is found and reported; with
    none at the exchange the send is refused at its record and no request is made."""
    executor = BinanceExecutor(
        base_url=fake.url,
        api_key=SecretStr(API_KEY),
        api_secret=SecretStr(API_SECRET),
        recv_window_ms=RECV_WINDOW,
        policy=POLICY,
    )
    await executor.start()
    try:
        order = request("lookup-only")
        with pytest.raises(SendRefused, match="bad_signature:p33"):
            await executor.execute(order, LookupOnly(MemoryLog(attempts), "bad_signature:p33"))
        assert posts(fake) == 0 and fake.requests("GET", ORDER)  # looked up, never sent
        fake.add_order("BTCUSDT", "SELL", "0.010", order.client_order_id)  # the earlier send
        found = await executor.execute(order, LookupOnly(MemoryLog(attempts), "bad"))
        assert found.executed and found.client_order_id == order.client_order_id
        assert posts(fake) == 0
    finally:
        await executor.close()
