"""Keyspace events turned off are noticed by the shipped least-privilege user (issue 23).

``quantum-apply`` may not run ``CONFIG GET`` (it would show ``requirepass``),
so re-reading the server's setting cannot tell it that an admin ran
``CONFIG SET notify-keyspace-events ""``: before the canary, the gauge stayed
1 and nothing was logged. Now each heartbeat ``SET`` must come back as a
keyspace event: here the daemon runs in-process as ``quantum-apply`` on the
shipped ACL, an admin turns events off and on again, and the gauge and the
log follow, once each way.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from redis.asyncio import Redis

from apply_layer.core import keys as K
from apply_layer.daemon.service import ApplyService
from apply_layer.ops.embedded_redis import EmbeddedRedis
from apply_layer.store import keyspace
from tests.acl import (  # the shipped ACL on a real server, as deployed
    DAEMON,
    acl_url,
    refusals,
)
from tests.harness import sample, settings_for, until

GAUGE = "apply_keyspace_notifications_active"


def _lines(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == event]


async def test_events_turned_off_are_noticed_without_config_get(
    acl_server: EmbeddedRedis, admin: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    gauge = {"configured": "detect"}
    service = ApplyService(
        settings_for(acl_server, redis_url=acl_url(acl_server, DAEMON))
    )  # 0.5 s ticks
    runner = asyncio.create_task(service.run())
    try:
        await until(lambda: service._group_ready)
        # The least-privilege path: the setting cannot be read.
        assert service.watcher.status.startswith("on (CONFIG GET refused"), service.watcher.status
        await until(lambda: sample(GAUGE, **gauge) == 1)
        # Events flowing: no false alarm over more than the canary's bound.
        await asyncio.sleep(keyspace.CANARY_SEC + 1.0)
        assert sample(GAUGE, **gauge) == 1
        assert not _lines(caplog, "keyspace_events_off")

        started = time.monotonic()
        await admin.config_set("notify-keyspace-events", "")
        await until(lambda: sample(GAUGE, **gauge) == 0)
        noticed = time.monotonic() - started
        # The next heartbeat (<= 0.5 s), its bound (2 s), the tick that judges it (<= 0.5 s).
        assert noticed < 4.0, noticed
        await asyncio.sleep(1.5)  # three more ticks of silence: still one line
        assert sample(GAUGE, **gauge) == 0
        (off,) = _lines(caplog, "keyspace_events_off")
        assert "heartbeat" in off.why  # type: ignore[attr-defined]
        assert off.channel == K.keyspace_channel(K.HEARTBEAT_KEY, 0)  # type: ignore[attr-defined]
        assert not _lines(caplog, "keyspace_events_back")

        started = time.monotonic()
        await admin.config_set("notify-keyspace-events", "K$h")
        await until(lambda: sample(GAUGE, **gauge) == 1)
        assert time.monotonic() - started < 2.0  # the next heartbeat's event, the next tick
        await asyncio.sleep(1.0)
        assert sample(GAUGE, **gauge) == 1
        assert len(_lines(caplog, "keyspace_events_back")) == 1
        assert len(_lines(caplog, "keyspace_events_off")) == 1
    finally:
        service.request_stop()
        assert await runner == 0
    # The heartbeat's channel is granted: the one refusal is the watcher's CONFIG GET at start.
    assert await refusals(admin, DAEMON) == 1
