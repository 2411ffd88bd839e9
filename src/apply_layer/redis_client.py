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
"""

from __future__ import annotations

import inspect
import ipaddress
import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import (
    URL_QUERY_ARGUMENT_PARSERS,
    AbstractConnection,
    Connection,
    parse_url,
)
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
# redis-py >= 7 names the library with driver_info; older versions with lib_name/lib_version.
_NO_SETINFO: dict[str, Any] = (
    {"driver_info": None}
    if "driver_info" in inspect.signature(AbstractConnection.__init__).parameters
    else {"lib_name": None, "lib_version": None}
)


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
        **_NO_SETINFO,
    )
    return Redis(connection_pool=pool)


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
