"""A real Redis Sentinel setup on free loopback ports: one primary, replicas, sentinels.

Data nodes are :class:`EmbeddedRedis` servers; sentinels are ``redis-server
<conf> --sentinel`` (the same binary, nothing else to install). The helper
kills the current primary with SIGKILL, waits for the sentinels to promote a
replica, and brings the killed node back, which the sentinels then turn into
a replica of the new primary.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from apply_layer.core.errors import RedisUnavailable
from apply_layer.ops.embedded_redis import EmbeddedRedis, find_redis_server, free_port
from apply_layer.store.identity import parse_info

SERVICE = "quantum"


class Sentinel:
    """One ``redis-server --sentinel`` process with its own (rewritable) config file."""

    def __init__(self, workdir: Path, primary_port: int, quorum: int, down_after_ms: int) -> None:
        self.port = free_port()
        self.dir = workdir / f"sentinel-{self.port}"
        self.dir.mkdir()
        self.conf = self.dir / "sentinel.conf"
        self.conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndaemonize no\ndir {self.dir}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} {quorum}\n"
            f"sentinel down-after-milliseconds {SERVICE} {down_after_ms}\n"
            f"sentinel failover-timeout {SERVICE} {max(3000, 3 * down_after_ms)}\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.dir / "sentinel.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [find_redis_server(), str(self.conf), "--sentinel"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def client(self) -> Redis:
        return Redis(host="127.0.0.1", port=self.port, decode_responses=True, socket_timeout=1)


class RedisSentinels:
    """``replicas + 1`` data nodes and ``sentinels`` sentinels, all on loopback."""

    def __init__(
        self,
        *,
        replicas: int = 1,
        sentinels: int = 3,
        down_after_ms: int = 2000,
        notify_keyspace_events: str = "K$h",
        node_args: tuple[str, ...] = (),
    ) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="apply-layer-sentinels-")
        self.workdir = Path(self._tmp.name)
        # Replicas sync at once (the default diskless sync waits 5 s for company).
        self.node_args = ("--repl-diskless-sync-delay", "0", *node_args)
        self.nodes = [
            EmbeddedRedis(notify_keyspace_events=notify_keyspace_events, extra_args=self.node_args)
            for _ in range(replicas + 1)
        ]
        quorum = sentinels // 2 + 1
        self.sentinels = [
            Sentinel(self.workdir, self.nodes[0].port, quorum, down_after_ms)
            for _ in range(sentinels)
        ]
        self.failovers = 0

    @property
    def addresses(self) -> str:
        """``APPLY_REDIS_SENTINELS`` for this setup."""
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def node(self, port: int) -> EmbeddedRedis:
        return next(n for n in self.nodes if n.port == port)

    async def start(self, timeout: float = 30.0) -> RedisSentinels:
        for node in self.nodes:
            node.start()
        primary = self.nodes[0]
        for node in self.nodes[1:]:
            client = Redis(port=node.port, decode_responses=True)
            await client.replicaof("127.0.0.1", primary.port)
            await client.aclose()
        for sentinel in self.sentinels:
            sentinel.start()
        await self.wait_healthy(timeout)
        return self

    async def primary_port(self) -> int | None:
        """The primary's port as a majority of the reachable sentinels name it."""
        votes: dict[int, int] = {}
        for sentinel in self.sentinels:
            client = sentinel.client()
            try:
                address: Any = await client.sentinel_get_master_addr_by_name(SERVICE)
                port = int(address[1])
                votes[port] = votes.get(port, 0) + 1
            except Exception:
                continue
            finally:
                await client.aclose()
        if not votes:
            return None
        port, count = max(votes.items(), key=lambda item: item[1])
        return port if count > len(self.sentinels) // 2 else None

    async def _info(self, port: int) -> dict[str, str]:
        client = Redis(port=port, decode_responses=True, socket_timeout=1)
        try:
            return parse_info(await client.info("replication"))
        finally:
            await client.aclose()

    async def wait_healthy(self, timeout: float = 30.0) -> int:
        """Until every node runs, one is primary as the sentinels say, and every other
        is its replica with the link up and the sentinels know of them all."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if await self._healthy():
                    port = await self.primary_port()
                    assert port is not None
                    return port
            except Exception:
                pass
            await asyncio.sleep(0.2)
        raise RedisUnavailable(f"sentinel setup not healthy within {timeout} s: {self.describe()}")

    async def _healthy(self) -> bool:
        port = await self.primary_port()
        if port is None or any(n.proc is None for n in self.nodes):
            return False
        if (await self._info(port)).get("role") != "master":
            return False
        for node in self.nodes:
            if node.port == port:
                continue
            info = await self._info(node.port)
            if info.get("role") != "slave" or info.get("master_port") != str(port):
                return False
            if info.get("master_link_status") != "up":
                return False
        for sentinel in self.sentinels:
            client = sentinel.client()
            try:
                replicas: Any = await client.sentinel_slaves(SERVICE)
                master: Any = await client.sentinel_master(SERVICE)
            finally:
                await client.aclose()
            alive = [r for r in replicas if not (r["is_sdown"] or r["is_odown"])]
            if len(alive) < len(self.nodes) - 1 or master["is_sdown"]:
                return False
            if int(master.get("num-other-sentinels", 0)) < len(self.sentinels) - 1:
                return False
        return True

    async def kill_primary(self, timeout: float = 30.0, *, lag_sec: float = 0.0) -> float:
        """SIGKILL the primary, wait for a replica's promotion, bring the old one back
        as a replica. Returns the seconds until the sentinels named the new primary.

        ``lag_sec``: first cut the primary's links to its replicas (and keep them cut),
        and kill it only that long after: what the primary acknowledged meanwhile is lost
        with it, as with a replica lagging under load or behind a flaky network.
        """
        old = await self.wait_healthy(timeout)
        if lag_sec:
            nowhere = free_port()  # nothing listens there
            for node in self.nodes:
                if node.port == old:
                    continue
                replica = Redis(port=node.port, decode_responses=True)
                try:  # the replica stops receiving (it keeps what it has)
                    await replica.replicaof("127.0.0.1", nowhere)
                finally:
                    await replica.aclose()
            await asyncio.sleep(lag_sec)
        self.node(old).stop(kill=True)
        killed_at = time.monotonic()
        deadline = killed_at + timeout
        while time.monotonic() < deadline:
            port = await self.primary_port()
            if port is not None and port != old:
                break
            await asyncio.sleep(0.1)
        else:
            raise RedisUnavailable(f"no failover within {timeout} s: {self.describe()}")
        took = time.monotonic() - killed_at
        self.failovers += 1
        await self._settled(port, deadline)
        # Back as a replica of the new primary, as the sentinels would make it (they
        # would first see an empty primary and convert it some seconds later). Only
        # once every sentinel is done with the failover: an empty node that a second,
        # spurious failover promoted would wipe everything.
        node = self.node(old)
        node.extra_args = (*self.node_args, "--replicaof", "127.0.0.1", str(port))
        node.start()
        await self.wait_healthy(timeout)
        return took

    async def pause_primary(self, timeout: float = 30.0, *, lag_sec: float = 0.0) -> float:
        """A split brain: the primary stops (SIGSTOP) without dying, the sentinels promote
        the replica, and the old primary comes back (SIGCONT) still a primary, taking the
        writes of every client still connected to it, until the sentinels turn it into
        the new primary's replica (which drops what it took meanwhile). Returns the
        seconds until the sentinels named the new primary.

        ``lag_sec``: first cut the primary's link to its replicas, as in
        :meth:`kill_primary`.
        """
        old = await self.wait_healthy(timeout)
        await self._cut_replicas(old, lag_sec)
        proc = self.node(old).proc
        assert proc is not None
        proc.send_signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        deadline = stopped_at + timeout
        try:
            port = await self._promoted(old, deadline)
        finally:
            proc.send_signal(signal.SIGCONT)  # back, and still a primary for a moment
        took = time.monotonic() - stopped_at
        self.failovers += 1
        await self._settled(port, deadline)
        await self.wait_healthy(timeout)
        return took

    async def _cut_replicas(self, old: int, lag_sec: float) -> None:
        """The replicas stop receiving from ``old`` (they keep what they have), for
        ``lag_sec`` before the primary goes: what it acknowledges meanwhile is lost."""
        if not lag_sec:
            return
        nowhere = free_port()  # nothing listens there
        for node in self.nodes:
            if node.port == old:
                continue
            replica = Redis(port=node.port, decode_responses=True)
            try:
                await replica.replicaof("127.0.0.1", nowhere)
            finally:
                await replica.aclose()
        await asyncio.sleep(lag_sec)

    async def _promoted(self, old: int, deadline: float) -> int:
        """Until a majority of the sentinels name a primary other than ``old``."""
        while time.monotonic() < deadline:
            port = await self.primary_port()
            if port is not None and port != old:
                return port
            await asyncio.sleep(0.1)
        raise RedisUnavailable(f"no failover in time: {self.describe()}")

    async def _settled(self, port: int, deadline: float) -> None:
        """Until every live sentinel names ``port`` with no failover in progress."""
        while time.monotonic() < deadline:
            states: list[Any] = []
            for sentinel in self.sentinels:
                client = sentinel.client()
                try:
                    states.append(await client.sentinel_master(SERVICE))
                except Exception:
                    continue
                finally:
                    await client.aclose()
            if states and all(
                int(st["port"]) == port
                and "failover" not in str(st.get("flags", ""))
                and not (st["is_sdown"] or st["is_odown"])
                for st in states
            ):
                return
            await asyncio.sleep(0.1)
        raise RedisUnavailable(f"the failover to {port} did not settle: {self.describe()}")

    def describe(self) -> str:
        lines = []
        for sentinel in self.sentinels:
            log = sentinel.dir / "sentinel.log"
            if log.exists():
                lines.append(f"--- sentinel {sentinel.port}\n" + log.read_text()[-2000:])
        return "\n".join(lines)

    def close(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for node in self.nodes:
            node.close()
        self._tmp.cleanup()

    async def __aenter__(self) -> RedisSentinels:
        try:
            return await self.start()
        except BaseException:
            self.close()
            raise

    async def __aexit__(self, *exc: object) -> None:
        self.close()


def sentinel_supported() -> bool:
    """Whether this machine's redis-server runs in sentinel mode (Debian's does)."""
    try:
        binary = find_redis_server()
    except RedisUnavailable:
        return False
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    return out.returncode == 0 and bool(os.access(binary, os.X_OK))
