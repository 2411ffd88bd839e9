"""The metrics endpoint's own HTTP, in process (daemon/metrics_http.py).

What it answers and refuses, and which connection makes room past the cap.
The real daemon under 1,000 idle connections and a slowloris head is
tests/daemon/test_hostile_output.py (issue 21, finding 4).
"""

from __future__ import annotations

import asyncio
import gzip

import apply_layer.metrics  # noqa: F401  (the daemon's metrics, registered: what is served)
from apply_layer.daemon.metrics_http import MetricsServer


async def _request(port: int, head: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    try:
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


async def test_the_endpoint_answers_what_it_did_and_refuses_the_rest() -> None:
    server = MetricsServer(header_timeout=1.0)
    await server.start(0)
    port = server.port
    try:
        for path in ("/metrics", "/", "/metrics?x=1"):
            reply = await _request(port, f"GET {path} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
            assert reply.startswith(b"HTTP/1.1 200 OK\r\n") and b"apply_plans_in_flight" in reply
        head = await _request(port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n")
        assert b"Content-Length: 0" not in head
        zipped = await _request(port, b"GET /metrics HTTP/1.1\r\nAccept-Encoding: gzip\r\n\r\n")
        headers, _, body = zipped.partition(b"\r\n\r\n")
        assert b"Content-Encoding: gzip" in headers
        assert b"apply_plans_in_flight" in gzip.decompress(body)
        only = await _request(port, b"GET /metrics?name[]=apply_redis_up HTTP/1.1\r\n\r\n")
        assert b"apply_redis_up" in only and b"apply_plans_in_flight" not in only
        assert (await _request(port, b"GET /favicon.ico HTTP/1.1\r\n\r\n")).startswith(
            b"HTTP/1.1 404"
        )
        post = await _request(port, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        assert post.startswith(b"HTTP/1.1 405") and b"Allow: GET, HEAD, OPTIONS" in post
        assert (await _request(port, b"garbage\r\n\r\n")).startswith(b"HTTP/1.1 400")
        big = b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 10_000 + b"\r\n\r\n"
        assert (await _request(port, big)).startswith(b"HTTP/1.1 431")
        assert server.connections == 0
    finally:
        await server.close()


async def test_past_the_cap_the_oldest_idle_connection_makes_room() -> None:
    server = MetricsServer(max_connections=4, header_timeout=30.0)
    await server.start(0)
    try:
        idle = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(10)]
        await asyncio.sleep(0.2)
        assert server.connections <= 4 and server.evicted >= 6
        reply = await _request(server.port, b"GET /metrics HTTP/1.1\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 200 OK")
        first_reader = idle[0][0]
        assert await asyncio.wait_for(first_reader.read(), 2) == b""  # the oldest: closed
        for _, writer in idle:
            writer.close()
    finally:
        await server.close()
