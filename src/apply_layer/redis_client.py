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
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

COMMAND_TIMEOUT_SEC = 3.0
CONNECT_TIMEOUT_SEC = 2.0
BLOCK_MARGIN_SEC = 3.0
RETRIES = 3
MAX_CONNECTIONS = 64
POOL_WAIT_SEC = 10.0


def create_redis(url: str, *, name: str = "apply_layer", block_sec: float = 0.0) -> Redis:
    """A client for ``url`` (``redis://``, ``rediss://``, ``unix://``; ACL user and password).

    ``block_sec`` is the longest blocking command this client will issue
    (``XREADGROUP BLOCK``); its socket timeout is set above it.
    """
    retry = Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.25), RETRIES)
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=POOL_WAIT_SEC,
        decode_responses=True,
        # A permit holding invalid UTF-8 must become a deny, not a crash.
        encoding_errors="replace",
        socket_timeout=max(COMMAND_TIMEOUT_SEC, block_sec + BLOCK_MARGIN_SEC),
        socket_connect_timeout=CONNECT_TIMEOUT_SEC,
        socket_keepalive=True,
        retry=retry,
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        client_name=name[:64],
    )
    return Redis(connection_pool=pool)


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
