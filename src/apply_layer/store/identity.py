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

**Across restarts.** A process cannot tell what its predecessor talked to,
unless the predecessor wrote it down where a Redis loss cannot reach: the
identity and the moment it was first seen go to a small file in the state
directory (``APPLY_STATE_DIR``, by default systemd's ``$STATE_DIRECTORY``),
written whenever the identity is first seen or changes. A start that meets
the same ``run_id`` and ``master_replid`` as the file met the same server
process with the same replication history: nothing it acknowledged can have
been lost in between, so the moment from the file stands, and the first
plans are sent at once. Anything else (no file, an unreadable one, another
identity, an ``INFO`` refused) counts as a change, as before.

**A connection that comes back.** A pooled connection that reached another
server before it reconnected (its ``was``) may have written there after the
process had moved on, and those writes may be lost: that counts as a change
for the lookups (see :meth:`IdentityTracker.observe`). It can only have done
so if it was handed out at some moment after the process moved on, so the
pools stamp every checkout and return (:func:`mark_used`, ``connection.py``):
a connection that sat idle in its pool through the change, as most do when a
Redis is restarted, comes back without holding the sends again. One handed
out (a blocking read, the keyspace watcher's, the lane's) still counts, and
so does one that came back closed: a command's reply was lost, and a paused
old primary may run that command when it resumes, at any moment.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ResponseError

from apply_layer import metrics
from apply_layer.core.errors import ReplicaRefused
from apply_layer.logs import get_logger

log = get_logger()

STATE_FILE = "redis-identity.json"
# Attributes this module keeps on redis-py's connection objects.
_SEEN = "_apply_layer_identity"  # the server the connection last reached
_USED_AT = "_apply_layer_used_at"  # time.monotonic() it came back to its pool; inf while out


def mark_used(conn: AbstractConnection, *, out: bool) -> None:
    """Stamp ``conn`` as handed out (``out``: it may carry commands at any moment
    from now) or as back in its pool, its last command answered by now. The pools
    call it (``connection.py``); one returned closed, a reply lost, stays out."""
    setattr(conn, _USED_AT, math.inf if out else time.monotonic())


def state_file(state_dir: Path | None) -> Path | None:
    """Where the identity is kept: ``state_dir``, else ``$STATE_DIRECTORY`` (its first
    entry), else nowhere."""
    if state_dir is None:
        from_systemd = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
        if not from_systemd:
            return None
        state_dir = Path(from_systemd)
    return state_dir / STATE_FILE


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


class IdentityTracker:
    """One per process: the identity last seen and when it last changed (kept in
    ``state_path`` too, if given, for the next process)."""

    def __init__(
        self, clock: Callable[[], float] = time.time, state_path: Path | None = None
    ) -> None:
        self._clock = clock
        self.state_path = state_path
        self.identity: ServerIdentity | None = None
        self.changed_at_ms = 0  # 0: no connection yet, so nothing read from Redis either
        self.changes = 0  # changes noticed after the first sighting
        self.unknown = False  # INFO refused (an ACL): every new connection counts as a change
        self.listeners: list[Callable[[], None]] = []  # called on a change (not I/O: no await)
        self.left_at: float | None = None  # time.monotonic() of the last change of server

    def _changed(self, now: int) -> None:
        self.changed_at_ms = now
        for listener in self.listeners:
            listener()

    def observe(
        self,
        identity: ServerIdentity | None,
        *,
        was: tuple[str, str] | None = None,
        used_at: float | None = None,
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

        ``used_at``: when the connection last came back to its pool, ``inf``
        while it is handed out (:func:`mark_used`; ``None``: not known, which
        counts as used). One that came back before the process's last change
        of server wrote nothing after it: whatever it wrote is older than that
        change, which already counted. Counting it again would hold the sends
        once more for every idle connection that reconnects after a restart,
        one at a time, for as long as they trickle back.
        """
        now = int(self._clock() * 1000)
        if identity is None:
            if not self.unknown:
                log.warning(
                    "redis_identity_unknown",
                    hint="INFO refused: every reconnect is treated as a possible loss of writes",
                )
            self.unknown = True
            self._forget()
            self._changed(now)
            return
        previous, self.identity = self.identity, identity
        if previous is None:
            kept = self._kept_since(identity)
            if kept is not None:
                self.changed_at_ms = kept
                log.info(
                    "redis_identity_unchanged",
                    run_id=identity.run_id,
                    replid=identity.replid,
                    since_ms=kept,
                    meaning="the server an earlier run saw: nothing was lost, sends start at once",
                )
            else:
                self.changed_at_ms = now
                self._keep(identity, now)
                log.info("redis_identity", run_id=identity.run_id, replid=identity.replid)
        elif (
            previous.key == identity.key
            and was is not None
            and was != identity.key
            and self._used_since_left(used_at)
        ):
            self._changed(now)
            self._keep(identity, now)  # a restart must not take an earlier moment
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
            self.left_at = time.monotonic()
            self._changed(now)
            self._keep(identity, now)
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

    def _used_since_left(self, used_at: float | None) -> bool:
        return used_at is None or self.left_at is None or used_at >= self.left_at

    def _kept_since(self, identity: ServerIdentity) -> int | None:
        """The moment the kept file says ``identity`` was first seen, if it says so."""
        if self.state_path is None or self.unknown:
            return None
        try:
            data = json.loads(self.state_path.read_text(encoding="utf-8"))
            kept = (str(data["run_id"]), str(data["replid"]))
            since = int(data["since_ms"])
        except (OSError, ValueError, KeyError, TypeError):
            return None  # no file, or not ours to trust: a change, as without one
        if not identity.run_id or kept != identity.key or not 0 < since <= self._clock() * 1000:
            return None
        return since

    def _keep(self, identity: ServerIdentity, since_ms: int) -> None:
        """Write the identity for the next process (atomically: a crash leaves the old
        file or the new one, and either only ever makes a start wait)."""
        if self.state_path is None:
            return
        text = json.dumps(
            {"run_id": identity.run_id, "replid": identity.replid, "since_ms": since_ms}
        )
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.state_path)
        except OSError as exc:
            log.warning("redis_identity_not_kept", path=str(self.state_path), error=str(exc))
            self._forget()

    def _forget(self) -> None:
        if self.state_path is not None:
            with contextlib.suppress(OSError):
                self.state_path.unlink()

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
        was = getattr(conn, _SEEN, None)
        setattr(conn, _SEEN, identity.key)
        self.observe(identity, was=was, used_at=getattr(conn, _USED_AT, None))


async def _command(conn: AbstractConnection, *args: str) -> Any:
    await conn.send_command(*args)
    return await conn.read_response()
