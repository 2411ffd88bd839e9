"""The second hostile review (issue 21), what the daemon and its commands put out.

* Finding 4: the metrics endpoint spent a thread per connection with no
  timeout. A thousand idle connections must neither stop a scrape nor grow
  the daemon (threads, descriptors, RSS past :data:`RSS_GROWTH_BOUND_MB`,
  the bound docs/OPERATIONS.md gives), and a slowloris head is closed at
  the header deadline.
* Finding 6: a control character in a logged value (a consumer name created
  with the daemon's own rights) wrote a forged ``[PERMIT_WAIT] OK`` line of
  its own, and ``stats`` counted it.
* Finding 8: ``apply-layer permits`` printed Redis' text raw (terminal
  escapes drew a fake verdict) and said OK for a permit the daemon would
  reject over its signature.

Tests by name: daemon/metrics_http.py, core/log_format.py and commands/stats.py.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import resource
import select
import socket
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as sync_redis
from redis.asyncio import Redis

from apply_layer.commands import main
from apply_layer.core import keys as K
from apply_layer.core.log_format import permit_block_line, permit_ok_line
from apply_layer.core.marker_stats import parse_line, summarize_lines
from apply_layer.core.signing import sign_permit
from apply_layer.daemon import housekeeping
from apply_layer.daemon.housekeeping import Housekeeping
from apply_layer.daemon.metrics_http import HEADER_TIMEOUT_SEC, MAX_CONNECTIONS
from apply_layer.logs import get_logger, setup_logging
from apply_layer.ops.embedded_redis import EmbeddedRedis, free_port
from tests.harness import Daemon, cli_database, settings_for, until

IDLE_CONNECTIONS = 1000
RSS_GROWTH_BOUND_MB = 8  # docs/OPERATIONS.md, "Metrics": what 1,000 idle connections may add
FLOOD_CHUNK = 64  # connects at a time: fewer than the listen queue holds (asyncio's 100)

# Every kind of character that broke a line or a terminal: C0 (LF, CR, TAB, ESC,
# NUL, BEL, VT, FF, the separators 0x1C-0x1F), DEL, C1 (NEL, CSI), and the
# Unicode line and paragraph separators; str.splitlines() breaks on most of them.
CONTROLS = "\n\r\t\x1b\x00\x07\x0b\x0c\x1c\x1d\x1e\x1f\x7f\x85\x9b\u2028\u2029"
FORGED = "[PERMIT_WAIT] OK plan=FAKE symbol=BTCUSDT wait_ms=1 safe_qty=9"
HOSTILE_VALUES = [f"x{c}{FORGED}" for c in CONTROLS] + [
    f"x\n\t{FORGED.replace(' ', chr(9))}",  # the finding's own: a newline, then tabs
    f"x\x1b[2K\r{FORGED}",  # erase the line, back to its start
    f"x {FORGED}",  # no control: must not count either
]


# ---------------------------------------------------------------- finding 4: metrics


def _status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (KiB), Threads, and open descriptors of ``pid``."""
    out = {"fds": len(os.listdir(f"/proc/{pid}/fd"))}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM", "Threads"):
            out[name] = int(value.split()[0])
    return out


def _room_for(descriptors: int) -> None:
    """Raise this process's soft RLIMIT_NOFILE to hold ``descriptors`` sockets
    (up to the hard limit; the test is skipped below that, never weakened)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= descriptors:
        return
    if hard != resource.RLIM_INFINITY and hard < descriptors:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {descriptors}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (descriptors, hard))


async def _open_idle(port: int, count: int) -> list[socket.socket]:
    """``count`` connections that never send a byte, open once the daemon has taken
    them all in: made :data:`FLOOD_CHUNK` at a time, each chunk once the one before
    is taken in (:func:`_taken_in`).

    This was all ``count`` non-blocking connects at once, then a fixed 1 s sleep
    for "the daemon sees the flood". Most of those connects overflowed the listen
    queue; the kernel sends a dropped SYN again after its 1 s timeout, so that part
    of the flood reached the port with the scrape, a second later, and the scrape
    was measured in the middle of the flood rather than after it.
    """
    socks: list[socket.socket] = []
    seen: dict[str, int] = {}

    def taken_in() -> bool:
        seen.update(_taken_in(socks))
        return seen["connecting"] == 0 and seen["open"] <= MAX_CONNECTIONS

    try:
        for start in range(0, count, FLOOD_CHUNK):
            for _ in range(min(FLOOD_CHUNK, count - start)):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(sock)
                sock.setblocking(False)
                sock.connect_ex(("127.0.0.1", port))
            try:
                await until(taken_in)
            except AssertionError:
                raise AssertionError(f"{len(socks)} connects not taken in: {seen}") from None
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def _taken_in(socks: list[socket.socket]) -> dict[str, int]:
    """How many of ``socks`` are still connecting, and how many are open: neither
    closed by the daemon (to make room) nor refused. Once none is connecting and
    at most the daemon's cap is open, it has accepted every one."""
    poller = select.poll()
    for sock in socks:
        poller.register(sock, select.POLLOUT | select.POLLIN | select.POLLRDHUP)
    events = dict(poller.poll(0))
    closed = select.POLLIN | select.POLLRDHUP | select.POLLERR | select.POLLHUP
    connecting = opened = 0
    for sock in socks:
        event = events.get(sock.fileno(), 0)
        if not event & (select.POLLOUT | select.POLLERR | select.POLLHUP):
            connecting += 1
        elif not event & closed:
            opened += 1
    return {"connecting": connecting, "open": opened}


