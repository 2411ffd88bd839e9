"""The kill switch rule: the Lua ``kill_on`` and the Python ``permits.kill_on`` agree.

The rule is written twice on purpose: in ``lua/kill_switch.lua``, which the
gate and the lease's acquire script apply on the server, and in
``permits.kill_on``, which the ``permits`` and ``check`` commands use to report
the switch. This table runs both on the same keys of a real redis-server (and
the commands and the scripts that use them), so the two can never drift.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from redis.asyncio import Redis

from apply_layer.commands.check import kill_switch_check
from apply_layer.commands.permits import peek_plan
from apply_layer.core import keys as K
from apply_layer.core.permits import kill_on
from apply_layer.store.gate import KILL_SWITCH_LUA, GateConfig, PermitGate
from apply_layer.store.lease import ACQUIRE_SCRIPT

KILL_ON = KILL_SWITCH_LUA + "return kill_on(KEYS[1]) and 1 or 0"

Setup = Callable[[Redis, str], Awaitable[object]]


def text(value: str | bytes) -> Setup:
    return lambda redis, key: redis.set(key, value)


def _missing(redis: Redis, key: str) -> Awaitable[object]:
    return redis.exists(key)  # writes nothing


# (label, how the key is written, the rule's answer)
CASES: list[tuple[str, Setup, bool]] = [
    ("missing", _missing, False),
    ("1", text("1"), True),
    ("true", text("true"), True),
    ("TRUE", text("TRUE"), True),
    ("True", text("True"), True),
    ("on", text("on"), True),
    ("On", text("On"), True),
    ("ON", text("ON"), True),
    ("0", text("0"), False),
    ("false", text("false"), False),
    ("off", text("off"), False),
    ("yes", text("yes"), False),
    ("no", text("no"), False),
    ("2", text("2"), False),
    ("empty", text(""), False),
    ("space 1", text(" 1"), False),
    ("1 space", text("1 "), False),
    ("true newline", text("true\n"), False),
    ("fullwidth ON", text("ＯＮ"), False),  # Lua lowers ASCII only; Python's lower() keeps it apart
    ("invalid utf-8", text(b"\xff1"), False),
    ("long", text("1" * 5000), False),
    ("hash", lambda redis, key: redis.hset(key, mapping={"1": "1", "on": "true"}), False),
    ("list", lambda redis, key: redis.rpush(key, "1"), False),
    ("set", lambda redis, key: redis.sadd(key, "on"), False),
    ("zset", lambda redis, key: redis.zadd(key, {"true": 1}), False),
    ("stream", lambda redis, key: redis.xadd(key, {"on": "1"}), False),
]


@pytest.mark.parametrize("key", K.KILL_SWITCH_KEYS)
@pytest.mark.parametrize(("label", "setup", "on"), CASES, ids=[c[0] for c in CASES])
async def test_lua_and_python_read_the_kill_switch_alike(
    redis: Redis, key: str, label: str, setup: Setup, on: bool
) -> None:
    await setup(redis, key)
    # The server-side rule, as the gate and the lease run it.
    lua = await redis.eval(KILL_ON, 1, key)
    assert bool(lua) is on, label
    # The Python rule, on the key read the way the commands read it.
    kind = str(await redis.type(key))
    value = await redis.get(key) if kind == "string" else None
    assert kill_on(kind, None if value is None else str(value)) is on, label
    # The commands that report the switch.
    view = await peek_plan(redis, "pk", "BTCUSDT", GateConfig())
    assert view.kill_switch[key] is on, label
    line = await kill_switch_check(redis)
    assert (line is not None and key in line.detail) is on, label
    # The scripts that honour it: the gate blocks, the lease refuses a new order.
    reply = await PermitGate(redis, GateConfig()).attempt("pk", "BTCUSDT", "t", final=False)
    assert reply[0] == ("KILL" if on else "WAIT"), label
    acquire = [K.symbol_lease("BTCUSDT"), K.journal("pk"), *K.KILL_SWITCH_KEYS]
    answer = await redis.eval(ACQUIRE_SCRIPT, 4, *acquire, "me:1", 1000, 0, 1)
    assert answer == ("KILL" if on else "OK"), label


async def test_the_environment_switch_is_reported_and_honoured(redis: Redis) -> None:
    config = GateConfig(kill_switch=True)
    view = await peek_plan(redis, "pe", "BTCUSDT", config)
    assert view.kill_switch["APPLY_KILL_SWITCH"] is True
    reply = await PermitGate(redis, config).attempt("pe", "BTCUSDT", "t", final=False)
    assert reply[0] == "KILL"
