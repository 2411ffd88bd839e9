"""The one Redis connection factory.

Timeouts and retries are chosen on purpose:

* ``socket_timeout``: redis-py 8 defaults to 5 s, which would kill our own
  ``XREADGROUP BLOCK 5000`` just as it is about to return. Blocking clients
  get the block time plus a margin; command clients get a short timeout so a
  hung server is noticed within seconds, not minutes.
* Retries: redis-py resends a command after a connection error or timeout
  (and ``batching`` a whole batch of scripts). Every script we run may run
  twice: the claim, the gate (it replays its recorded decision), the lease
  (a resend finds its own token) and the publish (once per plan) answer the
  same; the attempt script appends the send time again, and only the latest
  time is used. So a resend after a lost reply is safe. Retries are few and
  short (about 0.5 s in all): a longer outage is the service's business (it
  logs it once, backs off, executes nothing), not the client's.
* No ``health_check_interval``: redis-py would check it before every command
  (6 % of the daemon's CPU in the benchmark's profile); a dead connection
  fails its command instead, and the retry above reconnects.
* A bounded, blocking pool: with many plans in flight, tasks wait their turn
  for one of ``MAX_CONNECTIONS`` connections instead of opening hundreds at
  once (a burst of connects timed out under load and read as an outage).
* Sentinel (``APPLY_REDIS_SENTINELS``): the same client settings over
  redis-py's Sentinel pool, which finds the primary through the sentinels
  whenever it opens a connection and drops connections to a primary that was
  demoted (a ``READONLY`` answer). The blocking reads, the keyspace watcher's
  pub/sub and the script batcher all take their connections from such pools,
  so after a failover every one of them reconnects to the new primary.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

if TYPE_CHECKING:
    from apply_layer.redis_identity import IdentityTracker
    from apply_layer.settings import Settings

COMMAND_TIMEOUT_SEC = 3.0
CONNECT_TIMEOUT_SEC = 2.0
BLOCK_MARGIN_SEC = 3.0
RETRIES = 3
MAX_CONNECTIONS = 64
POOL_WAIT_SEC = 10.0
SENTINEL_TIMEOUT_SEC = 1.0  # one sentinel's answer; the next one is asked after it


def _client_kwargs(name: str, block_sec: float, identity: IdentityTracker | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "max_connections": MAX_CONNECTIONS,
        "timeout": POOL_WAIT_SEC,
        "decode_responses": True,
        # A permit holding invalid UTF-8 must become a deny, not a crash.
        "encoding_errors": "replace",
        "socket_timeout": max(COMMAND_TIMEOUT_SEC, block_sec + BLOCK_MARGIN_SEC),
        "socket_connect_timeout": CONNECT_TIMEOUT_SEC,
        "socket_keepalive": True,
        "retry": Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.25), RETRIES),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        "client_name": name[:64],
    }
    if identity is not None:
        kwargs["redis_connect_func"] = identity.on_connect
    return kwargs


def create_redis(
    url: str,
    *,
    name: str = "apply_layer",
    block_sec: float = 0.0,
    identity: IdentityTracker | None = None,
) -> Redis:
    """A client for ``url`` (``redis://``, ``rediss://``, ``unix://``; ACL user and password).

    ``block_sec`` is the longest blocking command this client will issue
    (``XREADGROUP BLOCK``); its socket timeout is set above it. With
    ``identity``, every new connection reports the server it reached to it
    (see ``redis_identity``).
    """
    pool = BlockingConnectionPool.from_url(url, **_client_kwargs(name, block_sec, identity))
    return Redis(connection_pool=pool)


class BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """redis-py's Sentinel pool (it asks the sentinels for the primary on every new
    connection and drops connections to a demoted one) with the blocking,
    bounded checkout of ``BlockingConnectionPool``, as for a plain URL."""


def create_sentinel_redis(
    sentinels: list[tuple[str, int]],
    service: str,
    *,
    url: str,
    sentinel_password: str | None = None,
    name: str = "apply_layer",
    block_sec: float = 0.0,
    identity: IdentityTracker | None = None,
) -> Redis:
    """A client for the primary of ``service`` as the sentinels name it, followed
    across failovers without a restart (redis-py's own Sentinel support).

    ``url`` still gives the user, password, database and TLS (``rediss://``)
    of the data nodes; its host and port are not used.
    """
    node = dict(parse_url(url))
    for unused in ("host", "port", "path"):
        node.pop(unused, None)
    if node.pop("connection_class", None) is SSLConnection:
        node["ssl"] = True
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": SENTINEL_TIMEOUT_SEC,
        "socket_connect_timeout": SENTINEL_TIMEOUT_SEC,
        "retry": Retry(NoBackoff(), 0),  # a dead sentinel: ask the next one at once
        "client_name": f"{name[:55]}:sentinel",
    }
    if sentinel_password:
        sentinel_kwargs["password"] = sentinel_password
    manager = Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
    options: dict[str, Any] = node | _client_kwargs(name, block_sec, identity)
    client: Redis = manager.master_for(
        service, connection_pool_class=BlockingSentinelPool, **options
    )
    return client


def redis_for(
    settings: Settings,
    *,
    name: str = "apply_layer",
    block_sec: float = 0.0,
    identity: IdentityTracker | None = None,
) -> Redis:
    """The client the settings ask for: through the sentinels if any are set, else the URL."""
    if settings.redis_sentinels:
        password = settings.redis_sentinel_password
        return create_sentinel_redis(
            settings.sentinel_addresses(),
            settings.redis_sentinel_service,
            url=settings.redis_url,
            sentinel_password=password.get_secret_value() if password else None,
            name=name,
            block_sec=block_sec,
            identity=identity,
        )
    return create_redis(settings.redis_url, name=name, block_sec=block_sec, identity=identity)


def sentinel_of(client: Redis) -> Sentinel | None:
    """The Sentinel manager behind a client made by :func:`create_sentinel_redis`."""
    manager = getattr(client.connection_pool, "sentinel_manager", None)
    return manager if isinstance(manager, Sentinel) else None


async def close_redis(client: Redis) -> None:
    """Close a client and, for a Sentinel client, its connections to the sentinels."""
    await client.aclose()
    manager = sentinel_of(client)
    if manager is not None:
        await manager.aclose()


def redis_db(client: Redis) -> int:
    """The database index a client talks to (keyspace channels name it)."""
    return int(client.connection_pool.connection_kwargs.get("db", 0) or 0)


def redact_url(url: str) -> str:
    """``url`` with any password replaced, fit for a log line or an error."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