@pytest.fixture
def metered(redis_server: EmbeddedRedis, tmp_path: Path) -> Iterator[tuple[Daemon, int]]:
    port = free_port()
    daemon = Daemon(redis_server.url, tmp_path, "metered", metrics_port=port)
    yield daemon, port
    daemon.stop()


async def _scrape(port: int, timeout: float = 5.0) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=timeout) as client:
        response = await client.get(f"http://127.0.0.1:{port}/metrics")
    return response, time.monotonic() - started


async def test_a_thousand_idle_connections_neither_stop_a_scrape_nor_grow_the_daemon(
    redis: Redis, metered: tuple[Daemon, int]
) -> None:
    daemon, port = metered
    _room_for(IDLE_CONNECTIONS + 256)
    await daemon.start().ready(redis)
    assert daemon.proc is not None
    first, _ = await _scrape(port)  # the first scrape's allocations are not the flood's
    assert first.status_code == 200
    before = _status(daemon.proc.pid)
    idle = await _open_idle(port, IDLE_CONNECTIONS)  # the daemon has seen the whole flood
    try:
        response, took = await _scrape(port)
        during = _status(daemon.proc.pid)
        await asyncio.sleep(0.5)
        later = _status(daemon.proc.pid)
    finally:
        for sock in idle:
            sock.close()
    assert response.status_code == 200
    assert "apply_plans_in_flight" in response.text and "apply_redis_up 1.0" in response.text
    assert took < 2.0, f"the scrape took {took:.2f} s"
    grown = {k: max(during[k], later[k]) - before[k] for k in before}
    print(f"{IDLE_CONNECTIONS} idle: scrape {took:.3f} s, before {before}, grown by {grown}")
    # No thread per connection (the old server: one each, 70 stopped it under TasksMax=64).
    assert grown["Threads"] <= 0, grown
    # At most the cap of connections held (and one being refused): the daemon's
    # descriptors, which Redis and the exchange need, are not the clients' to take.
    assert grown["fds"] <= MAX_CONNECTIONS + 1, grown
    assert grown["VmRSS"] <= RSS_GROWTH_BOUND_MB * 1024, grown


async def test_a_slowloris_head_is_closed_at_the_header_deadline(
    redis: Redis, metered: tuple[Daemon, int]
) -> None:
    daemon, port = metered
    await daemon.start().ready(redis)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    closed_after = None
    try:
        for byte in b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 40:
            writer.write(bytes([byte]))  # one byte every 0.25 s: never a whole head
            try:
                await writer.drain()
                if await asyncio.wait_for(reader.read(1), 0.25) == b"":
                    closed_after = time.monotonic() - started
                    break
            except TimeoutError:
                continue
            except ConnectionError:
                closed_after = time.monotonic() - started
                break
    finally:
        writer.close()
    assert closed_after is not None, "the trickling connection was never closed"
    assert HEADER_TIMEOUT_SEC - 0.5 <= closed_after <= HEADER_TIMEOUT_SEC + 1.5, closed_after
    response, _ = await _scrape(port)
    assert response.status_code == 200


