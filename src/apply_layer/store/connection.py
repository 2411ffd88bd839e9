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
* No ``CLIENT SETINFO``: redis-py would send it on every connect, Redis 7.0
  does not know it, and a least-privilege ACL user (deploy/redis/) need not
  be granted it; ``CLIENT SETNAME`` already names each connection.
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

import inspect
import ipaddress
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import (
    URL_QUERY_ARGUMENT_PARSERS,
    AbstractConnection,
    Connection,
    SSLConnection,
    parse_url,
)
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from apply_layer.store.identity import mark_used
from apply_layer.store.sentinel_discovery import SentinelDiscovery

if TYPE_CHECKING:
    from apply_layer.settings import Settings
    from apply_layer.store.identity import IdentityTracker

COMMAND_TIMEOUT_SEC = 3.0
CONNECT_TIMEOUT_SEC = 2.0
BLOCK_MARGIN_SEC = 3.0
RETRIES = 3
MAX_CONNECTIONS = 64
POOL_WAIT_SEC = 10.0
SENTINEL_TIMEOUT_SEC = 1.0  # one sentinel's answer; the next one is asked after it
# redis-py >= 7 names the library with driver_info; older versions with lib_name/lib_version.
_NO_SETINFO: dict[str, Any] = (
    {"driver_info": None}
    if "driver_info" in inspect.signature(AbstractConnection.__init__).parameters
    else {"lib_name": None, "lib_version": None}
)


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
        **_NO_SETINFO,
    }
    if identity is not None:
        kwargs["redis_connect_func"] = identity.on_connect
    return kwargs


class StampingPool(BlockingConnectionPool):
    """redis-py's bounded, blocking pool, stamping each connection as it is handed
    out and taken back, so the identity tracker can tell a connection that sat
    idle through a change of server from one that may have carried commands
    after it (``identity.mark_used``)."""

    async def get_connection(self, *args: Any, **kwargs: Any) -> AbstractConnection:
        conn: AbstractConnection = await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        mark_used(conn, out=True)  # after the checkout's own reconnect, if it made one
        return conn

    async def release(self, connection: AbstractConnection) -> None:
        # One that comes back closed lost a command's reply: what it sent may still
        # run on that server later (a paused primary that resumes), so it stays out.
        mark_used(connection, out=not connection.is_connected)
        await super().release(connection)


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
    (see ``identity``).
    """
    kwargs = _client_kwargs(name, block_sec, identity)
    if url.startswith("unix://"):
        del kwargs["socket_keepalive"]  # a TCP option: redis-py's unix connection refuses it
    pool = StampingPool.from_url(url, **kwargs)
    # from_pool: the client owns the pool, so aclose() closes its connections too.
    return Redis.from_pool(pool)


class BlockingSentinelPool(SentinelConnectionPool, StampingPool):
    """redis-py's Sentinel pool (it asks the sentinels for the primary on every new
    connection and drops connections to a demoted one) with the blocking,
    bounded, stamping checkout of a plain URL's pool."""


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
    across failovers without a restart (redis-py's own Sentinel support, with a
    discovery that many tasks may run at once: ``sentinel_discovery.py``).

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
    manager = SentinelDiscovery(sentinels, sentinel_kwargs=sentinel_kwargs)
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


# Query parameters of a Redis URL: secrets (never shown), the ones shown as
# they are, and the rest, which the service refuses because it sets them itself
# (a URL's ``socket_timeout`` would silently override the timeouts above).
SECRET_QUERY_PARAMS = frozenset({"password", "ssl_password"})
SHOWN_QUERY_PARAMS = frozenset(
    {
        "db",
        "username",
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "ssl_ca_path",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_check_hostname",
        "ssl_min_version",
        "ssl_ciphers",
    }
)
_SET_BY_THE_SERVICE = frozenset(URL_QUERY_ARGUMENT_PARSERS) - SHOWN_QUERY_PARAMS
_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,252})")
_DB_PATH = re.compile(r"/?|/[0-9]{1,5}")
_DB = re.compile(r"[0-9]{1,5}")
_ENCODE_HINT = "percent-encode : / ? # @ & in a password, e.g. # as %23"


