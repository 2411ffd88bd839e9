"""The deployment tests' fixtures: the shipped ACL applied to a real redis-server, and
an admin client of it with an empty ACL LOG."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from apply_layer.ops.embedded_redis import EmbeddedRedis
from apply_layer.store.connection import create_redis
from tests.acl import IN_CI, apply_acl_file, server_version


@pytest.fixture
def acl_server() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(notify_keyspace_events="K$h") as server:
        if server_version(server) < (7, 0):
            if IN_CI:
                pytest.fail("CI needs redis-server >= 7 for the ACL tests")
            pytest.skip("the ACL's %R~ key permissions need redis-server >= 7")
        apply_acl_file(server)
        yield server


@pytest.fixture
async def admin(acl_server: EmbeddedRedis) -> AsyncIterator[Redis]:
    client = create_redis(acl_server.url, name="admin")
    await client.acl_log_reset()
    yield client
    await client.aclose()