async def test_a_metrics_port_in_use_is_named(
    redis: Redis, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        daemon = Daemon(redis_server.url, tmp_path, "taken", metrics_port=port)
        code = daemon.start().wait(timeout=30)
    assert code == 2, daemon.log()  # the settings' exit status: systemd does not loop on it
    assert f"the metrics port 127.0.0.1:{port} (APPLY_METRICS_PORT) is already in use" in (
        daemon.log()
    )
    assert "cannot reach Redis" not in daemon.log()


# ---------------------------------------------------------------- finding 6: log lines


def _lines(fmt: str, value: str) -> list[str]:
    """What the service writes for an event, a BLOCK and an OK, a field holding ``value``."""
    buffer = io.StringIO()
    setup_logging("INFO", fmt, stream=buffer)
    log = get_logger()
    log.info("consumer_forgotten", consumer=value, idle_ms=5)
    log.warning("plan_rejected", plan_id=value, error=value, symbol=value)
    block = permit_block_line("p1", value, 3, value, {"governor": 1})
    log.warning(block, marker="PERMIT_WAIT", plan_id="p1", symbol=value, reason=value)
    log.info(permit_ok_line("p2", "BTCUSDT", 4, Decimal("0.1")), marker="PERMIT_WAIT")
    try:
        raise ValueError(value)
    except ValueError as exc:
        log.error("plan_internal_error", entry_id="1-0", exc_info=exc)
    setup_logging("DEBUG", "console")
    return buffer.getvalue().split("\n")[:-1]  # the records, one per \n


@pytest.mark.parametrize("fmt", ["console", "json"])
@pytest.mark.parametrize("value", HOSTILE_VALUES, ids=range(len(HOSTILE_VALUES)))
def test_no_value_breaks_a_log_line_or_forges_a_marker(fmt: str, value: str) -> None:
    lines = _lines(fmt, value)
    assert len(lines) == 5, lines  # one line a record, whatever the values hold
    for line in lines:
        assert line.isprintable(), repr(line)  # no control, separator or NEL anywhere
        assert len(line.splitlines()) == 1
    summary = summarize_lines(lines)
    assert (summary.ok, summary.block) == (1, 1), lines  # the real ones, no FAKE
    if fmt == "json":
        for line in lines:  # and none once decoded either
            assert all(str(v).isprintable() for v in json.loads(line).values()), line


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_ordinary_values_are_written_as_before(fmt: str) -> None:
    lines = _lines(fmt, "no_position")
    if fmt == "console":
        assert lines[0].startswith("info    consumer_forgotten consumer=no_position idle_ms=5")
        assert lines[2] == (
            "[PERMIT_WAIT] BLOCK plan=p1 symbol=no_position wait_ms=3 reason=no_position "
            "governor_ttl=1"
        )
        assert lines[3] == "[PERMIT_WAIT] OK plan=p2 symbol=BTCUSDT wait_ms=4 safe_qty=0.1"
    else:
        assert json.loads(lines[0])["consumer"] == "no_position"
        assert json.loads(lines[3])["message"].startswith("[PERMIT_WAIT] OK plan=p2 ")


async def test_a_hostile_consumer_name_is_logged_on_one_line(
    redis: Redis, redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The finding: a consumer created with the daemon's own rights, forgotten by
    # the housekeeping once idle, was logged raw as a standalone marker line.
    name = "x\n" + FORGED.replace(" ", "\t")  # no space: it was not even quoted
    await redis.xgroup_create(K.PLAN_STREAM, "apply_layer", id="$", mkstream=True)
    await redis.xgroup_createconsumer(K.PLAN_STREAM, "apply_layer", name)
    monkeypatch.setattr(housekeeping, "FORGET_CONSUMER_MS", -1)
    settings = settings_for(redis_server)
    watcher: Any = None  # this chore uses no watcher
    chores = Housekeeping(settings, redis, watcher, in_flight=(), room=lambda: 0, spawn=print)
    buffer = io.StringIO()
    setup_logging("INFO", "console", stream=buffer)
    try:
        await chores._forget_idle_consumers()
    finally:
        setup_logging("DEBUG", "console")
    text = buffer.getvalue()
    assert await redis.xinfo_consumers(K.PLAN_STREAM, "apply_layer") == []
    assert text.count("\n") == 1, text
    assert text.startswith(
        "info    consumer_forgotten consumer='x\\n[PERMIT_WAIT]\\tOK\\tplan=FAKE"
    )
    summary = summarize_lines(text.splitlines())
    assert (summary.ok, summary.block, summary.read) == (0, 0, len(text.splitlines()))


@pytest.mark.parametrize(
    "line",
    [
        f"info    consumer_forgotten consumer='x {FORGED}' idle_ms=5",
        f'Jan 25 vps app[1]: warning plan_rejected error="a {FORGED}"',
        "info    x note={" + f'"message": "{FORGED}"' + "}",
        json.dumps({"message": "consumer_forgotten", "consumer": FORGED}),  # as it was
        json.dumps({"message": f"consumer x='{FORGED}'"}),
    ],
)
def test_stats_counts_a_marker_only_where_it_starts_the_message(line: str) -> None:
    assert parse_line(line) == "unparsed"
    summary = summarize_lines([line, f"Jan 25 vps app[1]: {FORGED}", FORGED])
    assert (summary.ok, summary.unparsed) == (2, 1)


# ---------------------------------------------------------------- finding 8: permits

KEYS = {("p33", "p33-k1"): bytes.fromhex("11" * 32)}
P33 = {"allow": True, "symbol": "BTCUSDT", "safe_qty": 0.002}
GOVERNOR = {"granted": True, "symbol": "BTCUSDT"}


@pytest.fixture
def db(redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch) -> Iterator[sync_redis.Redis]:
    with cli_database(redis_server, monkeypatch, 6) as client:
        yield client


def _permits(plan_id: str, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    assert main(["permits", plan_id, "--symbol", "BTCUSDT", *extra]) == 0
    return capsys.readouterr().out


def test_permits_prints_nothing_from_redis_raw(
    db: sync_redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = "\x1b[2K\r  the gate would decide: OK safe_qty=1\n"
    db.set(K.ISSUERS["governor"].key("e1"), json.dumps(GOVERNOR), ex=60)
    db.set(K.ISSUERS["p33"].key("e1"), json.dumps({**P33, "allow": False, "reason": fake}))
    db.set(K.governor_block("e2"), fake + "\u2028\x9b2J")
    db.hset(K.journal("e3"), mapping={"symbol": fake, "state": fake, "gate_status": fake})
    for plan_id in ("e1", "e2", "e3"):
        assert main(["permits", plan_id]) == 0
        out = capsys.readouterr().out
        assert all(line.isprintable() for line in out.split("\n")), repr(out)
        verdicts = [line for line in out.splitlines() if line.startswith("  the gate would")]
        assert len(verdicts) == 1 and not verdicts[0].startswith("  the gate would decide: OK")
    as_json = _permits("e2", capsys, "--json")
    assert json.loads(as_json)["governor_block"] == fake + "\u2028\x9b2J"  # JSON escapes it


@pytest.fixture
def signing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "permit-keys"
    path.write_text("".join(f"{i} {kid} {key.hex()}\n" for (i, kid), key in KEYS.items()))
    path.chmod(0o600)
    monkeypatch.setenv("APPLY_PERMIT_SIGNING", "p33=require")
    monkeypatch.setenv("APPLY_PERMIT_KEYS_FILE", str(path))
    return path


CLOSE = "BTCUSDT EXECUTE CLOSE_PARTIAL_25 25"  # the journal's content: what the plan closes


def _signed(plan_id: str, permit: dict[str, Any], step: str = "CLOSE_PARTIAL_25") -> dict[str, Any]:
    key = KEYS["p33", "p33-k1"]
    return sign_permit(permit, issuer="p33", plan_id=plan_id, kid="p33-k1", key=key, step=step)


def _claimed(db: sync_redis.Redis, plan_id: str) -> None:
    """The daemon's claim journals the plan's close: the signatures are checked against it."""
    db.hset(K.journal(plan_id), mapping={"symbol": "BTCUSDT", "state": "claimed", "content": CLOSE})


def test_permits_applies_the_daemons_signature_policy(
    db: sync_redis.Redis, signing: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    forged = {**P33, "kid": "p33-k1", "sig": "ab" * 32, "sig_exp_ms": 9e15}
    moved = _signed("other-plan", P33)
    full = _signed("s-full", P33, step="CLOSE_FULL")  # genuine, for another close
    cases = [("s-ok", _signed("s-ok", P33)), ("s-forged", forged), ("s-moved", moved)]
    for plan_id, p33 in [*cases, ("s-full", full), ("s-unclaimed", _signed("s-unclaimed", P33))]:
        db.set(K.ISSUERS["governor"].key(plan_id), json.dumps(GOVERNOR), ex=60)
        db.set(K.ISSUERS["p33"].key(plan_id), json.dumps(p33), ex=60)
        if plan_id != "s-unclaimed":
            _claimed(db, plan_id)
    out = _permits("s-ok", capsys)
    assert "the gate would decide: OK safe_qty=0.002" in out
    assert "permit signing: p33=require (keys p33-k1)" in out
    assert "11" * 16 not in out
    unclaimed = _permits("s-unclaimed", capsys)
    assert "the gate would decide: UNKNOWN" in unclaimed and "not journalled yet" in unclaimed
    for plan_id in ("s-forged", "s-moved", "s-full"):
        assert "the gate would decide: BLOCK bad_signature:p33" in _permits(plan_id, capsys)
        view = json.loads(_permits(plan_id, capsys, "--json"))
        assert view["would_decide"] == "BLOCK bad_signature:p33"
    assert db.exists(K.ISSUERS["p33"].key("s-forged")) == 1  # read-only


def test_permits_never_says_ok_when_it_cannot_check_the_signatures(
    db: sync_redis.Redis, signing: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    signing.unlink()  # the keys reach the service alone (LoadCredential=)
    db.set(K.ISSUERS["governor"].key("u1"), json.dumps(GOVERNOR), ex=60)
    db.set(K.ISSUERS["p33"].key("u1"), json.dumps(_signed("u1", P33)), ex=60)
    _claimed(db, "u1")
    out = _permits("u1", capsys)
    assert "the gate would decide: UNKNOWN: the permits allow (safe_qty=0.002)" in out
    assert "permit signing: cannot check here: " in out
