"""Notice when the Redis behind our connections is no longer the one it was.

Exactly-once rests on the journal's record of every send, and Redis can lose
its latest writes: a server restarted from an older RDB or AOF, a crash with
``appendfsync everysec``, a failover to a replica that lagged. Each of these
shows as a different server *identity*: ``run_id`` changes with every start
of a ``redis-server`` process, and ``master_replid`` with every promotion.

Every new connection of the daemon's clients (commands, blocking reads, the
keyspace watcher's pub/sub and the script batcher all use pooled connections)
runs :meth:`IdentityTracker.on_connect` before it carries a command. A
connection to a server that died is dead too, so no reply from the new server
can reach the daemon before the tracker has seen its identity. The tracker
records when it last saw the identity change (its first sighting counts: a
process cannot tell what its predecessor talked to), and the executor treats
that moment as a send it cannot see: an order lookup answering "no such
order" proves nothing until that moment's ``recvWindow`` has closed, because a
lost send stamped before the change could still reach the matching engine
until then (``executors/binance/executor.py``).

A connection to a replica is refused (its reads may be stale and it cannot
take the journal's writes): with Sentinel the pool then asks the sentinels
again; with a plain URL the service reports Redis unavailable.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from apply_layer import metrics
from apply_layer.logs import get_logger

log = get_logger()


def parse_info(text: Any) -> dict[str, str]:
    """``INFO`` text (``key:value`` lines, ``# Section`` headers) as a dict of strings.

    A reply redis-py already parsed (``Redis.info``) is accepted too.
    """
    if isinstance(text, dict):  # redis-py parsed ``slave0:ip=..,port=..`` into a dict too
        return {
            str(k): ",".join(f"{a}={b}" for a, b in v.items()) if isinstance(v, dict) else str(v)
            for k, v in text.items()
        }
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    fields: dict[str, str] = {}
    for line in str(text).splitlines():
        if not line or line.startswith("#") or ":" not in line:
            continue
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


@dataclass(frozen=True)
class ServerIdentity:
    """Which server, and which replication history, a connection reached."""

    run_id: str
    replid: str
    role: str

    @classmethod
    def from_info(cls, info: dict[str, str]) -> ServerIdentity:
        return cls(
            run_id=info.get("run_id", ""),
            replid=info.get("master_replid", ""),
            role=info.get("role", ""),
        )

    @property
    def key(self) -> tuple[str, str]:
        return (self.run_id, self.replid)


class ReplicaRefused(RedisConnectionError):
    """The connection reached a replica; the daemon only talks to a primary."""


class IdentityTracker:
    """One per process: the identity last seen and when it last changed."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.identity: ServerIdentity | None = None
        self.changed_at_ms = 0  # 0: no connection yet, so nothing read from Redis either
        self.changes = 0  # changes noticed after the first sighting
        self.unknown = False  # INFO refused (an ACL): every new connection counts as a change
        self.listeners: list[Callable[[], None]] = []  # called on a change (not I/O: no await)

    def _changed(self, now: int) -> None:
        self.changed_at_ms = now
        for listener in self.listeners:
            listener()

    def observe(
        self, identity: ServerIdentity | None, *, was: tuple[str, str] | None = None
    ) -> None:
        """Record what a new connection reached (``None``: it would not say).

        ``was``: the server this same connection object reached before it
        reconnected. In a split brain one process's pool can hold connections
        to both sides: after the process moved to the new primary, a
        connection still on the old one writes there, and those writes are
        lost when the old primary is made a replica. When that connection
        reconnects to the server the process already follows, nothing changed
        for the process, but its writes may be gone: the listeners are called
        (results written again) and the moment counts as a change for the
        lookups, without counting a change of server.
        """
        now = int(self._clock() * 1000)
        if identity is None:
            if not self.unknown:
                log.warning(
                    "redis_identity_unknown",
                    hint="INFO refused: every reconnect is treated as a possible loss of writes",
                )
            self.unknown = True
            self._changed(now)
            return
        previous, self.identity = self.identity, identity
        if previous is None:
            self.changed_at_ms = now
            log.info("redis_identity", run_id=identity.run_id, replid=identity.replid)
        elif previous.key == identity.key and was is not None and was != identity.key:
            self._changed(now)
            log.info(
                "redis_connection_moved",
                run_id=identity.run_id,
                replid=identity.replid,
                previous_run_id=was[0],
                previous_replid=was[1],
                meaning="a connection of this process reached another server before: "
                "what it wrote there may be lost; recent results are written again",
            )
        elif previous.key != identity.key:
            self._changed(now)
            self.changes += 1
            metrics.REDIS_IDENTITY_CHANGES.inc()
            log.warning(
                "redis_identity_changed",
                run_id=identity.run_id,
                replid=identity.replid,
                previous_run_id=previous.run_id,
                previous_replid=previous.replid,
                meaning="restart, restore or failover: recent writes may be lost; "
                "orders are looked up before any send",
            )

    async def on_connect(self, conn: AbstractConnection) -> None:
        """``redis_connect_func`` of every pooled connection: handshake, then identify."""
        await conn.on_connect()
        try:
            info = parse_info(await _command(conn, "INFO", "server"))
            info |= parse_info(await _command(conn, "INFO", "replication"))
        except ResponseError:
            self.observe(None)
            return
        identity = ServerIdentity.from_info(info)
        if identity.role and identity.role != "master":
            where = f"{getattr(conn, 'host', '?')}:{getattr(conn, 'port', '?')}"
            raise ReplicaRefused(f"{where} is a {identity.role}, not a primary")
        was = getattr(conn, "_apply_layer_identity", None)
        setattr(conn, "_apply_layer_identity", identity.key)  # noqa: B010 (not ours to type)
        self.observe(identity, was=was)


async def _command(conn: AbstractConnection, *args: str) -> Any:
    await conn.send_command(*args)
    return await conn.read_response()