def url_problem(url: str) -> str | None:
    """Why ``url`` is not a Redis URL this service can use, or None.

    Checked at load so that a bad URL stops the start with one line, not a
    traceback at the first connection. The message never quotes the URL: a
    password with an unencoded ``#`` or ``/`` would otherwise end up in it.
    """
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return "must start with redis://, rediss:// or unix://"
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        return "contains a space or a control character"
    if "#" in url:
        return f"contains '#' ({_ENCODE_HINT})"
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname or ""
    except ValueError:
        return f"host or port does not parse (port 1-65535, IPv6 in [ ]; {_ENCODE_HINT})"
    if parts.scheme == "unix":
        if host or port is not None:
            return "a unix:// URL has no host or port: unix:///path/to/redis.sock"
        if not parts.path.startswith("/") or parts.path == "/":
            return "a unix:// URL needs an absolute socket path: unix:///run/redis/redis.sock"
    else:
        if port == 0:
            return "port 0 is not a port (1-65535)"
        if ":" in host:
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                return "the host is not an IPv6 address"
        elif host and not _HOST.fullmatch(host):
            return f"the host is not a host name or an IP address ({_ENCODE_HINT})"
        if not _DB_PATH.fullmatch(parts.path):
            return f"the path must be a database number like /0 ({_ENCODE_HINT})"
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    if parts.username and parts.password is None and "password" not in query:
        return "a user name without a password: redis://USER:PASSWORD@host"
    return _query_problem(url, parts.query, tls=parts.scheme == "rediss")


def _query_problem(url: str, query: str, *, tls: bool) -> str | None:
    seen: set[str] = set()
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name in seen:
            return "a query parameter is given twice"
        seen.add(name)
        if name in _SET_BY_THE_SERVICE:
            return f"query parameter {name!r} is not supported: the service sets it itself"
        if name not in SECRET_QUERY_PARAMS | SHOWN_QUERY_PARAMS:
            return (
                "an unknown query parameter (allowed: db, username, password, and ssl_* with "
                f"rediss://); {_ENCODE_HINT}"
            )
        if name.startswith("ssl_") and not tls:
            return f"query parameter {name!r} needs a rediss:// URL"
        if name == "db" and not _DB.fullmatch(value):
            return "?db= must be a database number like 0"
    try:
        kwargs: dict[str, Any] = dict(parse_url(url))
        connection_class: type[Connection] = kwargs.pop("connection_class", Connection)
        connection_class(**kwargs)  # an unknown keyword fails here, not at the first connect
    except (TypeError, ValueError) as exc:
        known = str(exc) if isinstance(exc, ValueError) and "Invalid value for" in str(exc) else ""
        return f"not accepted by the Redis client{': ' + known if known else ''}"
    return None


def redact_url(url: str) -> str:
    """``url`` with every secret hidden, fit for a log line or an error.

    The password in the user part and ``password``/``ssl_password`` query
    values become ``***``; an unknown query parameter is hidden whole (it may
    be the tail of a password with an unencoded ``&``), and a URL that does
    not parse is hidden entirely (its "host" may be the start of a password).
    """
    scheme = url.partition("://")[0] if "://" in url else "?"
    if url_problem(url) is not None:
        return f"{scheme}://<hidden: not a valid Redis URL>"
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        # A user part without ":" is most likely a password written where the
        # user name goes; hide it too.
        netloc = (f"{user}:***" if colon else "***") + "@" + hostport
    shown = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in SHOWN_QUERY_PARAMS:
            shown.append(urlencode({name: value}))
        else:
            shown.append(f"{name}=***" if name in SECRET_QUERY_PARAMS else "***")
    query = "?" + "&".join(shown) if shown else ""
    return f"{parts.scheme}://{netloc}{parts.path}{query}"
