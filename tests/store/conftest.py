"""Fixtures of the gate lane's tests (tests/lane_stack.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from apply_layer.ops.embedded_redis import EmbeddedRedis
from apply_layer.store.gate import GateConfig
from tests.lane_stack import SLOW_STEP, Stack, StackFactory


@pytest.fixture
async def events(redis: Redis) -> Redis:
    """The shared server publishing what the gate needs (the fixture turns it off)."""
    await redis.config_set("notify-keyspace-events", "K$h")
    return redis


@pytest.fixture
async def stacks(redis_server: EmbeddedRedis, events: Redis) -> AsyncIterator[StackFactory]:
    made: list[Stack] = []

    async def make(name: str, config: GateConfig = SLOW_STEP, *, lane: bool = True) -> Stack:
        stack = Stack(redis_server.url, name, config, lane=lane)
        made.append(stack)
        return await stack.start()

    yield make
    await asyncio.gather(*(stack.close() for stack in made))
